//! The config files of a local domain: each service's own config struct (the one its
//! loader deserializes), filled in here and written as TOML with `toml`.
//!
//! Only the values that differ from the service's defaults are written, so a file reads
//! like one an operator would write. [`render`] checks that the service's own loader
//! accepts the text it produces before anything is written.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use domain_manager::DomainManagerConfig;
use domain_manager::config::{ComponentKind, SequencerEndpointConfig, StatusComponentConfig};
use domain_mediator::MediatorConfig;
use domain_participant::ParticipantConfig;
use domain_participant::config::AutoConfirm;
use domain_runtime::grpc::GrpcServerConfig;
use domain_runtime::tls::{ClientTlsFiles, ServerTlsFiles};
use domain_sequencer::SequencerConfig;
use domain_storage::DatabaseConfig;
use domain_testkit::certs::PkiFiles;
use domain_testkit::process::free_port;
use serde::Serialize;
use serde::de::DeserializeOwned;
use toml::{Table, Value};

/// A service's config struct, as its binary loads it.
pub trait ServiceConfig: Serialize + DeserializeOwned + Default {
    /// Prefix of the service's environment overrides (`<PREFIX>__KEY`), as its `main` passes
    /// it to `domain_runtime::config::load_or_exit`.
    const ENV_PREFIX: &'static str;
    /// The `[database]` section.
    fn database(&self) -> &DatabaseConfig;
}

/// `ServiceConfig` for a config struct with a `database` field.
macro_rules! service_config {
    ($($config:ty => $prefix:literal),* $(,)?) => {$(
        impl ServiceConfig for $config {
            const ENV_PREFIX: &'static str = $prefix;
            fn database(&self) -> &DatabaseConfig {
                &self.database
            }
        }
    )*};
}

service_config! {
    SequencerConfig => "SEQUENCER",
    DomainManagerConfig => "DOMAIN_MANAGER",
    MediatorConfig => "MEDIATOR",
    ParticipantConfig => "PARTICIPANT",
}

/// Extra settings over a generated config: TOML as an operator writes it (tests use it for
/// the one setting a scenario needs, e.g. `pruning.interval = "0s"`). Tables merge key by
/// key, anything else replaces the generated value.
pub fn layer(text: &str) -> anyhow::Result<Table> {
    toml::from_str(text).with_context(|| format!("invalid extra config {text:?}"))
}

/// Extra settings as TOML text from `(dotted key, value)` pairs, e.g.
/// `("pruning.interval", "0s".into())`: for values only known at run time (a port, a
/// constant), without writing TOML by hand.
pub fn settings(pairs: &[(&str, Value)]) -> String {
    let mut table = Table::new();
    for (key, value) in pairs {
        let mut parts: Vec<&str> = key.split('.').collect();
        let last = parts.pop().unwrap_or_default();
        let mut at = &mut table;
        for part in parts {
            let entry = at
                .entry(part.to_owned())
                .or_insert_with(|| Value::Table(Table::new()));
            if !entry.is_table() {
                *entry = Value::Table(Table::new());
            }
            let Value::Table(inner) = entry else {
                unreachable!("made a table above")
            };
            at = inner;
        }
        at.insert(last.to_owned(), value.clone());
    }
    table.to_string()
}

/// [`layer`] for the keys of one section, e.g. `connect-timeout = "1s"` of `[database]`.
pub fn section_layer(section: &str, text: &str) -> anyhow::Result<Table> {
    let mut table = Table::new();
    table.insert(section.to_owned(), Value::Table(layer(text)?));
    Ok(table)
}

/// The TOML file of `config` with `layers` merged over it, in the order given.
///
/// Fails when the service's loader (`domain_runtime::config::load_text`, with the
/// service's environment prefix and no environment) would refuse the result.
pub fn render<T: ServiceConfig>(config: &T, layers: &[Table]) -> anyhow::Result<String> {
    let mut table = Table::try_from(config).context("cannot serialize the config")?;
    // `DatabaseUrl` serializes redacted (that is how `--dump-config` prints it); the file
    // needs the URL itself.
    if let Some(Value::Table(database)) = table.get_mut("database") {
        database.insert(
            "url".to_owned(),
            Value::String(config.database().url.expose().to_owned()),
        );
    }
    let defaults = Table::try_from(T::default()).context("cannot serialize the defaults")?;
    strip_defaults(&mut table, &defaults);
    for extra in layers {
        domain_runtime::config::merge(&mut table, extra.clone());
    }
    let text = toml::to_string(&table).context("cannot render the config")?;
    domain_runtime::config::load_text::<T>(
        Some((Path::new("<generated config>"), &text)),
        std::iter::empty(),
        T::ENV_PREFIX,
        &[],
    )
    .with_context(|| format!("the generated config is not accepted by its loader:\n{text}"))?;
    Ok(text)
}

/// [`render`], written to `path`.
pub fn write<T: ServiceConfig>(path: &Path, config: &T, layers: &[Table]) -> anyhow::Result<()> {
    let text = render(config, layers)?;
    std::fs::write(path, text).with_context(|| format!("cannot write {}", path.display()))
}

/// Loads the config file at `path` with the service's loader, applies `change` and writes
/// it back (tests that reconfigure a service between two runs).
pub fn edit<T: ServiceConfig>(path: &Path, change: impl FnOnce(&mut T)) -> anyhow::Result<()> {
    let mut config: T =
        domain_runtime::config::load(Some(path), std::iter::empty(), T::ENV_PREFIX, &[])
            .with_context(|| format!("cannot load {}", path.display()))?;
    change(&mut config);
    write(path, &config, &[])
}

/// Removes from `table` every value equal to the one in `defaults` (tables recursively;
/// a table left empty goes too).
fn strip_defaults(table: &mut Table, defaults: &Table) {
    table.retain(|key, value| match (value, defaults.get(key)) {
        (Value::Table(inner), Some(Value::Table(default))) => {
            strip_defaults(inner, default);
            !inner.is_empty()
        }
        (value, Some(default)) => value != default,
        (_, None) => true,
    });
}

/// The listeners of one service instance: the address they bind and their ports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Listeners {
    pub addr: IpAddr,
    /// The public API (sequencers only).
    pub public: u16,
    pub admin: u16,
    pub ops: u16,
}

impl Listeners {
    /// Three free ports (see [`free_port`]) on `addr`.
    pub fn free(addr: IpAddr) -> Self {
        Self {
            addr,
            public: free_port(),
            admin: free_port(),
            ops: free_port(),
        }
    }

    /// [`Self::free`] on 127.0.0.1.
    pub fn free_loopback() -> Self {
        Self::free(IpAddr::V4(Ipv4Addr::LOCALHOST))
    }

    pub fn is_loopback(&self) -> bool {
        self.addr.is_loopback()
    }
    pub fn public_listen(&self) -> SocketAddr {
        SocketAddr::new(self.addr, self.public)
    }
    pub fn admin_listen(&self) -> SocketAddr {
        SocketAddr::new(self.addr, self.admin)
    }
    pub fn ops_listen(&self) -> SocketAddr {
        SocketAddr::new(self.addr, self.ops)
    }
    /// `https://localhost:<port>` on loopback (the test certificate names `localhost`;
    /// clients set the TLS domain name to it), `https://<addr>:<port>` otherwise.
    pub fn public_url(&self) -> String {
        if self.is_loopback() {
            format!("https://localhost:{}", self.public)
        } else {
            format!("https://{}", self.public_listen())
        }
    }
    /// `http://<addr>:<port>` on loopback; off loopback the admin APIs require TLS with a
    /// client certificate, so `https://`.
    pub fn admin_url(&self) -> String {
        let scheme = if self.is_loopback() { "http" } else { "https" };
        format!("{scheme}://{}", self.admin_listen())
    }
    /// `http://<addr>:<port>`.
    pub fn ops_url(&self) -> String {
        format!("http://{}", self.ops_listen())
    }
}

/// An admin API that serves TLS and requires client certificates of `pki`'s CA, with the
/// certificate `cert`/`key` (required off loopback).
pub fn mutual_tls(cert: &Path, key: &Path, pki: &PkiFiles) -> ServerTlsFiles {
    ServerTlsFiles {
        cert: cert.to_path_buf(),
        key: key.to_path_buf(),
        client_ca: Some(pki.ca.clone()),
        require_client_cert: true,
    }
}

/// Client TLS towards the sequencers: `pki`'s CA and the name its server certificate
/// carries (`localhost`), optionally with `pki`'s client certificate.
pub fn sequencer_tls(pki: &PkiFiles, client_cert: bool) -> ClientTlsFiles {
    ClientTlsFiles {
        ca: pki.ca.clone(),
        cert: client_cert.then(|| pki.client_cert.clone()),
        key: client_cert.then(|| pki.client_key.clone()),
        domain_name: Some("localhost".to_owned()),
    }
}

/// A sequencer instance: public API with `pki`'s server certificate, plaintext admin API
/// on loopback (mutual TLS elsewhere), advertised at its public URL.
pub fn sequencer(
    domain_id: &str,
    signing_key_file: &Path,
    database_url: &str,
    at: &Listeners,
    pki: &PkiFiles,
) -> anyhow::Result<SequencerConfig> {
    let mut admin_api = GrpcServerConfig::with_listen(at.admin_listen());
    if !at.is_loopback() {
        admin_api.tls = Some(mutual_tls(&pki.server_cert, &pki.server_key, pki));
    }
    Ok(SequencerConfig {
        domain_id: Some(domain_id.parse()?),
        signing_key_file: signing_key_file.to_path_buf(),
        database: database(database_url),
        public_api: GrpcServerConfig {
            tls: Some(ServerTlsFiles {
                cert: pki.server_cert.clone(),
                key: pki.server_key.clone(),
                client_ca: None,
                require_client_cert: false,
            }),
            ..GrpcServerConfig::with_listen(at.public_listen())
        },
        admin_api,
        ops_listen: at.ops_listen(),
        advertised_address: at.public_url(),
        ..SequencerConfig::default()
    })
}

/// The sequencers a domain-manager replica talks to.
pub struct SequencerEndpoints<'a> {
    pub sequencers: &'a [Listeners],
    /// Sequencer admin APIs off loopback require a client certificate.
    pub client_cert: bool,
}

/// A domain-manager replica of domain `domain_name` (namespace key `namespace_key_file`)
/// in front of `sequencers`, its admin API plaintext (set `admin_api.tls` off loopback).
/// `status` lists the components `Status` reports.
pub fn domain_manager(
    domain_name: &str,
    namespace_key_file: &Path,
    database_url: &str,
    at: &Listeners,
    pki: &PkiFiles,
    sequencers: &SequencerEndpoints<'_>,
    status: Vec<StatusComponentConfig>,
) -> DomainManagerConfig {
    DomainManagerConfig {
        domain_name: domain_name.to_owned(),
        namespace_key_file: namespace_key_file.to_path_buf(),
        database: database(database_url),
        admin_api: GrpcServerConfig::with_listen(at.admin_listen()),
        ops_listen: at.ops_listen(),
        advertised_admin_address: at.admin_url(),
        sequencers: sequencers
            .sequencers
            .iter()
            .map(|s| SequencerEndpointConfig {
                public_endpoint: s.public_url(),
                admin_endpoint: Some(s.admin_url()),
                ops_url: Some(s.ops_url()),
            })
            .collect(),
        sequencer_tls: Some(sequencer_tls(pki, sequencers.client_cert)),
        status_components: status,
        ..DomainManagerConfig::default()
    }
}

/// One entry of a domain manager's `status-components`.
pub fn status_component(name: &str, kind: ComponentKind, at: &Listeners) -> StatusComponentConfig {
    StatusComponentConfig {
        name: name.to_owned(),
        kind,
        ops_url: at.ops_url(),
    }
}

/// A mediator replica named `mediator` (key `signing_key_file`) reading from
/// `sequencers` (public URLs, in order of preference), admin API on 127.0.0.1 and ops on
/// `at`'s address.
pub fn mediator(
    domain_id: &str,
    signing_key_file: &Path,
    database_url: &str,
    at: &Listeners,
    pki: &PkiFiles,
    sequencers: Vec<String>,
) -> anyhow::Result<MediatorConfig> {
    let admin = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), at.admin);
    Ok(MediatorConfig {
        name: "mediator".to_owned(),
        signing_key_file: signing_key_file.to_path_buf(),
        domain_id: Some(domain_id.parse()?),
        database: database(database_url),
        sequencers,
        sequencer_tls: Some(sequencer_tls(pki, false)),
        admin_api: GrpcServerConfig::with_listen(admin),
        ops_listen: at.ops_listen(),
        advertised_admin_address: format!("http://{admin}"),
        ..MediatorConfig::default()
    })
}

/// A participant node over the data directory `data_dir` (made by `participant init` and
/// `connect`), answering requests with `auto_confirm`.
pub fn participant(
    data_dir: &Path,
    database_url: &str,
    at: &Listeners,
    auto_confirm: AutoConfirm,
) -> ParticipantConfig {
    ParticipantConfig {
        data_dir: data_dir.to_path_buf(),
        database: database(database_url),
        admin_api: GrpcServerConfig::with_listen(at.admin_listen()),
        ops_listen: at.ops_listen(),
        auto_confirm,
        ..ParticipantConfig::default()
    }
}

/// A `[database]` section with `url` and every other key at its default.
pub fn database(url: &str) -> DatabaseConfig {
    DatabaseConfig {
        url: url.into(),
        ..DatabaseConfig::default()
    }
}

/// `<dir>/<name>.toml`.
pub fn config_path(dir: &Path, name: &str) -> PathBuf {
    dir.join(format!("{name}.toml"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pki() -> PkiFiles {
        PkiFiles {
            ca: "/tls/ca.pem".into(),
            server_cert: "/tls/server.pem".into(),
            server_key: "/tls/server.key".into(),
            client_cert: "/tls/client.pem".into(),
            client_key: "/tls/client.key".into(),
        }
    }

    fn at(addr: [u8; 4], base: u16) -> Listeners {
        Listeners {
            addr: IpAddr::from(addr),
            public: base,
            admin: base + 1,
            ops: base + 2,
        }
    }

    const DOMAIN: &str =
        "devnet::12200000000000000000000000000000000000000000000000000000000000000000";
    /// A URL with a password: the file must hold it, not the redacted form.
    const URL: &str = "postgres://user:secret@127.0.0.1:5432/db";

    /// Writes `config` (with `layers`) to a file and loads it with the service's loader the
    /// way its binary does (`--config-file`); returns what was loaded.
    fn round_trip<T: ServiceConfig>(config: &T, layers: &[Table]) -> T {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("service.toml");
        write(&path, config, layers).expect("write");
        domain_runtime::config::load(Some(&path), Vec::new(), T::ENV_PREFIX, &[])
            .expect("the service's loader accepts the file")
    }

    fn same<T: Serialize>(a: &T, b: &T) {
        assert_eq!(
            toml::to_string(a).expect("serialize"),
            toml::to_string(b).expect("serialize")
        );
    }

    #[test]
    fn sequencer_config_round_trips_through_its_loader() {
        for addr in [[127, 0, 0, 1], [10, 0, 0, 2]] {
            let config = sequencer(
                DOMAIN,
                Path::new("/keys/seq.pem"),
                URL,
                &at(addr, 7000),
                &pki(),
            )
            .expect("config");
            let loaded = round_trip(&config, &[]);
            same(&loaded, &config);
            assert_eq!(loaded.database.url.expose(), URL);
            assert_eq!(loaded.admin_api.tls.is_some(), addr != [127, 0, 0, 1]);
        }
        let config = local_sequencer();
        let loaded = round_trip(
            &config,
            &[
                layer("access-mode = \"open\"\n[auth]\ntoken-ttl = \"3s\"").expect("layer"),
                section_layer("database", "connect-timeout = \"1s\"").expect("layer"),
            ],
        );
        assert_eq!(
            loaded.access_mode,
            domain_sequencer::config::AccessMode::Open
        );
        assert_eq!(loaded.auth.token_ttl, std::time::Duration::from_secs(3));
        assert_eq!(
            loaded.database.connect_timeout,
            std::time::Duration::from_secs(1)
        );
        assert_eq!(loaded.database.url.expose(), URL);
    }

    #[test]
    fn domain_manager_config_round_trips_through_its_loader() {
        let seqs = [at([127, 0, 0, 1], 7000), at([127, 0, 0, 1], 7010)];
        let mut config = domain_manager(
            "devnet",
            Path::new("/keys/ns.pem"),
            URL,
            &at([127, 0, 0, 1], 7100),
            &pki(),
            &SequencerEndpoints {
                sequencers: &seqs,
                client_cert: true,
            },
            vec![status_component(
                "mediator-1",
                ComponentKind::Mediator,
                &at([127, 0, 0, 1], 7200),
            )],
        );
        config.genesis.mediators = vec![format!(
            "MED::mediator::{}",
            DOMAIN.split("::").nth(1).unwrap_or("")
        )];
        let loaded = round_trip(&config, &[layer("send-deadline = \"2s\"").expect("layer")]);
        assert_eq!(loaded.send_deadline, std::time::Duration::from_secs(2));
        config.send_deadline = std::time::Duration::from_secs(2);
        same(&loaded, &config);
        assert_eq!(loaded.status_components.len(), 1);
    }

    #[test]
    fn mediator_config_round_trips_through_its_loader() {
        let config = mediator(
            DOMAIN,
            Path::new("/keys/med.pem"),
            URL,
            &at([10, 0, 0, 3], 7300),
            &pki(),
            vec![
                "https://localhost:7000".into(),
                "https://localhost:7010".into(),
            ],
        )
        .expect("config");
        same(&round_trip(&config, &[]), &config);
    }

    /// A sequencer on loopback.
    fn local_sequencer() -> SequencerConfig {
        sequencer(
            DOMAIN,
            Path::new("/k.pem"),
            URL,
            &at([127, 0, 0, 1], 7000),
            &pki(),
        )
        .expect("config")
    }

    /// A participant on loopback answering with `auto`.
    fn local_participant(auto: AutoConfirm) -> ParticipantConfig {
        participant(Path::new("/data/p1"), URL, &at([127, 0, 0, 1], 7400), auto)
    }

    #[test]
    fn participant_config_round_trips_through_its_loader() {
        let config = local_participant(AutoConfirm::Payload);
        same(&round_trip(&config, &[]), &config);
    }

    #[test]
    fn settings_are_dotted_keys() {
        let text = settings(&[
            ("pruning.interval", "0s".into()),
            ("reader.checkpoint-every-events", 512.into()),
            ("access-mode", "open".into()),
        ]);
        let loaded = round_trip(&local_sequencer(), &[layer(&text).expect("layer")]);
        assert_eq!(loaded.pruning.interval, std::time::Duration::ZERO);
        assert_eq!(loaded.reader.checkpoint_every_events, 512);
        assert_eq!(
            loaded.access_mode,
            domain_sequencer::config::AccessMode::Open
        );
    }

    #[test]
    fn a_layer_the_loader_refuses_is_an_error() {
        let config = local_participant(AutoConfirm::Off);
        let err = render(&config, &[layer("no-such-key = 1").expect("layer")])
            .expect_err("unknown keys are refused");
        assert!(format!("{err:#}").contains("no-such-key"), "{err:#}");
    }
}
