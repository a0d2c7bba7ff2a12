//! Child processes of a devnet run: long-running components (own process group, so a
//! Ctrl-C in the terminal reaches only `devnet`, which then stops them in order) and
//! one-shot commands with captured output.

use std::fmt;
use std::fs::File;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use domain_testkit::process::send_signal;

/// What kind of component a process is; decides how its readiness is shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Sequencer,
    DomainManager,
    Mediator,
    Participant,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Sequencer => "sequencer",
            Kind::DomainManager => "domain-manager",
            Kind::Mediator => "mediator",
            Kind::Participant => "participant",
        }
    }

    /// Active-passive components show `active`/`passive`, others `serving`/`not-serving`.
    pub fn role(self, ready: bool) -> &'static str {
        match (self, ready) {
            (Kind::DomainManager | Kind::Mediator, true) => "active",
            (Kind::DomainManager | Kind::Mediator, false) => "passive",
            (_, true) => "serving",
            (_, false) => "not-serving",
        }
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What to start.
pub struct Spec<'a> {
    pub name: &'a str,
    pub kind: Kind,
    pub grpc: String,
    pub ops: String,
    pub binary: &'a Path,
    pub args: &'a [&'a str],
    pub log: PathBuf,
    /// Working directory.
    pub dir: &'a Path,
}

/// A long-running component.
pub struct Component {
    pub name: String,
    pub kind: Kind,
    /// gRPC endpoint operators and clients use (public API for sequencers, admin API else).
    pub grpc: String,
    /// Ops base URL, `http://127.0.0.1:<port>`.
    pub ops: String,
    pub log: PathBuf,
    child: Child,
    exit: Option<ExitStatus>,
    /// How it was started, for [`respawn`](Self::respawn).
    binary: PathBuf,
    args: Vec<String>,
    dir: PathBuf,
}

impl Component {
    /// Starts `binary args...` with output appended to `log`, in its own process group.
    pub fn spawn(spec: Spec<'_>) -> anyhow::Result<Self> {
        let Spec {
            name,
            kind,
            grpc,
            ops,
            binary,
            args,
            log,
            dir,
        } = spec;
        let args: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
        let child = start_child(name, binary, &args, &log, dir)?;
        Ok(Self {
            name: name.to_owned(),
            kind,
            grpc,
            ops,
            log,
            child,
            exit: None,
            binary: binary.to_path_buf(),
            args,
            dir: dir.to_path_buf(),
        })
    }

    /// Starts the process again with the same binary, arguments and log (appended), as a
    /// supervisor would after a crash. The previous process must have exited.
    pub fn respawn(&mut self) -> anyhow::Result<()> {
        if self.exited().is_none() {
            bail!("{} is still running (pid {})", self.name, self.pid());
        }
        self.child = start_child(&self.name, &self.binary, &self.args, &self.log, &self.dir)?;
        self.exit = None;
        Ok(())
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends `sig` (a `kill -<sig>` name such as `STOP`) unless the process was already
    /// reaped (its pid may have been reused).
    pub fn signal(&mut self, sig: &str) -> anyhow::Result<()> {
        if let Some(status) = self.exited() {
            bail!("{} already exited ({status})", self.name);
        }
        send_signal(self.pid(), sig).with_context(|| format!("cannot signal {}", self.name))?;
        Ok(())
    }

    /// SIGKILL and reap.
    pub fn kill_now(&mut self) -> anyhow::Result<ExitStatus> {
        if let Some(status) = self.exited() {
            return Ok(status);
        }
        let status = domain_testkit::process::kill_and_reap(&mut self.child, &self.name)?;
        self.exit = Some(status);
        Ok(status)
    }

    /// The exit status if the process has exited.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        if self.exit.is_none()
            && let Ok(Some(status)) = self.child.try_wait()
        {
            self.exit = Some(status);
        }
        self.exit
    }

    /// SIGTERM, then waits up to `grace`; SIGKILL after that. Returns the exit status and
    /// whether the process had to be killed.
    pub async fn stop(&mut self, grace: Duration) -> (Option<ExitStatus>, bool) {
        if let Some(status) = self.exited() {
            return (Some(status), false);
        }
        let _ = send_signal(self.pid(), "TERM");
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if let Some(status) = self.exited() {
                return (Some(status), false);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let _ = self.child.kill();
        let status = self.child.wait().ok();
        self.exit = status;
        (status, true)
    }

    /// The last `n` lines of the log.
    pub fn log_tail(&self, n: usize) -> String {
        tail(&self.log, n)
    }
}

impl Drop for Component {
    fn drop(&mut self) {
        if self.exited().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Starts `binary args...` with output appended to `log`, in its own process group.
fn start_child(
    name: &str,
    binary: &Path,
    args: &[String],
    log: &Path,
    dir: &Path,
) -> anyhow::Result<Child> {
    let out = File::options()
        .create(true)
        .append(true)
        .open(log)
        .with_context(|| format!("cannot create log file {}", log.display()))?;
    Command::new(binary)
        .args(args)
        .current_dir(dir)
        .env(
            "RUST_LOG",
            std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()),
        )
        // Killed with SIGKILL, devnet cannot stop its children; they stop themselves.
        .env(
            domain_runtime::shutdown::EXIT_WITH_PARENT_ENV,
            std::process::id().to_string(),
        )
        .stdin(Stdio::null())
        .stdout(out.try_clone()?)
        .stderr(out)
        .process_group(0)
        .spawn()
        .with_context(|| format!("cannot start {name} ({})", binary.display()))
}

/// The last `n` lines of a file.
pub fn tail(path: &Path, n: usize) -> String {
    match std::fs::read(path) {
        Ok(bytes) => {
            let text = String::from_utf8_lossy(&bytes);
            let lines: Vec<&str> = text.lines().collect();
            lines[lines.len().saturating_sub(n)..].join("\n")
        }
        Err(e) => format!("(cannot read {}: {e})", path.display()),
    }
}

/// Output of a one-shot command.
pub struct Output {
    /// `<binary> <args>`, for messages.
    pub command: String,
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl Output {
    /// The trimmed stdout of a command that succeeded; its stderr otherwise.
    pub fn stdout_if_ok(self) -> anyhow::Result<String> {
        if !self.status.success() {
            bail!(
                "`{}` failed ({}): {}",
                self.command,
                self.status,
                self.stderr.trim()
            );
        }
        Ok(self.stdout.trim().to_owned())
    }
}

/// Runs a one-shot command to completion (at most `timeout`), appending its command line
/// and output to `log`.
pub async fn run(
    binary: &Path,
    args: &[&str],
    dir: &Path,
    log: &Path,
    timeout: Duration,
) -> anyhow::Result<Output> {
    let name = binary
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut cmd = tokio::process::Command::new(binary);
    cmd.args(args)
        .current_dir(dir)
        .env(
            domain_runtime::shutdown::EXIT_WITH_PARENT_ENV,
            std::process::id().to_string(),
        )
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .process_group(0);
    let output = tokio::time::timeout(timeout, cmd.output())
        .await
        .map_err(|_| {
            anyhow::anyhow!(
                "`{name} {}` did not finish within {timeout:?}",
                args.join(" ")
            )
        })?
        .with_context(|| format!("cannot run {}", binary.display()))?;
    let out = Output {
        command: format!("{name} {}", args.join(" ")),
        status: output.status,
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    };
    let mut text = format!("$ {}\n{}{}", out.command, out.stdout, out.stderr);
    if !out.status.success() {
        text.push_str(&format!("(exit status {})\n", out.status));
    }
    use std::io::Write as _;
    if let Ok(mut f) = File::options().create(true).append(true).open(log) {
        let _ = f.write_all(text.as_bytes());
    }
    Ok(out)
}
