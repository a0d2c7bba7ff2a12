//! Test-only fault hooks armed by a trigger file: the environment variable names the file,
//! and the hook fires while the file exists. Services compile their hooks in only with their
//! `fault-injection` feature; this type is the one mechanism behind them.

use std::path::PathBuf;
use std::sync::OnceLock;

/// A fault hook armed while the file named by environment variable `env` exists.
#[derive(Debug)]
pub struct FileHook {
    env: &'static str,
    /// Logged (with the variable and the path) when the environment names a file.
    announcement: &'static str,
    path: OnceLock<Option<PathBuf>>,
}

impl FileHook {
    /// A hook driven by `env`; `announcement` says what it does while armed.
    pub const fn new(env: &'static str, announcement: &'static str) -> Self {
        Self {
            env,
            announcement,
            path: OnceLock::new(),
        }
    }

    /// The trigger file, if the environment names one. The environment is read once, and
    /// the first call announces the hook.
    pub fn path(&self) -> Option<&PathBuf> {
        self.path
            .get_or_init(|| {
                let path = std::env::var_os(self.env).map(PathBuf::from)?;
                tracing::warn!(
                    hook = self.env,
                    path = %path.display(),
                    "{}",
                    self.announcement
                );
                Some(path)
            })
            .as_ref()
    }

    /// Reads the environment, so the hook is announced at start-up.
    pub fn init(&self) {
        let _ = self.path();
    }

    /// Whether the trigger file exists now.
    pub fn is_armed(&self) -> bool {
        self.path().is_some_and(|p| p.exists())
    }
}
