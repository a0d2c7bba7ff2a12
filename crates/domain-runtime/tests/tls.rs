//! TLS and mutual TLS against a real gRPC server on 127.0.0.1, with certificates from a
//! per-test CA.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use domain_runtime::grpc::{self, GrpcServerConfig};
use domain_runtime::tls::{self, ClientTlsFiles, ServerTlsFiles, TlsError};
use domain_testkit::certs::{PkiFiles, TestPki};
use tonic::transport::Endpoint;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

mod common;
use common::Served;

fn install_provider() {
    // Several tests race to install it; only the first call wins, which is fine.
    let _ = rustls::crypto::ring::default_provider().install_default();
}

struct TestServer {
    addr: SocketAddr,
    served: Served,
}

impl TestServer {
    async fn start(tls: ServerTlsFiles) -> Self {
        install_provider();
        let config = GrpcServerConfig {
            tls: Some(tls),
            ..GrpcServerConfig::with_listen("127.0.0.1:0".parse().expect("addr"))
        };
        let listener = grpc::bind(&config).await.expect("bind");
        let addr = listener.local_addr().expect("local addr");
        let (health, health_service) = grpc::health_service(config.max_message_size).await;
        health.set_ready(true).await;
        let router = grpc::server_builder(&config)
            .expect("server builder")
            .add_service(health_service);
        let limits = config.connection_limits();
        let served =
            Served::spawn(|shutdown| grpc::serve(router, listener, limits, "test", shutdown));
        Self { addr, served }
    }

    async fn stop(self) {
        self.served.stop().await;
    }
}

fn server_files(files: &PkiFiles, require_client_cert: bool) -> ServerTlsFiles {
    ServerTlsFiles {
        cert: files.server_cert.clone(),
        key: files.server_key.clone(),
        client_ca: require_client_cert.then(|| files.ca.clone()),
        require_client_cert,
    }
}

fn client_files(ca: &Path, identity: Option<(&Path, &Path)>) -> ClientTlsFiles {
    ClientTlsFiles {
        ca: ca.to_owned(),
        cert: identity.map(|(cert, _)| cert.to_owned()),
        key: identity.map(|(_, key)| key.to_owned()),
        domain_name: Some("localhost".to_owned()),
    }
}

/// Connects over TLS and calls `Health/Check` for `service`; any failure is returned as text.
async fn check(
    addr: SocketAddr,
    files: &ClientTlsFiles,
    service: &str,
) -> Result<ServingStatus, String> {
    let tls = tls::client_tls_config(files).map_err(|e| e.to_string())?;
    let channel = Endpoint::from_shared(format!("https://{addr}"))
        .map_err(|e| e.to_string())?
        .tls_config(tls)
        .map_err(|e| e.to_string())?
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(5))
        .connect()
        .await
        .map_err(|e| format!("connect: {e:?}"))?;
    let response = HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: service.to_owned(),
        })
        .await
        .map_err(|status| format!("check: {status:?}"))?;
    Ok(response.into_inner().status())
}

/// A fresh PKI written to a temporary directory (kept while the directory lives).
fn pki_files(name: Option<&str>) -> (tempfile::TempDir, PkiFiles) {
    let dir = tempfile::tempdir().expect("tempdir");
    let pki = match name {
        None => TestPki::new(),
        Some(name) => TestPki::with_name(name),
    };
    let files = pki
        .expect("pki")
        .write_files(dir.path())
        .expect("write pki");
    (dir, files)
}

#[tokio::test]
async fn client_trusting_the_ca_gets_serving_and_others_are_refused() {
    let (_dir, files) = pki_files(None);
    let server = TestServer::start(server_files(&files, false)).await;

    let trusting = client_files(&files.ca, None);
    assert_eq!(
        check(server.addr, &trusting, "").await,
        Ok(ServingStatus::Serving)
    );
    assert_eq!(
        check(server.addr, &trusting, grpc::LIVENESS_SERVICE).await,
        Ok(ServingStatus::Serving)
    );

    let (_other_dir, other) = pki_files(Some("some other ca"));
    let distrusting = client_files(&other.ca, None);
    let refused = check(server.addr, &distrusting, "").await;
    assert!(refused.is_err(), "client with another CA got {refused:?}");

    server.stop().await;
}

#[tokio::test]
async fn mutual_tls_requires_a_client_certificate_from_the_ca() {
    let (_dir, files) = pki_files(None);
    let server = TestServer::start(server_files(&files, true)).await;

    let anonymous = client_files(&files.ca, None);
    let refused = check(server.addr, &anonymous, "").await;
    assert!(
        refused.is_err(),
        "client without certificate got {refused:?}"
    );

    let (_other_dir, other) = pki_files(Some("rogue ca"));
    let rogue = client_files(&files.ca, Some((&other.client_cert, &other.client_key)));
    let refused = check(server.addr, &rogue, "").await;
    assert!(
        refused.is_err(),
        "client with foreign certificate got {refused:?}"
    );

    let authenticated = client_files(&files.ca, Some((&files.client_cert, &files.client_key)));
    assert_eq!(
        check(server.addr, &authenticated, "").await,
        Ok(ServingStatus::Serving)
    );

    server.stop().await;
}

fn expect_invalid(result: Result<impl std::fmt::Debug, TlsError>, path: &Path, problem: &str) {
    let error = result.expect_err("must be rejected");
    let message = error.to_string();
    assert!(
        message.contains(&path.display().to_string()),
        "names the file: {message}"
    );
    assert!(message.contains(problem), "says `{problem}`: {message}");
}

#[test]
fn tls_file_errors_name_the_file_and_the_problem() {
    install_provider();
    let (dir, files) = pki_files(None);

    let missing = dir.path().join("absent.pem");
    let garbage: PathBuf = dir.path().join("garbage.pem");
    std::fs::write(&garbage, "not pem at all\n").expect("write");
    // (certificate, key, the file the error must name, the problem it must say)
    let server_cases = [
        (&missing, &files.server_key, &missing, "does not exist"),
        (
            &garbage,
            &files.server_key,
            &garbage,
            "no certificate found",
        ),
        // A certificate where the key should be.
        (
            &files.server_cert,
            &files.server_cert,
            &files.server_cert,
            "no private key found",
        ),
        // The client key does not belong to the server certificate.
        (
            &files.server_cert,
            &files.client_key,
            &files.client_key,
            "unusable",
        ),
    ];
    for (cert, key, named, problem) in server_cases {
        expect_invalid(
            tls::server_tls_config(&ServerTlsFiles {
                cert: cert.clone(),
                key: key.clone(),
                client_ca: None,
                require_client_cert: false,
            }),
            named,
            problem,
        );
    }

    expect_invalid(
        tls::client_tls_config(&ClientTlsFiles {
            ca: garbage.clone(),
            cert: None,
            key: None,
            domain_name: None,
        }),
        &garbage,
        "no certificate found",
    );

    let contradictory = tls::server_tls_config(&ServerTlsFiles {
        cert: files.server_cert.clone(),
        key: files.server_key.clone(),
        client_ca: None,
        require_client_cert: true,
    });
    assert!(matches!(contradictory, Err(TlsError::Settings(_))));

    let half_identity = tls::client_tls_config(&ClientTlsFiles {
        ca: files.ca.clone(),
        cert: Some(files.client_cert.clone()),
        key: None,
        domain_name: None,
    });
    assert!(matches!(half_identity, Err(TlsError::Settings(_))));
}

#[test]
fn loaded_certificates_report_their_expiry() {
    let (_dir, files) = pki_files(None);
    domain_runtime::tls::server_tls_config(&server_files(&files, true)).expect("server tls");
    let text = domain_runtime::scrape::render();
    // rcgen's default notAfter is 4096-01-01T00:00:00Z.
    let expiry = 67_090_118_400_i64;
    for (role, path) in [
        ("server certificate", &files.server_cert),
        ("client ca", &files.ca),
    ] {
        let prefix = format!(
            r#"tls_certificate_expiry_timestamp_seconds{{role="{role}",path="{}",subject="#,
            path.display()
        );
        let line = text
            .lines()
            .find(|l| l.starts_with(&prefix))
            .unwrap_or_else(|| panic!("no expiry for {role}:\n{text}"));
        assert!(line.ends_with(&format!(" {expiry}")), "{line}");
    }
}
