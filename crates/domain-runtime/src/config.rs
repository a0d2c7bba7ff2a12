//! Layered configuration for any component config type.
//!
//! Layers, lowest precedence first:
//! 1. `T::default()`, the defaults in code;
//! 2. a TOML file (`--config-file` or `DOMAIN_CONFIG_FILE`);
//! 3. environment variables `<PREFIX>__<SEGMENT>__<SEGMENT>=value`, e.g.
//!    `SEQUENCER__DATABASE__URL` sets `database.url`. Double underscores separate levels,
//!    single underscores inside a segment become `-`, and segments are lower-cased, so
//!    `SEQUENCER__GRPC__MAX_MESSAGE_SIZE` sets `grpc.max-message-size`;
//! 4. `--set key.path=value` flags, in order.
//!
//! Values from the environment and flags are read as TOML values when they parse (`42`,
//! `true`, `"text"`, `["a", "b"]`), otherwise as plain strings. When the parsed value has the
//! wrong type for the key but the raw string fits, the string wins, so
//! `SEQUENCER__DATABASE__PASSWORD=123` still sets a string field.
//!
//! The merged TOML tree is deserialized with `serde_path_to_error`, so every error names the
//! key path (`unknown key `database.urll``, `invalid value for `grpc.max-message-size``) and the
//! layer that introduced it (the file path, the environment variable or the flag). Config
//! structs are expected to use `#[serde(deny_unknown_fields, rename_all = "kebab-case",
//! default)]` so typos fail at start-up.

use std::fmt;
use std::path::{Path, PathBuf};

use serde::Serialize;
use serde::de::DeserializeOwned;
use toml::{Table, Value};

use crate::telemetry::LogFormat;

/// Exit code for a configuration or usage error (`EX_USAGE` from `sysexits.h`).
pub const EXIT_USAGE: i32 = 64;

/// Environment variable read for `--config-file` when the flag is absent.
pub const CONFIG_FILE_ENV: &str = "DOMAIN_CONFIG_FILE";

/// Flags every component binary accepts; flatten into the binary's clap parser with
/// `#[command(flatten)] common: CommonArgs`.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct CommonArgs {
    /// TOML configuration file; keys not in the file keep their defaults.
    #[arg(long = "config-file", env = CONFIG_FILE_ENV, value_name = "PATH")]
    pub config_file: Option<PathBuf>,

    /// Print the effective configuration as TOML and exit.
    #[arg(long = "dump-config")]
    pub dump_config: bool,

    /// Override one configuration key, e.g. `--set grpc.listen=0.0.0.0:5001`; repeatable,
    /// applied after the file and the environment.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub set: Vec<String>,

    /// Log line format.
    #[arg(long = "log-format", value_enum, default_value_t = LogFormat::Text, env = "DOMAIN_LOG_FORMAT")]
    pub log_format: LogFormat,

    /// Value of the `domain` label on every metric series (an alias of the domain, so one
    /// Prometheus can tell several parties' nodes apart): 1 to 63 characters of
    /// `A-Z a-z 0-9 . _ -`. Default: no `domain` label.
    #[arg(
        long = "metrics-domain-label",
        env = "DOMAIN_METRICS_DOMAIN_LABEL",
        value_name = "ALIAS",
        value_parser = parse_metrics_label
    )]
    pub metrics_domain_label: Option<String>,
}

impl CommonArgs {
    /// The extra global metric labels these flags ask for, for
    /// [`crate::metrics::install_recorder_with`].
    pub fn metric_labels(&self) -> Vec<(&'static str, String)> {
        self.metrics_domain_label
            .iter()
            .map(|v| ("domain", v.clone()))
            .collect()
    }
}

/// Accepts a bounded label value: 1..=63 of `A-Z a-z 0-9 . _ -`. Bounded so a label cannot
/// carry an arbitrary string into every series.
pub fn parse_metrics_label(value: &str) -> Result<String, String> {
    if value.is_empty() || value.len() > 63 {
        return Err(format!("must be 1 to 63 characters, got {}", value.len()));
    }
    if let Some(bad) = value
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
    {
        return Err(format!("character {bad:?} is not one of A-Z a-z 0-9 . _ -"));
    }
    Ok(value.to_owned())
}

/// The layer a configuration value or error came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// The defaults in code.
    Defaults,
    /// A TOML configuration file.
    File(PathBuf),
    /// One environment variable (by name), or `<PREFIX>__*` when no single one is to blame.
    Env(String),
    /// One `--set` flag, identified by its key only (values may be secrets).
    Flag(String),
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::Defaults => f.write_str("built-in defaults"),
            Origin::File(path) => write!(f, "config file {}", path.display()),
            Origin::Env(name) => write!(f, "environment variable {name}"),
            Origin::Flag(key) => write!(f, "flag --set {key}=.."),
        }
    }
}

/// A configuration that cannot be loaded; the message names the layer and the key.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The configuration file cannot be read.
    #[error("{origin}: cannot read file: {error}")]
    Read {
        /// Which file.
        origin: Origin,
        /// Why.
        #[source]
        error: std::io::Error,
    },
    /// The configuration file is not valid TOML.
    #[error("{origin}: invalid TOML: {message}")]
    Syntax {
        /// Which file.
        origin: Origin,
        /// The parser's message, with line and column.
        message: String,
    },
    /// An environment variable name or `--set` argument is not of the expected shape.
    #[error("{origin}: {message}")]
    Malformed {
        /// Which variable or flag.
        origin: Origin,
        /// What is wrong with it.
        message: String,
    },
    /// A key that the configuration type does not have.
    #[error("{origin}: unknown key `{key}`{expected}")]
    UnknownKey {
        /// The layer that introduced the key.
        origin: Origin,
        /// Full dotted key path, e.g. `database.urll`.
        key: String,
        /// A hint listing the valid keys at that level, possibly empty.
        expected: String,
    },
    /// A key whose value has the wrong type or is out of range.
    #[error("{origin}: invalid value for `{key}`: {message}")]
    InvalidValue {
        /// The layer that set the value.
        origin: Origin,
        /// Full dotted key path, e.g. `grpc.max-message-size`.
        key: String,
        /// The deserializer's message.
        message: String,
    },
    /// The configuration cannot be represented as TOML (a bug in the config type).
    #[error("cannot serialize configuration: {message}")]
    Serialize {
        /// The serializer's message.
        message: String,
    },
}

impl ConfigError {
    /// Returns the dotted key path the error is about, if any.
    pub fn key(&self) -> Option<&str> {
        match self {
            ConfigError::UnknownKey { key, .. } | ConfigError::InvalidValue { key, .. } => {
                Some(key)
            }
            _ => None,
        }
    }

    /// Returns the layer the error came from, if any.
    pub fn origin(&self) -> Option<&Origin> {
        match self {
            ConfigError::Read { origin, .. }
            | ConfigError::Syntax { origin, .. }
            | ConfigError::Malformed { origin, .. }
            | ConfigError::UnknownKey { origin, .. }
            | ConfigError::InvalidValue { origin, .. } => Some(origin),
            ConfigError::Serialize { .. } => None,
        }
    }
}

/// What a service's configuration type is: its defaults serialize to the TOML tree the
/// layers are merged into, and the merged tree deserializes back into it.
pub trait ServiceConfig: Serialize + DeserializeOwned + Default {}

impl<T: Serialize + DeserializeOwned + Default> ServiceConfig for T {}

/// Loads a configuration from defaults, an optional TOML file, the given environment and
/// `--set` overrides (`key.path=value`).
///
/// `env` is only scanned for names starting with `<env_prefix>__`; pass `std::env::vars()` in
/// a binary and a literal list in tests.
pub fn load<T: ServiceConfig>(
    file: Option<&Path>,
    env: impl IntoIterator<Item = (String, String)>,
    env_prefix: &str,
    overrides: &[String],
) -> Result<T, ConfigError> {
    let text = match file {
        Some(path) => Some(
            std::fs::read_to_string(path).map_err(|error| ConfigError::Read {
                origin: Origin::File(path.to_owned()),
                error,
            })?,
        ),
        None => None,
    };
    load_text(file.zip(text.as_deref()), env, env_prefix, overrides)
}

/// [`load`] with the file already read: `file` is its path (for error messages) and its
/// text. Public so the config fuzz target (docs/fuzzing.md) parses TOML text exactly as the
/// services do, without a file per input.
pub fn load_text<T: ServiceConfig>(
    file: Option<(&Path, &str)>,
    env: impl IntoIterator<Item = (String, String)>,
    env_prefix: &str,
    overrides: &[String],
) -> Result<T, ConfigError> {
    let mut tree = match Value::try_from(T::default()) {
        Ok(Value::Table(table)) => table,
        Ok(other) => {
            return Err(ConfigError::Serialize {
                message: format!("defaults are a {}, not a table", other.type_str()),
            });
        }
        Err(error) => {
            return Err(ConfigError::Serialize {
                message: error.to_string(),
            });
        }
    };
    check::<T>(&tree).map_err(|e| e.into_error(Origin::Defaults))?;

    if let Some((path, text)) = file {
        let origin = Origin::File(path.to_owned());
        let layer: Table = toml::from_str(text).map_err(|e| ConfigError::Syntax {
            origin: origin.clone(),
            message: e.to_string().trim_end().to_owned(),
        })?;
        merge(&mut tree, layer);
        check::<T>(&tree).map_err(|e| e.into_error(origin))?;
    }

    let env_entries = env_entries(env, env_prefix)?;
    apply_entries::<T>(
        &mut tree,
        &env_entries,
        Origin::Env(format!("{env_prefix}__*")),
    )?;

    let flag_entries = overrides
        .iter()
        .map(|arg| flag_entry(arg))
        .collect::<Result<Vec<_>, _>>()?;
    apply_entries::<T>(&mut tree, &flag_entries, Origin::Flag("*".to_owned()))?;

    check::<T>(&tree).map_err(|e| e.into_error(Origin::Defaults))
}

/// Renders a configuration as TOML, as `--dump-config` prints it.
pub fn dump<T: Serialize>(config: &T) -> Result<String, ConfigError> {
    toml::to_string_pretty(config).map_err(|e| ConfigError::Serialize {
        message: e.to_string(),
    })
}

/// The domain a member (sequencer, mediator) belongs to and its signing key, from its
/// `domain-id` (required) and `signing-key-file` settings.
pub fn member_domain_and_key(
    domain_id: Option<&domain_identity::DomainId>,
    signing_key_file: &Path,
) -> anyhow::Result<(
    domain_identity::DomainId,
    std::sync::Arc<domain_identity::SigningKeyPair>,
)> {
    use anyhow::Context as _;
    let domain_id = domain_id.cloned().context("`domain-id` is required")?;
    let key = load_signing_key("signing-key-file", signing_key_file)?;
    Ok((domain_id, key))
}

/// `127.0.0.1:<port>`: a default listen address reachable from this host only (admin APIs).
pub const fn loopback(port: u16) -> std::net::SocketAddr {
    std::net::SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), port)
}

/// `0.0.0.0:<port>`: a default listen address on every interface (ops servers).
pub const fn all_interfaces(port: u16) -> std::net::SocketAddr {
    std::net::SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED), port)
}

/// Loads the PEM signing key named by setting `setting` (e.g. `signing-key-file`); the
/// error names the setting and the file.
pub fn load_signing_key(
    setting: &str,
    path: &Path,
) -> anyhow::Result<std::sync::Arc<domain_identity::SigningKeyPair>> {
    use anyhow::Context as _;
    let key = domain_identity::SigningKeyPair::load_pem(path)
        .with_context(|| format!("cannot load `{setting}` {}", path.display()))?;
    Ok(std::sync::Arc::new(key))
}

/// Loads the configuration for `component` from `args` and the process environment, or
/// prints the error to stderr and exits with [`EXIT_USAGE`]. With `--dump-config`, prints the
/// effective configuration to stdout and exits with 0.
pub fn load_or_exit<T: ServiceConfig>(component: &str, env_prefix: &str, args: &CommonArgs) -> T {
    let var_prefix = format!("{env_prefix}__");
    let mut env = Vec::new();
    for (name, value) in std::env::vars_os() {
        let Some(name) = name.to_str() else { continue };
        if !name.starts_with(&var_prefix) {
            continue;
        }
        match value.into_string() {
            Ok(value) => env.push((name.to_owned(), value)),
            Err(_) => exit_usage(
                component,
                &ConfigError::Malformed {
                    origin: Origin::Env(name.to_owned()),
                    message: "value is not valid UTF-8".to_owned(),
                },
            ),
        }
    }
    let config = match load::<T>(args.config_file.as_deref(), env, env_prefix, &args.set) {
        Ok(config) => config,
        Err(error) => exit_usage(component, &error),
    };
    if args.dump_config {
        match dump(&config) {
            Ok(text) => {
                use std::io::Write as _;
                let mut stdout = std::io::stdout().lock();
                // `exit` skips destructors, so flush explicitly.
                if stdout
                    .write_all(text.as_bytes())
                    .and_then(|()| stdout.flush())
                    .is_err()
                {
                    std::process::exit(EXIT_USAGE);
                }
                std::process::exit(0);
            }
            Err(error) => exit_usage(component, &error),
        }
    }
    config
}

fn exit_usage(component: &str, error: &ConfigError) -> ! {
    eprintln!("error: invalid {component} configuration: {error}");
    std::process::exit(EXIT_USAGE)
}

/// One environment variable or `--set` flag, resolved to a key path.
#[derive(Debug)]
struct Entry {
    origin: Origin,
    path: Vec<String>,
    raw: String,
}

fn env_entries(
    env: impl IntoIterator<Item = (String, String)>,
    env_prefix: &str,
) -> Result<Vec<Entry>, ConfigError> {
    let var_prefix = format!("{env_prefix}__");
    let mut entries = Vec::new();
    for (name, raw) in env {
        let Some(rest) = name.strip_prefix(&var_prefix) else {
            continue;
        };
        let path: Vec<String> = rest
            .split("__")
            .map(|segment| segment.to_ascii_lowercase().replace('_', "-"))
            .collect();
        if path.iter().any(|s| s.is_empty() || s.starts_with('-')) {
            return Err(ConfigError::Malformed {
                origin: Origin::Env(name),
                message: format!(
                    "expected {var_prefix}<KEY>[__<KEY>...] with non-empty keys separated by `__`"
                ),
            });
        }
        entries.push(Entry {
            origin: Origin::Env(name),
            path,
            raw,
        });
    }
    // The process environment has no order; sort so conflicts resolve the same way every time.
    entries.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(entries)
}

fn flag_entry(arg: &str) -> Result<Entry, ConfigError> {
    let Some((key, raw)) = arg.split_once('=') else {
        return Err(ConfigError::Malformed {
            origin: Origin::Flag(arg.to_owned()),
            message: "expected `--set key.path=value`".to_owned(),
        });
    };
    let key = key.trim();
    let path: Vec<String> = key.split('.').map(str::to_owned).collect();
    if path.iter().any(String::is_empty) {
        return Err(ConfigError::Malformed {
            origin: Origin::Flag(key.to_owned()),
            message: "expected a dotted key path such as `grpc.listen`".to_owned(),
        });
    }
    Ok(Entry {
        origin: Origin::Flag(key.to_owned()),
        path,
        raw: raw.to_owned(),
    })
}

/// Applies one layer of entries, then validates the result and blames the entry whose key
/// path matches the error (or the layer as a whole when none does).
///
/// The whole layer is applied before validating because an intermediate state can be invalid
/// on its own: `GRPC__TLS__CERT` without `GRPC__TLS__KEY` is a missing field until both are set.
fn apply_entries<T: DeserializeOwned>(
    tree: &mut Table,
    entries: &[Entry],
    layer: Origin,
) -> Result<(), ConfigError> {
    for entry in entries {
        let value = choose_value::<T>(tree, entry);
        set_path(tree, &entry.path, value).map_err(|message| ConfigError::Malformed {
            origin: entry.origin.clone(),
            message,
        })?;
    }
    if entries.is_empty() {
        return Ok(());
    }
    check::<T>(tree).map_err(|problem| {
        let origin = problem
            .blame(entries)
            .map_or(layer, |entry| entry.origin.clone());
        problem.into_error(origin)
    })?;
    Ok(())
}

/// Picks the TOML-parsed value for an entry, unless that value fails to deserialize at the
/// entry's own key while the raw string does not.
fn choose_value<T: DeserializeOwned>(tree: &Table, entry: &Entry) -> Value {
    let raw = Value::String(entry.raw.clone());
    let Some(parsed) = parse_scalar(&entry.raw) else {
        return raw;
    };
    if parsed == raw {
        return parsed;
    }
    let key = entry.path.join(".");
    let fails_here = |value: &Value| {
        let mut candidate = tree.clone();
        if set_path(&mut candidate, &entry.path, value.clone()).is_err() {
            return true;
        }
        match check::<T>(&candidate) {
            Ok(_) => false,
            Err(problem) => problem.is_at_or_below(&key),
        }
    };
    if fails_here(&parsed) && !fails_here(&raw) {
        raw
    } else {
        parsed
    }
}

/// Parses `raw` as a TOML value (`42`, `true`, `"x"`, `[1, 2]`, `{ a = 1 }`).
fn parse_scalar(raw: &str) -> Option<Value> {
    let mut table: Table = toml::from_str(&format!("v = {raw}")).ok()?;
    if table.len() != 1 {
        return None;
    }
    table.remove("v")
}

fn set_path(tree: &mut Table, path: &[String], value: Value) -> Result<(), String> {
    let Some((last, parents)) = path.split_last() else {
        return Err("empty key path".to_owned());
    };
    let mut table = tree;
    for (i, segment) in parents.iter().enumerate() {
        let slot = table
            .entry(segment.clone())
            .or_insert_with(|| Value::Table(Table::new()));
        table = match slot {
            Value::Table(inner) => inner,
            other => {
                return Err(format!(
                    "cannot set `{}`: `{}` already holds a value of type {}, not a table",
                    path.join("."),
                    path[..=i].join("."),
                    other.type_str()
                ));
            }
        };
    }
    table.insert(last.clone(), value);
    Ok(())
}

/// Deep-merges `layer` into `base`: tables merge key by key, anything else replaces.
pub fn merge(base: &mut Table, layer: Table) {
    for (key, value) in layer {
        match (base.get_mut(&key), value) {
            (Some(Value::Table(base_inner)), Value::Table(layer_inner)) => {
                merge(base_inner, layer_inner);
            }
            (_, value) => {
                base.insert(key, value);
            }
        }
    }
}

/// A deserialization failure, located by key path.
#[derive(Debug)]
struct Problem {
    /// Full dotted key path (for unknown keys, including the unknown key itself).
    key: String,
    kind: ProblemKind,
}

#[derive(Debug)]
enum ProblemKind {
    Unknown { expected: String },
    Invalid { message: String },
}

impl Problem {
    fn is_at_or_below(&self, key: &str) -> bool {
        self.key == key || self.key.starts_with(&format!("{key}."))
    }

    /// Finds the entry most specifically responsible: one whose key is the error key, lies
    /// below it (e.g. a missing sibling of a table), or lies above it (a table replaced by a
    /// scalar). The longest matching key path wins.
    fn blame<'a>(&self, entries: &'a [Entry]) -> Option<&'a Entry> {
        entries
            .iter()
            .filter(|entry| {
                let key = entry.path.join(".");
                self.is_at_or_below(&key) || key.starts_with(&format!("{}.", self.key))
            })
            .max_by_key(|entry| entry.path.len())
    }

    fn into_error(self, origin: Origin) -> ConfigError {
        match self.kind {
            ProblemKind::Unknown { expected } => ConfigError::UnknownKey {
                origin,
                key: self.key,
                expected,
            },
            ProblemKind::Invalid { message } => ConfigError::InvalidValue {
                origin,
                key: self.key,
                message,
            },
        }
    }
}

fn check<T: DeserializeOwned>(tree: &Table) -> Result<T, Problem> {
    serde_path_to_error::deserialize::<_, T>(Value::Table(tree.clone())).map_err(|error| {
        let path = error.path().to_string();
        let parent = if path == "." { String::new() } else { path };
        let message = error.inner().message().to_owned();
        let join = |child: &str| {
            // Depending on the deserializer, the path ends at the parent table or already
            // includes the unknown key.
            if parent.is_empty() {
                child.to_owned()
            } else if parent == child || parent.ends_with(&format!(".{child}")) {
                parent.clone()
            } else {
                format!("{parent}.{child}")
            }
        };
        match parse_unknown_field(&message) {
            // Name the full key, not just its table.
            Some((field, expected)) => Problem {
                key: join(field),
                kind: ProblemKind::Unknown { expected },
            },
            None => Problem {
                key: if parent.is_empty() {
                    "(root)".to_owned()
                } else {
                    parent
                },
                kind: ProblemKind::Invalid { message },
            },
        }
    })
}

/// Splits serde's "unknown field `x`, expected one of `a`, `b`" into `x` and a hint.
fn parse_unknown_field(message: &str) -> Option<(&str, String)> {
    let rest = message.strip_prefix("unknown field `")?;
    let (field, tail) = rest.split_once('`')?;
    let expected = match tail.strip_prefix(", ") {
        Some("there are no fields") => " (this table takes no keys)".to_owned(),
        Some(hint) => format!(" ({hint})"),
        None => String::new(),
    };
    Some((field, expected))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_domain_label_is_bounded() {
        let too_long = "a".repeat(64);
        let cases: [(&str, Result<&str, &str>); 5] = [
            ("acme-prod_1.eu", Ok("acme-prod_1.eu")),
            ("", Err("must be 1 to 63 characters, got 0")),
            (&too_long, Err("must be 1 to 63 characters, got 64")),
            ("a b", Err("character ' ' is not one of A-Z a-z 0-9 . _ -")),
            (
                "x\"}",
                Err("character '\"' is not one of A-Z a-z 0-9 . _ -"),
            ),
        ];
        for (value, expected) in cases {
            let expected = expected.map(str::to_owned).map_err(str::to_owned);
            assert_eq!(
                parse_metrics_label(value),
                expected,
                "parse_metrics_label({value:?})"
            );
        }
    }

    #[test]
    fn parses_values_as_toml_when_possible() {
        assert_eq!(parse_scalar("42"), Some(Value::Integer(42)));
        assert_eq!(parse_scalar("true"), Some(Value::Boolean(true)));
        assert_eq!(
            parse_scalar("\"quoted\""),
            Some(Value::String("quoted".into()))
        );
        assert_eq!(parse_scalar("postgres://x/y"), None);
        assert_eq!(parse_scalar("1\nother = 2"), None);
    }

    #[test]
    fn splits_unknown_field_messages() {
        let (field, hint) =
            parse_unknown_field("unknown field `urll`, expected `url` or `pool-size`")
                .expect("is an unknown-field message");
        assert_eq!(field, "urll");
        assert_eq!(hint, " (expected `url` or `pool-size`)");
        assert!(parse_unknown_field("invalid type: string").is_none());
    }

    #[test]
    fn set_path_refuses_to_descend_into_scalars() {
        let mut tree = Table::new();
        tree.insert("a".into(), Value::Integer(1));
        let error = set_path(&mut tree, &["a".into(), "b".into()], Value::Integer(2))
            .expect_err("a is not a table");
        assert!(
            error.contains("`a` already holds a value of type integer"),
            "{error}"
        );
    }
}
