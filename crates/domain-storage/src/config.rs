//! The `[database]` section shared by every component, and the translation of it into
//! driver configurations for sqlx and tokio-postgres.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use sqlx::postgres::PgSslMode;

use crate::StorageError;
use crate::tls::{PgTls, SslMode, TlsSettings, split_tls_params};

/// Connection settings for one PostgreSQL database, as read from a component's `[database]`
/// section.
///
/// Every component owns its own database (or schema-separated database); the same struct
/// feeds the sqlx pool (migrations, low-rate queries), the deadpool hot pool and dedicated
/// connections (leases, LISTEN/NOTIFY).
///
/// Secrets: the password should not live in the TOML file. Put it in a file mounted from a
/// Kubernetes Secret (`password-file`) or in an environment variable named by
/// `password-env`. A password embedded in `url` still works but is never printed: the
/// `Display`, `Debug` and `Serialize` forms of [`DatabaseUrl`] redact it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case", default)]
pub struct DatabaseConfig {
    /// Connection URL, `postgres://user@host:port/dbname[?param=value...]`.
    ///
    /// Must be in URL form (key/value strings are not accepted by sqlx). The libpq TLS
    /// parameters `sslmode`, `sslrootcert`, `sslcert` and `sslkey` are accepted in the query
    /// string; the config keys of the same names win over them.
    /// Default: `postgres://postgres@127.0.0.1:5432/postgres`. Since 0.1.0.
    pub url: DatabaseUrl,

    /// File holding the password (trailing newline stripped), e.g. a mounted Kubernetes
    /// Secret. Takes precedence over `password-env` and a password in `url`.
    /// Default: unset. Since 0.1.0.
    pub password_file: Option<PathBuf>,

    /// Name of an environment variable holding the password, e.g.
    /// `SEQUENCER_DB_PASSWORD`. Takes precedence over a password in `url`; it is an error if
    /// the variable is named but not set. Default: unset. Since 0.1.0.
    pub password_env: Option<String>,

    /// Maximum number of connections in the hot-path pool. The sqlx pool used for
    /// migrations and admin queries is capped separately at
    /// [`SQLX_POOL_MAX_SIZE`](crate::SQLX_POOL_MAX_SIZE). Default: 16. Since 0.1.0.
    pub pool_max_size: usize,

    /// How long a caller waits for a free pooled connection before failing with a pool
    /// timeout, so an exhausted pool surfaces as an error instead of a hang.
    /// Default: 2s. Since 0.1.0.
    #[serde(with = "humantime_serde")]
    pub pool_wait_timeout: Duration,

    /// How long the hot pool may take to open (connect and authenticate) a new connection.
    /// Default: 3s. Since 0.1.0.
    #[serde(with = "humantime_serde")]
    pub pool_create_timeout: Duration,

    /// How long the hot pool may take to verify a returned connection before reuse
    /// (recycling runs a trivial query, see `RecyclingMethod::Verified`).
    /// Default: 1s. Since 0.1.0.
    #[serde(with = "humantime_serde")]
    pub pool_recycle_timeout: Duration,

    /// TCP connect timeout for every connection, pooled or dedicated. Default: 3s.
    /// Since 0.1.0.
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,

    /// Server-side `statement_timeout` applied to every connection as a startup option;
    /// a statement running longer is cancelled by PostgreSQL. `0s` disables it.
    /// Migrations run without it. Default: 10s. Since 0.1.0.
    #[serde(with = "humantime_serde")]
    pub statement_timeout: Duration,

    /// Server-side `idle_in_transaction_session_timeout` applied to every connection as a
    /// startup option: PostgreSQL ends a session that sits inside an open transaction
    /// without running a statement for this long, releasing its locks and its snapshot
    /// (which would otherwise hold back vacuum on every table). No component legitimately
    /// idles inside a transaction for more than a moment (writer batches fail over after
    /// `writer.commit-timeout`, 2 s; leases expire after `ttl`, 2 s), so this only ends
    /// sessions whose process stalled or whose code waited on something else mid-transaction.
    /// `0s` disables it; otherwise between 1s and 24 days. Default: 10s. Since 0.2.0.
    #[serde(with = "humantime_serde")]
    pub idle_in_transaction_session_timeout: Duration,

    /// Idle time before TCP keepalive probes start (keepalives are always on for
    /// tokio-postgres connections). Default: 10s. Since 0.1.0.
    #[serde(with = "humantime_serde")]
    pub tcp_keepalive_idle: Duration,

    /// `TCP_USER_TIMEOUT`: how long sent data (and, on Linux, keepalive probes) may stay
    /// unacknowledged before the kernel drops the connection. This is what bounds how long
    /// a lease holder can go on believing a dead connection is alive. `0s` uses the OS
    /// default. Default: 5s. Since 0.1.0.
    #[serde(with = "humantime_serde")]
    pub tcp_user_timeout: Duration,

    /// Which server to accept when `url` lists several hosts: `read-write` lands on the
    /// primary after a managed-PostgreSQL failover, `any` accepts a standby.
    ///
    /// `url` may list several servers, libpq style:
    /// `postgres://user@db-a:5432,db-b:5432/seq?target_session_attrs=read-write`. Every
    /// connection (hot pool, writer, LISTEN, and the sqlx pool of start-up) tries them in
    /// order and keeps the first that satisfies this setting, so after a standby is
    /// promoted the components reconnect to it without a config change. A
    /// `target_session_attrs` in the URL must agree with this key (an error otherwise).
    /// Default: `read-write`. Since 0.1.0.
    pub target_session_attrs: TargetSessionAttrs,

    /// Allow running against a database whose commit mode can lose commits that were
    /// already acknowledged to clients: `synchronous_commit = off` (lost on a crash), or
    /// `local` while `synchronous_standby_names` is set (lost on a failover to the
    /// standby). Start-up refuses both unless this is set; see
    /// [`check_commit_mode`](crate::check_commit_mode). Default: false. Since 0.1.0.
    pub allow_async_commit: bool,

    /// `application_name` reported to PostgreSQL (visible in `pg_stat_activity`). When
    /// unset, a value from `url` is kept, else `domain-runtime` is used.
    /// Default: unset. Since 0.1.0.
    pub application_name: Option<String>,

    /// TLS to the server, with libpq's values and meanings: `disable`, `prefer` (TLS when
    /// the server offers it, certificate not checked), `require` (TLS or fail; certificate
    /// not checked unless `sslrootcert` is set, then as `verify-ca`), `verify-ca` (the
    /// certificate must chain to `sslrootcert`) or `verify-full` (and name the host in
    /// `url`). Applies to every connection: sqlx pool, hot pool, leases, LISTEN. Use
    /// `verify-full` in production. Default: unset, i.e. `sslmode` from `url`, else `prefer`.
    /// Since 0.1.0.
    pub sslmode: Option<SslMode>,

    /// PEM file with the CA certificate(s) the server certificate must chain to; required by
    /// `verify-ca` and `verify-full`. Default: unset, i.e. `sslrootcert` from `url`.
    /// Since 0.1.0.
    pub sslrootcert: Option<PathBuf>,

    /// PEM client certificate (chain) presented to the server, for `cert` authentication
    /// in `pg_hba.conf`; needs `sslkey`. Default: unset (`sslcert` from `url`). Since 0.1.0.
    pub sslcert: Option<PathBuf>,

    /// PEM (PKCS#8, PKCS#1 or SEC1) private key of `sslcert`. Only the path is ever printed.
    /// Default: unset (`sslkey` from `url`). Since 0.1.0.
    pub sslkey: Option<PathBuf>,
}

impl Default for DatabaseConfig {
    fn default() -> Self {
        Self {
            url: DatabaseUrl::new("postgres://postgres@127.0.0.1:5432/postgres"),
            password_file: None,
            password_env: None,
            pool_max_size: 16,
            pool_wait_timeout: Duration::from_secs(2),
            pool_create_timeout: Duration::from_secs(3),
            pool_recycle_timeout: Duration::from_secs(1),
            connect_timeout: Duration::from_secs(3),
            statement_timeout: Duration::from_secs(10),
            idle_in_transaction_session_timeout: Duration::from_secs(10),
            tcp_keepalive_idle: Duration::from_secs(10),
            tcp_user_timeout: Duration::from_secs(5),
            target_session_attrs: TargetSessionAttrs::ReadWrite,
            allow_async_commit: false,
            application_name: None,
            sslmode: None,
            sslrootcert: None,
            sslcert: None,
            sslkey: None,
        }
    }
}

/// Application name used when neither the config nor the URL sets one.
const DEFAULT_APPLICATION_NAME: &str = "domain-runtime";

impl DatabaseConfig {
    /// Returns a config for `url` with every other setting at its default.
    pub fn from_url(url: impl Into<String>) -> Self {
        Self {
            url: DatabaseUrl::new(url),
            ..Self::default()
        }
    }

    /// Returns the password from `password-file` or `password-env`, or `None` when neither
    /// is configured (a password in `url`, if any, then applies).
    pub fn resolve_password(&self) -> Result<Option<String>, StorageError> {
        if let Some(path) = &self.password_file {
            let raw =
                std::fs::read_to_string(path).map_err(|source| StorageError::PasswordFile {
                    path: path.clone(),
                    source,
                })?;
            return Ok(Some(raw.trim_end_matches(['\r', '\n']).to_owned()));
        }
        if let Some(var) = &self.password_env {
            return match std::env::var(var) {
                Ok(value) => Ok(Some(value)),
                Err(_) => Err(StorageError::PasswordEnv { var: var.clone() }),
            };
        }
        Ok(None)
    }

    /// Returns the tokio-postgres configuration used by the hot pool and dedicated
    /// connections: keepalives on, `keepalives_idle`, `tcp_user_timeout`, `connect_timeout`,
    /// `target_session_attrs`, `application_name` and `statement_timeout` as a startup option.
    ///
    /// The TLS parameters are taken out of the URL (tokio-postgres does not know most of
    /// them); the connections verify certificates through [`tls_connector`](Self::tls_connector).
    pub fn tokio_postgres_config(&self) -> Result<tokio_postgres::Config, StorageError> {
        let tls = self.tls_settings()?;
        let mut pg = self.parsed_url()?;
        pg.ssl_mode(tls.tokio_postgres_mode());
        if let Some(password) = self.resolve_password()? {
            pg.password(password);
        }
        pg.connect_timeout(self.connect_timeout)
            .keepalives(true)
            .keepalives_idle(self.tcp_keepalive_idle)
            .tcp_user_timeout(self.tcp_user_timeout)
            .target_session_attrs(match self.target_session_attrs {
                TargetSessionAttrs::Any => tokio_postgres::config::TargetSessionAttrs::Any,
                TargetSessionAttrs::ReadWrite => {
                    tokio_postgres::config::TargetSessionAttrs::ReadWrite
                }
            });
        match (&self.application_name, pg.get_application_name()) {
            (Some(name), _) => {
                pg.application_name(name.as_str());
            }
            (None, Some(_)) => {}
            (None, None) => {
                pg.application_name(DEFAULT_APPLICATION_NAME);
            }
        }
        let startup = self.startup_options()?;
        if !startup.is_empty() {
            let timeouts = startup
                .iter()
                .map(|(k, v)| format!("-c {k}={v}"))
                .collect::<Vec<_>>()
                .join(" ");
            let options = match pg.get_options() {
                Some(existing) if !existing.trim().is_empty() => format!("{existing} {timeouts}"),
                _ => timeouts,
            };
            pg.options(options);
        }
        Ok(pg)
    }

    /// Parses `url` with tokio-postgres (which understands libpq's multi-host URLs), TLS
    /// parameters taken out, and checks a `target_session_attrs` in it against the
    /// `target-session-attrs` key.
    fn parsed_url(&self) -> Result<tokio_postgres::Config, StorageError> {
        let (url, _) = split_tls_params(self.url.expose());
        let pg =
            tokio_postgres::Config::from_str(&url).map_err(|e| StorageError::InvalidConfig {
                reason: format!("cannot parse database url {}: {e}", self.url),
            })?;
        if let Some(in_url) = url_param(&url, "target_session_attrs") {
            let agrees = matches!(
                (in_url.as_str(), self.target_session_attrs),
                ("any", TargetSessionAttrs::Any) | ("read-write", TargetSessionAttrs::ReadWrite)
            );
            if !agrees {
                return Err(StorageError::InvalidConfig {
                    reason: format!(
                        "database url {} has target_session_attrs={in_url} but \
                         `database.target-session-attrs` is {}; make them agree (only \
                         `any` and `read-write` are supported)",
                        self.url,
                        self.target_session_attrs.as_str()
                    ),
                });
            }
        }
        Ok(pg)
    }

    /// Returns the servers `url` names, in the order connections try them: one for an
    /// ordinary URL, several for a libpq multi-host URL (`postgres://u@a:5432,b:5433/db`).
    pub fn hosts(&self) -> Result<Vec<DatabaseHost>, StorageError> {
        let pg = self.parsed_url()?;
        let ports = pg.get_ports();
        let hosts = pg.get_hosts();
        if hosts.is_empty() {
            return Err(StorageError::InvalidConfig {
                reason: format!("database url {} names no host", self.url),
            });
        }
        Ok(hosts
            .iter()
            .enumerate()
            .map(|(i, host)| {
                // libpq: one port for every host, or one per host; none means 5432.
                let port = match ports.len() {
                    0 => 5432,
                    1 => ports[0],
                    _ => ports.get(i).copied().unwrap_or(5432),
                };
                match host {
                    tokio_postgres::config::Host::Tcp(name) => DatabaseHost::Tcp {
                        host: name.clone(),
                        port,
                    },
                    tokio_postgres::config::Host::Unix(dir) => DatabaseHost::Unix {
                        dir: dir.clone(),
                        port,
                    },
                }
            })
            .collect())
    }

    /// Returns the sqlx connection options for each server of `url`, in order (one for
    /// an ordinary URL). sqlx knows only one host per connection, so
    /// [`connect_sqlx`](crate::connect_sqlx) tries these one after the other, the way
    /// tokio-postgres walks a multi-host URL.
    pub fn sqlx_options_per_host(
        &self,
    ) -> Result<Vec<sqlx::postgres::PgConnectOptions>, StorageError> {
        let base = self.sqlx_options()?;
        let hosts = self.hosts()?;
        if hosts.len() == 1 {
            return Ok(vec![base]);
        }
        Ok(hosts
            .into_iter()
            .map(|host| match host {
                DatabaseHost::Tcp { host, port } => base.clone().host(&host).port(port),
                DatabaseHost::Unix { dir, port } => base.clone().socket(dir).port(port),
            })
            .collect())
    }

    /// Returns the sqlx connection options: the same URL, password, application name,
    /// statement timeout and TLS settings as [`tokio_postgres_config`](Self::tokio_postgres_config).
    ///
    /// sqlx verifies certificates itself (rustls, ring). One difference: for `verify-ca`
    /// and `verify-full` its trust store is `sslrootcert` *plus* the Mozilla root set that
    /// sqlx compiles in, where the tokio-postgres connections trust `sslrootcert` only.
    ///
    /// sqlx has no keepalive, `tcp_user_timeout` or `target_session_attrs` settings; the
    /// pool built by [`connect_sqlx`](crate::connect_sqlx) checks for a writable session
    /// after connecting instead.
    ///
    /// For a multi-host URL these are the options of its first server; see
    /// [`sqlx_options_per_host`](Self::sqlx_options_per_host).
    pub fn sqlx_options(&self) -> Result<sqlx::postgres::PgConnectOptions, StorageError> {
        // The TLS parameters are resolved here, once for both drivers.
        let (url, _) = split_tls_params(self.url.expose());
        // sqlx parses one `host:port` and does not know target_session_attrs (it would log
        // a warning for it): hand it the first server and drop the parameter.
        let url = remove_url_param(&first_host_only(&url), "target_session_attrs");
        let mut opts = sqlx::postgres::PgConnectOptions::from_str(&url).map_err(|e| {
            StorageError::InvalidConfig {
                reason: format!("cannot parse database url {}: {e}", self.url),
            }
        })?;
        if let Some(password) = self.resolve_password()? {
            opts = opts.password(&password);
        }
        match (&self.application_name, opts.get_application_name()) {
            (Some(name), _) => opts = opts.application_name(name),
            (None, Some(_)) => {}
            (None, None) => opts = opts.application_name(DEFAULT_APPLICATION_NAME),
        }
        let tls = self.tls_settings()?;
        opts = opts.ssl_mode(match tls.mode {
            SslMode::Disable => PgSslMode::Disable,
            SslMode::Prefer => PgSslMode::Prefer,
            SslMode::Require => PgSslMode::Require,
            SslMode::VerifyCa => PgSslMode::VerifyCa,
            SslMode::VerifyFull => PgSslMode::VerifyFull,
        });
        if let Some(root) = &tls.root_cert {
            opts = opts.ssl_root_cert(root);
        }
        if let Some((cert, key)) = &tls.client {
            opts = opts.ssl_client_cert(cert).ssl_client_key(key);
        }
        let startup = self.startup_options()?;
        if !startup.is_empty() {
            opts = opts.options(startup);
        }
        Ok(opts)
    }

    /// Returns the tokio-postgres TLS connector for these settings (a plaintext-only one for
    /// `sslmode = disable`). Certificate files are read now, so a missing one fails here,
    /// naming the setting. Used by the hot pool and dedicated connections; callers opening
    /// their own tokio-postgres connections (or sending cancel requests) should use it too.
    pub fn tls_connector(&self) -> Result<PgTls, StorageError> {
        self.tls_settings()?.connector()
    }

    /// The effective TLS settings: config keys over URL parameters, checked.
    pub(crate) fn tls_settings(&self) -> Result<TlsSettings, StorageError> {
        let (_, params) = split_tls_params(self.url.expose());
        TlsSettings::resolve(
            self.sslmode,
            self.sslrootcert.as_deref(),
            self.sslcert.as_deref(),
            self.sslkey.as_deref(),
            &params,
        )
    }

    /// The server settings every connection gets as startup options, in milliseconds:
    /// `statement_timeout` and `idle_in_transaction_session_timeout`, each left out when
    /// disabled (`0s`).
    fn startup_options(&self) -> Result<Vec<(&'static str, String)>, StorageError> {
        let mut out = Vec::with_capacity(2);
        if !self.statement_timeout.is_zero() {
            out.push((
                "statement_timeout",
                self.statement_timeout.as_millis().to_string(),
            ));
        }
        let idle = self.idle_in_transaction_session_timeout;
        if !idle.is_zero() {
            // PostgreSQL takes an int of milliseconds (at most about 24.8 days); below a
            // second it would end ordinary transactions that wait a moment between statements.
            if idle < Duration::from_secs(1) || idle > Duration::from_secs(24 * 24 * 3600) {
                return Err(StorageError::InvalidConfig {
                    reason: format!(
                        "invalid `database.idle-in-transaction-session-timeout` {idle:?}: must be 0s (off) or between 1s and 24 days"
                    ),
                });
            }
            out.push((
                "idle_in_transaction_session_timeout",
                idle.as_millis().to_string(),
            ));
        }
        Ok(out)
    }
}

/// One server of a (possibly multi-host) database URL.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DatabaseHost {
    Tcp {
        host: String,
        port: u16,
    },
    /// A Unix socket directory (`host=/run/postgresql`).
    Unix {
        dir: PathBuf,
        port: u16,
    },
}

impl fmt::Display for DatabaseHost {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Tcp { host, port } => write!(f, "{host}:{port}"),
            Self::Unix { dir, port } => write!(f, "{}:{port}", dir.display()),
        }
    }
}

/// Returns `url` with only the first of a comma-separated host list in its authority.
fn first_host_only(url: &str) -> String {
    let Some(scheme_end) = url.find("://") else {
        return url.to_owned();
    };
    let (scheme, rest) = url.split_at(scheme_end + 3);
    let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    let (userinfo, hosts) = match authority.rfind('@') {
        Some(at) => authority.split_at(at + 1),
        None => ("", authority),
    };
    let first = hosts.split(',').next().unwrap_or(hosts);
    format!("{scheme}{userinfo}{first}{tail}")
}

/// The (undecoded) value of query parameter `key` in `url`, if present.
fn url_param(url: &str, key: &str) -> Option<String> {
    let query = &url[url.find('?')? + 1..];
    query
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .find(|(k, _)| *k == key)
        .map(|(_, v)| v.to_owned())
}

/// Returns `url` without query parameter `key`.
fn remove_url_param(url: &str, key: &str) -> String {
    let Some(q) = url.find('?') else {
        return url.to_owned();
    };
    let kept: Vec<&str> = url[q + 1..]
        .split('&')
        .filter(|pair| !pair.is_empty() && pair.split('=').next() != Some(key))
        .collect();
    if kept.is_empty() {
        url[..q].to_owned()
    } else {
        format!("{}?{}", &url[..q], kept.join("&"))
    }
}

/// Session properties required of the server, see `target-session-attrs` in libpq.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum TargetSessionAttrs {
    /// Accept any server, including a read-only standby.
    Any,
    /// Accept only a server that allows writes (the primary).
    #[default]
    ReadWrite,
}

impl TargetSessionAttrs {
    /// The libpq spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Any => "any",
            Self::ReadWrite => "read-write",
        }
    }
}

/// A PostgreSQL connection URL whose password never leaves the process in text form.
///
/// `Display`, `Debug` and `Serialize` replace the password (in the userinfo part or a
/// `password=` query parameter) with `***`, so logging the config or `--dump-config` is
/// safe. Use [`expose`](Self::expose) only to hand the URL to a driver.
#[derive(Clone, PartialEq, Eq)]
pub struct DatabaseUrl(String);

impl DatabaseUrl {
    /// Wraps `url`.
    pub fn new(url: impl Into<String>) -> Self {
        Self(url.into())
    }

    /// Returns the URL including any password. Do not log the result.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Returns the URL with any password replaced by `***`.
    pub fn redacted(&self) -> String {
        redact_url(&self.0)
    }
}

impl fmt::Display for DatabaseUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted())
    }
}

impl fmt::Debug for DatabaseUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("DatabaseUrl")
            .field(&self.redacted())
            .finish()
    }
}

impl From<String> for DatabaseUrl {
    fn from(url: String) -> Self {
        Self(url)
    }
}

impl From<&str> for DatabaseUrl {
    fn from(url: &str) -> Self {
        Self(url.to_owned())
    }
}

impl Serialize for DatabaseUrl {
    // Serialization is how `--dump-config` prints the config, so it redacts too. A URL
    // without a password (the recommended form) round-trips unchanged.
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.redacted())
    }
}

impl<'de> Deserialize<'de> for DatabaseUrl {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        String::deserialize(deserializer).map(Self)
    }
}

/// Replaces the password in a `postgres://` URL (userinfo and `password=` query parameter)
/// or in a libpq key/value string with `***`.
fn redact_url(url: &str) -> String {
    const MASK: &str = "***";
    let Some(scheme_end) = url.find("://") else {
        return redact_key_value(url);
    };
    let (scheme, rest) = url.split_at(scheme_end + 3);
    let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    let mut out = String::with_capacity(url.len());
    out.push_str(scheme);
    match authority.rfind('@') {
        Some(at) => {
            let userinfo = &authority[..at];
            match userinfo.find(':') {
                Some(colon) => {
                    out.push_str(&userinfo[..colon]);
                    out.push(':');
                    out.push_str(MASK);
                }
                None => out.push_str(userinfo),
            }
            out.push_str(&authority[at..]);
        }
        None => out.push_str(authority),
    }
    match tail.find('?') {
        Some(q) => {
            out.push_str(&tail[..=q]);
            let params: Vec<String> = tail[q + 1..]
                .split('&')
                .map(|pair| match pair.split_once('=') {
                    Some((key, _)) if key.eq_ignore_ascii_case("password") => {
                        format!("{key}={MASK}")
                    }
                    _ => pair.to_owned(),
                })
                .collect();
            out.push_str(&params.join("&"));
        }
        None => out.push_str(tail),
    }
    out
}

/// Redacts `password=value` (value bare or single-quoted) in a libpq key/value string.
fn redact_key_value(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(pos) = find_password_key(rest) {
        let after_key = &rest[pos + "password".len()..];
        let trimmed = after_key.trim_start();
        let Some(value) = trimmed.strip_prefix('=') else {
            out.push_str(&rest[..pos + "password".len()]);
            rest = after_key;
            continue;
        };
        let value = value.trim_start();
        let value_len = if let Some(quoted) = value.strip_prefix('\'') {
            // Skip to the closing quote, honouring backslash escapes.
            let mut escaped = false;
            let mut end = quoted.len();
            for (i, c) in quoted.char_indices() {
                match c {
                    _ if escaped => escaped = false,
                    '\\' => escaped = true,
                    '\'' => {
                        end = i + 1;
                        break;
                    }
                    _ => {}
                }
            }
            1 + end
        } else {
            value.find(char::is_whitespace).unwrap_or(value.len())
        };
        out.push_str(&rest[..pos]);
        out.push_str("password=***");
        rest = &value[value_len..];
    }
    out.push_str(rest);
    out
}

/// Finds `password` at the start of the string or after whitespace.
fn find_password_key(s: &str) -> Option<usize> {
    let mut from = 0;
    while let Some(found) = s[from..].find("password") {
        let pos = from + found;
        if pos == 0 || s[..pos].ends_with(char::is_whitespace) {
            return Some(pos);
        }
        from = pos + "password".len();
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacts_userinfo_password() {
        let url = DatabaseUrl::new("postgres://seq:s3cret@db:5432/seq?sslmode=disable");
        assert_eq!(
            url.to_string(),
            "postgres://seq:***@db:5432/seq?sslmode=disable"
        );
        assert!(!format!("{url:?}").contains("s3cret"));
    }

    #[test]
    fn redacts_query_password() {
        let url = DatabaseUrl::new("postgresql://db/seq?user=seq&password=s3cret&x=1");
        assert_eq!(
            url.to_string(),
            "postgresql://db/seq?user=seq&password=***&x=1"
        );
    }

    #[test]
    fn keeps_url_without_password() {
        let raw = "postgres://postgres@127.0.0.1:5432/postgres";
        assert_eq!(DatabaseUrl::new(raw).to_string(), raw);
    }

    #[test]
    fn redacts_key_value_password() {
        let url = DatabaseUrl::new("host=db password = 'a b\\'c' user=x");
        assert_eq!(url.to_string(), "host=db password=*** user=x");
        let url = DatabaseUrl::new("password=abc host=db");
        assert_eq!(url.to_string(), "password=*** host=db");
    }

    #[test]
    fn toml_round_trip_redacts_and_parses_durations() {
        let cfg: DatabaseConfig = toml::from_str(
            r#"
            url = "postgres://u:pw@h/d"
            pool-max-size = 4
            pool-wait-timeout = "250ms"
            target-session-attrs = "any"
            "#,
        )
        .expect("valid toml");
        assert_eq!(cfg.pool_max_size, 4);
        assert_eq!(cfg.pool_wait_timeout, Duration::from_millis(250));
        assert_eq!(cfg.statement_timeout, Duration::from_secs(10));
        assert_eq!(cfg.target_session_attrs, TargetSessionAttrs::Any);
        let dumped = toml::to_string(&cfg).expect("serializable");
        assert!(
            dumped.contains("url = \"postgres://u:***@h/d\""),
            "{dumped}"
        );
        assert!(!dumped.contains("pw@"), "{dumped}");
        assert!(toml::from_str::<DatabaseConfig>("pool-size = 3").is_err());
    }

    #[test]
    fn tls_keys_round_trip_and_dump_paths_only() {
        let dir = tempfile::tempdir().expect("tempdir");
        let key = dir.path().join("client.key");
        std::fs::write(&key, "-----BEGIN PRIVATE KEY-----\nsecret-key-material\n").expect("write");
        let cfg: DatabaseConfig = toml::from_str(&format!(
            r#"
            url = "postgres://u:pw@db.internal/d?sslmode=require"
            sslmode = "verify-full"
            sslrootcert = "/etc/db/ca.crt"
            sslcert = "/etc/db/client.crt"
            sslkey = "{}"
            "#,
            key.display()
        ))
        .expect("valid toml");
        assert_eq!(cfg.sslmode, Some(SslMode::VerifyFull));
        let dumped = toml::to_string(&cfg).expect("serializable");
        assert!(dumped.contains("sslmode = \"verify-full\""), "{dumped}");
        assert!(
            dumped.contains("sslrootcert = \"/etc/db/ca.crt\""),
            "{dumped}"
        );
        assert!(
            dumped.contains(&format!("sslkey = \"{}\"", key.display())),
            "{dumped}"
        );
        assert!(!dumped.contains("secret-key-material"), "{dumped}");
        assert!(!dumped.contains("pw@"), "{dumped}");
        let err = toml::from_str::<DatabaseConfig>("sslmode = \"verify_full\"")
            .expect_err("unknown sslmode")
            .to_string();
        assert!(err.contains("verify-full"), "{err}");
        // The URL's TLS parameters never reach tokio-postgres, which would reject them.
        let cfg = DatabaseConfig::from_url(
            "postgres://u@h/d?sslmode=verify-ca&sslrootcert=/ca.pem&application_name=x",
        );
        let pg = cfg.tokio_postgres_config().expect("valid config");
        assert_eq!(pg.get_ssl_mode(), tokio_postgres::config::SslMode::Require);
        assert_eq!(pg.get_application_name(), Some("x"));
    }

    #[test]
    fn statement_timeout_is_a_startup_option() {
        let cfg = DatabaseConfig {
            statement_timeout: Duration::from_millis(250),
            ..DatabaseConfig::from_url("postgres://u@h/d?options=-c%20search_path%3Dx")
        };
        let pg = cfg.tokio_postgres_config().expect("valid config");
        assert_eq!(
            pg.get_options(),
            Some(
                "-c search_path=x -c statement_timeout=250 -c idle_in_transaction_session_timeout=10000"
            )
        );
        assert_eq!(pg.get_application_name(), Some("domain-runtime"));
        assert!(pg.get_keepalives());
        assert_eq!(pg.get_tcp_user_timeout(), Some(&Duration::from_secs(5)));
    }

    /// Issue 11 item 2: every pool and dedicated connection of every component gets
    /// `idle_in_transaction_session_timeout`, so a transaction left open by a stalled
    /// caller cannot pin the vacuum horizon (and its locks) for ever.
    #[test]
    fn idle_in_transaction_timeout_is_a_startup_option_item_2() {
        let cfg = DatabaseConfig {
            statement_timeout: Duration::ZERO,
            idle_in_transaction_session_timeout: Duration::from_millis(2500),
            ..DatabaseConfig::from_url("postgres://u@h/d")
        };
        let pg = cfg.tokio_postgres_config().expect("valid config");
        assert_eq!(
            pg.get_options(),
            Some("-c idle_in_transaction_session_timeout=2500")
        );
        let sqlx = format!("{:?}", cfg.sqlx_options().expect("valid config"));
        assert!(
            sqlx.contains("idle_in_transaction_session_timeout=2500"),
            "{sqlx}"
        );
        let off = DatabaseConfig {
            statement_timeout: Duration::ZERO,
            idle_in_transaction_session_timeout: Duration::ZERO,
            ..DatabaseConfig::from_url("postgres://u@h/d")
        };
        assert_eq!(
            off.tokio_postgres_config().expect("valid").get_options(),
            None
        );
        for bad in [
            Duration::from_millis(500),
            Duration::from_secs(25 * 24 * 3600),
        ] {
            let cfg = DatabaseConfig {
                idle_in_transaction_session_timeout: bad,
                ..DatabaseConfig::default()
            };
            let err = cfg
                .tokio_postgres_config()
                .expect_err("out of range")
                .to_string();
            assert!(
                err.contains("database.idle-in-transaction-session-timeout"),
                "{err}"
            );
            assert!(cfg.sqlx_options().is_err());
        }
        let parsed: DatabaseConfig =
            toml::from_str("idle-in-transaction-session-timeout = \"30s\"").expect("valid toml");
        assert_eq!(
            parsed.idle_in_transaction_session_timeout,
            Duration::from_secs(30)
        );
    }

    /// Issue 16: a libpq multi-host URL with `target_session_attrs` (an HA PostgreSQL with
    /// a standby to promote) is accepted by both drivers: tokio-postgres gets every host,
    /// sqlx one set of options per host, in order.
    #[test]
    fn multi_host_urls_reach_both_drivers() {
        let cfg = DatabaseConfig::from_url(
            "postgres://seq:pw@127.0.0.1:5433,db-b.internal:5434/seq?target_session_attrs=read-write&sslmode=disable",
        );
        let pg = cfg.tokio_postgres_config().expect("valid config");
        assert_eq!(
            pg.get_hosts(),
            &[
                tokio_postgres::config::Host::Tcp("127.0.0.1".into()),
                tokio_postgres::config::Host::Tcp("db-b.internal".into()),
            ]
        );
        assert_eq!(pg.get_ports(), &[5433, 5434]);
        assert_eq!(
            pg.get_target_session_attrs(),
            tokio_postgres::config::TargetSessionAttrs::ReadWrite
        );
        assert_eq!(
            cfg.hosts().expect("hosts"),
            vec![
                DatabaseHost::Tcp {
                    host: "127.0.0.1".into(),
                    port: 5433
                },
                DatabaseHost::Tcp {
                    host: "db-b.internal".into(),
                    port: 5434
                },
            ]
        );
        let per_host = cfg.sqlx_options_per_host().expect("sqlx options");
        assert_eq!(per_host.len(), 2);
        assert_eq!(
            (per_host[0].get_host(), per_host[0].get_port()),
            ("127.0.0.1", 5433)
        );
        assert_eq!(
            (per_host[1].get_host(), per_host[1].get_port()),
            ("db-b.internal", 5434)
        );
        for opts in &per_host {
            assert_eq!(opts.get_username(), "seq");
            assert_eq!(opts.get_database(), Some("seq"));
        }
        // In URL form each host has its own port, 5432 when left out (as in libpq).
        let default_port = DatabaseConfig::from_url("postgres://u@a,b:6000/d");
        assert_eq!(
            default_port.hosts().expect("hosts"),
            vec![
                DatabaseHost::Tcp {
                    host: "a".into(),
                    port: 5432
                },
                DatabaseHost::Tcp {
                    host: "b".into(),
                    port: 6000
                },
            ]
        );
        let single = DatabaseConfig::from_url("postgres://u@a/d");
        assert_eq!(
            single.hosts().expect("hosts"),
            vec![DatabaseHost::Tcp {
                host: "a".into(),
                port: 5432
            }]
        );
        assert_eq!(single.sqlx_options_per_host().expect("opts").len(), 1);
        // The URL's target_session_attrs must agree with the config key.
        let disagree = DatabaseConfig::from_url("postgres://u@a:1,b:2/d?target_session_attrs=any");
        let err = disagree
            .tokio_postgres_config()
            .expect_err("disagreeing target_session_attrs")
            .to_string();
        assert!(err.contains("database.target-session-attrs"), "{err}");
        let agree = DatabaseConfig {
            target_session_attrs: TargetSessionAttrs::Any,
            ..disagree
        };
        assert_eq!(agree.sqlx_options_per_host().expect("opts").len(), 2);
        assert_eq!(
            first_host_only("postgres://u:p@a:1,b:2/d?x=1"),
            "postgres://u:p@a:1/d?x=1"
        );
        assert_eq!(
            remove_url_param(
                "postgres://a/d?target_session_attrs=any&x=1",
                "target_session_attrs"
            ),
            "postgres://a/d?x=1"
        );
    }

    #[test]
    fn password_env_overrides_and_must_exist() {
        let cfg = DatabaseConfig {
            password_env: Some("DOMAIN_STORAGE_TEST_SURELY_UNSET_VAR".into()),
            ..DatabaseConfig::default()
        };
        let err = cfg.tokio_postgres_config().expect_err("unset variable");
        assert!(
            err.to_string()
                .contains("DOMAIN_STORAGE_TEST_SURELY_UNSET_VAR")
        );
    }

    #[test]
    fn password_file_is_trimmed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("pw");
        std::fs::write(&path, "hunter2\n").expect("write");
        let cfg = DatabaseConfig {
            password_file: Some(path),
            ..DatabaseConfig::default()
        };
        let pg = cfg.tokio_postgres_config().expect("valid config");
        assert_eq!(pg.get_password(), Some(&b"hunter2"[..]));
    }
}
