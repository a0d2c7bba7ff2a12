//! The lease section of a component's configuration.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::LeaseError;

/// Fraction of `ttl` the holder gives up early: it acts as active only until
/// `last renewal sent + ttl - ttl / SAFETY_MARGIN_DIVISOR`.
pub(crate) const SAFETY_MARGIN_DIVISOR: u32 = 10;

/// Smallest accepted `ttl`: shorter leases cannot survive ordinary database round trips.
const MIN_TTL: Duration = Duration::from_millis(100);

/// Settings of one leader lease, e.g. a component's `[lease]` section.
///
/// ```toml
/// [lease]
/// name = "mediator"
/// holder-address = "https://mediator-1.example:4402"
/// ttl = "2s"
/// renew-interval = "500ms"
/// ```
///
/// With the defaults, a crashed or partitioned active is replaced after at most about
/// `ttl + poll-interval` (2.25 s), and a gracefully stopping one after about
/// `poll-interval` (it releases the lease on the way out).
///
/// Durations use humantime syntax (`"2s"`, `"500ms"`). Unknown keys are rejected.
/// [`validate`](Self::validate) checks the relations between the settings;
/// [`LeaseKeeper::new`](crate::LeaseKeeper::new) calls it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case", default)]
pub struct LeaseConfig {
    /// Name of the lease, the primary key of its row in `leases`. All replicas of one
    /// component must use the same name. Components set it to their own name (e.g.
    /// `mediator`); it must not be empty. Default: empty (must be set). Since 0.1.0.
    pub name: String,

    /// Identity of this process as a lease holder. It must be unique per *process*: two
    /// processes sharing a holder would each accept the other's lease as their own. Leave
    /// it empty (recommended) to have one generated at start-up as
    /// `<name>-<hostname>-<random>` (see [`generate_holder`]). Default: empty (generated).
    /// Since 0.1.0.
    pub holder: String,

    /// What passive replicas tell clients about the active, typically its admin endpoint
    /// (e.g. `https://mediator-1.example:4402`). Stored in the lease row and reported in
    /// [`LeaseStatus::holder_address`](crate::LeaseStatus::holder_address).
    /// Default: empty. Since 0.1.0.
    pub holder_address: String,

    /// How long one acquisition or renewal holds the lease, measured by the database
    /// clock. A crashed active is replaced at most about `ttl + poll-interval` after its
    /// last renewal. Must be at least 100ms. Default: 2s. Since 0.1.0.
    #[serde(with = "humantime_serde")]
    pub ttl: Duration,

    /// How often the active renews. Must be less than half of `ttl`, so that one failed
    /// or slow renewal does not lose the lease. Default: 500ms. Since 0.1.0.
    #[serde(with = "humantime_serde")]
    pub renew_interval: Duration,

    /// How often a passive replica checks whether the lease is free (and takes it if so).
    /// Default: 250ms. Since 0.1.0.
    #[serde(with = "humantime_serde")]
    pub poll_interval: Duration,

    /// Upper bound on every database operation of the keeper (getting a pooled connection
    /// included): acquire, renew, poll, release. A renewal that does not finish in time
    /// counts as a failure and demotes the active. Must be less than `ttl`.
    /// Default: 500ms. Since 0.1.0.
    #[serde(with = "humantime_serde")]
    pub op_timeout: Duration,
}

impl Default for LeaseConfig {
    fn default() -> Self {
        Self {
            name: String::new(),
            holder: String::new(),
            holder_address: String::new(),
            ttl: Duration::from_secs(2),
            renew_interval: Duration::from_millis(500),
            poll_interval: Duration::from_millis(250),
            op_timeout: Duration::from_millis(500),
        }
    }
}

impl LeaseConfig {
    /// Returns the default settings for lease `name`.
    pub fn new(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            ..Self::default()
        }
    }

    /// How much earlier than the database the holder considers its lease gone: 10% of
    /// `ttl`. Covers clock-rate differences and scheduling delays.
    pub fn safety_margin(&self) -> Duration {
        self.ttl / SAFETY_MARGIN_DIVISOR
    }

    /// Checks the settings; the error names the offending key(s).
    pub fn validate(&self) -> Result<(), LeaseError> {
        fn invalid(key: &'static str, reason: String) -> Result<(), LeaseError> {
            Err(LeaseError::InvalidConfig { key, reason })
        }
        let fmt = |d: Duration| humantime::format_duration(d).to_string();
        if self.name.trim().is_empty() {
            return invalid(
                "name",
                "must be set to the lease name, e.g. \"mediator\"".into(),
            );
        }
        if self.ttl < MIN_TTL {
            return invalid(
                "ttl",
                format!("= {} must be at least {}", fmt(self.ttl), fmt(MIN_TTL)),
            );
        }
        if self.renew_interval.is_zero() || self.renew_interval >= self.ttl / 2 {
            return invalid(
                "renew-interval",
                format!(
                    "= {} must be greater than 0 and less than half of `ttl` (ttl = {}), so \
                     that one failed renewal does not lose the lease",
                    fmt(self.renew_interval),
                    fmt(self.ttl)
                ),
            );
        }
        if self.poll_interval.is_zero() {
            return invalid("poll-interval", "must be greater than 0".into());
        }
        if self.op_timeout.is_zero() || self.op_timeout >= self.ttl {
            return invalid(
                "op-timeout",
                format!(
                    "= {} must be greater than 0 and less than `ttl` (ttl = {})",
                    fmt(self.op_timeout),
                    fmt(self.ttl)
                ),
            );
        }
        Ok(())
    }
}

/// Returns a holder id unique to this process: `<component>-<hostname>-<8 random hex
/// digits>`, e.g. `mediator-node1-3f9c0a12`.
///
/// The hostname comes from `HOSTNAME` or `/proc/sys/kernel/hostname` (in Kubernetes, the
/// pod name), so operators can tell replicas apart in `SELECT * FROM leases`; the random
/// suffix keeps a restarted process (same pod name) distinct from its predecessor.
pub fn generate_holder(component: &str) -> String {
    let host = std::env::var("HOSTNAME")
        .ok()
        .filter(|h| !h.trim().is_empty())
        .or_else(|| {
            std::fs::read_to_string("/proc/sys/kernel/hostname")
                .ok()
                .map(|h| h.trim().to_owned())
                .filter(|h| !h.is_empty())
        })
        .unwrap_or_else(|| "unknown-host".to_owned());
    let suffix = getrandom::u32().unwrap_or_else(|_| fallback_random());
    format!("{component}-{host}-{suffix:08x}")
}

/// Used only if the OS random source fails: mixes the pid and the current time.
#[expect(clippy::disallowed_methods, reason = "a seed, not a timestamp")]
fn fallback_random() -> u32 {
    use std::hash::{BuildHasher as _, Hasher as _};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u32(std::process::id());
    if let Ok(now) = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH) {
        hasher.write_u128(now.as_nanos());
    }
    // Truncation intended: any 32 bits of the hash will do.
    hasher.finish() as u32
}
