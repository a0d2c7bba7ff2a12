//! TLS to a real PostgreSQL started with `ssl = on` and a certificate from the test PKI,
//! for every kind of connection (sqlx pool, hot pool, dedicated, LISTEN); and the
//! synchronous-replication commit-mode check against a server with
//! `synchronous_standby_names` set.

use std::path::{Path, PathBuf};

use domain_storage::{
    DatabaseConfig, SslMode, StorageError, cancel_connector, check_commit_mode, connect_sqlx,
    dedicated_connection, hot_pool, listen_connection,
};
use domain_testkit::certs::{CertifiedKeyPem, TestPki};
use domain_testkit::pg::{ClusterOptions, PgCluster};

mod common;
use common::{assert_commit_mode_refused_unless_allowed, set_synchronous_commit};

/// A private cluster, stopped when the test ends (also when it fails).
struct Server {
    cluster: PgCluster,
    dir: tempfile::TempDir,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.cluster.stop();
    }
}

impl Server {
    fn start(settings: &[(&str, &str)], tls: Option<&TestPki>) -> Server {
        let dir = tempfile::tempdir().expect("tempdir");
        let base = dir.path().join("pg");
        let mut options = ClusterOptions {
            settings: settings
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
            tls: None,
        };
        if let Some(pki) = tls {
            std::fs::create_dir_all(&base).expect("base dir");
            // A certificate for `localhost` only, so 127.0.0.1 is a wrong host name.
            options.tls = Some(pki.issue_server(&["localhost"]).expect("server cert"));
            // With a CA file the server asks for (and checks) client certificates.
            let ca = base.join("client-ca.pem");
            std::fs::write(&ca, pki.ca_pem()).expect("write ca");
            options
                .settings
                .push(("ssl_ca_file".into(), ca.display().to_string()));
            // Role `app_scram` as on a managed service: password (SCRAM) over TLS only.
            let hba = base.join("pg_hba.conf");
            std::fs::write(
                &hba,
                "local all all trust\n\
                 hostssl all app_scram 127.0.0.1/32 scram-sha-256\n\
                 host all app_scram 127.0.0.1/32 reject\n\
                 host all all 127.0.0.1/32 trust\n",
            )
            .expect("write pg_hba.conf");
            options
                .settings
                .push(("hba_file".into(), hba.display().to_string()));
        }
        let cluster = PgCluster::start_private_with(&base, &options).expect("private cluster");
        Server { cluster, dir }
    }

    fn port(&self) -> u16 {
        self.cluster.port().expect("managed cluster")
    }

    fn file(&self, name: &str, contents: &str) -> PathBuf {
        let path = self.dir.path().join(name);
        std::fs::write(&path, contents).expect("write file");
        path
    }

    /// Writes a client certificate and its key to `<name>.crt` and `<name>.key`.
    fn cert_files(&self, name: &str, issued: &CertifiedKeyPem) -> (PathBuf, PathBuf) {
        (
            self.file(&format!("{name}.crt"), &issued.cert_pem),
            self.file(&format!("{name}.key"), &issued.key_pem),
        )
    }
}

/// Is this session encrypted, and with which client certificate?
async fn ssl_of_sqlx(cfg: &DatabaseConfig) -> Result<(bool, Option<String>), StorageError> {
    let pool = connect_sqlx(cfg).await?;
    let row: (bool, Option<String>) =
        sqlx::query_as("SELECT ssl, client_dn FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
            .fetch_one(&pool)
            .await?;
    pool.close().await;
    Ok(row)
}

/// The same through the three tokio-postgres paths: dedicated, LISTEN and hot pool.
async fn ssl_of_tokio_postgres(cfg: &DatabaseConfig) -> Result<Vec<bool>, StorageError> {
    const SQL: &str = "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()";
    let mut out = Vec::new();
    let (client, _task) = dedicated_connection(cfg).await?;
    out.push(client.query_one(SQL, &[]).await?.get(0));
    let (client, _rx, _task) = listen_connection(cfg, &["tls_test"]).await?;
    out.push(client.query_one(SQL, &[]).await?.get(0));
    let pool = hot_pool(cfg)?;
    let client = pool.get().await?;
    out.push(client.query_one(SQL, &[]).await?.get(0));
    Ok(out)
}

fn url(host: &str, port: u16, db: &str, query: &str) -> String {
    format!("postgres://postgres@{host}:{port}/{db}{query}")
}

fn with_tls(url: String, mode: SslMode, root: &Path) -> DatabaseConfig {
    DatabaseConfig {
        sslmode: Some(mode),
        sslrootcert: Some(root.to_path_buf()),
        connect_timeout: std::time::Duration::from_secs(5),
        ..DatabaseConfig::from_url(url)
    }
}

/// `with_tls` for database `db` at `host:port`, as user postgres.
fn tls_to(host: &str, port: u16, db: &str, mode: SslMode, root: &Path) -> DatabaseConfig {
    with_tls(url(host, port, db, ""), mode, root)
}

/// Asserts that every connection kind fails with a message naming `needle` (the setting).
async fn assert_all_fail(cfg: &DatabaseConfig, needle: &str, why: &str) {
    let err = ssl_of_sqlx(cfg).await.expect_err(why);
    assert!(
        matches!(err, StorageError::Tls { .. }),
        "sqlx, {why}: {err}"
    );
    assert!(err.to_string().contains(needle), "sqlx, {why}: {err}");
    let err = match dedicated_connection(cfg).await {
        Ok(_) => panic!("dedicated connection succeeded although {why}"),
        Err(e) => e,
    };
    assert!(
        matches!(err, StorageError::Tls { .. }),
        "dedicated, {why}: {err}"
    );
    assert!(err.to_string().contains(needle), "dedicated, {why}: {err}");
    let err = match listen_connection(cfg, &["x"]).await {
        Ok(_) => panic!("listen connection succeeded although {why}"),
        Err(e) => e,
    };
    assert!(err.to_string().contains(needle), "listen, {why}: {err}");
    // The hot pool opens connections lazily, after start-up has already failed on the sqlx
    // pool above; deadpool hands back tokio-postgres's own error, which says TLS (and, for
    // a failed handshake, names the settings through our connector's message).
    let pool = hot_pool(cfg).expect("pool builds lazily");
    let err = StorageError::from(pool.get().await.map(drop).expect_err(why));
    assert!(err.to_string().contains("TLS"), "hot pool, {why}: {err}");
}

/// Asserts whether sqlx and the three tokio-postgres paths all encrypt under `cfg`.
async fn assert_encrypted(cfg: &DatabaseConfig, encrypted: bool, what: &str) {
    assert_eq!(
        ssl_of_sqlx(cfg)
            .await
            .unwrap_or_else(|e| panic!("sqlx {what}: {e}"))
            .0,
        encrypted,
        "sqlx, {what}"
    );
    assert_eq!(
        ssl_of_tokio_postgres(cfg).await.expect(what),
        [encrypted; 3],
        "{what}"
    );
}

/// Asserts that the server refuses both sqlx and a dedicated connection under `cfg` (`why`),
/// with a message containing `needle` where one is given.
async fn assert_refused(cfg: &DatabaseConfig, why: &str, needle: Option<&str>) {
    let err = ssl_of_sqlx(cfg).await.expect_err(why);
    if let Some(needle) = needle {
        assert!(err.to_string().contains(needle), "sqlx, {why}: {err}");
    }
    let err = match dedicated_connection(cfg).await {
        Ok(_) => panic!("dedicated connection succeeded {why}"),
        Err(e) => e,
    };
    if let Some(needle) = needle {
        assert!(err.to_string().contains(needle), "dedicated, {why}: {err}");
    }
}

#[tokio::test]
async fn tls_modes_against_a_real_server() {
    let pki = TestPki::new().expect("pki");
    let server = Server::start(&[], Some(&pki));
    let db = server.cluster.create_database("storage_tls").await;
    let port = server.port();
    let ca = server.file("ca.pem", pki.ca_pem());

    // verify-full, from URL parameters: every connection is encrypted.
    let cfg = DatabaseConfig::from_url(url(
        "localhost",
        port,
        &db.name,
        &format!("?sslmode=verify-full&sslrootcert={}", ca.display()),
    ));
    assert_encrypted(&cfg, true, "verify-full").await;
    // The same from config keys, and the dump shows them (paths only).
    let cfg = tls_to("localhost", port, &db.name, SslMode::VerifyFull, &ca);
    assert_encrypted(&cfg, true, "verify-full").await;

    // A client certificate is presented by both drivers.
    let client = pki.issue_client("seq-client").expect("client cert");
    let cfg = DatabaseConfig {
        sslcert: Some(server.file("client.pem", &client.cert_pem)),
        sslkey: Some(server.file("client.key", &client.key_pem)),
        ..tls_to("localhost", port, &db.name, SslMode::VerifyFull, &ca)
    };
    let (ssl, dn) = ssl_of_sqlx(&cfg).await.expect("sqlx with client cert");
    assert!(ssl);
    assert_eq!(dn.as_deref(), Some("/CN=seq-client"));
    let (client_conn, _task) = dedicated_connection(&cfg).await.expect("dedicated");
    let dn: Option<String> = client_conn
        .query_one(
            "SELECT client_dn FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
            &[],
        )
        .await
        .expect("query")
        .get(0);
    assert_eq!(dn.as_deref(), Some("/CN=seq-client"));

    // Password authentication (SCRAM) over TLS, for a role the server admits over TLS only.
    sqlx::query("CREATE ROLE app_scram LOGIN PASSWORD 'scram-secret'")
        .execute(
            &connect_sqlx(&DatabaseConfig::from_url(db.url.clone()))
                .await
                .expect("admin"),
        )
        .await
        .expect("create role");
    let password = server.file("password", "scram-secret\n");
    let cfg = DatabaseConfig {
        password_file: Some(password.clone()),
        ..with_tls(
            format!("postgres://app_scram@localhost:{port}/{}", db.name),
            SslMode::VerifyFull,
            &ca,
        )
    };
    assert_encrypted(&cfg, true, "scram over tls").await;
    let plain = DatabaseConfig {
        password_file: Some(password),
        ..DatabaseConfig::from_url(format!(
            "postgres://app_scram@127.0.0.1:{port}/{}?sslmode=disable",
            db.name
        ))
    };
    ssl_of_sqlx(&plain)
        .await
        .expect_err("the server admits app_scram over TLS only");

    // A CA that did not sign the server certificate: refused, naming the settings.
    let other = TestPki::with_name("some other ca").expect("pki");
    let wrong_ca = server.file("wrong-ca.pem", other.ca_pem());
    let cfg = tls_to("localhost", port, &db.name, SslMode::VerifyFull, &wrong_ca);
    assert_all_fail(&cfg, "database.sslrootcert", "the CA is wrong").await;

    // The certificate names localhost, not 127.0.0.1: verify-full refuses...
    let cfg = tls_to("127.0.0.1", port, &db.name, SslMode::VerifyFull, &ca);
    assert_all_fail(
        &cfg,
        "database.sslmode = verify-full",
        "the host name is wrong",
    )
    .await;
    // ... and verify-ca, which checks the chain only, accepts.
    let cfg = tls_to("127.0.0.1", port, &db.name, SslMode::VerifyCa, &ca);
    assert_encrypted(&cfg, true, "verify-ca").await;

    // prefer encrypts when the server offers TLS; disable does not.
    let cfg = DatabaseConfig::from_url(url("127.0.0.1", port, &db.name, ""));
    assert_encrypted(&cfg, true, "prefer").await;
    let cfg = DatabaseConfig::from_url(url("127.0.0.1", port, &db.name, "?sslmode=disable"));
    assert_encrypted(&cfg, false, "disable").await;

    // Cancel requests of a TLS session: NoTls cannot send them (the token insists on TLS),
    // cancel_connector can, without the config at hand.
    let cfg = DatabaseConfig {
        statement_timeout: std::time::Duration::ZERO,
        ..tls_to("localhost", port, &db.name, SslMode::VerifyFull, &ca)
    };
    let (sleeper, _task) = dedicated_connection(&cfg).await.expect("dedicated");
    let token = sleeper.cancel_token();
    let sleeping = tokio::spawn(async move { sleeper.batch_execute("SELECT pg_sleep(30)").await });
    // Cancel only once the query runs; a cancel arriving earlier would be a no-op.
    let watcher = connect_sqlx(&DatabaseConfig::from_url(db.url.clone()))
        .await
        .expect("watcher");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let active: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_stat_activity \
             WHERE state = 'active' AND query = 'SELECT pg_sleep(30)'",
        )
        .fetch_one(&watcher)
        .await
        .expect("pg_stat_activity");
        if active > 0 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "pg_sleep never started"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    token
        .cancel_query(tokio_postgres::NoTls)
        .await
        .expect_err("NoTls cannot send a cancel request under verify-full");
    let started = std::time::Instant::now();
    token
        .cancel_query(cancel_connector())
        .await
        .expect("cancel over TLS");
    let err = sleeping
        .await
        .expect("join")
        .expect_err("the query was cancelled");
    assert_eq!(
        err.code(),
        Some(&tokio_postgres::error::SqlState::QUERY_CANCELED),
        "{err}"
    );
    assert!(started.elapsed() < std::time::Duration::from_secs(5));

    // A missing root certificate file fails before connecting, naming the setting.
    let cfg = tls_to(
        "localhost",
        port,
        &db.name,
        SslMode::VerifyFull,
        Path::new("/nonexistent/ca.pem"),
    );
    let err = hot_pool(&cfg).expect_err("missing sslrootcert");
    assert!(
        err.to_string()
            .contains("database.sslrootcert = /nonexistent/ca.pem"),
        "{err}"
    );
}

#[tokio::test]
async fn tls_required_against_a_server_without_tls_fails_without_fallback() {
    let server = Server::start(&[], None);
    let db = server.cluster.create_database("storage_no_tls").await;
    let port = server.port();

    // prefer falls back to plaintext: that is what prefer means.
    let cfg = DatabaseConfig::from_url(url("127.0.0.1", port, &db.name, ""));
    assert_encrypted(&cfg, false, "prefer").await;

    // require (and the verify modes) never do: each fails naming its mode.
    let pki = TestPki::new().expect("pki");
    let ca = server.file("ca.pem", pki.ca_pem());
    for (cfg, needle) in [
        (
            DatabaseConfig::from_url(url("127.0.0.1", port, &db.name, "?sslmode=require")),
            "database.sslmode = require",
        ),
        (
            tls_to("localhost", port, &db.name, SslMode::VerifyFull, &ca),
            "database.sslmode = verify-full",
        ),
    ] {
        assert_all_fail(&cfg, needle, "the server has no TLS").await;
    }
}

#[tokio::test]
async fn local_commit_is_refused_when_standbys_are_synchronous() {
    // synchronous_standby_names names a standby that does not exist; the server-wide
    // `local` keeps our own setup commits from waiting for it.
    let server = Server::start(
        &[
            ("synchronous_standby_names", "standby_a"),
            ("synchronous_commit", "local"),
        ],
        None,
    );
    let db = server.cluster.create_database("storage_sync_rep").await;
    let cfg = DatabaseConfig::from_url(db.url.clone());

    let pool = connect_sqlx(&cfg).await.expect("sqlx pool");
    // Refused: local does not wait for the synchronous standbys.
    let err = assert_commit_mode_refused_unless_allowed(&pool, "local").await;
    assert!(
        matches!(&err, StorageError::UnreplicatedCommitMode { value, standby_names }
            if value == "local" && standby_names == "standby_a"),
        "unexpected error: {err}"
    );

    // remote_write, on and remote_apply wait for the standby, so they are accepted; off is
    // refused as everywhere. Set per database, as an operator would for one role or db.
    for (value, accepted) in [
        ("remote_write", true),
        ("on", true),
        ("remote_apply", true),
        ("off", false),
    ] {
        set_synchronous_commit(&pool, &db.name, value).await;
        let fresh = connect_sqlx(&cfg).await.expect("sqlx pool");
        let result = check_commit_mode(&fresh, false).await;
        assert_eq!(
            result.is_ok(),
            accepted,
            "synchronous_commit = {value}: {result:?}"
        );
        fresh.close().await;
    }
}

#[tokio::test]
async fn local_commit_without_synchronous_standbys_is_durable() {
    let db = PgCluster::shared()
        .create_database("storage_local_commit")
        .await;
    let cfg = DatabaseConfig::from_url(db.url.clone());
    let pool = connect_sqlx(&cfg).await.expect("sqlx pool");
    let standby_names: String = sqlx::query_scalar("SHOW synchronous_standby_names")
        .fetch_one(&pool)
        .await
        .expect("show");
    assert_eq!(
        standby_names, "",
        "the shared test server replicates nowhere"
    );
    set_synchronous_commit(&pool, &db.name, "local").await;
    let fresh = connect_sqlx(&cfg).await.expect("sqlx pool");
    check_commit_mode(&fresh, false)
        .await
        .expect("local is as durable as on without synchronous standbys");
}

/// Certificate authentication as deploy/k8s/postgres sets it up: the server's certificate
/// from one CA (CloudNativePG's), clients' from another (`ssl_ca_file`, the Cluster's
/// `clientCASecret`), `hostssl sameuser <role> all cert`, and a role without a password. The
/// component config carries only `sslcert`/`sslkey`: no password file exists to be made.
#[tokio::test]
async fn certificate_authentication_without_a_password() {
    let server_pki = TestPki::with_name("pg server ca").expect("pki");
    let client_pki = TestPki::with_name("pg client ca").expect("pki");
    let dir = tempfile::tempdir().expect("tempdir");
    let base = dir.path().join("pg");
    std::fs::create_dir_all(&base).expect("base dir");
    let file = |name: &str, contents: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, contents).expect("write file");
        path
    };
    let client_ca = file("client-ca.pem", client_pki.ca_pem());
    // The order of deploy/k8s/postgres/cluster.yaml: cert for the app role over TLS, and
    // nothing over plain TCP; `postgres` keeps trust for the test's own setup.
    let hba = file(
        "pg_hba.conf",
        "local all all trust\n\
         hostssl sameuser app_cert 127.0.0.1/32 cert\n\
         hostnossl all app_cert 127.0.0.1/32 reject\n\
         host all postgres 127.0.0.1/32 trust\n",
    );
    let options = ClusterOptions {
        settings: vec![
            ("ssl_ca_file".into(), client_ca.display().to_string()),
            ("hba_file".into(), hba.display().to_string()),
        ],
        tls: Some(
            server_pki
                .issue_server(&["localhost"])
                .expect("server cert"),
        ),
    };
    let cluster = PgCluster::start_private_with(&base, &options).expect("private cluster");
    let server = Server { cluster, dir };
    let port = server.port();
    let admin = connect_sqlx(&DatabaseConfig::from_url(format!(
        "postgres://postgres@127.0.0.1:{port}/postgres?sslmode=disable"
    )))
    .await
    .expect("admin");
    // As CloudNativePG's managed role with `disablePassword: true`, and its Database.
    sqlx::query("CREATE ROLE app_cert LOGIN PASSWORD NULL")
        .execute(&admin)
        .await
        .expect("create role");
    sqlx::query("CREATE DATABASE app_cert OWNER app_cert")
        .execute(&admin)
        .await
        .expect("create database");

    let server_ca = server.file("server-ca.pem", server_pki.ca_pem());
    let own = client_pki.issue_client("app_cert").expect("client cert");
    let (cert, key) = server.cert_files("tls", &own);
    let base_url = format!("postgres://app_cert@localhost:{port}/app_cert");
    let keyed = |cert: &Path, key: &Path| DatabaseConfig {
        sslcert: Some(cert.to_path_buf()),
        sslkey: Some(key.to_path_buf()),
        ..with_tls(base_url.clone(), SslMode::VerifyFull, &server_ca)
    };

    // With the certificate (config keys, as deploy/k8s/base/*.toml): every kind of
    // connection logs in as the role the certificate names.
    let cfg = keyed(&cert, &key);
    let (ssl, dn) = ssl_of_sqlx(&cfg).await.expect("sqlx, certificate login");
    assert!(ssl);
    assert_eq!(dn.as_deref(), Some("/CN=app_cert"));
    assert_eq!(
        ssl_of_tokio_postgres(&cfg)
            .await
            .expect("certificate login"),
        [true, true, true]
    );
    let pool = connect_sqlx(&cfg).await.expect("sqlx");
    let user: String = sqlx::query_scalar("SELECT current_user::text")
        .fetch_one(&pool)
        .await
        .expect("current_user");
    assert_eq!(user, "app_cert");
    // The role owns its database: the migrations can create their tables.
    sqlx::query("CREATE TABLE owned_here (x int)")
        .execute(&pool)
        .await
        .expect("create table as app_cert");
    pool.close().await;
    // The same from URL parameters.
    let cfg = DatabaseConfig::from_url(format!(
        "{base_url}?sslmode=verify-full&sslrootcert={}&sslcert={}&sslkey={}",
        server_ca.display(),
        cert.display(),
        key.display()
    ));
    assert!(ssl_of_sqlx(&cfg).await.expect("sqlx, url parameters").0);
    let (client, _task) = dedicated_connection(&cfg).await.expect("dedicated, url");
    let user: String = client
        .query_one("SELECT current_user::text", &[])
        .await
        .expect("current_user")
        .get(0);
    assert_eq!(user, "app_cert");

    // Refused by the server, for both drivers: (why, config, what the error says).
    let intruder = client_pki.issue_client("intruder").expect("client cert");
    let intruder = server.cert_files("intruder", &intruder);
    let foreign = server_pki.issue_client("app_cert").expect("client cert");
    let foreign = server.cert_files("foreign", &foreign);
    let refused = [
        // No password to fall back on.
        (
            "without a client certificate",
            with_tls(base_url.clone(), SslMode::VerifyFull, &server_ca),
            Some("requires a valid client certificate"),
        ),
        // From the right CA for another role: the CN must be the role.
        (
            "with another role's certificate",
            keyed(&intruder.0, &intruder.1),
            Some("certificate authentication failed for user \"app_cert\""),
        ),
        // The right CN from a CA the server does not trust for clients (here the server
        // CA): the handshake fails.
        (
            "with a certificate from an untrusted CA",
            keyed(&foreign.0, &foreign.1),
            None,
        ),
        // Plain TCP (a client certificate with sslmode=disable is already refused by the
        // config check).
        (
            "over plain TCP",
            DatabaseConfig::from_url(format!(
                "postgres://app_cert@127.0.0.1:{port}/app_cert?sslmode=disable"
            )),
            Some("pg_hba.conf rejects"),
        ),
    ];
    for (why, cfg, needle) in &refused {
        assert_refused(cfg, why, *needle).await;
    }
    admin.close().await;
}
