//! `domainctl` binary: parses the command line, runs it, prints the result and exits with the
//! code documented in the library (0 ok, 1 refused, 2 usage, 3 no replica available).

use std::io::Write as _;
use std::process::ExitCode;

use clap::Parser as _;
use domainctl::{Cli, CliError, EXIT_OK, EXIT_REFUSED};

fn main() -> ExitCode {
    // clap prints usage errors itself and exits with 2, our usage code.
    let cli = Cli::parse();
    // One crypto provider for the whole process (ring); rustls refuses to guess.
    if rustls::crypto::ring::default_provider()
        .install_default()
        .is_err()
    {
        return fail(&CliError::Local(
            "cannot install the rustls crypto provider".to_owned(),
        ));
    }
    // One call at a time: a single-threaded runtime is plenty and starts faster.
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            return fail(&CliError::Local(format!(
                "cannot start the async runtime: {error}"
            )));
        }
    };
    match runtime.block_on(domainctl::run(cli)) {
        Ok(output) => {
            let mut stdout = std::io::stdout().lock();
            match stdout
                .write_all(output.as_bytes())
                .and_then(|()| stdout.flush())
            {
                Ok(()) => ExitCode::from(EXIT_OK),
                // `domainctl … | head` closing the pipe early is not a failure.
                Err(error) if error.kind() == std::io::ErrorKind::BrokenPipe => {
                    ExitCode::from(EXIT_OK)
                }
                Err(error) => {
                    let _ = writeln!(std::io::stderr(), "error: cannot write output: {error}");
                    ExitCode::from(EXIT_REFUSED)
                }
            }
        }
        Err(error) => fail(&error),
    }
}

fn fail(error: &CliError) -> ExitCode {
    // Nothing useful is left to do when stderr itself is gone.
    let _ = writeln!(std::io::stderr(), "{error}");
    ExitCode::from(error.exit_code())
}
