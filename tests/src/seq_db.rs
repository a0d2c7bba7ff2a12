//! Reading one row of a test database: the column values of `query_one`, with the query
//! named in the error.

use anyhow::Context as _;
use tokio_postgres::Client;
use tokio_postgres::types::{FromSqlOwned, ToSql};

/// The parameters of a query.
pub type Params<'a> = [&'a (dyn ToSql + Sync)];

async fn query_row(
    db: &Client,
    sql: &str,
    params: &Params<'_>,
) -> anyhow::Result<tokio_postgres::Row> {
    db.query_one(sql, params)
        .await
        .with_context(|| format!("query {sql:?}"))
}

/// The first column of the one row `sql` returns.
pub async fn one<A: FromSqlOwned>(
    db: &Client,
    sql: &str,
    params: &Params<'_>,
) -> anyhow::Result<A> {
    let r = query_row(db, sql, params).await?;
    Ok(r.try_get(0)?)
}

/// The first two columns of the one row `sql` returns.
pub async fn two<A: FromSqlOwned, B: FromSqlOwned>(
    db: &Client,
    sql: &str,
    params: &Params<'_>,
) -> anyhow::Result<(A, B)> {
    let r = query_row(db, sql, params).await?;
    Ok((r.try_get(0)?, r.try_get(1)?))
}

/// The first three columns of the one row `sql` returns.
pub async fn three<A: FromSqlOwned, B: FromSqlOwned, C: FromSqlOwned>(
    db: &Client,
    sql: &str,
    params: &Params<'_>,
) -> anyhow::Result<(A, B, C)> {
    let r = query_row(db, sql, params).await?;
    Ok((r.try_get(0)?, r.try_get(1)?, r.try_get(2)?))
}
