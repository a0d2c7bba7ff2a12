//! CLI helpers shared by the participant tests (participant_ping, participant_failover).

use std::process::Output;

use anyhow::ensure;

use domain_testkit::process::TestLogs;

use crate::participant::{Domain, Layout, participant_cli, participant_ok, text};

/// The arguments of `participant ping <target> --admin-endpoint <admin_url> <extra…>`.
fn ping_args<'a>(target: &'a str, admin_url: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec!["ping", target, "--admin-endpoint", admin_url];
    args.extend_from_slice(extra);
    args
}

/// `participant ping` through the admin API at `admin_url`: must succeed; its stdout.
pub async fn ping_ok(target: &str, admin_url: &str) -> anyhow::Result<String> {
    participant_ok(&ping_args(target, admin_url, &[])).await
}

/// `participant ping` through the admin API at `admin_url`, whatever its outcome.
pub async fn ping_cli(target: &str, admin_url: &str, extra: &[&str]) -> anyhow::Result<Output> {
    participant_cli(&ping_args(target, admin_url, extra)).await
}

/// `out` (a CLI run described by `what`) must have failed with an error whose stderr
/// passes `says`; `expected` names what that error must say.
pub fn ensure_cli_failed(
    out: &Output,
    what: &str,
    expected: &str,
    says: impl Fn(&str) -> bool,
) -> anyhow::Result<()> {
    ensure!(!out.status.success(), "{what} succeeded: {}", text(out));
    ensure!(
        says(&String::from_utf8_lossy(&out.stderr)),
        "{what}: the error does not say {expected}: {}",
        text(out)
    );
    Ok(())
}

/// A domain of `layout` with the participants alice and bob, both confirming with
/// `auto_confirm`; `response_timeout` is the mediator's.
pub async fn start_alice_and_bob(
    logs: TestLogs,
    layout: Layout,
    auto_confirm: &str,
    response_timeout: &str,
) -> anyhow::Result<Domain> {
    Domain::start_with(
        logs,
        layout,
        &[("alice", auto_confirm), ("bob", auto_confirm)],
        response_timeout,
    )
    .await
}
