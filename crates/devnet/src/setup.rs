//! The run directory and the sibling binaries of a devnet run.

use std::path::{Path, PathBuf};

use anyhow::{Context as _, anyhow, bail};

/// The sibling binaries devnet runs.
const BINARIES: [&str; 5] = [
    "sequencer",
    "domain-manager",
    "mediator",
    "participant",
    "domainctl",
];

/// Creates the run directory (fresh temporary one by default).
pub fn prepare_dir(dir: Option<&Path>) -> anyhow::Result<PathBuf> {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = match dir {
        Some(d) => {
            if d.exists() && std::fs::read_dir(d)?.next().is_some() {
                bail!(
                    "--dir {} is not empty; give a new or empty directory (each run starts a fresh domain)",
                    d.display()
                );
            }
            std::fs::create_dir_all(d).with_context(|| format!("cannot create {}", d.display()))?;
            std::path::absolute(d)?
        }
        None => tempfile::Builder::new()
            .prefix("devnet-")
            .tempdir()
            .context("cannot create a temporary run directory")?
            .keep(),
    };
    // PostgreSQL runs as the `postgres` user when we are root: it must reach <dir>/pg.
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755))
        .with_context(|| format!("cannot chmod {}", dir.display()))?;
    for sub in ["logs", "keys", "tls", "config"] {
        std::fs::create_dir_all(dir.join(sub))?;
    }
    Ok(dir)
}

/// Finds the sibling binaries; builds them with `$CARGO build` when started by cargo.
pub fn ensure_binaries(no_build: bool) -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe().context("cannot locate the devnet executable")?;
    let dir = exe
        .parent()
        .ok_or_else(|| anyhow!("{} has no parent directory", exe.display()))?
        .to_path_buf();
    let release = dir.file_name().is_some_and(|n| n == "release");
    let profile_flag = if release { " --release" } else { "" };
    let bins: String = BINARIES.iter().map(|b| format!(" --bin {b}")).collect();
    let missing: Vec<&str> = BINARIES
        .iter()
        .copied()
        .filter(|b| !dir.join(b).is_file())
        .collect();
    match std::env::var_os("CARGO") {
        Some(cargo) if !no_build => {
            let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../Cargo.toml");
            eprintln!("devnet: building the domain binaries: cargo build{profile_flag}{bins}");
            let mut cmd = std::process::Command::new(&cargo);
            cmd.arg("build").arg("--manifest-path").arg(&manifest);
            if release {
                cmd.arg("--release");
            }
            for b in BINARIES {
                cmd.args(["--bin", b]);
            }
            let status = cmd
                .stdout(std::process::Stdio::inherit())
                .stderr(std::process::Stdio::inherit())
                .status()
                .with_context(|| format!("cannot run {}", PathBuf::from(&cargo).display()))?;
            if !status.success() {
                bail!("cargo build{profile_flag}{bins} failed ({status})");
            }
        }
        _ if missing.is_empty() => {}
        _ => bail!(
            "missing {} next to {}; build them with `cargo build{profile_flag}{bins}` \
             (or start devnet with `cargo run{profile_flag} --bin devnet`, which builds them)",
            missing.join(", "),
            exe.display()
        ),
    }
    let still_missing: Vec<&str> = BINARIES
        .iter()
        .copied()
        .filter(|b| !dir.join(b).is_file())
        .collect();
    if !still_missing.is_empty() {
        bail!(
            "missing {} in {} after the build",
            still_missing.join(", "),
            dir.display()
        );
    }
    Ok(dir)
}
