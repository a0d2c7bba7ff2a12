//! Joining a domain from another company (docs/onboarding.md), both sides played with
//! separate directories, over a real domain (2 TLS sequencers, domain manager, mediator,
//! participant `bob` of the provider):
//!
//! 1. the party (`alice`) exports its identity file; the provider refuses a tampered one
//!    and one whose key does not match its id (exit 2, nothing sent), then allowlists from
//!    the genuine file (key recorded) and exports the signed connection bundle;
//! 2. the party refuses a bundle edited after signing and one signed by another domain's
//!    key (nothing written); from a bundle listing a sequencer of another domain and a
//!    sequencer of this domain id with another key (first), exactly those two endpoints are
//!    refused and the others saved; from the genuine bundle it connects;
//! 3. with the rogue endpoint put first in its connection, the node still joins the pinned
//!    domain (never adopts the rogue key) and pings `bob` both ways through the mediator;
//! 4. mTLS: a sequencer requiring client certificates refuses the party without one (the
//!    error says the sequencer refused and why) and accepts it with its certificate.

use std::time::Duration;

use anyhow::{Context as _, ensure};
use common::{Domain, participant_cli, participant_ok, ping_rpc, text};
use domain_e2e::checks::keep_logs_on_error;
use domain_e2e::participant as common;
use domain_identity::onboarding::{BundleContents, export_bundle, verify_bundle};
use domain_identity::{DomainId, PublicKey, SigningKeyPair, UniqueId};
use domain_localnet::config::{self, Listeners};
use domain_localnet::sequencers::SequencerCluster;
use domain_proto::participant::admin::v1::PingVerdict;
use domain_sequencer::SequencerConfig;
use domain_testkit::pg::PgCluster;
use domain_testkit::process::{
    ManagedProcess, ProcessBuilder, TestLogs, binary_path, wait_for_health,
};

#[tokio::test(flavor = "multi_thread")]
async fn a_party_joins_from_identity_file_and_bundle() -> anyhow::Result<()> {
    let logs = TestLogs::for_current_test();
    keep_logs_on_error(&logs, body(logs.clone())).await
}

fn stderr(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Spawns a sequencer from `config` and waits until it serves over `tls`.
async fn spawn_sequencer(
    name: &str,
    config: &std::path::Path,
    endpoint: &str,
    tls: tonic::transport::ClientTlsConfig,
    logs: &TestLogs,
) -> anyhow::Result<ManagedProcess> {
    let process = ProcessBuilder::new(binary_path("sequencer"))
        .arg("--config-file")
        .arg(config.as_os_str())
        .arg("--log-format")
        .arg("json")
        .env("RUST_LOG", "info")
        .name(name.to_owned())
        .logs(logs)
        .spawn()?;
    wait_for_health(endpoint, Some(tls), "", Duration::from_secs(30))
        .await
        .with_context(|| format!("{name} did not become healthy"))?;
    Ok(process)
}

/// A real sequencer of this domain id with its own key and its own database, serving a
/// certificate of the provider's CA (so TLS passes): a mis-pointed or hijacked endpoint.
/// Its database has no namespace key and no sequencer registration.
async fn spawn_rogue(
    domain: &Domain,
    logs: &TestLogs,
    db_name: &str,
) -> anyhow::Result<(String, ManagedProcess)> {
    let rogue_key = logs.path("rogue-key.pem");
    SigningKeyPair::generate().save_pem(&rogue_key)?;
    let at = Listeners::free_loopback();
    let rogue_db = PgCluster::shared().create_database(db_name).await;
    let rogue_path = logs.path("rogue.toml");
    config::write(
        &rogue_path,
        &config::sequencer(
            &domain.cluster.domain_id.to_string(),
            &rogue_key,
            &rogue_db.url,
            &at,
            &domain.cluster.pki_files,
        )?,
        &[],
    )?;
    let rogue_ep = at.public_url();
    let rogue = spawn_sequencer(
        "rogue-seq",
        &rogue_path,
        &rogue_ep,
        domain.cluster.client_tls(),
        logs,
    )
    .await?;
    Ok((rogue_ep, rogue))
}

/// Issue 11 item 12: `connect-multi` without a bundle or any pin, with a sequencer of this
/// domain id but another key listed first. Its key is not the one the domain's
/// namespace-signed sequencer registration names, so it is refused and not saved (before:
/// the endpoints "belonged to different domains" and nothing connected, or, in the client,
/// whichever answered first defined the domain); the real key is pinned, and the node pings
/// through the real sequencers.
#[tokio::test(flavor = "multi_thread")]
async fn item_12_connect_multi_refuses_an_impostor_listed_first() -> anyhow::Result<()> {
    let logs = TestLogs::for_current_test();
    keep_logs_on_error(&logs, impostor_first(logs.clone())).await
}

async fn impostor_first(logs: TestLogs) -> anyhow::Result<()> {
    let mut domain = Domain::start(logs.clone(), &[("bob", "payload")], "5s").await?;
    let (rogue_ep, _rogue) = spawn_rogue(&domain, &logs, "i12_rogue").await?;
    let data = logs.path("alice");
    let data_s = data.to_string_lossy().into_owned();
    let member = participant_ok(&["init", "--name", "alice", "--data-dir", &data_s]).await?;
    domain.dms.allowlist(&member).await?;
    let ca = domain.cluster.pki_files.ca.to_string_lossy().into_owned();
    let mut endpoints = vec![rogue_ep.clone()];
    endpoints.extend(domain.sequencer_endpoints());
    let mut args = vec!["connect-multi", "testdomain"];
    args.extend(endpoints.iter().map(String::as_str));
    args.extend(["--ca", &ca, "--timeout", "5s", "--data-dir", &data_s]);
    let out = participant_cli(&args).await?;
    let err = stderr(&out);
    ensure!(out.status.success(), "connect-multi: {}", text(&out));
    ensure!(
        err.contains(&format!("{rogue_ep}: refused: presents sequencer key"))
            && err.contains("no namespace key"),
        "impostor not refused: {err}"
    );
    let saved = std::fs::read_to_string(data.join("domain-connection.toml"))?;
    ensure!(!saved.contains(&rogue_ep), "impostor saved:\n{saved}");
    let real_key = seq_key(&domain.cluster)?;
    ensure!(
        saved.contains(&format!("sequencer-key = \"{}\"", real_key.fingerprint())),
        "real sequencer key not pinned:\n{saved}"
    );
    adopt_alice_and_ping_bob(&mut domain, &member, &data).await?;
    domain.logs.passed();
    Ok(())
}

async fn body(logs: TestLogs) -> anyhow::Result<()> {
    let mut domain = Domain::start(logs.clone(), &[("bob", "payload")], "5s").await?;
    let party = logs.path("alice-corp");
    let provider = logs.path("provider");
    std::fs::create_dir_all(&party)?;
    std::fs::create_dir_all(&provider)?;
    let data = party.join("data");
    let data_s = data.to_string_lossy().into_owned();
    let conn_file = data.join("domain-connection.toml");

    // 1. The party: identity file.
    let member = participant_ok(&["init", "--name", "alice", "--data-dir", &data_s]).await?;
    ensure!(
        member.starts_with("PAR::alice::1220"),
        "init printed {member}"
    );
    let identity = party.join("alice-identity.json");
    participant_ok(&[
        "export-identity",
        "--output",
        &identity.to_string_lossy(),
        "--display-name",
        "Alice Corp",
        "--contact",
        "ops@alice.example",
        "--data-dir",
        &data_s,
    ])
    .await?;
    // "By email" to the provider.
    let identity_text = std::fs::read_to_string(&identity)?;
    let received = write_in(&provider, "alice-identity.json", &identity_text)?;

    let unknown = |out: &std::process::Output| {
        !out.status.success() && text(out).contains("DM_UNKNOWN_PARTICIPANT")
    };
    // Tampered: edited after signing.
    let tampered = write_in(
        &provider,
        "tampered.json",
        identity_text.replace("Alice Corp", "Mallory Corp"),
    )?;
    let out = set_state(&domain, &tampered).await?;
    ensure!(
        out.status.code() == Some(2) && stderr(&out).contains("ONBOARDING_SIGNATURE_INVALID"),
        "tampered identity file: {}",
        text(&out)
    );
    // A key that does not give the id's fingerprint.
    let mut value: serde_json::Value = serde_json::from_str(&identity_text)?;
    value["public-key"] = hex_key(SigningKeyPair::generate().public_key()).into();
    let swapped = write_in(
        &provider,
        "swapped-key.json",
        serde_json::to_string_pretty(&value)?,
    )?;
    let out = set_state(&domain, &swapped).await?;
    ensure!(
        out.status.code() == Some(2)
            && stderr(&out).contains("ONBOARDING_KEY_MISMATCH")
            && stderr(&out).contains("does not match the id"),
        "identity file with another key: {}",
        text(&out)
    );
    let out = domain
        .dms
        .domainctl(&["participants", "get", &member])
        .await?;
    ensure!(
        unknown(&out),
        "a refused file changed state: {}",
        text(&out)
    );

    // The genuine file: allowlisted, key recorded.
    let out = set_state(&domain, &received).await?;
    ensure!(
        out.status.success(),
        "set-state --identity-file: {}",
        text(&out)
    );
    let bundle_path = provider.join("bundle.json");
    let out = domain
        .dms
        .domainctl(&[
            "domain",
            "export-connection",
            "--output-file",
            &bundle_path.to_string_lossy(),
        ])
        .await?;
    ensure!(out.status.success(), "export-connection: {}", text(&out));
    let bundle_text = std::fs::read_to_string(&bundle_path)?;
    let bundle = verify_bundle(&bundle_text)?;
    ensure!(bundle.domain_id == domain.cluster.domain_id);
    ensure!(bundle.body.endpoints == domain.sequencer_endpoints());
    let sent = write_in(&party, "bundle.json", &bundle_text)?;

    // 2. The party: refusals, nothing written.
    let edited = write_in(
        &party,
        "edited.json",
        bundle_text.replace("\"alias\": \"testdomain\"", "\"alias\": \"evil\""),
    )?;
    ensure!(
        bundle_text != std::fs::read_to_string(&edited)?,
        "edit did not apply"
    );
    let out = connect(&edited, &data_s).await?;
    ensure!(
        !out.status.success() && stderr(&out).contains("ONBOARDING_SIGNATURE_INVALID"),
        "edited bundle: {}",
        text(&out)
    );
    let sequencer_key = seq_key(&domain.cluster)?;
    ensure!(sequencer_key.fingerprint() == &bundle.sequencer_key_fingerprint);
    let other_ns = SigningKeyPair::generate();
    let other_domain = DomainId::new(UniqueId::new("testdomain", *other_ns.fingerprint())?);
    let contents = |endpoints: Vec<String>| BundleContents {
        alias: "testdomain".into(),
        endpoints,
        sequencer_id: bundle.sequencer_id.clone(),
        sequencer_key: sequencer_key.clone(),
        ca_pem: bundle.body.ca_pem.clone(),
        system_roots: false,
        protocol_version: bundle.body.protocol_version.clone(),
    };
    let forged = export_bundle(
        &other_domain,
        &other_ns,
        contents(domain.sequencer_endpoints()),
    )?
    .replace(
        &other_domain.to_string(),
        &domain.cluster.domain_id.to_string(),
    );
    let forged_path = write_in(&party, "forged.json", forged)?;
    let out = connect(&forged_path, &data_s).await?;
    ensure!(
        !out.status.success() && stderr(&out).contains("ONBOARDING_WRONG_SIGNER"),
        "bundle signed by another domain's key: {}",
        text(&out)
    );
    ensure!(!conn_file.exists(), "a refused bundle wrote a connection");

    // A sequencer of another domain (certificate of the provider's CA, so TLS passes) and
    // one of this domain id with another key.
    let other_logs = TestLogs::new("onboarding-other-domain");
    let pg = PgCluster::shared();
    let mut other = SequencerCluster::start(
        other_logs.clone(),
        pg.create_database("ob_other").await,
        1,
        "",
    )
    .await?;
    if let Some(mut p) = other.nodes[0].process.take() {
        p.kill()?;
    }
    let provider = domain.cluster.pki_files.clone();
    config::edit(&other.nodes[0].config_path, |c: &mut SequencerConfig| {
        if let Some(tls) = &mut c.public_api.tls {
            tls.cert.clone_from(&provider.server_cert);
            tls.key.clone_from(&provider.server_key);
        }
    })?;
    let other_ep = other.nodes[0].public_endpoint();
    other.nodes[0].process = Some(
        spawn_sequencer(
            "other-domain-seq",
            &other.nodes[0].config_path,
            &other_ep,
            domain.cluster.client_tls(),
            &logs,
        )
        .await?,
    );
    let (rogue_ep, _rogue) = spawn_rogue(&domain, &logs, "ob_rogue").await?;

    let mut mixed_endpoints = vec![rogue_ep.clone(), other_ep.clone()];
    mixed_endpoints.extend(domain.sequencer_endpoints());
    let mixed = export_bundle(
        &domain.cluster.domain_id,
        &domain.cluster.domain_key,
        contents(mixed_endpoints),
    )?;
    let mixed_path = write_in(&party, "mixed.json", mixed)?;
    let out = connect(&mixed_path, &data_s).await?;
    let err = stderr(&out);
    ensure!(out.status.success(), "mixed bundle: {}", text(&out));
    ensure!(
        err.contains(&format!("{rogue_ep}: refused: presents sequencer key")),
        "rogue endpoint not refused: {err}"
    );
    ensure!(
        err.contains(&format!(
            "{other_ep}: refused: serves domain {}",
            other.domain_id
        )),
        "other domain's endpoint not refused: {err}"
    );
    let saved = std::fs::read_to_string(&conn_file)?;
    ensure!(
        !saved.contains(&rogue_ep) && !saved.contains(&other_ep),
        "refused endpoints saved:\n{saved}"
    );
    for ep in domain.sequencer_endpoints() {
        ensure!(saved.contains(&ep), "{ep} not saved:\n{saved}");
    }

    // The genuine bundle.
    let out = connect(&sent, &data_s).await?;
    ensure!(out.status.success(), "connect --bundle: {}", text(&out));
    let saved = std::fs::read_to_string(&conn_file)?;
    ensure!(
        saved.contains(&format!(
            "sequencer-key = \"{}\"",
            bundle.sequencer_key_fingerprint
        )),
        "sequencer key not pinned:\n{saved}"
    );

    // The allowlist entry bound the identity file's key before the party ever authenticated.
    let alice_key = domain_identity::onboarding::verify_identity(&identity_text)?.public_key;
    let db = domain_e2e::checks::db_client(&domain.cluster.database.url).await?;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let rows = db
            .query(
                "SELECT public_key FROM seq_members WHERE member = $1",
                &[&member],
            )
            .await?;
        let bound: Option<Vec<u8>> = rows.first().and_then(|r| r.get(0));
        if bound.as_deref() == Some(alice_key.as_bytes().as_slice()) {
            break;
        }
        ensure!(
            std::time::Instant::now() < deadline,
            "the sequencer did not bind the identity file's key: {bound:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // 3. The rogue endpoint first: the node keeps to the pinned domain and key.
    std::fs::write(
        &conn_file,
        saved.replacen(
            "endpoints = [",
            &format!("endpoints = [\n    \"{rogue_ep}\","),
            1,
        ),
    )?;
    let mut alice_admin = adopt_alice_and_ping_bob(&mut domain, &member, &data).await?;
    let status = alice_admin
        .status(domain_proto::participant::admin::v1::StatusRequest {})
        .await?
        .into_inner();
    ensure!(
        status
            .endpoints
            .iter()
            .any(|e| e.endpoint == rogue_ep && !e.healthy),
        "rogue endpoint not refused by the node: {status:?}"
    );

    // 4. mTLS: the other sequencer now requires client certificates of the provider's CA.
    if let Some(mut p) = other.nodes[0].process.take() {
        p.kill()?;
    }
    config::edit(&other.nodes[0].config_path, |c: &mut SequencerConfig| {
        if let Some(tls) = &mut c.public_api.tls {
            tls.client_ca = Some(provider.ca.clone());
            tls.require_client_cert = true;
        }
    })?;
    let files = &domain.cluster.pki_files;
    let identity = tonic::transport::Identity::from_pem(
        std::fs::read(&files.client_cert)?,
        std::fs::read(&files.client_key)?,
    );
    other.nodes[0].process = Some(
        spawn_sequencer(
            "other-domain-seq-mtls",
            &other.nodes[0].config_path,
            &other_ep,
            domain.cluster.client_tls().identity(identity),
            &logs,
        )
        .await?,
    );
    let mtls_dir = party.join("mtls");
    let mtls_s = mtls_dir.to_string_lossy().into_owned();
    participant_ok(&["init", "--name", "alice", "--data-dir", &mtls_s]).await?;
    let ca = files.ca.to_string_lossy().into_owned();
    let out = participant_cli(&mtls_connect_args(&other_ep, &ca, &mtls_s, &[])).await?;
    ensure!(
        !out.status.success() && stderr(&out).contains("the sequencer refused"),
        "no client certificate: {}",
        text(&out)
    );
    eprintln!("mTLS refusal: {}", stderr(&out));
    ensure!(!mtls_dir.join("domain-connection.toml").exists());
    let (cert, key) = (
        files.client_cert.to_string_lossy().into_owned(),
        files.client_key.to_string_lossy().into_owned(),
    );
    // That domain has no domain manager, so no namespace-signed registration can vouch for
    // its sequencer key: pinned explicitly (issue 11 item 12).
    let other_key = seq_key(&other)?.fingerprint().to_string();
    let out = participant_cli(&mtls_connect_args(
        &other_ep,
        &ca,
        &mtls_s,
        &[
            "--client-cert",
            &cert,
            "--client-key",
            &key,
            "--expect-sequencer-key",
            &other_key,
        ],
    ))
    .await?;
    ensure!(
        out.status.success(),
        "with a client certificate: {}",
        text(&out)
    );
    let saved = std::fs::read_to_string(mtls_dir.join("domain-connection.toml"))?;
    ensure!(saved.contains("client-cert = ") && saved.contains("client-key = "));

    other_logs.passed();
    domain.logs.passed();
    Ok(())
}

/// The provider allowlists the party from its identity `file`
/// (`domainctl participants set-state --identity-file <file> --permission submission`).
async fn set_state(
    domain: &Domain,
    file: &std::path::Path,
) -> anyhow::Result<std::process::Output> {
    domain_localnet::domain_managers::domainctl(
        &domain.dms.endpoints(),
        &[
            "participants",
            "set-state",
            "--identity-file",
            &file.to_string_lossy(),
            "--permission",
            "submission",
        ],
    )
    .await
}

/// The party connects from the bundle `file` (`participant connect --bundle <file>`).
async fn connect(file: &std::path::Path, data_dir: &str) -> anyhow::Result<std::process::Output> {
    participant_cli(&[
        "connect",
        "--bundle",
        &file.to_string_lossy(),
        "--timeout",
        "3s",
        "--data-dir",
        data_dir,
    ])
    .await
}

/// `connect-multi mtls <endpoint> --ca <ca> <extra…> --timeout 3s --data-dir <data_dir>`.
fn mtls_connect_args<'a>(
    endpoint: &'a str,
    ca: &'a str,
    data_dir: &'a str,
    extra: &[&'a str],
) -> Vec<&'a str> {
    let mut args = vec!["connect-multi", "mtls", endpoint, "--ca", ca];
    args.extend_from_slice(extra);
    args.extend(["--timeout", "3s", "--data-dir", data_dir]);
    args
}

type AdminClient =
    domain_proto::participant::admin::v1::participant_admin_service_client::ParticipantAdminServiceClient<
        tonic::transport::Channel,
    >;

/// Starts the party's node `alice` (identity `member`, data directory `data`; bob is
/// participant 0) and pings bob from it and it from bob, both approved; returns alice's
/// admin client.
async fn adopt_alice_and_ping_bob(
    domain: &mut Domain,
    member: &str,
    data: &std::path::Path,
) -> anyhow::Result<AdminClient> {
    let alice = domain
        .adopt_participant("alice", member, data.to_path_buf(), "payload", true)
        .await?;
    let bob_member = domain.participants[0].member.clone();
    let mut alice_admin = domain.participants[alice].admin().await?;
    let mut bob_admin = domain.participants[0].admin().await?;
    let r = ping_until_mediator_known(&mut alice_admin, &bob_member).await?;
    ensure!(r.verdict() == PingVerdict::Approved, "alice -> bob: {r:?}");
    let r = ping_until_mediator_known(&mut bob_admin, member).await?;
    ensure!(r.verdict() == PingVerdict::Approved, "bob -> alice: {r:?}");
    Ok(alice_admin)
}

/// A ping, retried while the node has not yet read the mediator registration from the
/// topology history at the start of its stream (a node is healthy once subscribed, which can
/// be a moment before that; on a loaded machine the first ping can come first).
async fn ping_until_mediator_known(
    from: &mut AdminClient,
    target: &str,
) -> anyhow::Result<domain_proto::participant::admin::v1::PingResponse> {
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    loop {
        match ping_rpc(from, target, Duration::from_secs(10)).await {
            Err(s)
                if s.code() == tonic::Code::FailedPrecondition
                    && std::time::Instant::now() < deadline =>
            {
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            other => return Ok(other?),
        }
    }
}

/// Writes `contents` to the file `name` in `dir`; returns its path.
fn write_in(
    dir: &std::path::Path,
    name: &str,
    contents: impl AsRef<[u8]>,
) -> anyhow::Result<std::path::PathBuf> {
    let path = dir.join(name);
    std::fs::write(&path, contents)?;
    Ok(path)
}

fn hex_key(key: &PublicKey) -> String {
    key.as_bytes().iter().map(|b| format!("{b:02x}")).collect()
}

/// The cluster's sequencer key (from its key file).
fn seq_key(cluster: &SequencerCluster) -> anyhow::Result<PublicKey> {
    let path = cluster.logs.path("sequencer-key.pem");
    Ok(SigningKeyPair::load_pem(&path)?.public_key().clone())
}
