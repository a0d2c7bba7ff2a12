//! Helpers shared by the PostgreSQL integration tests of this crate.

use domain_storage::{StorageError, check_commit_mode};

/// Sets `synchronous_commit` for database `db`, as an operator would per database. It
/// applies to sessions opened afterwards.
pub async fn set_synchronous_commit(pool: &sqlx::PgPool, db: &str, value: &str) {
    // The name comes from the server or the testkit, not from input.
    let alter = format!("ALTER DATABASE \"{db}\" SET synchronous_commit = {value}");
    sqlx::query(sqlx::AssertSqlSafe(alter))
        .execute(pool)
        .await
        .expect("alter database");
}

/// The commit-mode check refuses the session's `synchronous_commit = value`, naming the
/// setting and the way out (`database.allow-async-commit`), which it then allows. Returns
/// the refusal for the caller's check of its kind.
pub async fn assert_commit_mode_refused_unless_allowed(
    pool: &sqlx::PgPool,
    value: &str,
) -> StorageError {
    let Err(err) = check_commit_mode(pool, false).await else {
        panic!("synchronous_commit = {value} must be refused");
    };
    let msg = err.to_string();
    assert!(
        msg.contains(&format!("synchronous_commit = {value}")),
        "{msg}"
    );
    assert!(msg.contains("database.allow-async-commit"), "{msg}");
    check_commit_mode(pool, true)
        .await
        .expect("allowed by database.allow-async-commit");
    err
}
