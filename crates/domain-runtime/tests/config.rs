//! Configuration layering: defaults < file < environment < `--set`, and errors that name the
//! key path and the layer. The process environment is never read or modified here.

use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Parser as _;
use domain_runtime::config::{self, CommonArgs, ConfigError, Origin};
use domain_runtime::grpc::GrpcServerConfig;
use domain_runtime::telemetry::LogFormat;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case", default)]
struct TestConfig {
    database: Database,
    grpc: GrpcServerConfig,
    batch_size: u32,
}

impl Default for TestConfig {
    fn default() -> Self {
        Self {
            database: Database::default(),
            grpc: GrpcServerConfig::with_listen("0.0.0.0:5001".parse().expect("addr")),
            batch_size: 100,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case", default)]
struct Database {
    url: String,
    pool_size: u32,
    password: Option<String>,
}

impl Default for Database {
    fn default() -> Self {
        Self {
            url: "postgres://default".to_owned(),
            pool_size: 10,
            password: None,
        }
    }
}

const PREFIX: &str = "SEQUENCER";

fn env(vars: &[(&str, &str)]) -> Vec<(String, String)> {
    vars.iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

fn flags(flags: &[&str]) -> Vec<String> {
    flags.iter().map(|s| (*s).to_owned()).collect()
}

fn write(dir: &Path, text: &str) -> PathBuf {
    let path = dir.join("config.toml");
    std::fs::write(&path, text).expect("write config file");
    path
}

fn load(
    file: Option<&Path>,
    vars: &[(&str, &str)],
    sets: &[&str],
) -> Result<TestConfig, ConfigError> {
    config::load(file, env(vars), PREFIX, &flags(sets))
}

/// [`load`] with environment variables only: no file, no `--set`.
fn load_env(vars: &[(&str, &str)]) -> Result<TestConfig, ConfigError> {
    load(None, vars, &[])
}

#[test]
fn layers_apply_in_order_default_file_env_flag() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = write(
        dir.path(),
        "[database]\nurl = \"postgres://file\"\npool-size = 20\n",
    );

    let defaults = load(None, &[], &[]).expect("defaults");
    assert_eq!(defaults, TestConfig::default());

    let from_file = load(Some(&file), &[], &[]).expect("file");
    assert_eq!(from_file.database.url, "postgres://file");
    assert_eq!(from_file.database.pool_size, 20);
    assert_eq!(from_file.batch_size, 100, "untouched keys keep defaults");

    let url_env = [("SEQUENCER__DATABASE__URL", "postgres://env")];
    let from_env = load(Some(&file), &url_env, &[]).expect("env");
    assert_eq!(from_env.database.url, "postgres://env");
    assert_eq!(from_env.database.pool_size, 20, "file value survives env");

    let from_flag = load(Some(&file), &url_env, &["database.url=postgres://flag"]).expect("flag");
    assert_eq!(from_flag.database.url, "postgres://flag");

    let later_flag_wins = load(None, &[], &["batch-size=1", "batch-size=2"]).expect("flags");
    assert_eq!(later_flag_wins.batch_size, 2);
}

#[test]
fn env_names_map_to_kebab_case_keys_and_values_are_typed() {
    let cfg = load_env(&[
        ("SEQUENCER__DATABASE__POOL_SIZE", "7"),
        ("SEQUENCER__GRPC__MAX_MESSAGE_SIZE", "1024"),
        ("SEQUENCER__GRPC__HTTP2_KEEPALIVE_INTERVAL", "30s"),
        ("SEQUENCER__GRPC__LISTEN", "127.0.0.1:7000"),
        // A numeric-looking secret stays a string for a string field.
        ("SEQUENCER__DATABASE__PASSWORD", "123"),
        // Other prefixes and single-underscore names are not ours.
        ("SEQUENCER_CONFIG_FILE", "/nope.toml"),
        ("SEQUENCERX__BATCH_SIZE", "1"),
        ("MEDIATOR__BATCH_SIZE", "1"),
    ])
    .expect("env config");
    assert_eq!(cfg.database.pool_size, 7);
    assert_eq!(cfg.grpc.max_message_size, 1024);
    assert_eq!(cfg.grpc.http2_keepalive_interval, Duration::from_secs(30));
    assert_eq!(cfg.grpc.listen, "127.0.0.1:7000".parse().expect("addr"));
    assert_eq!(cfg.database.password.as_deref(), Some("123"));
    assert_eq!(cfg.batch_size, 100);
}

#[test]
fn nested_tables_can_be_built_from_several_env_vars() {
    let cfg = load_env(&[
        ("SEQUENCER__GRPC__TLS__KEY", "/tls/tls.key"),
        ("SEQUENCER__GRPC__TLS__CERT", "/tls/tls.crt"),
        ("SEQUENCER__GRPC__TLS__REQUIRE_CLIENT_CERT", "true"),
    ])
    .expect("tls from env");
    let tls = cfg.grpc.tls.expect("tls set");
    assert_eq!(tls.cert, PathBuf::from("/tls/tls.crt"));
    assert_eq!(tls.key, PathBuf::from("/tls/tls.key"));
    assert!(tls.require_client_cert);
}

#[test]
fn unknown_key_in_file_names_the_key_path_and_the_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = write(dir.path(), "[database]\nurll = \"postgres://typo\"\n");
    let error = load(Some(&file), &[], &[]).expect_err("typo must fail");
    assert!(
        matches!(&error, ConfigError::UnknownKey { key, origin: Origin::File(path), .. }
            if key == "database.urll" && *path == file),
        "{error:?}"
    );
    let message = error.to_string();
    assert!(message.contains("unknown key `database.urll`"), "{message}");
    assert!(message.contains(&file.display().to_string()), "{message}");
    assert!(message.contains("`url`"), "lists valid keys: {message}");
}

#[test]
fn unknown_key_in_env_names_the_variable() {
    let error = load_env(&[
        ("SEQUENCER__DATABASE__URL", "postgres://ok"),
        ("SEQUENCER__DATABASE__URLL", "postgres://typo"),
    ])
    .expect_err("typo must fail");
    assert_eq!(error.key(), Some("database.urll"));
    assert_eq!(
        error.origin(),
        Some(&Origin::Env("SEQUENCER__DATABASE__URLL".to_owned()))
    );
    assert!(
        error.to_string().contains("SEQUENCER__DATABASE__URLL"),
        "{error}"
    );
}

#[test]
fn type_errors_name_the_key_in_every_layer() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = write(dir.path(), "[grpc]\nmax-message-size = \"big\"\n");
    let error = load(Some(&file), &[], &[]).expect_err("string for usize");
    assert!(
        matches!(&error, ConfigError::InvalidValue { key, origin: Origin::File(_), .. }
            if key == "grpc.max-message-size"),
        "{error:?}"
    );
    assert!(
        error
            .to_string()
            .contains("invalid value for `grpc.max-message-size`"),
        "{error}"
    );

    let error = load_env(&[("SEQUENCER__BATCH_SIZE", "lots")]).expect_err("env");
    assert_eq!(error.key(), Some("batch-size"));
    assert_eq!(
        error.origin(),
        Some(&Origin::Env("SEQUENCER__BATCH_SIZE".to_owned()))
    );

    let error = load(None, &[], &["grpc.http2-keepalive-timeout=soon"]).expect_err("flag");
    assert_eq!(error.key(), Some("grpc.http2-keepalive-timeout"));
    assert_eq!(
        error.origin(),
        Some(&Origin::Flag("grpc.http2-keepalive-timeout".to_owned()))
    );
    assert!(error.to_string().contains("--set"), "{error}");

    let error = load(None, &[], &["grpc.max-concurrent-streams=-1"]).expect_err("negative u32");
    assert_eq!(error.key(), Some("grpc.max-concurrent-streams"));
}

#[test]
fn incomplete_nested_table_blames_the_variable_that_created_it() {
    let error =
        load_env(&[("SEQUENCER__GRPC__TLS__CERT", "/tls/tls.crt")]).expect_err("tls.key missing");
    assert_eq!(error.key(), Some("grpc.tls"));
    assert!(error.to_string().contains("missing field `key`"), "{error}");
    assert_eq!(
        error.origin(),
        Some(&Origin::Env("SEQUENCER__GRPC__TLS__CERT".to_owned()))
    );
}

#[test]
fn malformed_inputs_are_reported() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = write(dir.path(), "[database\nurl = 1\n");
    let error = load(Some(&file), &[], &[]).expect_err("bad toml");
    assert!(matches!(error, ConfigError::Syntax { .. }), "{error:?}");
    assert!(error.to_string().contains("config.toml"), "{error}");

    let missing = dir.path().join("absent.toml");
    let error = load(Some(&missing), &[], &[]).expect_err("missing file");
    assert!(matches!(error, ConfigError::Read { .. }), "{error:?}");
    assert!(error.to_string().contains("absent.toml"), "{error}");

    for bad in ["no-equals-sign", "=1", "a..b=1"] {
        let error = load(None, &[], &[bad]).expect_err("malformed flag");
        assert!(
            matches!(error, ConfigError::Malformed { .. }),
            "{bad}: {error:?}"
        );
    }

    let error = load_env(&[("SEQUENCER____X", "1")]).expect_err("empty segment");
    assert!(matches!(error, ConfigError::Malformed { .. }), "{error:?}");

    let error = load(None, &[], &["batch-size.deeper=1"]).expect_err("scalar is not a table");
    assert!(matches!(error, ConfigError::Malformed { .. }), "{error:?}");
}

#[test]
fn dumped_config_round_trips() {
    let cfg = load(
        None,
        &[("SEQUENCER__DATABASE__PASSWORD", "s3cret")],
        &[
            "grpc.max-connection-age=5m",
            "grpc.tls.cert=/c.pem",
            "grpc.tls.key=/k.pem",
            "batch-size=3",
        ],
    )
    .expect("config");
    let text = config::dump(&cfg).expect("dump");
    assert!(text.contains("max-message-size = 4194304"), "{text}");
    assert!(
        text.contains("http2-keepalive-interval = \"10s\""),
        "{text}"
    );

    let dir = tempfile::tempdir().expect("tempdir");
    let file = write(dir.path(), &text);
    let reloaded = load(Some(&file), &[], &[]).expect("dump loads back");
    assert_eq!(reloaded, cfg);

    let defaults_text = config::dump(&TestConfig::default()).expect("dump defaults");
    let file = write(dir.path(), &defaults_text);
    assert_eq!(
        load(Some(&file), &[], &[]).expect("defaults dump loads"),
        TestConfig::default()
    );
}

#[derive(Debug, clap::Parser)]
struct Cli {
    #[command(flatten)]
    common: CommonArgs,
}

#[test]
fn common_args_parse() {
    let cli = Cli::try_parse_from([
        "sequencer",
        "--config-file",
        "/etc/sequencer.toml",
        "--set",
        "a.b=1",
        "--set",
        "c=two",
        "--dump-config",
        "--log-format",
        "json",
    ])
    .expect("parse");
    assert_eq!(
        cli.common.config_file.as_deref(),
        Some(Path::new("/etc/sequencer.toml"))
    );
    assert_eq!(cli.common.set, ["a.b=1", "c=two"]);
    assert!(cli.common.dump_config);
    assert_eq!(cli.common.log_format, LogFormat::Json);
}
