//! A harness that runs the real workspace binaries (`sequencer`, `mediator`, ...) as child
//! processes, with per-test log files, signals for failure injection, and readiness
//! waits on gRPC health or an HTTP endpoint instead of sleeps.
//!
//! The binaries must be built first: `cargo build --workspace --bins` (test executables do
//! not build other packages' binaries).
//!
//! # Logs
//!
//! Each [`ManagedProcess`] writes stdout and stderr to `<name>.log` in the directory of its
//! [`TestLogs`], `target/test-logs/<test>-<pid>-<n>/`. When a test panics, the directory
//! is kept and the last [`LOG_TAIL_LINES`] lines of every log are printed to stderr;
//! on success it is deleted unless `DOMAIN_KEEP_LOGS=1`.
//!
//! ```no_run
//! # async fn t() -> anyhow::Result<()> {
//! use std::time::Duration;
//! use domain_testkit::process::{ProcessBuilder, TestLogs, free_port, wait_for_health};
//!
//! let logs = TestLogs::new("sequencer_starts");
//! let port = free_port();
//! let mut seq = ProcessBuilder::new("sequencer")
//!     .name("seq-1")
//!     .logs(&logs)
//!     .args(["--config-file", "seq.toml"])
//!     .env("RUST_LOG", "info")
//!     .spawn()?;
//! wait_for_health(&format!("http://127.0.0.1:{port}"), None, "", Duration::from_secs(20)).await?;
//! seq.terminate(Duration::from_secs(10)).await?;
//! # Ok(()) }
//! ```

use std::ffi::OsString;
use std::fs::{self, File};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context as _, anyhow, bail};
use domain_backoff::{Backoff, BackoffConfig};
use tonic::transport::{Channel, ClientTlsConfig, Endpoint};
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

/// Lines of each log printed when a test fails.
pub const LOG_TAIL_LINES: usize = 40;

/// Per-attempt limit for health probes; a hung server must not eat the whole budget.
const PROBE_TIMEOUT: Duration = Duration::from_millis(1000);
/// First and largest pause between readiness probes.
/// Pauses between polls of a local process: 20 ms doubling to 250 ms.
const POLL_BACKOFF: BackoffConfig =
    BackoffConfig::new(Duration::from_millis(20), Duration::from_millis(250)).without_jitter();

/// Returns the path of workspace binary `name`, e.g. `binary_path("sequencer")`.
///
/// # Panics
///
/// Panics if the binary has not been built, saying how to build it.
pub fn binary_path(name: &str) -> PathBuf {
    match try_binary_path(name) {
        Ok(path) => path,
        Err(e) => panic!("{e:#}"),
    }
}

/// Returns the path of workspace binary `name`, looking in `DOMAIN_BIN_DIR`, next to the
/// running executable (`target/<profile>/` for tests in `target/<profile>/deps/`), then in
/// `$CARGO_TARGET_DIR/{debug,release}`.
pub fn try_binary_path(name: &str) -> anyhow::Result<PathBuf> {
    let mut candidates = Vec::new();
    if let Some(dir) = std::env::var_os("DOMAIN_BIN_DIR") {
        candidates.push(PathBuf::from(dir).join(name));
    }
    if let Some(dir) = profile_dir() {
        candidates.push(dir.join(name));
    }
    if let Some(dir) = std::env::var_os("CARGO_TARGET_DIR") {
        let dir = PathBuf::from(dir);
        candidates.push(dir.join("debug").join(name));
        candidates.push(dir.join("release").join(name));
    }
    if let Some(found) = candidates.iter().find(|p| p.is_file()) {
        return Ok(found.clone());
    }
    let looked: Vec<String> = candidates.iter().map(|p| p.display().to_string()).collect();
    bail!(
        "binary `{name}` not found (looked at: {}); run `cargo build --workspace --bins` \
         (with the same profile as the tests) first, or set DOMAIN_BIN_DIR",
        looked.join(", ")
    )
}

/// Returns `target/<profile>`, derived from the running executable.
fn profile_dir() -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?;
    let parent = exe.parent()?;
    match parent.file_name().and_then(|n| n.to_str()) {
        Some("deps" | "examples") => parent.parent().map(Path::to_path_buf),
        _ => Some(parent.to_path_buf()),
    }
}

/// Returns the cargo target directory (`target/`), or the system temp dir as a fallback.
pub fn target_dir() -> PathBuf {
    if let Some(profile) = profile_dir()
        && let Some(target) = profile.parent()
    {
        return target.to_path_buf();
    }
    if let Some(dir) = std::env::var_os("CARGO_TARGET_DIR") {
        return PathBuf::from(dir);
    }
    std::env::temp_dir()
}

/// `kill -<signal> <pid>` (`signal` as `kill` names it: `STOP`, `TERM`, ...).
pub fn send_signal(pid: u32, signal: &str) -> anyhow::Result<()> {
    let status = Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(pid.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .context("failed to run the `kill` command")?;
    if !status.success() {
        bail!("kill -{signal} {pid} failed: {status}");
    }
    Ok(())
}

/// SIGKILL to `child` (named `name` in errors), then its exit status.
pub fn kill_and_reap(child: &mut std::process::Child, name: &str) -> anyhow::Result<ExitStatus> {
    child
        .kill()
        .with_context(|| format!("failed to kill {name}"))?;
    child
        .wait()
        .with_context(|| format!("failed to reap {name}"))
}

/// Fails with the command's exit status and stderr unless `out` reports success.
pub fn ensure_success(out: &std::process::Output, what: &str) -> anyhow::Result<()> {
    if !out.status.success() {
        anyhow::bail!(
            "{what} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// Returns a TCP port on 127.0.0.1 that no other caller of this function, in this process
/// or any other, holds, and that was bindable a moment ago.
///
/// Why not just bind port 0: the kernel hands out ports from the ephemeral range, which
/// is also where every outgoing connection (to PostgreSQL, between services) takes its
/// source port, and where the next test process's port-0 probe lands. Both collided in
/// CI (`ops-listen … Address already in use`). So ports come from below (or above) the
/// ephemeral range, and each is reserved with an exclusive `flock` on a file under the
/// temp dir, held until this process exits; the kernel drops the lock when the process
/// dies, so a crashed test leaves nothing stale behind.
///
/// # Panics
///
/// Panics if the lock directory cannot be created or every port in the range is taken.
pub fn free_port() -> u16 {
    static HELD: std::sync::Mutex<Vec<std::fs::File>> = std::sync::Mutex::new(Vec::new());
    let dir = std::env::temp_dir().join("domain-testkit-ports");
    std::fs::create_dir_all(&dir)
        .unwrap_or_else(|e| panic!("cannot create port lock dir {}: {e}", dir.display()));
    let (low, high) = reservable_port_range();
    let span = u32::from(high - low);
    // Start at a different place in every process so concurrent test processes rarely
    // contend for the same lock files.
    #[expect(clippy::disallowed_methods, reason = "a seed, not a timestamp")]
    let seed = std::process::id().wrapping_mul(2_654_435_761)
        ^ std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
    let mut held = HELD
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    for step in 0..span {
        let offset = u16::try_from((seed.wrapping_add(step)) % span).unwrap_or(0);
        let port = low + offset;
        let Ok(file) = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(dir.join(port.to_string()))
        else {
            continue;
        };
        // flock is per open file description: a second reservation of the same port in
        // this process fails here too.
        if file.try_lock().is_err() {
            continue;
        }
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_err() {
            continue;
        }
        held.push(file);
        return port;
    }
    panic!("no free port in {low}..{high}: every one is locked or bound");
}

/// The port range `free_port` draws from: outside the kernel's ephemeral range.
fn reservable_port_range() -> (u16, u16) {
    let ephemeral = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|text| {
            let mut parts = text.split_whitespace().map(str::parse::<u16>);
            Some((parts.next()?.ok()?, parts.next()?.ok()?))
        });
    match ephemeral {
        Some((low, _)) if low >= 12_000 => (10_000, low),
        Some((_, high)) if high <= 55_000 => (high + 1, 65_000),
        // Unknown or unusual layout: a range that is outside Linux's default.
        _ => (20_000, 32_000),
    }
}

/// The log directory of one test, shared by all processes it spawns.
///
/// Cheap to clone. The directory is removed when the last clone and the last process using
/// it are dropped, unless a test panicked (then it is kept and the log tails are printed)
/// or `DOMAIN_KEEP_LOGS=1`.
#[derive(Clone, Debug)]
pub struct TestLogs {
    inner: Arc<LogsInner>,
}

#[derive(Debug)]
struct LogsInner {
    dir: PathBuf,
    failed: AtomicBool,
    keep: AtomicBool,
    passed: AtomicBool,
}

impl TestLogs {
    /// Creates `target/test-logs/<test_name>-<pid>-<n>/`.
    ///
    /// # Panics
    ///
    /// Panics if the directory cannot be created.
    pub fn new(test_name: &str) -> Self {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let clean: String = test_name
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let dir = target_dir()
            .join("test-logs")
            .join(format!("{clean}-{}-{n}", std::process::id()));
        // Logs of runs that never reached `passed()` are kept; sweep old ones so
        // target/ does not grow without bound.
        if let Some(parent) = dir.parent() {
            sweep_old_logs(parent, std::time::Duration::from_secs(6 * 3600));
        }
        if let Err(e) = fs::create_dir_all(&dir) {
            panic!("cannot create test log directory {}: {e}", dir.display());
        }
        Self {
            inner: Arc::new(LogsInner {
                dir,
                failed: AtomicBool::new(false),
                keep: AtomicBool::new(false),
                passed: AtomicBool::new(false),
            }),
        }
    }

    /// Creates logs named after the current thread, which the libtest harness (and
    /// nextest) name after the running test.
    pub fn for_current_test() -> Self {
        let thread = std::thread::current();
        Self::new(thread.name().unwrap_or("test"))
    }

    /// Returns the directory; tests may put config files and certificates here too.
    pub fn dir(&self) -> &Path {
        &self.inner.dir
    }

    /// Returns the path of `file_name` inside the directory.
    pub fn path(&self, file_name: &str) -> PathBuf {
        self.inner.dir.join(file_name)
    }

    /// Keeps the directory even if the test passes.
    pub fn keep(&self) {
        self.inner.keep.store(true, Ordering::Relaxed);
    }

    /// Marks the test as passed: the directory is deleted at drop (unless `keep` or
    /// `DOMAIN_KEEP_LOGS=1`). Without this call the directory is kept, so a test
    /// that returns `Err` instead of panicking still leaves its logs behind.
    pub fn passed(&self) {
        self.inner.passed.store(true, Ordering::Relaxed);
    }

    /// Marks the test as failed: the directory is kept and log tails are printed at drop.
    pub fn mark_failed(&self) {
        self.inner.failed.store(true, Ordering::Relaxed);
    }
}

impl Drop for LogsInner {
    fn drop(&mut self) {
        let failed = self.failed.load(Ordering::Relaxed) || std::thread::panicking();
        if failed {
            let mut report = format!("\n==== test logs kept in {} ====\n", self.dir.display());
            let mut logs: Vec<PathBuf> = fs::read_dir(&self.dir)
                .map(|entries| {
                    entries
                        .filter_map(Result::ok)
                        .map(|e| e.path())
                        .filter(|p| p.extension().is_some_and(|ext| ext == "log"))
                        .collect()
                })
                .unwrap_or_default();
            logs.sort();
            for log in logs {
                report.push_str(&format!(
                    "---- last {LOG_TAIL_LINES} lines of {} ----\n{}\n",
                    log.display(),
                    tail_lines(&log, LOG_TAIL_LINES)
                ));
            }
            eprintln!("{report}");
            return;
        }
        let keep_env = std::env::var("DOMAIN_KEEP_LOGS").is_ok_and(|v| v == "1");
        if !self.passed.load(Ordering::Relaxed) {
            eprintln!(
                "test did not reach passed(); logs kept in {}",
                self.dir.display()
            );
            return;
        }
        if self.keep.load(Ordering::Relaxed) || keep_env {
            eprintln!("test logs kept in {}", self.dir.display());
            return;
        }
        let _ = fs::remove_dir_all(&self.dir);
    }
}

fn sweep_old_logs(dir: &Path, older_than: std::time::Duration) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for entry in entries.filter_map(Result::ok) {
        let old = entry
            .metadata()
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.elapsed().ok())
            .is_some_and(|age| age > older_than);
        if old {
            let _ = fs::remove_dir_all(entry.path());
        }
    }
}

fn tail_lines(path: &Path, lines: usize) -> String {
    match fs::read(path) {
        Ok(bytes) => {
            let text = String::from_utf8_lossy(&bytes);
            let all: Vec<&str> = text.lines().collect();
            all[all.len().saturating_sub(lines)..].join("\n")
        }
        Err(e) => format!("(cannot read: {e})"),
    }
}

/// Builds a [`ManagedProcess`].
#[derive(Debug)]
pub struct ProcessBuilder {
    program: PathBuf,
    args: Vec<OsString>,
    envs: Vec<(OsString, Option<OsString>)>,
    current_dir: Option<PathBuf>,
    name: Option<String>,
    logs: Option<TestLogs>,
}

impl ProcessBuilder {
    /// Starts building a process for `binary`: a bare name such as `"sequencer"` is
    /// resolved with [`try_binary_path`] at spawn; anything containing a `/` is used as a
    /// path.
    pub fn new(binary: impl AsRef<Path>) -> Self {
        Self {
            program: binary.as_ref().to_path_buf(),
            args: Vec::new(),
            envs: Vec::new(),
            current_dir: None,
            name: None,
            logs: None,
        }
    }

    /// Appends one argument.
    pub fn arg(mut self, arg: impl Into<OsString>) -> Self {
        self.args.push(arg.into());
        self
    }

    /// Appends arguments.
    pub fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<OsString>,
    {
        self.args.extend(args.into_iter().map(Into::into));
        self
    }

    /// Sets an environment variable (the rest of the environment is inherited).
    pub fn env(mut self, key: impl Into<OsString>, value: impl Into<OsString>) -> Self {
        self.envs.push((key.into(), Some(value.into())));
        self
    }

    /// Removes an inherited environment variable.
    pub fn env_remove(mut self, key: impl Into<OsString>) -> Self {
        self.envs.push((key.into(), None));
        self
    }

    /// Sets the working directory (default: the log directory).
    pub fn current_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.current_dir = Some(dir.into());
        self
    }

    /// Names the process (e.g. `seq-1`) for its log file and messages; defaults to the
    /// binary's file name.
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into());
        self
    }

    /// Logs into `logs` (default: a new [`TestLogs::for_current_test`] per process).
    pub fn logs(mut self, logs: &TestLogs) -> Self {
        self.logs = Some(logs.clone());
        self
    }

    /// Spawns the process with stdout and stderr appended to `<logs>/<name>.log`.
    pub fn spawn(self) -> anyhow::Result<ManagedProcess> {
        let program = if self.program.components().count() == 1
            && !self.program.to_string_lossy().contains('/')
        {
            try_binary_path(&self.program.to_string_lossy())?
        } else {
            self.program.clone()
        };
        let name = self.name.clone().unwrap_or_else(|| {
            program
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_else(|| "process".to_owned())
        });
        let logs = self.logs.unwrap_or_else(TestLogs::for_current_test);
        let log_path = unique_log_path(&logs, &name);
        let mut log = File::options()
            .create(true)
            .append(true)
            .open(&log_path)
            .with_context(|| format!("cannot create log file {}", log_path.display()))?;
        let mut header = format!("==== {name}: {}", program.display());
        for arg in &self.args {
            header.push(' ');
            header.push_str(&arg.to_string_lossy());
        }
        writeln!(log, "{header}")?;

        let mut cmd = Command::new(&program);
        cmd.args(&self.args)
            .current_dir(self.current_dir.as_deref().unwrap_or(logs.dir()))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        if std::env::var_os("RUST_BACKTRACE").is_none() {
            cmd.env("RUST_BACKTRACE", "1");
        }
        // A test process killed by a nextest timeout must not leave services behind
        // holding ports, leases and database connections.
        cmd.env(
            domain_runtime::shutdown::EXIT_WITH_PARENT_ENV,
            std::process::id().to_string(),
        );
        for (key, value) in &self.envs {
            match value {
                Some(value) => cmd.env(key, value),
                None => cmd.env_remove(key),
            };
        }
        let child = cmd
            .spawn()
            .with_context(|| format!("failed to spawn {name} ({})", program.display()))?;
        tracing::debug!(name, pid = child.id(), log = %log_path.display(), "spawned process");
        Ok(ManagedProcess {
            name,
            child,
            exit: None,
            log_path,
            logs,
        })
    }
}

/// Returns `<dir>/<name>.log`, or `<name>-2.log`, ... if a process of that name already
/// logged there (e.g. a restarted node).
fn unique_log_path(logs: &TestLogs, name: &str) -> PathBuf {
    static LOCK: Mutex<()> = Mutex::new(());
    let _guard = LOCK.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    let mut path = logs.path(&format!("{name}.log"));
    let mut n = 2;
    while path.exists() {
        path = logs.path(&format!("{name}-{n}.log"));
        n += 1;
    }
    // Reserve the name before releasing the lock.
    let _ = File::create(&path);
    path
}

/// A running child process, killed (SIGKILL) when dropped.
#[derive(Debug)]
pub struct ManagedProcess {
    name: String,
    child: Child,
    exit: Option<ExitStatus>,
    log_path: PathBuf,
    logs: TestLogs,
}

impl ManagedProcess {
    /// Returns the OS process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Returns the name given to the builder.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Returns the file receiving the process's stdout and stderr.
    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    /// Returns the log directory this process writes into.
    pub fn logs(&self) -> &TestLogs {
        &self.logs
    }

    /// Returns the log so far (lossily decoded).
    pub fn read_log(&self) -> String {
        fs::read(&self.log_path)
            .map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
            .unwrap_or_default()
    }

    /// Returns the exit status if the process has exited, without waiting.
    pub fn try_exit_status(&mut self) -> Option<ExitStatus> {
        if self.exit.is_none()
            && let Ok(Some(status)) = self.child.try_wait()
        {
            self.exit = Some(status);
        }
        self.exit
    }

    /// Returns true while the process has not exited (a paused process is running).
    pub fn is_running(&mut self) -> bool {
        self.try_exit_status().is_none()
    }

    /// Kills the process with SIGKILL (simulating a crash) and reaps it.
    pub fn kill(&mut self) -> anyhow::Result<ExitStatus> {
        if let Some(status) = self.try_exit_status() {
            return Ok(status);
        }
        let status = kill_and_reap(&mut self.child, &self.name)?;
        self.exit = Some(status);
        Ok(status)
    }

    /// Sends SIGTERM and waits up to `grace` for a clean exit. If the process is still
    /// running after `grace`, it is killed and an error says so.
    pub async fn terminate(&mut self, grace: Duration) -> anyhow::Result<ExitStatus> {
        if let Some(status) = self.try_exit_status() {
            return Ok(status);
        }
        self.signal("TERM")?;
        // A paused process would only see SIGTERM once continued. Best effort: the
        // process may already have exited on SIGTERM (and `signal` never signals a
        // reaped pid).
        let _ = self.signal("CONT");
        if let Some(status) = self.wait_exit(grace).await {
            return Ok(status);
        }
        let _ = self.kill();
        bail!(
            "{} (pid {}) did not exit within {grace:?} of SIGTERM and was killed; see {}",
            self.name,
            self.pid(),
            self.log_path.display()
        )
    }

    /// Stops the process with SIGSTOP (simulating a hung node: sockets stay open).
    pub fn pause(&mut self) -> anyhow::Result<()> {
        self.signal("STOP")
    }

    /// Continues a paused process with SIGCONT.
    pub fn resume(&mut self) -> anyhow::Result<()> {
        self.signal("CONT")
    }

    /// Waits up to `timeout` for the process to exit; `None` if it is still running.
    pub async fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        let mut backoff = Backoff::new(
            BackoffConfig::new(Duration::from_millis(5), Duration::from_millis(50))
                .without_jitter(),
        );
        loop {
            if let Some(status) = self.try_exit_status() {
                return Some(status);
            }
            let now = Instant::now();
            if now >= deadline {
                return None;
            }
            tokio::time::sleep(backoff.next_delay_within(deadline - now)).await;
        }
    }

    /// Waits up to `timeout` until the log contains `needle`.
    pub async fn wait_for_log(&self, needle: &str, timeout: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            if self.read_log().contains(needle) {
                return Ok(());
            }
            if Instant::now() >= deadline {
                bail!(
                    "{} did not log {needle:?} within {timeout:?}; see {}",
                    self.name,
                    self.log_path.display()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Sends `signal` (a `kill -<signal>` name) unless the process was already reaped
    /// (its pid may have been reused).
    fn signal(&mut self, signal: &str) -> anyhow::Result<()> {
        if let Some(status) = self.try_exit_status() {
            bail!(
                "cannot send SIG{signal} to {}: it already exited ({status}); see {}",
                self.name,
                self.log_path.display()
            );
        }
        send_signal(self.pid(), signal).with_context(|| format!("cannot signal {}", self.name))?;
        Ok(())
    }
}

impl Drop for ManagedProcess {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.logs.mark_failed();
        }
        if self.exit.is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Polls `grpc.health.v1.Health/Check` for `service` (`""` for the whole server) at
/// `endpoint` (`http://127.0.0.1:<port>`, or `https://...` with `tls`) until it reports
/// `SERVING`, for at most `timeout`.
///
/// Each attempt is bounded by a short timeout; attempts are separated by a short,
/// growing backoff. On timeout the error names the endpoint and the last status or error.
pub async fn wait_for_health(
    endpoint: &str,
    tls: Option<ClientTlsConfig>,
    service: &str,
    timeout: Duration,
) -> anyhow::Result<()> {
    let mut ep = Endpoint::from_shared(endpoint.to_owned())
        .with_context(|| format!("invalid endpoint {endpoint}"))?
        .connect_timeout(PROBE_TIMEOUT)
        .timeout(PROBE_TIMEOUT);
    if let Some(tls) = tls {
        ep = ep
            .tls_config(tls)
            .with_context(|| format!("invalid TLS config for {endpoint}"))?;
    }
    let deadline = Instant::now() + timeout;
    let mut backoff = Backoff::new(POLL_BACKOFF);
    let mut channel: Option<Channel> = None;
    loop {
        let last = match probe_health(&ep, &mut channel, service).await {
            Ok(ServingStatus::Serving) => return Ok(()),
            Ok(status) => format!("status {}", status.as_str_name()),
            Err(e) => {
                // Reconnect next time: the channel may be wedged on a dead connection.
                channel = None;
                format!("{e:#}")
            }
        };
        let now = Instant::now();
        if now >= deadline {
            return Err(anyhow!(
                "{endpoint} did not report SERVING for service {service:?} within \
                 {timeout:?}; last: {last}"
            ));
        }
        tokio::time::sleep(backoff.next_delay_within(deadline - now)).await;
    }
}

async fn probe_health(
    ep: &Endpoint,
    channel: &mut Option<Channel>,
    service: &str,
) -> anyhow::Result<ServingStatus> {
    let ch = match channel {
        Some(ch) => ch.clone(),
        None => {
            let ch = tokio::time::timeout(PROBE_TIMEOUT, ep.connect())
                .await
                .map_err(|_| anyhow!("connect timed out after {PROBE_TIMEOUT:?}"))?
                .map_err(|e| anyhow!("connect failed: {}", error_chain(&e)))?;
            *channel = Some(ch.clone());
            ch
        }
    };
    let request = HealthCheckRequest {
        service: service.to_owned(),
    };
    let response = tokio::time::timeout(PROBE_TIMEOUT, HealthClient::new(ch).check(request))
        .await
        .map_err(|_| anyhow!("health check timed out after {PROBE_TIMEOUT:?}"))?
        .map_err(|status| {
            anyhow!(
                "health check failed: {:?}: {}",
                status.code(),
                status.message()
            )
        })?;
    Ok(response.into_inner().status())
}

/// Formats an error with its sources; tonic's transport errors hide the useful part
/// ("connection refused", certificate problems) in `source()`.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

/// Polls `url` (`http://host:port/path`, plaintext) with HTTP/1.1 GET until it answers
/// with a 2xx status, for at most `timeout`. Meant for ops endpoints such as
/// `/health/ready`.
pub async fn wait_for_http_ok(url: &str, timeout: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    let mut backoff = Backoff::new(POLL_BACKOFF);
    loop {
        let last = match domain_probe::get(url, PROBE_TIMEOUT).await {
            Ok(r) if r.is_success() => return Ok(()),
            Ok(r) => format!("HTTP status {}", r.status.as_u16()),
            Err(e @ domain_probe::ProbeError::InvalidUrl { .. }) => return Err(e.into()),
            Err(e) => e.to_string(),
        };
        let now = Instant::now();
        if now >= deadline {
            bail!("{url} did not answer 2xx within {timeout:?}; last: {last}");
        }
        tokio::time::sleep(backoff.next_delay_within(deadline - now)).await;
    }
}

/// One HTTP/1.1 GET of `url` (`http://host:port/path`); returns the status code.
/// Bounded by the probe timeout.
pub async fn http_status(url: &str) -> anyhow::Result<u16> {
    Ok(domain_probe::get(url, PROBE_TIMEOUT).await?.status.as_u16())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn free_ports_are_bindable() {
        let port = free_port();
        assert_ne!(port, 0);
        std::net::TcpListener::bind(("127.0.0.1", port)).expect("port is free");
    }

    #[test]
    fn free_ports_are_distinct_and_outside_the_ephemeral_range() {
        let (low, high) = reservable_port_range();
        let ports: Vec<u16> = (0..50).map(|_| free_port()).collect();
        let mut unique = ports.clone();
        unique.sort_unstable();
        unique.dedup();
        assert_eq!(unique.len(), ports.len(), "{ports:?}");
        assert!(ports.iter().all(|p| (low..high).contains(p)), "{ports:?}");
        // Held by this process: another reservation of the same port must fail.
        let dir = std::env::temp_dir().join("domain-testkit-ports");
        let again = std::fs::OpenOptions::new()
            .write(true)
            .open(dir.join(ports[0].to_string()))
            .expect("lock file exists");
        assert!(again.try_lock().is_err());
    }

    #[test]
    fn missing_binary_says_how_to_build() {
        let err = try_binary_path("no-such-binary-xyz").expect_err("missing");
        assert!(
            err.to_string().contains("cargo build --workspace --bins"),
            "{err}"
        );
    }

    /// Spawns `builder` with its output in the logs of the test `test`.
    fn spawn_logged(test: &str, builder: ProcessBuilder) -> (TestLogs, ManagedProcess) {
        let logs = TestLogs::new(test);
        let p = builder.logs(&logs).spawn().expect("spawn");
        (logs, p)
    }

    #[tokio::test]
    async fn spawn_signal_and_log() {
        let (logs, mut p) = spawn_logged(
            "spawn_signal_and_log",
            ProcessBuilder::new("/bin/sh")
                .name("sleeper")
                .args(["-c", "echo hello; echo oops >&2; exec sleep 30"]),
        );
        p.wait_for_log("oops", Duration::from_secs(5))
            .await
            .expect("log");
        assert!(p.read_log().contains("hello"));
        p.pause().expect("pause");
        assert!(p.is_running());
        p.resume().expect("resume");
        assert!(p.wait_exit(Duration::from_millis(50)).await.is_none());
        let status = p.terminate(Duration::from_secs(5)).await.expect("exits");
        assert!(!status.success());
        assert!(p.pause().is_err(), "signals after exit are refused");
        let dir = logs.dir().to_path_buf();
        logs.passed();
        drop(p);
        drop(logs);
        if std::env::var("DOMAIN_KEEP_LOGS").is_err() {
            assert!(!dir.exists(), "logs removed on success");
        }
    }

    #[tokio::test]
    async fn kill_reaps() {
        let (_logs, mut p) =
            spawn_logged("kill_reaps", ProcessBuilder::new("/bin/sleep").arg("30"));
        let status = p.kill().expect("kill");
        assert!(!status.success());
        assert_eq!(p.try_exit_status(), Some(status));
    }

    #[tokio::test]
    async fn health_wait_reports_endpoint_on_timeout() {
        let port = free_port();
        let endpoint = format!("http://127.0.0.1:{port}");
        let err = wait_for_health(&endpoint, None, "", Duration::from_millis(300))
            .await
            .expect_err("nothing listens");
        let msg = format!("{err:#}");
        assert!(msg.contains(&endpoint) && msg.contains("last:"), "{msg}");
    }

    #[tokio::test]
    async fn http_ok_against_a_tiny_server() {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move {
            let mut n = 0;
            while let Ok((mut sock, _)) = listener.accept().await {
                n += 1;
                let mut buf = [0u8; 1024];
                let _ = sock.read(&mut buf).await;
                let status = if n < 2 {
                    "503 Service Unavailable"
                } else {
                    "200 OK"
                };
                let _ = sock
                    .write_all(format!("HTTP/1.1 {status}\r\ncontent-length: 0\r\n\r\n").as_bytes())
                    .await;
            }
        });
        wait_for_http_ok(
            &format!("http://{addr}/health/ready"),
            Duration::from_secs(5),
        )
        .await
        .expect("ready after one 503");
    }

    #[tokio::test]
    async fn health_wait_until_serving() {
        let (reporter, service) = tonic_health::server::health_reporter();
        reporter
            .set_service_status("liveness", tonic_health::ServingStatus::NotServing)
            .await;
        reporter
            .set_service_status("stuck", tonic_health::ServingStatus::NotServing)
            .await;
        let port = free_port();
        let server = tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(service)
                .serve(([127, 0, 0, 1], port).into()),
        );
        let flip = reporter.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(300)).await;
            flip.set_service_status("liveness", tonic_health::ServingStatus::Serving)
                .await;
        });
        let endpoint = format!("http://127.0.0.1:{port}");
        wait_for_health(&endpoint, None, "liveness", Duration::from_secs(10))
            .await
            .expect("serving after the flip");
        let err = wait_for_health(&endpoint, None, "stuck", Duration::from_millis(300))
            .await
            .expect_err("never serving");
        assert!(format!("{err:#}").contains("NOT_SERVING"), "{err:#}");
        server.abort();
    }
}
