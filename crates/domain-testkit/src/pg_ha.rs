//! PostgreSQL high availability and disk faults for tests: a primary with a streaming
//! standby (synchronous or asynchronous), SIGKILL of the primary, promotion of the standby,
//! the libpq multi-host URL components use to follow the primary, and a server whose data
//! directory lives on a small tmpfs that a test can fill.
//!
//! Every server is private to the test (its own directory `/tmp/pgha-<pid>-<n>/`, its own
//! ports) and is built from the same pieces as the shared cluster of [`crate::pg`]
//! (`initdb`/`pg_ctl` through `runuser -u postgres` as root). [`PgHaPair`] and
//! [`PgDiskFull`] are drop guards: servers are stopped (`-m immediate`), tmpfs mounts
//! unmounted and directories removed when they go out of scope, also when the test panics.
//! Mounts are named `pgha-…` (the mount source) so a sweep at start removes those left
//! by a test process that was killed before it could clean up.
//!
//! ```no_run
//! # async fn t() -> anyhow::Result<()> {
//! use domain_testkit::pg_ha::{PgHaPair, Replication};
//! let pair = PgHaPair::start(Replication::Synchronous)?;
//! let db = pair.create_database("sequencer").await?;
//! // db.url = postgres://postgres@127.0.0.1:P1,127.0.0.1:P2/<db>?target_session_attrs=read-write
//! pair.kill_primary()?;
//! pair.promote_standby()?;
//! # Ok(()) }
//! ```

use std::fs;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, anyhow, bail};
use tokio_postgres::NoTls;

use crate::pg::{
    TestDatabase, check_binaries, chown_to_postgres, init_cluster, is_root, pg_bin_dir, pg_command,
    pg_ctl_status_running, postmaster_pid, quote_identifier, run_logged, start_cluster, tail_of,
    unique_database_name,
};

/// `application_name` of the standby's WAL receiver, named in the primary's
/// `synchronous_standby_names`.
pub const STANDBY_NAME: &str = "pgha_standby";

/// Settings every server of this module gets: fast checkpoints are not needed, but the
/// replication slots and senders are, and crash recovery should be quick.
const COMMON_SETTINGS: &str = " -c wal_level=replica -c max_wal_senders=4 -c hot_standby=on \
     -c wal_keep_size=256MB -c checkpoint_timeout=300s";

/// How the standby of a [`PgHaPair`] replicates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Replication {
    /// `synchronous_standby_names = 'pgha_standby'`, `synchronous_commit = on`: a commit
    /// is acknowledged once the standby has flushed its WAL.
    Synchronous,
    /// No synchronous standby: a commit is acknowledged once flushed on the primary; the
    /// standby may lag.
    Asynchronous,
}

/// One private PostgreSQL server of this module.
#[derive(Debug)]
struct Server {
    /// `base/data` is the data directory, `base/server.log` the log.
    base: PathBuf,
    port: u16,
}

impl Server {
    fn data(&self) -> PathBuf {
        self.base.join("data")
    }

    fn admin_url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }
}

/// A primary and a streaming-replication standby made with `pg_basebackup`.
///
/// Dropping it stops both servers (immediate mode) and removes their directories.
#[derive(Debug)]
pub struct PgHaPair {
    dir: PathBuf,
    bin_dir: PathBuf,
    primary: Server,
    standby: Server,
    replication: Replication,
}

impl PgHaPair {
    /// Initialises and starts a primary, takes a base backup of it for the standby
    /// (`pg_basebackup -X stream`), writes the standby's `primary_conninfo` and
    /// `standby.signal`, starts it and waits until the primary reports it streaming (and,
    /// for [`Replication::Synchronous`], as the synchronous standby). Takes a few seconds.
    pub fn start(replication: Replication) -> anyhow::Result<Self> {
        let bin_dir = pg_bin_dir();
        check_binaries(&bin_dir)?;
        for program in ["pg_basebackup"] {
            if !bin_dir.join(program).is_file() {
                bail!("{} is missing", bin_dir.join(program).display());
            }
        }
        sweep_stale();
        let dir = private_dir()?;
        let mut pair = Self {
            primary: Server {
                base: dir.join("primary"),
                port: crate::process::free_port(),
            },
            standby: Server {
                base: dir.join("standby"),
                port: crate::process::free_port(),
            },
            dir,
            bin_dir,
            replication,
        };
        pair.set_up()?;
        Ok(pair)
    }

    fn set_up(&mut self) -> anyhow::Result<()> {
        make_base(&self.primary.base)?;
        make_base(&self.standby.base)?;
        init_cluster(&self.primary.base, &self.bin_dir, None)?;
        let mut primary_settings = COMMON_SETTINGS.to_owned();
        if self.replication == Replication::Synchronous {
            primary_settings.push_str(&format!(
                " -c synchronous_standby_names={STANDBY_NAME} -c synchronous_commit=on"
            ));
        }
        start_cluster(
            &self.primary.base,
            &self.bin_dir,
            self.primary.port,
            &primary_settings,
        )
        .context("cannot start the primary")?;

        // The standby: a base backup streaming the WAL it needs, then our own
        // primary_conninfo (with the application_name the primary waits for).
        let standby_data = self.standby.data();
        fs::create_dir_all(&standby_data)?;
        fs::set_permissions(&standby_data, fs::Permissions::from_mode(0o700))?;
        chown_to_postgres(&standby_data)?;
        let port = self.primary.port.to_string();
        run_logged(
            &self.standby.base,
            pg_command(&self.standby.base, &self.bin_dir, "pg_basebackup").args([
                "-h",
                "127.0.0.1",
                "-p",
                &port,
                "-U",
                "postgres",
                "-D",
                &standby_data.to_string_lossy(),
                "-X",
                "stream",
                "-c",
                "fast",
                "--no-sync",
            ]),
            "pg_basebackup",
        )?;
        let conninfo = format!(
            "\nprimary_conninfo = 'host=127.0.0.1 port={} user=postgres application_name={STANDBY_NAME}'\n",
            self.primary.port
        );
        append(&standby_data.join("postgresql.auto.conf"), &conninfo)?;
        fs::write(standby_data.join("standby.signal"), "")?;
        chown_to_postgres(&standby_data.join("standby.signal"))?;
        // The standby never has synchronous standbys of its own: once promoted it must
        // acknowledge commits alone.
        // A short retry interval: when the primary dies, the startup process waits this long
        // between attempts to get WAL (default 5 s), and a promotion requested meanwhile
        // is only acted on after it.
        let standby_settings = format!("{COMMON_SETTINGS} -c wal_retrieve_retry_interval=100ms");
        start_cluster(
            &self.standby.base,
            &self.bin_dir,
            self.standby.port,
            &standby_settings,
        )
        .context("cannot start the standby")?;
        self.wait_streaming(Duration::from_secs(30))
    }

    /// Waits until the primary lists the standby as streaming (`sync_state = 'sync'` for a
    /// synchronous pair).
    fn wait_streaming(&self, timeout: Duration) -> anyhow::Result<()> {
        let want = match self.replication {
            Replication::Synchronous => "sync",
            Replication::Asynchronous => "async",
        };
        let deadline = Instant::now() + timeout;
        let mut last = String::new();
        while Instant::now() < deadline {
            let out = psql(
                &self.bin_dir,
                self.primary.port,
                &format!(
                    "SELECT state || '/' || sync_state FROM pg_stat_replication \
                     WHERE application_name = '{STANDBY_NAME}'"
                ),
            );
            match out {
                Ok(state) if state == format!("streaming/{want}") => return Ok(()),
                Ok(state) => last = state,
                Err(e) => last = format!("{e:#}"),
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        bail!(
            "the standby is not streaming as {want} after {timeout:?} (last: {last:?}); \
             standby log:\n{}",
            tail_of(&self.standby.base.join("server.log"), 20)
        )
    }

    /// The replication mode the pair was started with.
    pub fn replication(&self) -> Replication {
        self.replication
    }

    /// The primary's port (it listens on 127.0.0.1).
    pub fn primary_port(&self) -> u16 {
        self.primary.port
    }

    /// The standby's port.
    pub fn standby_port(&self) -> u16 {
        self.standby.port
    }

    /// The primary's data directory.
    pub fn primary_data_dir(&self) -> PathBuf {
        self.primary.data()
    }

    /// The multi-host URL of database `name`: both servers, primary first, and
    /// `target_session_attrs=read-write` so a client lands on whichever is writable.
    pub fn multi_host_url(&self, name: &str) -> String {
        format!(
            "postgres://postgres@127.0.0.1:{},127.0.0.1:{}/{name}?target_session_attrs=read-write",
            self.primary.port, self.standby.port
        )
    }

    /// The URL of database `name` on the primary only.
    pub fn primary_url(&self, name: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{name}", self.primary.port)
    }

    /// The URL of database `name` on the standby only.
    pub fn standby_url(&self, name: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{name}", self.standby.port)
    }

    /// Creates a fresh database on the primary (the standby replays it); the returned
    /// URL is the [multi-host URL](Self::multi_host_url).
    pub async fn create_database(&self, prefix: &str) -> anyhow::Result<TestDatabase> {
        let name = create_unique_database(&self.primary.admin_url(), prefix).await?;
        Ok(TestDatabase {
            url: self.multi_host_url(&name),
            name,
        })
    }

    /// SIGKILLs the primary's postmaster and every one of its processes at once, as a
    /// crash of its host would; their sockets close, so clients see the connection reset.
    pub fn kill_primary(&self) -> anyhow::Result<()> {
        kill_server(&self.primary)
    }

    /// Stops (SIGSTOP) the primary's WAL sender for the standby, so the standby falls
    /// behind: with asynchronous replication the primary keeps acknowledging commits the
    /// standby does not have; with synchronous replication commits wait. Returns its pid.
    /// [`kill_primary`](Self::kill_primary) kills it too; [`resume_wal_sender`](Self::resume_wal_sender)
    /// lets it go on.
    pub fn pause_wal_sender(&self) -> anyhow::Result<u32> {
        let pid: u32 = psql(
            &self.bin_dir,
            self.primary.port,
            &format!(
                "SELECT pid FROM pg_stat_replication WHERE application_name = '{STANDBY_NAME}'"
            ),
        )?
        .parse()
        .context("no WAL sender for the standby")?;
        run(Command::new("kill").args(["-STOP", &pid.to_string()]))?;
        Ok(pid)
    }

    /// Resumes a WAL sender stopped by [`pause_wal_sender`](Self::pause_wal_sender).
    pub fn resume_wal_sender(&self, pid: u32) -> anyhow::Result<()> {
        run(Command::new("kill").args(["-CONT", &pid.to_string()]))
    }

    /// Whether the primary's postmaster is alive.
    pub fn primary_running(&self) -> bool {
        postmaster_pid(&self.primary.data()).is_some_and(pid_alive)
    }

    /// Promotes the standby (`pg_ctl promote -w`): it leaves recovery and accepts writes.
    /// Returns how long the promotion took.
    pub fn promote_standby(&self) -> anyhow::Result<Duration> {
        let started = Instant::now();
        run_logged(
            &self.standby.base,
            pg_command(&self.standby.base, &self.bin_dir, "pg_ctl").args([
                "-D",
                &self.standby.data().to_string_lossy(),
                "-w",
                "-t",
                "30",
                "promote",
            ]),
            "pg_ctl promote",
        )?;
        Ok(started.elapsed())
    }

    /// Whether the server at `port` is in recovery (a standby), asked with `psql`.
    pub fn in_recovery(&self, standby: bool) -> anyhow::Result<bool> {
        let port = if standby {
            self.standby.port
        } else {
            self.primary.port
        };
        Ok(psql(&self.bin_dir, port, "SELECT pg_is_in_recovery()")? == "t")
    }

    /// The primary's current WAL position and the standby's replayed one, as reported by
    /// the primary (`pg_stat_replication`), for showing replication lag in reports.
    pub fn replication_positions(&self) -> anyhow::Result<String> {
        psql(
            &self.bin_dir,
            self.primary.port,
            &format!(
                "SELECT pg_current_wal_lsn() || ' sent=' || sent_lsn || ' flushed=' || flush_lsn \
                 || ' replayed=' || replay_lsn FROM pg_stat_replication \
                 WHERE application_name = '{STANDBY_NAME}'"
            ),
        )
    }

    /// The last lines of a server log (`standby = false`: the primary's).
    pub fn log_tail(&self, standby: bool, lines: usize) -> String {
        let server = if standby {
            &self.standby
        } else {
            &self.primary
        };
        tail_of(&server.base.join("server.log"), lines)
    }
}

impl Drop for PgHaPair {
    fn drop(&mut self) {
        for server in [&self.primary, &self.standby] {
            stop_immediate(server, &self.bin_dir);
        }
        remove_dir(&self.dir);
    }
}

/// A single PostgreSQL server whose data directory is a small tmpfs (`pgha-<pid>-<n>`), with
/// the WAL on ordinary disk (`initdb --waldir`), so a test can fill the data volume with a
/// ballast file and free it again.
///
/// With the data volume full, a transaction that needs a new page fails with
/// `could not extend file …: No space left on device` (an ERROR: the server stays up) while
/// the WAL can still be written. Dropping it stops the server, unmounts the tmpfs and
/// removes the directory. Needs root (for `mount`).
#[derive(Debug)]
pub struct PgDiskFull {
    dir: PathBuf,
    bin_dir: PathBuf,
    server: Server,
    mount: Option<PathBuf>,
    ballast: PathBuf,
}

impl PgDiskFull {
    /// Mounts a tmpfs of `size_mib` MiB as the data directory, runs `initdb` into it (WAL
    /// in a separate ordinary directory) and starts the server.
    pub fn start(size_mib: u32) -> anyhow::Result<Self> {
        if !is_root() {
            bail!("PgDiskFull needs root to mount a tmpfs (run the test as root, as CI does)");
        }
        let bin_dir = pg_bin_dir();
        check_binaries(&bin_dir)?;
        sweep_stale();
        let dir = private_dir()?;
        let base = dir.join("server");
        make_base(&base)?;
        let data = base.join("data");
        fs::create_dir_all(&data)?;
        let source = dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "pgha".into());
        let mut disk = Self {
            ballast: data.join("ballast"),
            server: Server {
                base: base.clone(),
                port: crate::process::free_port(),
            },
            dir,
            bin_dir,
            mount: None,
        };
        run(Command::new("mount").args([
            "-t",
            "tmpfs",
            "-o",
            &format!("size={size_mib}m,mode=0700"),
            &source,
            &data.to_string_lossy(),
        ]))
        .context("cannot mount the tmpfs for the data directory")?;
        disk.mount = Some(data.clone());
        chown_to_postgres(&data)?;
        let wal = base.join("wal");
        init_cluster(&base, &disk.bin_dir, Some(&wal))?;
        start_cluster(&base, &disk.bin_dir, disk.server.port, COMMON_SETTINGS)
            .context("cannot start the server on the tmpfs")?;
        Ok(disk)
    }

    /// The admin URL (`postgres` database).
    pub fn admin_url(&self) -> String {
        self.server.admin_url()
    }

    /// The server's port.
    pub fn port(&self) -> u16 {
        self.server.port
    }

    /// Creates a fresh database on the server.
    pub async fn create_database(&self, prefix: &str) -> anyhow::Result<TestDatabase> {
        let name = create_unique_database(&self.server.admin_url(), prefix).await?;
        Ok(TestDatabase {
            url: format!("postgres://postgres@127.0.0.1:{}/{name}", self.server.port),
            name,
        })
    }

    /// Free bytes on the data volume.
    pub fn free_bytes(&self) -> anyhow::Result<u64> {
        let out = Command::new("df")
            .args(["--output=avail", "-B1"])
            .arg(self.server.data())
            .output()
            .context("cannot run df")?;
        let text = String::from_utf8_lossy(&out.stdout);
        text.lines()
            .nth(1)
            .and_then(|l| l.trim().parse().ok())
            .ok_or_else(|| anyhow!("cannot parse df output {text:?}"))
    }

    /// Fills the data volume: writes a ballast file until the write fails with "no space".
    /// Returns its size.
    pub fn fill(&self) -> anyhow::Result<u64> {
        use std::io::Write as _;
        let mut file = fs::File::create(&self.ballast)
            .with_context(|| format!("cannot create {}", self.ballast.display()))?;
        let chunk = vec![0u8; 64 * 1024];
        let mut written = 0u64;
        loop {
            match file.write(&chunk) {
                Ok(0) => break,
                Ok(n) => written += n as u64,
                Err(e) if e.raw_os_error() == Some(28) => break, // ENOSPC
                Err(e) => return Err(e).context("writing the ballast file"),
            }
        }
        // tmpfs may still take a partial page: fill byte-wise to the last one.
        while let Ok(1) = file.write(&chunk[..1]) {
            written += 1;
        }
        Ok(written)
    }

    /// Removes the ballast file: space returns.
    pub fn free(&self) -> anyhow::Result<()> {
        fs::remove_file(&self.ballast)
            .with_context(|| format!("cannot remove {}", self.ballast.display()))
    }

    /// The last lines of the server log.
    pub fn log_tail(&self, lines: usize) -> String {
        tail_of(&self.server.base.join("server.log"), lines)
    }
}

impl Drop for PgDiskFull {
    fn drop(&mut self) {
        stop_immediate(&self.server, &self.bin_dir);
        if let Some(mount) = self.mount.take() {
            unmount(&mount);
        }
        remove_dir(&self.dir);
    }
}

// ---------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------

/// `/tmp/pgha-<pid>-<n>`, created world-traversable (the `postgres` user enters it).
fn private_dir() -> anyhow::Result<PathBuf> {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("pgha-{}-{n}", std::process::id()));
    if dir.exists() {
        remove_dir(&dir);
    }
    fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    fs::set_permissions(&dir, fs::Permissions::from_mode(0o755))?;
    Ok(dir)
}

fn make_base(base: &Path) -> anyhow::Result<()> {
    fs::create_dir_all(base).with_context(|| format!("cannot create {}", base.display()))?;
    fs::set_permissions(base, fs::Permissions::from_mode(0o755))?;
    let log = base.join("server.log");
    fs::write(&log, "")?;
    chown_to_postgres(&log)?;
    Ok(())
}

fn pid_alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
        && fs::read_to_string(format!("/proc/{pid}/stat"))
            .map(|stat| {
                // The state follows the parenthesised command name; Z = zombie.
                stat.rsplit_once(')')
                    .and_then(|(_, rest)| rest.split_whitespace().next())
                    .is_some_and(|state| state != "Z")
            })
            .unwrap_or(false)
}

/// Pids whose parent is `parent`.
fn children_of(parent: u32) -> Vec<u32> {
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            fs::read_to_string(format!("/proc/{pid}/stat"))
                .ok()
                .and_then(|stat| {
                    let (_, rest) = stat.rsplit_once(')')?;
                    rest.split_whitespace().nth(1)?.parse::<u32>().ok()
                })
                == Some(parent)
        })
        .collect()
}

/// SIGKILLs a server's postmaster and all its children in one `kill` call, then waits
/// (up to 10 s) until the postmaster is gone.
fn kill_server(server: &Server) -> anyhow::Result<()> {
    let pid = postmaster_pid(&server.data())
        .ok_or_else(|| anyhow!("no postmaster.pid in {}", server.data().display()))?;
    if !pid_alive(pid) {
        bail!("the postmaster {pid} is not running");
    }
    let mut pids = children_of(pid);
    pids.push(pid);
    let mut cmd = Command::new("kill");
    cmd.arg("-KILL");
    for p in &pids {
        cmd.arg(p.to_string());
    }
    // A child that exited meanwhile makes kill report an error; the postmaster check
    // below is what counts.
    let _ = cmd.stdout(Stdio::null()).stderr(Stdio::null()).status();
    let deadline = Instant::now() + Duration::from_secs(10);
    while pid_alive(pid) || children_of(pid).iter().any(|c| pid_alive(*c)) {
        if Instant::now() > deadline {
            bail!("postmaster {pid} still alive 10 s after SIGKILL");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    Ok(())
}

/// Stops a server (immediate mode) if it runs; after a SIGKILL only the stale pid file is
/// left and nothing runs. Also removes the System V shared memory segment a killed
/// postmaster leaves behind.
fn stop_immediate(server: &Server, bin_dir: &Path) {
    if pg_ctl_status_running(&server.base, bin_dir) {
        let _ = run_logged(
            &server.base,
            pg_command(&server.base, bin_dir, "pg_ctl").args([
                "-D",
                &server.data().to_string_lossy(),
                "-m",
                "immediate",
                "-w",
                "stop",
            ]),
            "pg_ctl stop",
        );
    }
    if let Some(pid) = postmaster_pid(&server.data())
        && pid_alive(pid)
    {
        let _ = Command::new("kill")
            .args(["-KILL", &pid.to_string()])
            .stderr(Stdio::null())
            .status();
    }
    // Line 7 of postmaster.pid: "<key> <shmid>". Removed only if `ipcs` still shows that
    // id with that key and nothing attached, i.e. the segment of this dead server.
    let Some((key, shmid)) = fs::read_to_string(server.data().join("postmaster.pid"))
        .ok()
        .and_then(|text| text.lines().nth(6).map(str::to_owned))
        .and_then(|line| {
            let mut parts = line.split_whitespace();
            Some((parts.next()?.parse::<u64>().ok()?, parts.next()?.to_owned()))
        })
    else {
        return;
    };
    let listed = Command::new("ipcs")
        .arg("-m")
        .output()
        .map(|out| String::from_utf8_lossy(&out.stdout).into_owned())
        .unwrap_or_default();
    let orphan = listed.lines().any(|line| {
        let cols: Vec<&str> = line.split_whitespace().collect();
        cols.len() >= 6
            && cols[1] == shmid
            && u64::from_str_radix(cols[0].trim_start_matches("0x"), 16).ok() == Some(key)
            && cols[5] == "0"
    });
    if orphan {
        let _ = Command::new("ipcrm")
            .args(["-m", &shmid])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

fn unmount(mount: &Path) {
    let ok = Command::new("umount")
        .arg(mount)
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        // Something still holds it (a process being reaped): detach it lazily.
        let _ = Command::new("umount").arg("-l").arg(mount).status();
    }
}

fn remove_dir(dir: &Path) {
    // Never follow into a still-mounted tmpfs of ours.
    for mount in mounts_under(dir) {
        unmount(&mount);
    }
    let _ = fs::remove_dir_all(dir);
}

/// Mount points (from `/proc/mounts`) at or under `dir`.
fn mounts_under(dir: &Path) -> Vec<PathBuf> {
    fs::read_to_string("/proc/mounts")
        .unwrap_or_default()
        .lines()
        .filter_map(|line| line.split_whitespace().nth(1))
        .map(PathBuf::from)
        .filter(|m| m.starts_with(dir))
        .collect()
}

/// Removes what a killed test process left: `/tmp/pgha-<pid>-<n>` directories (and their
/// `pgha-` tmpfs mounts and servers) whose process no longer exists.
fn sweep_stale() {
    static ONCE: Mutex<bool> = Mutex::new(false);
    let mut done = ONCE.lock().unwrap_or_else(|p| p.into_inner());
    if *done {
        return;
    }
    *done = true;
    let tmp = std::env::temp_dir();
    let Ok(entries) = fs::read_dir(&tmp) else {
        return;
    };
    let bin_dir = pg_bin_dir();
    for entry in entries.filter_map(Result::ok) {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(pid) = name
            .strip_prefix("pgha-")
            .and_then(|rest| rest.split('-').next())
            .and_then(|pid| pid.parse::<u32>().ok())
        else {
            continue;
        };
        if pid_alive(pid) {
            continue;
        }
        let dir = entry.path();
        for sub in ["primary", "standby", "server"] {
            let base = dir.join(sub);
            if base.join("data").exists() {
                stop_immediate(&Server { base, port: 0 }, &bin_dir);
            }
        }
        remove_dir(&dir);
    }
}

fn append(path: &Path, text: &str) -> anyhow::Result<()> {
    use std::io::Write as _;
    let mut file = fs::OpenOptions::new()
        .append(true)
        .open(path)
        .with_context(|| format!("cannot open {}", path.display()))?;
    file.write_all(text.as_bytes())?;
    Ok(())
}

fn run(cmd: &mut Command) -> anyhow::Result<()> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("cannot run {cmd:?}"))?;
    crate::process::ensure_success(&out, &format!("{cmd:?}"))
}

/// Runs one query with `psql` (tuples only, unaligned) and returns its trimmed output.
fn psql(bin_dir: &Path, port: u16, sql: &str) -> anyhow::Result<String> {
    let psql = bin_dir.join("psql");
    let psql = if psql.is_file() {
        psql
    } else {
        PathBuf::from("psql")
    };
    let out = Command::new(psql)
        .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-U", "postgres"])
        .args([
            "-d",
            "postgres",
            "-XAtq",
            "-v",
            "ON_ERROR_STOP=1",
            "-c",
            sql,
        ])
        .env("PGCONNECT_TIMEOUT", "5")
        .stdin(Stdio::null())
        .output()
        .context("cannot run psql")?;
    if !out.status.success() {
        bail!(
            "psql on port {port} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// Creates a database named `<prefix>_<unique suffix>` on the server of `admin_url`;
/// returns its name.
async fn create_unique_database(admin_url: &str, prefix: &str) -> anyhow::Result<String> {
    let name = unique_database_name(prefix);
    connect(admin_url)
        .await?
        .batch_execute(&format!("CREATE DATABASE {}", quote_identifier(&name)))
        .await
        .with_context(|| format!("CREATE DATABASE {name} failed"))?;
    Ok(name)
}

async fn connect(url: &str) -> anyhow::Result<tokio_postgres::Client> {
    let (client, connection) =
        tokio::time::timeout(Duration::from_secs(10), tokio_postgres::connect(url, NoTls))
            .await
            .map_err(|_| anyhow!("connecting to {url} timed out"))?
            .with_context(|| format!("cannot connect to {url}"))?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(client)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn multi_host_url_lists_primary_first() {
        let pair = PgHaPair {
            dir: PathBuf::from("/nonexistent-pgha-test"),
            bin_dir: PathBuf::from("/nonexistent"),
            primary: Server {
                base: PathBuf::from("/nonexistent-pgha-test/primary"),
                port: 5001,
            },
            standby: Server {
                base: PathBuf::from("/nonexistent-pgha-test/standby"),
                port: 5002,
            },
            replication: Replication::Asynchronous,
        };
        assert_eq!(
            pair.multi_host_url("db"),
            "postgres://postgres@127.0.0.1:5001,127.0.0.1:5002/db?target_session_attrs=read-write"
        );
        // Dropping it must not fail on directories that do not exist.
        drop(pair);
    }
}
