//! The `domain-bootstrap` binary against keys made the way the bootstrap Job makes them:
//! its files hold exactly the ids the components derive, with nothing around them.

use std::path::Path;
use std::process::Command;

use domain_identity::SigningKeyPair;

fn run(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_domain-bootstrap"))
        .args(args)
        .output()
        .expect("run domain-bootstrap")
}

fn read(dir: &Path, name: &str) -> String {
    std::fs::read_to_string(dir.join(name)).expect("output file")
}

#[test]
fn writes_the_ids_the_components_derive() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let ns = tmp.path().join("namespace.pem");
    let med = tmp.path().join("mediator.pem");
    // As `domain-manager init` and `mediator generate-key` make them.
    let (domain_id, created) =
        domain_manager::init_namespace_key(&ns, "acme-domain").expect("namespace key");
    assert!(created);
    let mediator_key = SigningKeyPair::generate();
    mediator_key.save_pem(&med).expect("mediator key");
    let out = tmp.path().join("identity");
    let args = [
        "--namespace-key",
        ns.to_str().expect("utf-8"),
        "--domain-name",
        "acme-domain",
        "--mediator-key",
        med.to_str().expect("utf-8"),
        "--out",
        out.to_str().expect("utf-8"),
    ];
    let done = run(&args);
    assert!(done.status.success(), "{done:?}");

    assert_eq!(read(&out, "domain-name"), "acme-domain");
    assert_eq!(read(&out, "domain-id"), domain_id.to_string());
    let mediator_id = domain_mediator::mediator_id("mediator", &mediator_key).expect("id");
    assert_eq!(read(&out, "mediator-id"), mediator_id.to_string());
    assert_eq!(
        read(&out, "mediator-id"),
        format!("MED::mediator::{}", mediator_key.fingerprint())
    );
    // The ids parse back as what the services expect (no newline, no padding).
    read(&out, "domain-id")
        .parse::<domain_identity::DomainId>()
        .expect("domain id parses");
    read(&out, "mediator-id")
        .parse::<domain_identity::MemberId>()
        .expect("mediator id parses");
    let stdout = String::from_utf8(done.stdout).expect("utf-8");
    assert!(
        stdout.contains(&format!("domain-id={domain_id}\n")),
        "{stdout}"
    );

    // A second run never overwrites, and says which file is in the way.
    let before = read(&out, "domain-id");
    let again = run(&args);
    assert_eq!(again.status.code(), Some(1), "{again:?}");
    let stderr = String::from_utf8_lossy(&again.stderr);
    assert!(
        stderr.contains("domain-name") && stderr.contains("exists"),
        "{stderr}"
    );
    assert_eq!(read(&out, "domain-id"), before);
}

#[test]
fn bad_input_is_named_and_writes_nothing() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let ns = tmp.path().join("namespace.pem");
    let med = tmp.path().join("mediator.pem");
    SigningKeyPair::generate().save_pem(&ns).expect("key");
    SigningKeyPair::generate().save_pem(&med).expect("key");
    let out = tmp.path().join("identity");
    let o = out.to_str().expect("utf-8");
    let n = ns.to_str().expect("utf-8");
    let m = med.to_str().expect("utf-8");

    let cases: [(&[&str], i32, &str); 4] = [
        (
            &[
                "--namespace-key",
                n,
                "--domain-name",
                "bad::name",
                "--mediator-key",
                m,
                "--out",
                o,
            ],
            64,
            "invalid domain name",
        ),
        (
            &[
                "--namespace-key",
                n,
                "--domain-name",
                "d",
                "--mediator-key",
                m,
                "--mediator-name",
                "a::b",
                "--out",
                o,
            ],
            64,
            "--mediator-name",
        ),
        (
            &[
                "--namespace-key",
                "/nonexistent/ns.pem",
                "--domain-name",
                "d",
                "--mediator-key",
                m,
                "--out",
                o,
            ],
            1,
            "/nonexistent/ns.pem",
        ),
        (
            &[
                "--namespace-key",
                n,
                "--domain-name",
                "d",
                "--mediator-key",
                n,
                "--mediator-name",
                "m",
                "--out",
                "/proc/no-such-dir",
            ],
            1,
            "/proc/no-such-dir",
        ),
    ];
    for (args, code, needle) in cases {
        let done = run(args);
        let stderr = String::from_utf8_lossy(&done.stderr);
        assert_eq!(done.status.code(), Some(code), "{args:?}: {stderr}");
        assert!(stderr.contains(needle), "{args:?}: {stderr}");
        assert!(!out.exists(), "{args:?} wrote {}", out.display());
    }
}
