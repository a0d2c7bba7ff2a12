//! The component configs inside every rendered kustomization (each of
//! `deploy/k8s/overlays/*` and `deploy/k8s/participant`) load with the components' real
//! config loaders and validate, exactly as their containers would see them: the TOML file
//! from the ConfigMap mounted where `--config-file` points, the container's environment
//! (literal values with `$(VAR)` expansion, ConfigMap keys, field references) and its
//! `--set` flags, every mounted file present (keys and certificates made here), and the
//! `domain-identity` ConfigMap made as the bootstrap Job makes it: `domain-bootstrap` run
//! with the Job's own arguments on freshly generated keys, stored under the keys of the
//! Job's `kubectl create configmap --from-file=KEY=PATH` arguments.
//!
//! Needs `kubectl` (for `kubectl kustomize`); fails, never skips, without it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use domain_identity::SigningKeyPair;
use domain_testkit::certs::TestPki;
use serde_json::Value;

fn k8s_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/k8s")
}

/// Every kustomization a user applies.
fn targets() -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(k8s_dir().join("overlays"))
        .expect("read deploy/k8s/overlays")
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.join("kustomization.yaml").exists())
        .collect();
    dirs.sort();
    dirs.push(k8s_dir().join("participant"));
    dirs
}

fn render(dir: &Path) -> Vec<Value> {
    let out = Command::new("kubectl")
        .arg("kustomize")
        .arg(dir)
        .output()
        .unwrap_or_else(|e| panic!("kubectl must be installed to render {}: {e}", dir.display()));
    assert!(
        out.status.success(),
        "kubectl kustomize {}: {}",
        dir.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).expect("utf-8 manifests");
    serde_yaml_ng::Deserializer::from_str(&text)
        .map(|doc| serde::Deserialize::deserialize(doc).expect("a YAML document"))
        .filter(|v: &Value| !v.is_null())
        .collect()
}

fn str_of<'a>(v: &'a Value, pointer: &str) -> &'a str {
    v.pointer(pointer)
        .and_then(Value::as_str)
        .unwrap_or_else(|| panic!("{pointer} in {v}"))
}

fn list<'a>(v: &'a Value, pointer: &str) -> &'a [Value] {
    v.pointer(pointer)
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default()
}

/// The keys the bootstrap Job generates, and the ids the components must end up with,
/// derived here independently of the Job (`domain_manager::domain_id_of_key_file`, the
/// mediator's `MED::<name>::<fingerprint>`).
struct Identity {
    domain_id: String,
    namespace_key: SigningKeyPair,
    mediator_key: SigningKeyPair,
    /// `domain-identity` as the Job creates it.
    configmap: Value,
}

/// The name an operator gives the domain where the overlay leaves it empty.
const OPERATOR_DOMAIN_NAME: &str = "acme-domain";

fn job_args(c: &Value) -> Vec<&str> {
    list(c, "/args").iter().filter_map(Value::as_str).collect()
}

impl Identity {
    /// Runs the bootstrap Job's identity step (domain-bootstrap with the Job's arguments)
    /// and its `kubectl create configmap` step on keys generated under `scratch`.
    fn bootstrap(docs: &[Value], scratch: &Path) -> Self {
        let configmaps: BTreeMap<&str, &Value> = docs
            .iter()
            .filter(|d| d["kind"] == "ConfigMap")
            .map(|d| (str_of(d, "/metadata/name"), d))
            .collect();
        let job = docs
            .iter()
            .find(|d| d["kind"] == "Job" && d["metadata"]["name"] == "domain-bootstrap")
            .expect("the bootstrap Job");
        let pod = &job["spec"]["template"]["spec"];
        let containers: Vec<&Value> = list(pod, "/initContainers")
            .iter()
            .chain(list(pod, "/containers"))
            .collect();
        // /out in the Job's containers is scratch/out here.
        let out = scratch.join("out");
        std::fs::create_dir_all(&out).expect("out dir");
        let local = |path: &str| out.join(path.strip_prefix("/out/").expect("a path under /out"));
        let step = containers
            .iter()
            .find(|c| {
                list(c, "/command").first().and_then(Value::as_str)
                    == Some("/usr/local/bin/domain-bootstrap")
            })
            .expect("the Job runs domain-bootstrap");
        let mut domain_name = String::new();
        for e in list(step, "/env") {
            let r = e
                .pointer("/valueFrom/configMapKeyRef")
                .expect("env from a ConfigMap");
            domain_name = str_of(
                configmaps[str_of(r, "/name")],
                &format!("/data/{}", str_of(r, "/key")),
            )
            .to_owned();
        }
        if domain_name.is_empty() {
            domain_name = OPERATOR_DOMAIN_NAME.to_owned();
        }
        let flags: BTreeMap<&str, String> = job_args(step)
            .iter()
            .map(|a| {
                let (k, v) = a.split_once('=').expect("--flag=value");
                (k, v.replace("$(DOMAIN_NAME)", &domain_name))
            })
            .collect();
        let namespace_key = SigningKeyPair::generate();
        let mediator_key = SigningKeyPair::generate();
        let ns_file = local(&flags["--namespace-key"]);
        namespace_key.save_pem(&ns_file).expect("save key");
        let med_file = local(&flags["--mediator-key"]);
        mediator_key.save_pem(&med_file).expect("save key");
        domain_bootstrap::Identity::of_keys(
            &ns_file,
            &flags["--domain-name"],
            &med_file,
            &flags["--mediator-name"],
        )
        .expect("domain-bootstrap with the Job's arguments")
        .write(&local(&flags["--out"]))
        .expect("write ids");
        let store = containers
            .iter()
            .find(|c| job_args(c).starts_with(&["create", "configmap", "domain-identity"]))
            .expect("the Job creates domain-identity");
        let mut data = serde_json::Map::new();
        for a in job_args(store) {
            if let Some(spec) = a.strip_prefix("--from-file=") {
                let (key, path) = spec.split_once('=').expect("--from-file=KEY=PATH");
                let text = std::fs::read_to_string(local(path)).expect("a file the Job wrote");
                data.insert(key.to_owned(), Value::String(text));
            }
        }
        let domain_id = domain_manager::domain_id_of_key_file(&ns_file, &domain_name)
            .expect("domain id")
            .to_string();
        Self {
            domain_id,
            namespace_key,
            mediator_key,
            configmap: serde_json::json!({"metadata": {"name": "domain-identity"}, "data": data}),
        }
    }

    fn mediator_id(&self) -> String {
        format!("MED::mediator::{}", self.mediator_key.fingerprint())
    }
}

/// One container's view: its config text with absolute paths moved under `root`, its
/// `<PREFIX>__*` environment and its `--set` flags.
struct ContainerConfig {
    image: String,
    file: PathBuf,
    env: Vec<(String, String)>,
    sets: Vec<String>,
}

impl ContainerConfig {
    /// Loads the container's config as the component does (its file, its `<prefix>__*`
    /// environment, its `--set` flags); panics naming `what`.
    fn load<T>(&self, prefix: &str, what: &str) -> T
    where
        T: serde::Serialize + serde::de::DeserializeOwned + Default,
    {
        let env: Vec<(String, String)> = self
            .env
            .iter()
            .filter(|(k, _)| k.starts_with(&format!("{prefix}__")))
            .cloned()
            .collect();
        domain_runtime::config::load(Some(&self.file), env, prefix, &self.sets)
            .unwrap_or_else(|e| panic!("{what}: {e}"))
    }
}

/// Writes what a mounted volume holds under `root/<mountPath>`: ConfigMap files as
/// rendered, Secret keys as real keys and certificates of the right kind.
fn materialise(
    root: &Path,
    mount: &str,
    volume: &Value,
    configmaps: &BTreeMap<String, Value>,
    identity: &Identity,
    pki: &TestPki,
) {
    let dir = root.join(mount.trim_start_matches('/'));
    std::fs::create_dir_all(&dir).expect("mount dir");
    if let Some(name) = volume.pointer("/configMap/name").and_then(Value::as_str) {
        let cm = &configmaps[name];
        for (file, text) in cm["data"].as_object().expect("configmap data") {
            std::fs::write(dir.join(file), text.as_str().expect("text")).expect("write");
        }
        return;
    }
    let mut files: Vec<String> = Vec::new();
    if volume.get("secret").is_some() {
        let items = list(volume, "/secret/items");
        if items.is_empty() {
            files.extend(["tls.crt", "tls.key", "ca.crt"].map(String::from));
        }
        files.extend(items.iter().map(|i| str_of(i, "/path").to_owned()));
        // Key Secrets (no items) hold one PEM key named like the file the config reads.
        let secret = str_of(volume, "/secret/secretName");
        if secret.ends_with("-signing-key") || secret == "domain-namespace-key" {
            files.clear();
            files.extend(["namespace.pem", "mediator.pem", "sequencer-key.pem"].map(String::from));
        }
    }
    for source in list(volume, "/projected/sources") {
        files.extend(
            list(source, "/secret/items")
                .iter()
                .map(|i| str_of(i, "/path").to_owned()),
        );
    }
    let server = pki
        .issue_server(&["domain-manager-admin", "sequencer"])
        .expect("server cert");
    for file in files {
        let path = dir.join(&file);
        match file.as_str() {
            "namespace.pem" => identity.namespace_key.save_pem(&path).expect("key"),
            "mediator.pem" => identity.mediator_key.save_pem(&path).expect("key"),
            "sequencer-key.pem" => SigningKeyPair::generate().save_pem(&path).expect("key"),
            "tls.crt" => std::fs::write(&path, &server.cert_pem).expect("write"),
            "tls.key" => std::fs::write(&path, &server.key_pem).expect("write"),
            "ca.crt" | "client-ca.crt" => std::fs::write(&path, pki.ca_pem()).expect("write"),
            _ => std::fs::write(&path, "secret-password").expect("write"),
        }
    }
}

/// Kubernetes' `$(VAR)` expansion against the variables defined before.
fn expand(value: &str, defined: &BTreeMap<String, String>) -> String {
    let mut out = value.to_owned();
    for (name, v) in defined {
        out = out.replace(&format!("$({name})"), v);
    }
    out
}

fn container_configs(
    docs: &[Value],
    root: &Path,
    identity: &Identity,
    pki: &TestPki,
) -> Vec<ContainerConfig> {
    let mut configmaps: BTreeMap<String, Value> = docs
        .iter()
        .filter(|d| d["kind"] == "ConfigMap")
        .map(|d| (str_of(d, "/metadata/name").to_owned(), d.clone()))
        .collect();
    // Made by the bootstrap Job at run time, so not among the rendered objects.
    assert!(
        !configmaps.contains_key("domain-identity"),
        "domain-identity is the Job's to create; a rendered one would make its create fail"
    );
    configmaps.insert("domain-identity".to_owned(), identity.configmap.clone());
    let mut found = Vec::new();
    for doc in docs {
        if !matches!(doc["kind"].as_str(), Some("Deployment" | "StatefulSet")) {
            continue;
        }
        let pod = &doc["spec"]["template"]["spec"];
        let volumes: BTreeMap<&str, &Value> = list(pod, "/volumes")
            .iter()
            .map(|v| (str_of(v, "/name"), v))
            .collect();
        for c in list(pod, "/containers") {
            let args: Vec<&str> = list(c, "/args").iter().filter_map(Value::as_str).collect();
            let Some(at) = args.iter().position(|a| *a == "--config-file") else {
                continue;
            };
            let croot = root.join(format!(
                "{}-{}",
                str_of(doc, "/metadata/name"),
                str_of(c, "/name")
            ));
            let mut mounts = Vec::new();
            for m in list(c, "/volumeMounts") {
                let mount = str_of(m, "/mountPath");
                materialise(
                    &croot,
                    mount,
                    volumes[str_of(m, "/name")],
                    &configmaps,
                    identity,
                    pki,
                );
                mounts.push(mount.to_owned());
            }
            // The config names absolute paths inside the container: move them under croot.
            let file = croot.join(args[at + 1].trim_start_matches('/'));
            let mut text = std::fs::read_to_string(&file).expect("config file is mounted");
            for mount in &mounts {
                let moved = format!("{}{mount}", croot.display());
                text = text
                    .replace(&format!("\"{mount}"), &format!("\"{moved}"))
                    .replace(&format!("={mount}/"), &format!("={moved}/"));
            }
            std::fs::write(&file, text).expect("write moved config");

            let mut defined = BTreeMap::new();
            for e in list(c, "/env") {
                let name = str_of(e, "/name").to_owned();
                let value = if let Some(v) = e.get("value").and_then(Value::as_str) {
                    expand(v, &defined)
                } else if let Some(r) = e.pointer("/valueFrom/configMapKeyRef") {
                    let cm = &configmaps[str_of(r, "/name")];
                    str_of(cm, &format!("/data/{}", str_of(r, "/key"))).to_owned()
                } else {
                    // Field references: what the kubelet would put there.
                    match str_of(e, "/valueFrom/fieldRef/fieldPath") {
                        "status.podIP" => "10.1.2.3".to_owned(),
                        "metadata.namespace" => "canton-domain".to_owned(),
                        _ => "pod-0".to_owned(),
                    }
                };
                defined.insert(name, value);
            }
            // Paths in environment overrides move under croot like the config's.
            for value in defined.values_mut() {
                for mount in &mounts {
                    let moved = format!("{}{mount}", croot.display());
                    if value.starts_with(&format!("{mount}/")) {
                        *value = format!("{moved}{}", &value[mount.len()..]);
                    }
                    *value = value.replace(&format!("={mount}/"), &format!("={moved}/"));
                }
            }
            let sets = args
                .windows(2)
                .filter(|w| w[0] == "--set")
                .map(|w| w[1].to_owned())
                .collect();
            found.push(ContainerConfig {
                image: str_of(c, "/image").to_owned(),
                file,
                env: defined.into_iter().collect(),
                sets,
            });
        }
    }
    found
}

fn component(image: &str) -> &str {
    let name = image.rsplit('/').next().expect("image");
    name.split([':', '@']).next().expect("image name")
}

fn sequencer_replicas(docs: &[Value]) -> Option<u64> {
    docs.iter()
        .find(|d| d["kind"] == "StatefulSet" && d["metadata"]["name"] == "sequencer")
        .map(|d| d["spec"]["replicas"].as_u64().expect("replicas"))
}

fn pods(n: u64) -> Vec<String> {
    (0..n)
        .map(|i| format!("https://sequencer-{i}.sequencer-pods:5001"))
        .collect()
}

#[test]
fn every_rendered_config_loads_and_validates() {
    let pki = TestPki::new().expect("test pki");
    let mut checked = Vec::new();
    for target in targets() {
        let name = target
            .strip_prefix(k8s_dir())
            .expect("under deploy/k8s")
            .display()
            .to_string();
        let docs = render(&target);
        let scratch = tempfile::tempdir().expect("tempdir");
        // Only where the domain runs: the participant overlay has no bootstrap Job.
        let identity = if docs.iter().any(|d| d["kind"] == "Job") {
            Identity::bootstrap(&docs, scratch.path())
        } else {
            Identity {
                domain_id: String::new(),
                namespace_key: SigningKeyPair::generate(),
                mediator_key: SigningKeyPair::generate(),
                configmap: serde_json::json!({"data": {}}),
            }
        };
        let public = docs
            .iter()
            .any(|d| d["kind"] == "Service" && d["spec"]["type"] == "LoadBalancer");
        let replicas = sequencer_replicas(&docs);
        let configs = container_configs(&docs, scratch.path(), &identity, &pki);
        assert!(!configs.is_empty(), "{name}: no component configs found");
        for c in configs {
            let what = format!("{name}: {}", component(&c.image));
            let database = match component(&c.image) {
                "sequencer" => {
                    let s: domain_sequencer::SequencerConfig = c.load("SEQUENCER", &what);
                    assert_eq!(
                        s.domain_id.map(|d| d.to_string()).as_ref(),
                        Some(&identity.domain_id),
                        "{what}"
                    );
                    assert!(s.public_api.tls.is_some(), "{what}: public TLS");
                    // The knob: reflection is off where other organisations connect.
                    assert_eq!(s.public_api.reflection, !public, "{what}: reflection");
                    s.database
                }
                "mediator" => {
                    let m: domain_mediator::MediatorConfig = c.load("MEDIATOR", &what);
                    m.validate().unwrap_or_else(|e| panic!("{what}: {e}"));
                    assert_eq!(
                        m.domain_id.map(|d| d.to_string()).as_ref(),
                        Some(&identity.domain_id),
                        "{what}"
                    );
                    // The Job names the mediator `mediator` in its id: so must the config.
                    assert_eq!(m.name, "mediator", "{what}");
                    assert_eq!(m.sequencers, pods(replicas.expect("sequencers")), "{what}");
                    m.database
                }
                "domain-manager" => {
                    let mut d: domain_manager::DomainManagerConfig =
                        c.load("DOMAIN_MANAGER", &what);
                    d.validate().unwrap_or_else(|e| panic!("{what}: {e}"));
                    assert_eq!(d.genesis.mediators, [identity.mediator_id()], "{what}");
                    let endpoints: Vec<_> = d
                        .sequencers
                        .iter()
                        .map(|s| s.public_endpoint.clone())
                        .collect();
                    assert_eq!(endpoints, pods(replicas.expect("sequencers")), "{what}");
                    d.database
                }
                "participant" => {
                    let p: domain_participant::config::ParticipantConfig =
                        c.load("PARTICIPANT", &what);
                    p.validate().unwrap_or_else(|e| panic!("{what}: {e}"));
                    p.database
                }
                other => panic!("{name}: unexpected component image {other}"),
            };
            let url = database.url.expose().to_owned();
            assert!(
                url.contains("sslmode=verify-full") && url.contains("sslrootcert="),
                "{what}: database url {url} does not verify the server"
            );
            if docs.iter().any(|d| d["kind"] == "Cluster") {
                assert!(url.contains("@domain-pg-rw:"), "{what}: {url}");
                // Certificate login (crates/domain-storage/tests/tls.rs shows PostgreSQL
                // admitting exactly this): a client certificate and no password at all.
                assert!(
                    database.sslcert.is_some() && database.sslkey.is_some(),
                    "{what}: no client certificate"
                );
                assert!(
                    database
                        .resolve_password()
                        .expect("password source")
                        .is_none()
                        && database.password_file.is_none(),
                    "{what}: a password is configured"
                );
            } else if component(&c.image) != "participant" {
                // overlays/managed-postgres: the provider's server, with a password login.
                assert!(
                    url.contains("@postgres.example.invalid:5432/"),
                    "{what}: {url}"
                );
                assert!(
                    database.password_file.is_some()
                        && database.resolve_password().expect("password").is_some(),
                    "{what}: no password for the managed server"
                );
            }
            checked.push(what);
        }
    }
    // The five domain overlays (aks, eks, example, gke, managed-postgres) have three
    // configs each, plus the participant.
    assert!(checked.len() >= 16, "{checked:?}");
}
