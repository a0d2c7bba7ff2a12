//! The processes of a devnet run: start, readiness, shutdown.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use domain_testkit::pg::{PgCluster, TestDatabase};
use domain_testkit::process::wait_for_http_ok;
use tonic::transport::ClientTlsConfig;

use crate::procs::{self, Component, Kind, Spec};

/// Budget for one component to become healthy.
pub const START_TIMEOUT: Duration = Duration::from_secs(90);
/// How long a component may take to exit after SIGTERM before it is killed.
pub const STOP_GRACE: Duration = Duration::from_secs(15);

pub struct ParticipantInfo {
    pub name: String,
    /// `PAR::<name>::1220…`
    pub member: String,
    pub admin: String,
}

/// A devnet run: its directory, PostgreSQL and processes.
pub struct Devnet {
    pub(crate) started: Instant,
    pub(crate) dir: PathBuf,
    pub(crate) logs: PathBuf,
    pub(crate) bins: PathBuf,
    pub(crate) pg: Option<PgCluster>,
    pub(crate) databases: Vec<TestDatabase>,
    pub(crate) components: Vec<Component>,
    pub(crate) participants: Vec<ParticipantInfo>,
    pub(crate) domain_id: String,
    pub(crate) tls: Option<ClientTlsConfig>,
    /// The connection bundle the participants joined with.
    pub(crate) bundle_path: Option<PathBuf>,
    /// The participants' identity files.
    pub(crate) identity_files: Vec<PathBuf>,
}

impl Devnet {
    pub fn new(dir: PathBuf, bins: PathBuf) -> Self {
        Self {
            started: Instant::now(),
            logs: dir.join("logs"),
            dir,
            bins,
            pg: None,
            databases: Vec::new(),
            components: Vec::new(),
            participants: Vec::new(),
            domain_id: String::new(),
            tls: None,
            bundle_path: None,
            identity_files: Vec::new(),
        }
    }

    pub fn bin(&self, name: &str) -> PathBuf {
        self.bins.join(name)
    }

    pub fn setup_log(&self) -> PathBuf {
        self.logs.join("setup.log")
    }

    pub async fn cmd(&self, bin: &str, args: &[&str]) -> anyhow::Result<String> {
        procs::run(
            &self.bin(bin),
            args,
            &self.dir,
            &self.setup_log(),
            Duration::from_secs(60),
        )
        .await?
        .stdout_if_ok()
    }

    pub fn spawn(
        &mut self,
        name: &str,
        kind: Kind,
        grpc: String,
        ops: String,
        bin: &str,
        config: &Path,
    ) -> anyhow::Result<()> {
        let config = config.to_string_lossy();
        let comp = Component::spawn(Spec {
            name,
            kind,
            grpc,
            ops,
            binary: &self.bin(bin),
            args: &["--config-file", &config, "--log-format", "json"],
            log: self.logs.join(format!("{name}.log")),
            dir: &self.dir,
        })?;
        say!(self, "started {name} (pid {})", comp.pid());
        self.components.push(comp);
        Ok(())
    }

    /// Waits for `fut`, failing early when component `idx` exits.
    pub async fn wait<F>(&mut self, idx: usize, fut: F) -> anyhow::Result<()>
    where
        F: std::future::Future<Output = anyhow::Result<()>>,
    {
        tokio::pin!(fut);
        loop {
            tokio::select! {
                r = &mut fut => {
                    let comp = &self.components[idx];
                    return r.with_context(|| format!(
                        "{} did not become ready; last log lines of {}:\n{}",
                        comp.name, comp.log.display(), comp.log_tail(20)
                    ));
                }
                _ = tokio::time::sleep(Duration::from_millis(100)) => {
                    let comp = &mut self.components[idx];
                    if let Some(status) = comp.exited() {
                        bail!(
                            "{} exited during start-up ({status}); last log lines of {}:\n{}",
                            comp.name, comp.log.display(), comp.log_tail(20)
                        );
                    }
                }
            }
        }
    }

    /// Waits until both replicas from `first` are live and exactly one is active.
    pub async fn wait_replicas(&mut self, first: usize, what: &str) -> anyhow::Result<()> {
        for idx in [first, first + 1] {
            let url = format!("{}/health/live", self.components[idx].ops);
            self.wait(
                idx,
                async move { wait_for_http_ok(&url, START_TIMEOUT).await },
            )
            .await?;
        }
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            let mut active = Vec::new();
            for idx in [first, first + 1] {
                let comp = &mut self.components[idx];
                if let Some(status) = comp.exited() {
                    bail!(
                        "{} exited during start-up ({status}); last log lines of {}:\n{}",
                        comp.name,
                        comp.log.display(),
                        comp.log_tail(20)
                    );
                }
                if is_ready(&comp.ops).await {
                    active.push(comp.name.clone());
                }
            }
            if let [one] = active.as_slice() {
                say!(self, "{what}: {one} is active, the other passive");
                return Ok(());
            }
            if Instant::now() >= deadline {
                let tails = [first, first + 1]
                    .iter()
                    .map(|i| {
                        let c = &self.components[*i];
                        format!("--- {} ---\n{}", c.log.display(), c.log_tail(15))
                    })
                    .collect::<Vec<_>>()
                    .join("\n");
                bail!(
                    "{what}: no single active replica within {START_TIMEOUT:?} (active: {active:?})\n{tails}"
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The first component that exited, described with its log tail.
    pub fn first_dead(&mut self) -> Option<String> {
        for comp in &mut self.components {
            if let Some(status) = comp.exited() {
                return Some(format!(
                    "{} exited unexpectedly ({status}); last log lines of {}:\n{}",
                    comp.name,
                    comp.log.display(),
                    comp.log_tail(20)
                ));
            }
        }
        None
    }

    /// cleanly.
    pub async fn shutdown(&mut self) -> bool {
        let mut clean = true;
        if !self.components.is_empty() {
            say!(
                self,
                "stopping {} processes in reverse start order",
                self.components.len()
            );
        }
        while let Some(mut comp) = self.components.pop() {
            let t = Instant::now();
            let (status, killed) = comp.stop(STOP_GRACE).await;
            let ms = t.elapsed().as_millis();
            match status {
                _ if killed => {
                    clean = false;
                    say!(
                        self,
                        "{} did not exit within {STOP_GRACE:?} of SIGTERM: killed",
                        comp.name
                    );
                }
                Some(s) if s.success() => say!(self, "stopped {} ({ms} ms)", comp.name),
                Some(s) => {
                    clean = false;
                    say!(
                        self,
                        "{} exited with {s}; last log lines of {}:\n{}",
                        comp.name,
                        comp.log.display(),
                        comp.log_tail(10)
                    );
                }
                None => {
                    clean = false;
                    say!(self, "{}: exit status unknown", comp.name);
                }
            }
        }
        if let Some(pg) = self.pg.take() {
            if pg.port().is_some() {
                match tokio::task::spawn_blocking(move || pg.stop()).await {
                    Ok(Ok(())) => say!(self, "stopped PostgreSQL"),
                    Ok(Err(e)) => {
                        clean = false;
                        say!(self, "cannot stop PostgreSQL: {e:#}");
                    }
                    Err(e) => {
                        clean = false;
                        say!(self, "cannot stop PostgreSQL: {e}");
                    }
                }
            } else {
                self.pg = Some(pg);
            }
        }
        clean
    }

    /// Drops the databases created on an external (DATABASE_URL) server.
    pub async fn drop_databases(&self) {
        if let Some(pg) = &self.pg {
            for db in &self.databases {
                if let Err(e) = pg.drop_database(db).await {
                    eprintln!("devnet: cannot drop database {}: {e:#}", db.name);
                }
            }
        }
    }
}

pub async fn is_ready(ops: &str) -> bool {
    domain_probe::get_path(ops, "/health/ready", Duration::from_secs(2))
        .await
        .is_ok_and(|r| r.status == 200)
}
