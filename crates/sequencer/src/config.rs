//! Sequencer configuration. Every field is documented with its unit and
//! default; `sequencer --dump-config` prints the effective values.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use domain_identity::{DomainId, MemberId};
use domain_runtime::grpc::GrpcServerConfig;
use domain_storage::DatabaseConfig;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case", default)]
pub struct SequencerConfig {
    /// Domain id (`name::1220…`) every signature is bound to. Required; checked when
    /// the file is read.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub domain_id: Option<DomainId>,
    /// Name part of the sequencer id `SEQ::<name>::<fingerprint>`. Default: `sequencer`.
    pub name: String,
    /// PKCS#8 PEM ed25519 key shared by every instance of this sequencer. Required.
    pub signing_key_file: PathBuf,
    /// Shared PostgreSQL database of all instances.
    pub database: DatabaseConfig,
    /// Public API (participants, mediator, domain manager). Default listen `0.0.0.0:5001`.
    pub public_api: GrpcServerConfig,
    /// Admin API (operators, bootstrap). Default listen `127.0.0.1:5002`: loopback only.
    pub admin_api: GrpcServerConfig,
    /// Plaintext ops HTTP port: `/metrics`, `/health/live`, `/health/ready`. Default `0.0.0.0:5003`.
    pub ops_listen: SocketAddr,
    /// Address peers and operators can reach this instance's public API at (informational).
    pub advertised_address: String,
    /// Largest accepted submission in bytes. Default 1 MiB.
    pub max_request_size: usize,
    /// Members registered at start-up, before any topology (the domain manager member
    /// `DOM::<domain>` is always registered). Participants are normally admitted by the
    /// domain manager's allowlist instead. Only members that do not exist are created: a
    /// listed member that was disabled stays disabled across restarts. Default: none.
    pub bootstrap_members: Vec<MemberId>,
    /// `permissioned` (default): only participants the domain manager allowlisted can get
    /// a token, send or subscribe. `open`: any participant that proves its key is admitted
    /// on its first successful `Authenticate` (topology can still disable it).
    pub access_mode: AccessMode,
    pub ha: HaConfig,
    pub writer: WriterConfig,
    pub reader: ReaderConfig,
    pub auth: AuthConfig,
    pub pruning: PruningConfig,
    pub overload: OverloadConfig,
    /// How long shutdown waits for in-flight calls to drain. Default `10s`.
    #[serde(with = "humantime_serde")]
    pub shutdown_grace: Duration,
    /// OTLP span export (`[tracing]`, shared by every service; off by default).
    pub tracing: domain_runtime::telemetry::TracingConfig,
}

impl Default for SequencerConfig {
    fn default() -> Self {
        Self {
            domain_id: None,
            name: "sequencer".into(),
            signing_key_file: PathBuf::new(),
            database: DatabaseConfig::default(),
            public_api: GrpcServerConfig::with_listen(domain_runtime::config::all_interfaces(5001)),
            admin_api: GrpcServerConfig::with_listen(domain_runtime::config::loopback(5002)),
            ops_listen: domain_runtime::config::all_interfaces(5003),
            advertised_address: String::new(),
            max_request_size: 1024 * 1024,
            bootstrap_members: Vec::new(),
            access_mode: AccessMode::Permissioned,
            ha: HaConfig::default(),
            writer: WriterConfig::default(),
            reader: ReaderConfig::default(),
            auth: AuthConfig::default(),
            pruning: PruningConfig::default(),
            overload: OverloadConfig::default(),
            shutdown_grace: Duration::from_secs(10),
            tracing: domain_runtime::telemetry::TracingConfig::default(),
        }
    }
}

/// Who may join the domain as a participant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AccessMode {
    Permissioned,
    Open,
}

/// Active-active settings; must be identical on every instance.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case", default)]
pub struct HaConfig {
    /// Modulus of timestamp partitioning = most instances that can be online at once. Default 32.
    pub total_node_count: u16,
    /// Idle instances advance their watermark this often. Default `50ms`.
    #[serde(with = "humantime_serde")]
    pub keepalive_interval: Duration,
    /// A peer whose heartbeat has not advanced for this long is marked offline. Default `1s`.
    #[serde(with = "humantime_serde")]
    pub offline_after: Duration,
    /// How often each instance checks its peers. Default `100ms`. A peer whose process
    /// died (its writer's database backend is gone) is marked offline at the next check;
    /// `offline-after` covers peers that are alive but stalled.
    #[serde(with = "humantime_serde")]
    pub online_check_interval: Duration,
    /// Health turns NOT_SERVING when the database has not answered for this long. Default `1s`.
    #[serde(with = "humantime_serde")]
    pub db_health_grace: Duration,
    /// A peer's announced watermark further ahead of this instance's clock than this is not
    /// followed (its clock is taken to be wrong, or the notification forged): counted in
    /// `sequencer_peer_watermarks_ignored_total` and alerted on, so one instance's fast
    /// clock cannot drag the domain's time forward. Default `1s`.
    #[serde(with = "humantime_serde")]
    pub max_clock_skew: Duration,
}

impl Default for HaConfig {
    fn default() -> Self {
        Self {
            total_node_count: 32,
            keepalive_interval: Duration::from_millis(50),
            offline_after: Duration::from_secs(1),
            online_check_interval: Duration::from_millis(100),
            db_health_grace: Duration::from_secs(1),
            max_clock_skew: Duration::from_secs(1),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case", default)]
pub struct WriterConfig {
    /// Most submissions per batch transaction. Default 1000.
    pub max_batch: usize,
    /// A batch stops taking submissions once their bytes reach this (it always takes at
    /// least one, so a batch holds less than `max-batch-bytes` + `max-request-size`).
    /// At most 256 MiB: a batch is one statement, and PostgreSQL caps a message at 1 GiB.
    /// Default 8 MiB.
    pub max_batch_bytes: usize,
    /// Submissions queued for the writer before sends get `SEQ_OVERLOADED`. Default 20000.
    pub queue_size: usize,
    /// Bytes of the submissions waiting for the writer or in the batch it is writing
    /// (each counted as its size plus 512 bytes of bookkeeping). A send that would go over
    /// gets `SEQ_OVERLOADED` at once (retryable; nothing is stored). At least
    /// `max-request-size`. Default 64 MiB.
    pub max_queue_bytes: usize,
    /// Most of `max-queue-bytes` the submissions of one sender may hold, so that one
    /// member sending at full speed leaves room for the others; beyond it that member's
    /// sends get `SEQ_OVERLOADED`. Between `max-request-size` and `max-queue-bytes`.
    /// Default 16 MiB.
    pub max_member_queue_bytes: usize,
    /// A batch commit or heartbeat taking longer than this fails the instance over. Default `2s`.
    #[serde(with = "humantime_serde")]
    pub commit_timeout: Duration,
    /// Max sequencing time applied when a submission leaves it at 0. Default `60s`.
    #[serde(with = "humantime_serde")]
    pub default_max_sequencing: Duration,
    /// Sign each batch of events once (a Merkle root; every event carries its inclusion
    /// proof) instead of every event. Members need a client that knows
    /// `SequencedEvent.batch_proof` to verify such events: during a rolling upgrade, keep
    /// this `false` until every member's client is upgraded. Default `true`.
    pub batch_signatures: bool,
}

impl Default for WriterConfig {
    fn default() -> Self {
        Self {
            max_batch: 1000,
            max_batch_bytes: 8 * 1024 * 1024,
            queue_size: 20_000,
            max_queue_bytes: 64 * 1024 * 1024,
            max_member_queue_bytes: 16 * 1024 * 1024,
            commit_timeout: Duration::from_secs(2),
            default_max_sequencing: Duration::from_secs(60),
            batch_signatures: true,
        }
    }
}

/// Largest `writer.max-batch-bytes`: the batch's submissions travel as one statement
/// parameter, and PostgreSQL refuses a message over 1 GiB.
pub const MAX_BATCH_BYTES_LIMIT: usize = 256 * 1024 * 1024;

impl SequencerConfig {
    /// Checks the memory and load bounds against each other and `max-request-size`:
    /// a queue budget a max-size send cannot fit in would refuse it for ever.
    pub fn validate_limits(&self) -> anyhow::Result<()> {
        let w = &self.writer;
        let mrs = self.max_request_size;
        if w.max_batch == 0 {
            anyhow::bail!("invalid `writer.max-batch` 0: must be at least 1");
        }
        if w.queue_size == 0 {
            anyhow::bail!("invalid `writer.queue-size` 0: must be at least 1");
        }
        if w.max_batch_bytes == 0 || w.max_batch_bytes > MAX_BATCH_BYTES_LIMIT {
            anyhow::bail!(
                "invalid `writer.max-batch-bytes` {}: must be between 1 and {MAX_BATCH_BYTES_LIMIT}",
                w.max_batch_bytes
            );
        }
        let one_send = mrs.saturating_add(crate::overload::SUBMISSION_OVERHEAD);
        if w.max_member_queue_bytes < one_send {
            anyhow::bail!(
                "invalid `writer.max-member-queue-bytes` {}: smaller than one submission of \
                 `max-request-size` {mrs} plus {} bytes of bookkeeping, so such a send could \
                 never be queued; raise it to at least {one_send}",
                w.max_member_queue_bytes,
                crate::overload::SUBMISSION_OVERHEAD
            );
        }
        if w.max_queue_bytes < w.max_member_queue_bytes {
            anyhow::bail!(
                "invalid `writer.max-queue-bytes` {}: smaller than `writer.max-member-queue-bytes` {}",
                w.max_queue_bytes,
                w.max_member_queue_bytes
            );
        }
        let o = &self.overload;
        if o.max_concurrent_requests == 0 {
            anyhow::bail!("invalid `overload.max-concurrent-requests` 0: must be at least 1");
        }
        if o.max_concurrent_requests_per_caller == 0
            || o.max_concurrent_requests_per_caller > o.max_concurrent_requests
        {
            anyhow::bail!(
                "invalid `overload.max-concurrent-requests-per-caller` {}: must be between 1 and \
                 `overload.max-concurrent-requests` ({})",
                o.max_concurrent_requests_per_caller,
                o.max_concurrent_requests
            );
        }
        Ok(())
    }
}

/// The load-shed layer of the public API (see `overload::LoadShed`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case", default)]
pub struct OverloadConfig {
    /// Calls of the public `SequencerService` handled at once on this instance; one more is
    /// answered at once with `SEQ_OVERLOADED` (retryable). A `Subscribe` counts only until
    /// its stream is open. Health checks are not counted. Requests in memory are bounded by
    /// this × `public-api.max-message-size`. Default 512.
    pub max_concurrent_requests: usize,
    /// Of those, the most one caller may have in progress: a caller is a bearer token (so
    /// one member's calls over all its connections), or the connection for the calls
    /// before authentication. Keeps one member sending at full speed from taking every
    /// slot. At most `max-concurrent-requests`. Default 128.
    pub max_concurrent_requests_per_caller: usize,
}

impl Default for OverloadConfig {
    fn default() -> Self {
        Self {
            max_concurrent_requests: 512,
            max_concurrent_requests_per_caller: 128,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case", default)]
pub struct ReaderConfig {
    /// Fallback polling when no notification arrives. Default `200ms`.
    #[serde(with = "humantime_serde")]
    pub poll_interval: Duration,
    /// Most events per read query (shared reader and catch-up pages). Default 1000.
    pub page_size: i64,
    /// Byte budget of one read query, by the stored size of the events (submission,
    /// content, signature): a page stops adding events once the ones before reach it, and
    /// holds at least one, so a page of large events stays near this size instead of
    /// `page-size` × `max-request-size`. At least 64 KiB. Default 8 MiB.
    pub page_bytes: usize,
    /// Most batches the shared live feed keeps for subscribers that have not taken them;
    /// a subscriber further behind is cut (`SEQ_SUBSCRIBER_TOO_SLOW`). Default 1024.
    pub feed_buffer: usize,
    /// Most bytes (stored event size) the shared live feed keeps for subscribers that have
    /// not taken them: when a slow subscriber would make it keep more, the oldest batches go
    /// and that subscriber is cut (`SEQ_SUBSCRIBER_TOO_SLOW`, it resumes from the database).
    /// At least `page-bytes`. Default 256 MiB.
    pub feed_bytes: usize,
    /// Events buffered per subscription towards the client. Default 256.
    pub subscription_buffer: usize,
    /// Bytes (encoded events) buffered per subscription towards the client, on top of the
    /// event count: a subscription whose client reads slowly waits once either is reached.
    /// An event larger than this is sent alone. Between 64 KiB and 4 GiB. Default 16 MiB.
    pub subscription_buffer_bytes: usize,
    /// Subscriptions one member may have open on one instance at a time; one more is
    /// refused with `SEQ_TOO_MANY_SUBSCRIPTIONS`. A client normally needs one per
    /// instance (briefly two while it replaces a broken stream). Default 8.
    pub max_subscriptions_per_member: usize,
    /// Counter checkpoints are written this often. Default `2s`.
    #[serde(with = "humantime_serde")]
    pub checkpoint_interval: Duration,
    /// A member gets a new checkpoint after this many new events. Default 512.
    pub checkpoint_every_events: i64,
}

impl ReaderConfig {
    /// Checks the limits: a zero would stall delivery or panic, a tiny byte budget would
    /// turn every page into a query per event.
    pub fn validate(&self) -> anyhow::Result<()> {
        const MIN_PAGE_BYTES: usize = 64 * 1024;
        if self.page_size < 1 {
            anyhow::bail!(
                "invalid `reader.page-size` {}: must be at least 1",
                self.page_size
            );
        }
        if self.page_bytes < MIN_PAGE_BYTES || i64::try_from(self.page_bytes).is_err() {
            anyhow::bail!(
                "invalid `reader.page-bytes` {}: must be at least {MIN_PAGE_BYTES} (64 KiB)",
                self.page_bytes
            );
        }
        if self.feed_buffer < 1 {
            anyhow::bail!("invalid `reader.feed-buffer` 0: must be at least 1");
        }
        if self.feed_bytes < self.page_bytes {
            anyhow::bail!(
                "invalid `reader.feed-bytes` {}: must be at least `reader.page-bytes` ({})",
                self.feed_bytes,
                self.page_bytes
            );
        }
        if self.subscription_buffer < 1 {
            anyhow::bail!("invalid `reader.subscription-buffer` 0: must be at least 1");
        }
        if self.subscription_buffer_bytes < MIN_PAGE_BYTES
            || u32::try_from(self.subscription_buffer_bytes).is_err()
        {
            anyhow::bail!(
                "invalid `reader.subscription-buffer-bytes` {}: must be between 64 KiB and 4 GiB",
                self.subscription_buffer_bytes
            );
        }
        if self.max_subscriptions_per_member < 1 {
            anyhow::bail!("invalid `reader.max-subscriptions-per-member` 0: must be at least 1");
        }
        if self.checkpoint_every_events < 1 {
            anyhow::bail!(
                "invalid `reader.checkpoint-every-events` {}: must be at least 1",
                self.checkpoint_every_events
            );
        }
        Ok(())
    }
}

impl Default for ReaderConfig {
    fn default() -> Self {
        Self {
            poll_interval: Duration::from_millis(200),
            page_size: 1000,
            page_bytes: 8 * 1024 * 1024,
            feed_buffer: 1024,
            feed_bytes: 256 * 1024 * 1024,
            subscription_buffer: 256,
            subscription_buffer_bytes: 16 * 1024 * 1024,
            max_subscriptions_per_member: 8,
            checkpoint_interval: Duration::from_secs(2),
            checkpoint_every_events: 512,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case", default)]
pub struct AuthConfig {
    /// Lifetime of a challenge nonce. Default `60s`.
    #[serde(with = "humantime_serde")]
    pub nonce_ttl: Duration,
    /// Lifetime of a token. Default `1h`.
    #[serde(with = "humantime_serde")]
    pub token_ttl: Duration,
    /// Open access mode only: participants registered per second on one instance (also
    /// the burst). Beyond it `Authenticate` of a new participant fails with the retryable
    /// `SEQ_REGISTRATION_RATE_LIMITED`. Default 10.
    pub open_registrations_per_second: u32,
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self {
            nonce_ttl: Duration::from_secs(60),
            token_ttl: Duration::from_secs(3600),
            open_registrations_per_second: 10,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case", default)]
pub struct PruningConfig {
    /// Automatic pruning of acknowledged events; `0s` disables it. Default `60s`.
    #[serde(with = "humantime_serde")]
    pub interval: Duration,
    /// Rows per delete statement. Default 10000.
    pub batch_size: i64,
    /// Events stay at least this long after sequencing, even when every member has
    /// acknowledged them; expired deduplication rows stay this long past their max
    /// sequencing time (so a late retry can still be answered). `0s` prunes as soon as
    /// everyone acknowledged. Default `7d` (Canton 3.x's default).
    #[serde(with = "humantime_serde")]
    pub retention: Duration,
}

impl PruningConfig {
    /// Checks the values a typo could make dangerous or meaningless.
    pub fn validate(&self) -> anyhow::Result<()> {
        if self.batch_size < 1 {
            anyhow::bail!(
                "invalid `pruning.batch-size` {}: must be at least 1",
                self.batch_size
            );
        }
        // Sequencer time is i64 micros; a longer window cannot be represented.
        if self.retention > Duration::from_secs(100 * 365 * 24 * 3600) {
            anyhow::bail!(
                "invalid `pruning.retention` {}: at most 100 years",
                humantime::format_duration(self.retention)
            );
        }
        Ok(())
    }
}

impl Default for PruningConfig {
    fn default() -> Self {
        Self {
            interval: Duration::from_secs(60),
            batch_size: 10_000,
            retention: Duration::from_secs(7 * 24 * 3600),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with(f: impl FnOnce(&mut SequencerConfig)) -> anyhow::Result<()> {
        let mut c = SequencerConfig::default();
        f(&mut c);
        c.validate_limits()
    }

    /// Issue 11 item 3: the byte budgets are checked against `max-request-size` and each
    /// other at start, with a message naming the key.
    #[test]
    fn memory_budgets_are_validated_item_3() {
        with(|_| {}).expect("the defaults are valid");
        let err = |f: fn(&mut SequencerConfig)| match with(f) {
            Ok(()) => String::from("accepted"),
            Err(e) => e.to_string(),
        };
        let e = err(|c| c.writer.max_member_queue_bytes = c.max_request_size);
        assert!(e.contains("writer.max-member-queue-bytes"), "{e}");
        let e = err(|c| c.max_request_size = 32 * 1024 * 1024);
        assert!(
            e.contains("writer.max-member-queue-bytes") && e.contains("max-request-size"),
            "{e}"
        );
        let e = err(|c| c.writer.max_queue_bytes = c.writer.max_member_queue_bytes - 1);
        assert!(e.contains("writer.max-queue-bytes"), "{e}");
        let e = err(|c| c.writer.max_batch_bytes = 0);
        assert!(e.contains("writer.max-batch-bytes"), "{e}");
        let e = err(|c| c.writer.max_batch_bytes = MAX_BATCH_BYTES_LIMIT + 1);
        assert!(e.contains("writer.max-batch-bytes"), "{e}");
        let e = err(|c| c.writer.queue_size = 0);
        assert!(e.contains("writer.queue-size"), "{e}");
        let e = err(|c| c.writer.max_batch = 0);
        assert!(e.contains("writer.max-batch"), "{e}");
        let e = err(|c| c.overload.max_concurrent_requests = 0);
        assert!(e.contains("overload.max-concurrent-requests"), "{e}");
        let e = err(|c| c.overload.max_concurrent_requests_per_caller = 513);
        assert!(
            e.contains("overload.max-concurrent-requests-per-caller"),
            "{e}"
        );
    }

    /// The Kubernetes example config loads (every key known) with the values the manifests
    /// rely on: the ports the Services point at, TLS on the public API.
    /// Issue 11 items 2 and 3: the read limits are validated with errors naming the key.
    #[test]
    fn reader_limits_are_validated_item_2() {
        assert!(ReaderConfig::default().validate().is_ok());
        let cases: [(&str, ReaderConfig); 7] = [
            (
                "reader.subscription-buffer-bytes",
                ReaderConfig {
                    subscription_buffer_bytes: 100,
                    ..Default::default()
                },
            ),
            (
                "reader.page-size",
                ReaderConfig {
                    page_size: 0,
                    ..Default::default()
                },
            ),
            (
                "reader.page-bytes",
                ReaderConfig {
                    page_bytes: 1000,
                    ..Default::default()
                },
            ),
            (
                "reader.feed-buffer",
                ReaderConfig {
                    feed_buffer: 0,
                    ..Default::default()
                },
            ),
            (
                "reader.feed-bytes",
                ReaderConfig {
                    feed_bytes: 1024 * 1024,
                    ..Default::default()
                },
            ),
            (
                "reader.subscription-buffer",
                ReaderConfig {
                    subscription_buffer: 0,
                    ..Default::default()
                },
            ),
            (
                "reader.max-subscriptions-per-member",
                ReaderConfig {
                    max_subscriptions_per_member: 0,
                    ..Default::default()
                },
            ),
        ];
        for (key, config) in cases {
            let err = config.validate().expect_err(key).to_string();
            assert!(err.contains(key), "{key}: {err}");
        }
    }

    #[test]
    fn the_kubernetes_example_config_loads() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../deploy/k8s/base/sequencer.toml");
        let c: SequencerConfig =
            domain_runtime::config::load(Some(&path), Vec::new(), "SEQUENCER", &[])
                .expect("deploy/k8s/base/sequencer.toml loads");
        assert_eq!(c.public_api.listen.port(), 5001);
        assert!(c.public_api.tls.is_some());
        assert_eq!(c.ops_listen.port(), 5003);
    }

    /// Ids in the config are parsed when the file is read: a bad one is refused with the
    /// key and the reason, and a good one serializes back to the string that was read.
    #[test]
    fn ids_are_parsed_when_read_and_serialize_back() {
        let fp = format!("1220{}", "ab".repeat(32));
        let text =
            format!("domain-id = \"dom::{fp}\"\nbootstrap-members = [\"PAR::alice::{fp}\"]\n");
        let load = |text: &str| {
            domain_runtime::config::load_text::<SequencerConfig>(
                Some((std::path::Path::new("seq.toml"), text)),
                Vec::new(),
                "SEQUENCER",
                &[],
            )
        };
        let c = load(&text).expect("valid ids");
        assert_eq!(
            c.domain_id.as_ref().map(ToString::to_string),
            Some(format!("dom::{fp}"))
        );
        assert_eq!(
            c.bootstrap_members[0].role(),
            domain_identity::MemberRole::Participant
        );
        let back = toml::to_string(&c).expect("serialize");
        assert!(
            back.contains(&format!("domain-id = \"dom::{fp}\"")),
            "{back}"
        );
        assert!(back.contains(&format!("\"PAR::alice::{fp}\"")), "{back}");
        assert_eq!(
            load(&back).expect("reloads").domain_id,
            c.domain_id,
            "what is written reads back"
        );

        let err = load("domain-id = \"dom::1220\"\n").expect_err("short fingerprint");
        let msg = err.to_string();
        assert!(
            msg.contains("domain-id") && msg.contains("fingerprint must be 68 characters long"),
            "{msg}"
        );
        let err =
            load(&format!("bootstrap-members = [\"XYZ::a::{fp}\"]\n")).expect_err("unknown role");
        assert!(
            err.to_string().contains("unknown member role prefix"),
            "{err}"
        );
        // Unset, it is simply absent (the service refuses to start without it).
        assert!(load("").expect("empty file").domain_id.is_none());
        assert!(
            !toml::to_string(&SequencerConfig::default())
                .expect("serialize")
                .contains("domain-id")
        );
    }
}
