//! Helpers shared by the runtime's gRPC integration tests.

use std::future::Future;
use std::time::Duration;

use domain_runtime::grpc::GrpcError;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// A gRPC server running as a task until [`Served::stop`].
pub struct Served {
    shutdown: CancellationToken,
    task: JoinHandle<Result<(), GrpcError>>,
}

impl Served {
    /// Spawns `serve` (typically `grpc::serve(router, listener, …, shutdown)`) with the
    /// shutdown token it is handed.
    pub fn spawn<F>(serve: impl FnOnce(CancellationToken) -> F) -> Self
    where
        F: Future<Output = Result<(), GrpcError>> + Send + 'static,
    {
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(serve(shutdown.clone()));
        Self { shutdown, task }
    }

    /// Shuts the server down; it must drain within 5 s and end without an error.
    pub async fn stop(self) {
        self.shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(5), self.task)
            .await
            .expect("server drains within 5s")
            .expect("server task")
            .expect("server result");
    }
}
