//! The common entry of every service binary, after its configuration is loaded and logging
//! is installed: a multi-threaded tokio runtime, the process-wide rustls crypto provider,
//! the service's async `serve`, and the exit code (0 on a clean shutdown, 1 on failure,
//! with the error chain logged), and the set of servers a service runs, stopped as one.

use std::future::Future;
use std::time::Duration;

use metrics_exporter_prometheus::PrometheusHandle;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::ops::Readiness;
use crate::shutdown::DrainTimedOut;

/// The two listeners of a service with an admin API: bound before anything else starts, so
/// a taken port fails start-up with the setting named.
#[derive(Debug)]
pub struct AdminListeners {
    /// The admin gRPC API (`admin-api.listen`).
    pub admin: TcpListener,
    /// The ops HTTP server (`ops-listen`).
    pub ops: TcpListener,
}

impl AdminListeners {
    /// Binds both and logs the bound addresses.
    pub async fn bind(
        admin: &crate::grpc::GrpcServerConfig,
        ops: std::net::SocketAddr,
    ) -> Result<Self, ListenError> {
        let listeners = Self {
            admin: crate::grpc::bind(admin).await?,
            ops: crate::ops::bind(ops).await?,
        };
        tracing::info!(
            admin = %listeners.admin.local_addr()?,
            ops = %listeners.ops.local_addr()?,
            "listening"
        );
        Ok(listeners)
    }
}

/// A listener of [`AdminListeners`] could not be bound; the message names the setting.
#[derive(Debug, thiserror::Error)]
pub enum ListenError {
    /// `admin-api.listen`.
    #[error(transparent)]
    Admin(#[from] crate::grpc::GrpcError),
    /// `ops-listen`, or reading a bound address back.
    #[error(transparent)]
    Ops(#[from] std::io::Error),
}

/// The servers of one service (its gRPC APIs and the ops HTTP server), all stopped by one
/// token so that shutdown drains them together.
#[derive(Debug, Default)]
pub struct Servers {
    stop: CancellationToken,
    tasks: Vec<JoinHandle<()>>,
}

impl Servers {
    /// An empty set.
    pub fn new() -> Self {
        Self::default()
    }

    /// Serves `router` on `listener` until [`Servers::stop`], with the connection caps of
    /// `config` (the config the router was built from); `api` names it in logs and metrics.
    pub fn grpc(
        &mut self,
        api: &'static str,
        config: &crate::grpc::GrpcServerConfig,
        router: crate::grpc::ServiceRouter,
        listener: TcpListener,
    ) {
        let stop = self.stop.clone();
        let limits = config.connection_limits();
        self.tasks.push(tokio::spawn(async move {
            if let Err(error) = crate::grpc::serve(router, listener, limits, api, stop).await {
                tracing::error!(api, %error, "grpc server failed");
            }
        }));
    }

    /// Serves `/metrics`, `/health/live` and `/health/ready` on `listener` until [`Servers::stop`].
    pub fn ops(&mut self, listener: TcpListener, metrics: PrometheusHandle, readiness: &Readiness) {
        self.tasks.push(crate::ops::serve_ops(
            listener,
            metrics,
            readiness.clone(),
            self.stop.clone(),
        ));
    }

    /// Stops accepting on every server and waits, at most `grace`, for in-flight calls.
    pub async fn stop(self, grace: Duration) -> Result<(), DrainTimedOut> {
        self.stop.cancel();
        crate::shutdown::drain(grace, self.tasks).await.map(drop)
    }
}

/// The command line of a service binary: the common flags and, optionally, one of the
/// binary's own subcommands `C`; without one, the service runs.
#[derive(Debug, clap::Parser)]
pub struct ServiceCli<C: clap::Subcommand> {
    #[command(flatten)]
    pub common: crate::config::CommonArgs,
    #[command(subcommand)]
    pub command: Option<C>,
}

impl<C: clap::Subcommand> ServiceCli<C> {
    /// Parses the process's arguments (exiting with clap's message and code on an error, or
    /// after `--help`/`--version`). `describe` names the binary and gives its help texts,
    /// e.g. `|c| c.name("mediator").about("...")`; the version is the workspace's.
    pub fn parse_with(describe: impl FnOnce(clap::Command) -> clap::Command) -> Self {
        use clap::{CommandFactory as _, FromArgMatches as _};
        let command = describe(Self::command().version(env!("CARGO_PKG_VERSION")));
        Self::from_arg_matches(&command.get_matches()).unwrap_or_else(|error| error.exit())
    }
}

/// The subcommand of a service whose replicas share one signing key.
#[derive(Debug, clap::Subcommand)]
pub enum KeyCommand {
    /// Generates the signing key (PKCS#8 PEM, mode 0600) and prints its fingerprint.
    GenerateKey {
        /// Where to write the key; an existing file is never overwritten.
        path: std::path::PathBuf,
    },
}

impl KeyCommand {
    /// Runs the subcommand; on an error, prints it and exits with code 1.
    pub fn run(self) {
        match self {
            Self::GenerateKey { path } => {
                let key = domain_identity::SigningKeyPair::generate();
                if let Err(error) = key.save_pem(&path) {
                    eprintln!("error: {error}");
                    std::process::exit(1);
                }
                println!("{}", key.fingerprint());
            }
        }
    }
}

/// What a service's `run` gets from [`serve_service`]: its bound listeners, the handle of
/// the Prometheus recorder, and the shutdown token.
#[derive(Debug)]
pub struct Started<L> {
    pub listeners: L,
    pub metrics: PrometheusHandle,
    pub shutdown: CancellationToken,
}

impl Started<AdminListeners> {
    /// Serves `admin` (the admin API, built by
    /// [`service_router`](crate::grpc::service_router) from `config`) on the admin listener
    /// and the ops HTTP server on the ops listener: the servers of a service whose one gRPC
    /// API is its admin API. Returns them, and the shutdown token.
    pub fn serve_admin(
        self,
        config: &crate::grpc::GrpcServerConfig,
        admin: crate::grpc::ServiceRouter,
        readiness: &Readiness,
    ) -> (Servers, CancellationToken) {
        let mut servers = Servers::new();
        servers.grpc("admin", config, admin, self.listeners.admin);
        servers.ops(self.listeners.ops, self.metrics, readiness);
        (servers, self.shutdown)
    }
}

/// The tail of every service binary's `main`, once its configuration is loaded: a
/// configuration `problem` is printed and exits with [`EXIT_USAGE`](crate::config::EXIT_USAGE)
/// before anything starts; otherwise logging is installed and `serve` runs on the service
/// runtime ([`run_service`]).
pub fn launch<F, E>(
    component: &str,
    common: &crate::config::CommonArgs,
    tracing: &crate::telemetry::TracingConfig,
    problem: Result<(), String>,
    serve: impl FnOnce() -> F,
) -> !
where
    F: Future<Output = Result<(), E>>,
    E: std::fmt::Display,
{
    if let Err(problem) = problem {
        eprintln!("error: {problem}");
        std::process::exit(crate::config::EXIT_USAGE);
    }
    if let Err(error) = crate::telemetry::init_logging(component, common.log_format, tracing) {
        eprintln!("error: {error}");
        std::process::exit(crate::config::EXIT_USAGE);
    }
    run_service(component, serve)
}

/// The first steps of every service's async `serve`: the Prometheus recorder (with the
/// operator's constant `labels` and the service's own histogram `buckets`), the shutdown
/// signal, then the listeners, bound before anything else starts so a taken port fails
/// start-up with the setting named. `run` is the service's own `run`.
pub async fn serve_service<L, B, R>(
    component: &str,
    labels: &[(&'static str, String)],
    buckets: &[(&str, &[f64])],
    bind: B,
    run: impl FnOnce(Started<L>) -> R,
) -> anyhow::Result<()>
where
    B: Future<Output = anyhow::Result<L>>,
    R: Future<Output = anyhow::Result<()>>,
{
    let metrics = crate::metrics::install_recorder_with(component, labels, buckets)?;
    let shutdown = crate::shutdown::shutdown_signal()?;
    let listeners = bind.await?;
    run(Started {
        listeners,
        metrics,
        shutdown,
    })
    .await
}

/// Runs `serve` to completion and exits the process with its outcome.
pub fn run_service<F, E>(component: &str, serve: impl FnOnce() -> F) -> !
where
    F: Future<Output = Result<(), E>>,
    E: std::fmt::Display,
{
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(error) => {
            eprintln!("error: cannot start the async runtime: {error}");
            std::process::exit(1);
        }
    };
    let code = runtime.block_on(async move {
        if let Err(error) = install_crypto_provider() {
            tracing::error!(%error, "cannot start {component}");
            return 1;
        }
        match serve().await {
            Ok(()) => 0,
            Err(error) => {
                tracing::error!(error = format!("{error:#}"), "{component} failed");
                1
            }
        }
    });
    // After the runtime has stopped every task: the last spans are ended, flush them.
    drop(runtime);
    crate::telemetry::shutdown_tracing();
    std::process::exit(code)
}

/// Installs ring as the process's rustls crypto provider (rustls refuses to guess when
/// several are compiled in). Installing it again is fine.
pub fn install_crypto_provider() -> Result<(), String> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    match rustls::crypto::CryptoProvider::get_default() {
        Some(_) => Ok(()),
        None => Err("no rustls crypto provider could be installed".into()),
    }
}
