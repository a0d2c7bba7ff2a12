//! The common entry of every service binary, after its configuration is loaded and logging
//! is installed: a multi-threaded tokio runtime, the process-wide rustls crypto provider,
//! the service's async `serve`, and the exit code (0 on a clean shutdown, 1 on failure,
//! with the error chain logged).

use std::future::Future;

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
