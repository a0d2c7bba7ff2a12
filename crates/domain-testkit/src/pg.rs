//! A throwaway PostgreSQL 15 cluster shared by every test process of a run, and a fresh
//! database per test.
//!
//! # Where the server comes from
//!
//! - `DATABASE_URL` set: that server is used as is (an admin URL; the user must be allowed
//!   to `CREATE DATABASE`). Nothing is started or stopped.
//! - otherwise a cluster is created in a well-known directory, by default
//!   `/tmp/domain-testkit-pg-<uid>/` (override with `DOMAIN_TEST_PG_DIR`):
//!
//!   | path         | contents                                                      |
//!   |--------------|---------------------------------------------------------------|
//!   | `lock`       | `flock`ed while a process checks, initialises or starts it    |
//!   | `data/`      | the data directory, also the Unix socket directory            |
//!   | `port`       | the TCP port the server listens on (127.0.0.1)                |
//!   | `server.log` | the server log                                                |
//!   | `pg_ctl.log` | output of our `initdb` / `pg_ctl` invocations                 |
//!
//!   Every test process (nextest runs one per test) takes the lock, reuses the server if
//!   `pg_isready` says it answers, starts it if the data directory exists but the server is
//!   down, and runs `initdb` otherwise. The server outlives the test processes, so later
//!   runs start instantly. `.ci/run` stops it at the end of a CI run; locally, call
//!   [`stop_shared`] or run
//!   `runuser -u postgres -- /usr/lib/postgresql/15/bin/pg_ctl -D /tmp/domain-testkit-pg-0/data stop`.
//!
//! Binaries are taken from `/usr/lib/postgresql/15/bin` (override with `PG_BIN_DIR`). As
//! root, `initdb` and `pg_ctl` run through `runuser -u postgres --`, since PostgreSQL
//! refuses to run as root (there is no `sudo` here).
//!
//! # Example
//!
//! ```no_run
//! # async fn t() {
//! use domain_testkit::pg::PgCluster;
//! let db = PgCluster::shared().create_database("sequencer").await;
//! // db.url is usable by sqlx and tokio-postgres
//! # }
//! ```

use std::fs::{self, File};
use std::io::{Read as _, Seek as _, SeekFrom};
use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context as _, anyhow, bail};
use tokio_postgres::NoTls;

/// Default location of the PostgreSQL 15 binaries on Debian/Ubuntu.
pub const DEFAULT_PG_BIN_DIR: &str = "/usr/lib/postgresql/15/bin";

/// How long a single `CREATE DATABASE` / `DROP DATABASE` round trip may take.
const ADMIN_TIMEOUT: Duration = Duration::from_secs(30);

/// A PostgreSQL server tests can create databases on.
#[derive(Debug)]
pub struct PgCluster {
    /// URL of the maintenance database (`postgres`), with credentials.
    admin_url: String,
    /// Present when the cluster is the testkit-managed one.
    managed: Option<ManagedCluster>,
}

#[derive(Debug, Clone)]
struct ManagedCluster {
    base: PathBuf,
    bin_dir: PathBuf,
    port: u16,
}

/// Extra settings for [`PgCluster::start_private_with`].
#[derive(Debug, Clone, Default)]
pub struct ClusterOptions {
    /// Server settings passed as `-c name=value` (no whitespace or quotes in either).
    pub settings: Vec<(String, String)>,
    /// Serve TLS with this certificate and key (`ssl = on`).
    pub tls: Option<crate::certs::CertifiedKeyPem>,
}

/// A database created for one test.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TestDatabase {
    /// The database name, unique across processes.
    pub name: String,
    /// `postgres://postgres@127.0.0.1:<port>/<name>` (or the `DATABASE_URL` server with
    /// this database), usable by sqlx and tokio-postgres.
    pub url: String,
}

impl PgCluster {
    /// Returns the cluster shared by this test run, starting or reusing it on first call.
    ///
    /// Blocking on first use (it may run `initdb`, which takes a few seconds); afterwards
    /// free. Safe to call from async tests.
    ///
    /// # Panics
    ///
    /// Panics with instructions when no server can be provided, e.g. the PostgreSQL 15
    /// binaries are missing and `DATABASE_URL` is unset.
    pub fn shared() -> &'static PgCluster {
        static SHARED: OnceLock<PgCluster> = OnceLock::new();
        SHARED.get_or_init(|| match Self::from_env_or_start() {
            Ok(cluster) => cluster,
            Err(e) => panic!("cannot provide a PostgreSQL server for tests: {e:#}"),
        })
    }

    fn from_env_or_start() -> anyhow::Result<Self> {
        match std::env::var("DATABASE_URL") {
            Ok(url) if !url.trim().is_empty() => Self::from_url(url.trim()),
            _ => Self::start_shared(),
        }
    }

    /// Uses an existing server; `admin_url` must be a `postgres://` URL whose user may
    /// create databases. Nothing is started or stopped.
    pub fn from_url(admin_url: &str) -> anyhow::Result<Self> {
        // Validate early that per-test URLs can be derived from it.
        with_database(admin_url, "postgres")
            .with_context(|| format!("DATABASE_URL {} is unusable", redact(admin_url)))?;
        Ok(Self {
            admin_url: admin_url.to_owned(),
            managed: None,
        })
    }

    /// Starts (or reuses) the testkit-managed cluster in [`shared_dir`].
    fn start_shared() -> anyhow::Result<Self> {
        let bin_dir = pg_bin_dir();
        check_binaries(&bin_dir)?;
        let base = shared_dir()?;
        prepare_base_dir(&base)?;
        let lock = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(base.join("lock"))
            .with_context(|| format!("failed to open {}", base.join("lock").display()))?;
        // Serialises test processes: only one of them initialises or starts the server.
        lock.lock()
            .with_context(|| format!("failed to lock {}", base.join("lock").display()))?;
        let port = ensure_running(&base, &bin_dir)?;
        drop(lock);
        Ok(Self {
            admin_url: format!("postgres://postgres@127.0.0.1:{port}/postgres"),
            managed: Some(ManagedCluster {
                base,
                bin_dir,
                port,
            }),
        })
    }

    /// The cluster this process started under `base`, listening on 127.0.0.1:`port`.
    fn managed(base: &Path, bin_dir: PathBuf, port: u16) -> Self {
        Self {
            admin_url: format!("postgres://postgres@127.0.0.1:{port}/postgres"),
            managed: Some(ManagedCluster {
                base: base.to_path_buf(),
                bin_dir,
                port,
            }),
        }
    }

    /// Starts a private cluster in `base` (created if missing; e.g. a `devnet` run's
    /// directory), independent of the shared test cluster. The caller stops it with
    /// [`stop`](Self::stop).
    pub fn start_private(base: &Path) -> anyhow::Result<Self> {
        let bin_dir = pg_bin_dir();
        check_binaries(&bin_dir)?;
        prepare_base_dir(base)?;
        let port = ensure_running(base, &bin_dir)?;
        Ok(Self::managed(base, bin_dir, port))
    }

    /// Starts a private cluster like [`start_private`](Self::start_private), with extra
    /// server settings and optionally TLS (`ssl = on` with the given certificate, e.g. one
    /// from [`TestPki::issue_server`](crate::certs::TestPki::issue_server)). `pg_hba.conf`
    /// stays initdb's (trust, `host` lines), so the server accepts TLS and plaintext
    /// connections alike; clients choose with `sslmode`.
    ///
    /// The options only take effect when the server is started by this call: pass a fresh
    /// `base`. The caller stops it with [`stop`](Self::stop).
    pub fn start_private_with(base: &Path, options: &ClusterOptions) -> anyhow::Result<Self> {
        let bin_dir = pg_bin_dir();
        check_binaries(&bin_dir)?;
        prepare_base_dir(base)?;
        let mut extra = String::new();
        for (name, value) in &options.settings {
            if name.is_empty()
                || value.is_empty()
                || name
                    .chars()
                    .chain(value.chars())
                    .any(|c| c.is_whitespace() || c == '\'')
            {
                bail!(
                    "server setting {name}={value} is not usable on the pg_ctl command line \
                     (empty, or contains whitespace or quotes)"
                );
            }
            extra.push_str(&format!(" -c {name}={value}"));
        }
        if let Some(tls) = &options.tls {
            let cert = base.join("server.crt");
            let key = base.join("server.key");
            fs::write(&cert, &tls.cert_pem)
                .with_context(|| format!("failed to write {}", cert.display()))?;
            fs::write(&key, &tls.key_pem)
                .with_context(|| format!("failed to write {}", key.display()))?;
            // PostgreSQL refuses a key file that others can read.
            fs::set_permissions(&key, fs::Permissions::from_mode(0o600))?;
            chown_to_postgres(&cert)?;
            chown_to_postgres(&key)?;
            extra.push_str(&format!(
                " -c ssl=on -c ssl_cert_file={} -c ssl_key_file={}",
                cert.display(),
                key.display()
            ));
        }
        let port = ensure_running_with(base, &bin_dir, &extra)?;
        Ok(Self::managed(base, bin_dir, port))
    }

    /// Returns the URL of the maintenance database `postgres`.
    pub fn admin_url(&self) -> &str {
        &self.admin_url
    }

    /// Returns the data directory when the cluster is testkit-managed.
    pub fn data_dir(&self) -> Option<PathBuf> {
        self.managed.as_ref().map(|m| m.base.join("data"))
    }

    /// Returns the port when the cluster is testkit-managed.
    pub fn port(&self) -> Option<u16> {
        self.managed.as_ref().map(|m| m.port)
    }

    /// Returns the URL of database `name` on this server.
    pub fn database_url(&self, name: &str) -> String {
        // `from_url` validated the admin URL, and managed URLs are well-formed.
        with_database(&self.admin_url, name).unwrap_or_else(|e| panic!("{e:#}"))
    }

    /// Creates a fresh, uniquely named database (`<prefix>_<pid>_<n>_<nonce>`).
    ///
    /// The database is not dropped automatically; see [`drop_database`](Self::drop_database).
    ///
    /// # Panics
    ///
    /// Panics if the server refuses, with the reason.
    pub async fn create_database(&self, prefix: &str) -> TestDatabase {
        match self.try_create_database(prefix).await {
            Ok(db) => db,
            Err(e) => panic!(
                "failed to create a test database on {}: {e:#}",
                redact(&self.admin_url)
            ),
        }
    }

    /// Creates a fresh, uniquely named database, returning errors instead of panicking.
    pub async fn try_create_database(&self, prefix: &str) -> anyhow::Result<TestDatabase> {
        let name = unique_database_name(prefix);
        let client = self.admin_client().await?;
        let sql = format!("CREATE DATABASE {}", quote_identifier(&name));
        let mut attempt = 0;
        loop {
            attempt += 1;
            match tokio::time::timeout(ADMIN_TIMEOUT, client.batch_execute(&sql)).await {
                Ok(Ok(())) => break,
                // "source database template1 is being accessed by other users": someone
                // is briefly connected to template1; retry.
                Ok(Err(e))
                    if attempt < 10
                        && e.code() == Some(&tokio_postgres::error::SqlState::OBJECT_IN_USE) =>
                {
                    tokio::time::sleep(Duration::from_millis(50 * attempt)).await;
                }
                Ok(Err(e)) => return Err(e).context(format!("CREATE DATABASE {name} failed")),
                Err(_) => bail!("CREATE DATABASE {name} did not finish within {ADMIN_TIMEOUT:?}"),
            }
        }
        Ok(TestDatabase {
            url: with_database(&self.admin_url, &name)?,
            name,
        })
    }

    /// Drops `db`, disconnecting any sessions still using it.
    pub async fn drop_database(&self, db: &TestDatabase) -> anyhow::Result<()> {
        let client = self.admin_client().await?;
        let sql = format!(
            "DROP DATABASE IF EXISTS {} WITH (FORCE)",
            quote_identifier(&db.name)
        );
        tokio::time::timeout(ADMIN_TIMEOUT, client.batch_execute(&sql))
            .await
            .map_err(|_| anyhow!("DROP DATABASE {} timed out", db.name))?
            .with_context(|| format!("DROP DATABASE {} failed", db.name))
    }

    /// Stops the testkit-managed server (`pg_ctl stop -m fast`). Other test processes still
    /// using it will fail, so only call this at the very end of a run; a no-op for a
    /// `DATABASE_URL` server.
    pub fn stop(&self) -> anyhow::Result<()> {
        match &self.managed {
            Some(m) => stop_cluster(&m.base, &m.bin_dir),
            None => Ok(()),
        }
    }

    /// Restarts a private server (one from [`start_private`](Self::start_private) or
    /// [`start_private_with`](Self::start_private_with)) with `pg_ctl restart -m <mode>`
    /// (`smart`, `fast` or `immediate`), waiting until it accepts connections again; the
    /// server keeps its port and settings (`pg_ctl` reuses `postmaster.opts`). Blocking.
    /// Refuses the shared test cluster, which other test processes are using, and a
    /// `DATABASE_URL` server.
    pub fn restart(&self, mode: &str) -> anyhow::Result<()> {
        let m = self.private_cluster("restart")?;
        if !["smart", "fast", "immediate"].contains(&mode) {
            bail!("unknown shutdown mode {mode:?} (smart, fast or immediate)");
        }
        let data_arg = m.base.join("data").to_string_lossy().into_owned();
        let log = m.base.join("server.log").to_string_lossy().into_owned();
        run_logged(
            &m.base,
            pg_command(&m.base, &m.bin_dir, "pg_ctl").args([
                "-D", &data_arg, "-l", &log, "-m", mode, "-t", "60", "-w", "restart",
            ]),
            "pg_ctl restart",
        )
        .with_context(|| {
            format!(
                "server log tail:\n{}",
                tail_of(&m.base.join("server.log"), 20)
            )
        })?;
        if !is_ready(&m.bin_dir, m.port) {
            bail!(
                "PostgreSQL restarted but does not answer on 127.0.0.1:{}",
                m.port
            );
        }
        Ok(())
    }

    /// The pid of a private server's postmaster (first line of `postmaster.pid`), for
    /// tests that signal it; `None` when it is not running. Refuses the shared cluster.
    pub fn postmaster_pid(&self) -> anyhow::Result<Option<u32>> {
        let m = self.private_cluster("signal")?;
        let path = m.base.join("data").join("postmaster.pid");
        match fs::read_to_string(&path) {
            Ok(text) => Ok(text.lines().next().and_then(|l| l.trim().parse().ok())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
        }
    }

    /// The server log of a testkit-managed cluster.
    pub fn server_log(&self) -> Option<PathBuf> {
        self.managed.as_ref().map(|m| m.base.join("server.log"))
    }

    fn private_cluster(&self, what: &str) -> anyhow::Result<&ManagedCluster> {
        let Some(m) = &self.managed else {
            bail!(
                "cannot {what} a DATABASE_URL server: tests only do that to their own private cluster"
            );
        };
        if shared_dir().is_ok_and(|d| d == m.base) {
            bail!(
                "refusing to {what} the shared test cluster in {}: other test processes use it; \
                 start a private one with PgCluster::start_private_with",
                m.base.display()
            );
        }
        Ok(m)
    }

    async fn admin_client(&self) -> anyhow::Result<tokio_postgres::Client> {
        let connect = tokio_postgres::connect(&self.admin_url, NoTls);
        let (client, connection) = tokio::time::timeout(ADMIN_TIMEOUT, connect)
            .await
            .map_err(|_| anyhow!("connecting to {} timed out", redact(&self.admin_url)))?
            .with_context(|| format!("failed to connect to {}", redact(&self.admin_url)))?;
        tokio::spawn(async move {
            // Errors here surface as failed queries on the client.
            let _ = connection.await;
        });
        Ok(client)
    }
}

/// Returns the directory of the shared cluster: `DOMAIN_TEST_PG_DIR`, else
/// `/tmp/domain-testkit-pg-<uid>`.
pub fn shared_dir() -> anyhow::Result<PathBuf> {
    if let Some(dir) = std::env::var_os("DOMAIN_TEST_PG_DIR") {
        return Ok(PathBuf::from(dir));
    }
    Ok(std::env::temp_dir().join(format!("domain-testkit-pg-{}", current_uid()?)))
}

/// Stops the shared cluster in [`shared_dir`] if it is running, without starting it first.
pub fn stop_shared() -> anyhow::Result<()> {
    let base = shared_dir()?;
    if !base.join("data").join("PG_VERSION").exists() {
        return Ok(());
    }
    let lock = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(base.join("lock"))?;
    lock.lock()?;
    stop_cluster(&base, &pg_bin_dir())
}

pub(crate) fn pg_bin_dir() -> PathBuf {
    std::env::var_os("PG_BIN_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(DEFAULT_PG_BIN_DIR))
}

pub(crate) fn check_binaries(bin_dir: &Path) -> anyhow::Result<()> {
    for program in ["initdb", "pg_ctl", "pg_isready", "postgres"] {
        if !bin_dir.join(program).is_file() {
            bail!(
                "PostgreSQL 15 binaries not found at {} (missing {program}); install \
                 postgresql-15, set PG_BIN_DIR to the directory holding initdb and pg_ctl, \
                 or set DATABASE_URL to an existing server's admin URL",
                bin_dir.display()
            );
        }
    }
    Ok(())
}

fn current_uid() -> anyhow::Result<u32> {
    // The owner of /proc/self is the process's effective uid; no libc needed.
    Ok(fs::metadata("/proc/self")
        .context("cannot read /proc/self to determine the current uid")?
        .uid())
}

pub(crate) fn is_root() -> bool {
    current_uid().map(|uid| uid == 0).unwrap_or(false)
}

/// Creates the base directory, world-traversable so the `postgres` user can reach `data/`.
fn prepare_base_dir(base: &Path) -> anyhow::Result<()> {
    let text = base.to_string_lossy();
    if text.chars().any(char::is_whitespace) {
        bail!(
            "the shared PostgreSQL directory {text} contains whitespace; set \
             DOMAIN_TEST_PG_DIR to a path without spaces"
        );
    }
    fs::create_dir_all(base).with_context(|| format!("failed to create {text}"))?;
    let meta = fs::metadata(base)?;
    let uid = current_uid()?;
    if meta.uid() != uid {
        bail!(
            "{text} is owned by uid {} instead of {uid}; remove it or set DOMAIN_TEST_PG_DIR",
            meta.uid()
        );
    }
    fs::set_permissions(base, fs::Permissions::from_mode(0o755))
        .with_context(|| format!("failed to chmod {text}"))?;
    Ok(())
}

/// Makes sure the cluster in `base` is initialised and answering; returns its port.
/// Must be called with the lock held.
fn ensure_running(base: &Path, bin_dir: &Path) -> anyhow::Result<u16> {
    ensure_running_with(base, bin_dir, "")
}

/// [`ensure_running`] with `extra` appended to the server's command-line options.
fn ensure_running_with(base: &Path, bin_dir: &Path, extra: &str) -> anyhow::Result<u16> {
    let data = base.join("data");
    let stored_port = fs::read_to_string(base.join("port"))
        .ok()
        .and_then(|s| s.trim().parse::<u16>().ok());

    if data.join("PG_VERSION").exists() {
        if let Some(port) = stored_port
            && is_ready(bin_dir, port)
        {
            return Ok(port);
        }
        // Initialised but down (machine rebooted, server killed) or hung: restart it.
        if pg_ctl_status_running(base, bin_dir) {
            let _ = stop_cluster(base, bin_dir);
        }
        let first_port = stored_port.filter(|p| port_is_free(*p));
        for port in [first_port, None] {
            let port = match port {
                Some(p) => p,
                None => crate::process::free_port(),
            };
            if start_cluster(base, bin_dir, port, extra).is_ok() {
                write_port(base, port)?;
                return Ok(port);
            }
        }
        // The data directory is unusable (e.g. left half-written); it only ever holds
        // throwaway test databases, so start over.
        eprintln!(
            "domain-testkit: cannot start PostgreSQL in {}, re-initialising it; server log \
             tail:\n{}",
            data.display(),
            tail_of(&base.join("server.log"), 20)
        );
    }

    if data.exists() {
        fs::remove_dir_all(&data)
            .with_context(|| format!("failed to remove stale {}", data.display()))?;
    }
    init_cluster(base, bin_dir, None)?;
    let port = crate::process::free_port();
    start_cluster(base, bin_dir, port, extra)?;
    write_port(base, port)?;
    Ok(port)
}

/// The postmaster's pid from `data/postmaster.pid` (its first line), if the file is there.
pub(crate) fn postmaster_pid(data: &Path) -> Option<u32> {
    fs::read_to_string(data.join("postmaster.pid"))
        .ok()?
        .lines()
        .next()?
        .trim()
        .parse()
        .ok()
}

/// `initdb` into `base/data` (which may be a mount point), the WAL in `waldir` if given.
pub(crate) fn init_cluster(
    base: &Path,
    bin_dir: &Path,
    waldir: Option<&Path>,
) -> anyhow::Result<()> {
    let data = base.join("data");
    fs::create_dir_all(&data)?;
    chown_to_postgres(&data)?;
    let data_arg = data.to_string_lossy().into_owned();
    let mut cmd = pg_command(base, bin_dir, "initdb");
    cmd.args([
        "-D",
        &data_arg,
        "-U",
        "postgres",
        "--auth=trust",
        "-N",
        "-E",
        "UTF8",
        "--locale=C",
    ]);
    if let Some(wal) = waldir {
        fs::create_dir_all(wal)?;
        chown_to_postgres(wal)?;
        cmd.arg(format!("--waldir={}", wal.display()));
    }
    run_logged(base, &mut cmd, "initdb")
}

pub(crate) fn start_cluster(
    base: &Path,
    bin_dir: &Path,
    port: u16,
    extra: &str,
) -> anyhow::Result<()> {
    let data = base.join("data");
    let log = base.join("server.log");
    if !log.exists() {
        File::create(&log)?;
    }
    chown_to_postgres(&log)?;
    let data_arg = data.to_string_lossy().into_owned();
    let options = format!(
        "-c listen_addresses=127.0.0.1 -c port={port} -c unix_socket_directories={data_arg} \
         -c max_connections=300 -c fsync=on{extra}"
    );
    run_logged(
        base,
        pg_command(base, bin_dir, "pg_ctl").args([
            "-D",
            &data_arg,
            "-l",
            &log.to_string_lossy(),
            "-o",
            &options,
            "-t",
            "60",
            "-w",
            "start",
        ]),
        "pg_ctl start",
    )
    .with_context(|| format!("server log tail:\n{}", tail_of(&log, 20)))?;
    if !is_ready(bin_dir, port) {
        bail!("PostgreSQL started but does not answer on 127.0.0.1:{port}");
    }
    Ok(())
}

pub(crate) fn stop_cluster(base: &Path, bin_dir: &Path) -> anyhow::Result<()> {
    let data_arg = base.join("data").to_string_lossy().into_owned();
    if !pg_ctl_status_running(base, bin_dir) {
        return Ok(());
    }
    run_logged(
        base,
        pg_command(base, bin_dir, "pg_ctl").args(["-D", &data_arg, "-m", "fast", "-w", "stop"]),
        "pg_ctl stop",
    )
}

pub(crate) fn pg_ctl_status_running(base: &Path, bin_dir: &Path) -> bool {
    let data_arg = base.join("data").to_string_lossy().into_owned();
    pg_command(base, bin_dir, "pg_ctl")
        .args(["-D", &data_arg, "status"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

pub(crate) fn is_ready(bin_dir: &Path, port: u16) -> bool {
    Command::new(bin_dir.join("pg_isready"))
        .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-U", "postgres"])
        .args(["-d", "postgres", "-t", "5"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

fn port_is_free(port: u16) -> bool {
    std::net::TcpListener::bind(("127.0.0.1", port)).is_ok()
}

fn write_port(base: &Path, port: u16) -> anyhow::Result<()> {
    let tmp = base.join("port.tmp");
    fs::write(&tmp, format!("{port}\n"))?;
    fs::rename(&tmp, base.join("port"))?;
    Ok(())
}

/// Returns a command running `program` from `bin_dir` as the `postgres` OS user when we are
/// root (PostgreSQL refuses to run as root), directly otherwise.
pub(crate) fn pg_command(base: &Path, bin_dir: &Path, program: &str) -> Command {
    let path = bin_dir.join(program);
    let mut cmd = if is_root() {
        let mut cmd = Command::new("runuser");
        cmd.args(["-u", "postgres", "--"]).arg(path);
        cmd
    } else {
        Command::new(path)
    };
    // The postgres user may not be able to enter our working directory.
    cmd.current_dir(base).stdin(Stdio::null());
    cmd
}

pub(crate) fn chown_to_postgres(path: &Path) -> anyhow::Result<()> {
    if !is_root() {
        return Ok(());
    }
    let status = Command::new("chown")
        .arg("postgres:postgres")
        .arg(path)
        .status()
        .context("failed to run chown")?;
    if !status.success() {
        bail!(
            "chown postgres:postgres {} failed ({status}); running as root requires a \
             `postgres` user (install postgresql-15) or set DATABASE_URL",
            path.display()
        );
    }
    Ok(())
}

/// Runs `cmd` with output appended to `<base>/pg_ctl.log` (a file, not a pipe, so a
/// daemonised server can never hold our pipe open); on failure the error carries the tail.
pub(crate) fn run_logged(base: &Path, cmd: &mut Command, what: &str) -> anyhow::Result<()> {
    let log_path = base.join("pg_ctl.log");
    let mut log = File::options()
        .create(true)
        .append(true)
        .open(&log_path)
        .with_context(|| format!("failed to open {}", log_path.display()))?;
    let start = log.seek(SeekFrom::End(0)).unwrap_or(0);
    let status = cmd
        .stdout(log.try_clone()?)
        .stderr(log)
        .status()
        .with_context(|| format!("failed to run {what} ({cmd:?})"))?;
    if status.success() {
        return Ok(());
    }
    let mut output = String::new();
    if let Ok(mut f) = File::open(&log_path)
        && f.seek(SeekFrom::Start(start)).is_ok()
    {
        let _ = f.read_to_string(&mut output);
    }
    bail!("{what} failed ({status}): {cmd:?}\n{}", output.trim_end())
}

pub(crate) fn tail_of(path: &Path, lines: usize) -> String {
    match fs::read_to_string(path) {
        Ok(text) => {
            let all: Vec<&str> = text.lines().collect();
            all[all.len().saturating_sub(lines)..].join("\n")
        }
        Err(e) => format!("(cannot read {}: {e})", path.display()),
    }
}

/// Returns `<prefix>_<pid>_<n>_<nonce>`, lowercase, at most 63 bytes.
pub(crate) fn unique_database_name(prefix: &str) -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut clean: String = prefix
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '_'
            }
        })
        .take(30)
        .collect();
    if clean.is_empty() || clean.starts_with(|c: char| c.is_ascii_digit()) {
        clean.insert_str(0, "t_");
    }
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    #[expect(clippy::disallowed_methods, reason = "a nonce, not a timestamp")]
    let nonce = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!("{clean}_{}_{n}_{nonce:x}", std::process::id())
}

pub(crate) fn quote_identifier(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// Returns `url` pointing at database `db`, keeping credentials and query parameters.
fn with_database(url: &str, db: &str) -> anyhow::Result<String> {
    let Some(scheme_end) = url.find("://") else {
        bail!("expected a postgres:// URL, e.g. postgres://postgres@127.0.0.1:5432/postgres");
    };
    let scheme = &url[..scheme_end];
    if scheme != "postgres" && scheme != "postgresql" {
        bail!("expected a postgres:// URL, found scheme {scheme}");
    }
    let rest = &url[scheme_end + 3..];
    let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
    let authority = &rest[..authority_end];
    let query = rest[authority_end..]
        .find('?')
        .map(|q| &rest[authority_end + q..])
        .unwrap_or("");
    Ok(format!("{scheme}://{authority}/{db}{query}"))
}

/// Masks the password of a `postgres://user:password@host` URL.
fn redact(url: &str) -> String {
    let Some(scheme_end) = url.find("://") else {
        return "(unparseable url)".to_owned();
    };
    let rest = &url[scheme_end + 3..];
    let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
    let authority = &rest[..authority_end];
    match authority.rfind('@') {
        Some(at) => match authority[..at].find(':') {
            Some(colon) => format!(
                "{}{}:***{}{}",
                &url[..scheme_end + 3],
                &authority[..colon],
                &authority[at..],
                &rest[authority_end..]
            ),
            None => url.to_owned(),
        },
        None => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn database_urls_keep_credentials_and_query() {
        assert_eq!(
            with_database("postgres://u:p@h:5/postgres?sslmode=disable", "x").expect("url"),
            "postgres://u:p@h:5/x?sslmode=disable"
        );
        assert_eq!(
            with_database("postgresql://h", "x").expect("url"),
            "postgresql://h/x"
        );
        assert!(with_database("host=h user=u", "x").is_err());
    }

    #[test]
    fn redacts_passwords() {
        assert_eq!(redact("postgres://u:p@h/db"), "postgres://u:***@h/db");
        assert_eq!(redact("postgres://u@h/db"), "postgres://u@h/db");
    }

    #[test]
    fn database_names_are_valid_and_unique() {
        let a = unique_database_name("Storage-Test!with a very long prefix that goes on");
        let b = unique_database_name("Storage-Test!with a very long prefix that goes on");
        assert_ne!(a, b);
        assert!(a.len() <= 63, "{a}");
        assert!(
            a.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        );
        assert!(unique_database_name("").starts_with("t__"));
    }
}
