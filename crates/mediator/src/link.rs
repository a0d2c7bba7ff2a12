//! The mediator's way to the sequencers: one [`DomainClient`] (the sequencer-client
//! library's failover client), shared by the subscription, verdict sends and time proofs.
//! The client health-checks every endpoint, sends round-robin over the healthy ones and
//! retries a failed send elsewhere with the same bytes (so the same message id), and keeps
//! one subscription alive across endpoints (abandoning a hung one within about
//! `subscription-idle` after its health check fails, with fork detection on resumption).
//!
//! The client is created on first use and kept for the life of the process, so a passive
//! replica that takes over finds it connected and authenticated already.

use std::time::Duration;

use domain_identity::{DomainId, PublicKey};
use domain_sequencer_client::{
    ClientError, ClientOptions, DomainClient, DomainPins, DomainTls, MemberIdentity,
};
use tokio::sync::Mutex;
use tonic::transport::ClientTlsConfig;

/// No endpoint could be used to connect and authenticate (for now).
#[derive(Debug, thiserror::Error)]
#[error("no sequencer endpoint is usable: {0}")]
pub struct LinkError(pub String);

/// The lazily connected, shared [`DomainClient`] of this replica.
pub struct SequencerLink {
    endpoints: Vec<String>,
    tls: Option<ClientTlsConfig>,
    member: MemberIdentity,
    domain_id: DomainId,
    timeout: Duration,
    client: Mutex<Option<DomainClient>>,
    /// The domain's namespace key, known once connected.
    namespace_key: std::sync::OnceLock<PublicKey>,
}

impl SequencerLink {
    pub fn new(
        endpoints: Vec<String>,
        tls: Option<ClientTlsConfig>,
        member: MemberIdentity,
        domain_id: DomainId,
        timeout: Duration,
    ) -> Self {
        Self {
            endpoints,
            tls,
            member,
            domain_id,
            timeout,
            client: Mutex::new(None),
            namespace_key: std::sync::OnceLock::new(),
        }
    }

    /// The client, connecting it first if this is the first use (or the last attempt
    /// failed). Concurrent callers wait for the same attempt.
    pub async fn get(&self) -> Result<DomainClient, LinkError> {
        let mut slot = self.client.lock().await;
        if let Some(client) = slot.as_ref() {
            return Ok(client.clone());
        }
        let tls = match &self.tls {
            Some(config) => DomainTls::Config(config.clone()),
            None => DomainTls::Plaintext,
        };
        let options = ClientOptions {
            connect_timeout: self.timeout * 2,
            // One attempt of a call; a send is retried (elsewhere) until its max
            // sequencing time, so this only bounds how long a hung endpoint holds it.
            call_timeout: self.timeout.min(Duration::from_secs(2)),
            // The configured domain id is pinned: an endpoint of another domain is refused
            // even when it answers first, and the sequencer key must be the one the domain's
            // namespace-signed registration names.
            pins: DomainPins {
                domain_id: Some(self.domain_id.to_string()),
                sequencer_key: None,
            },
            ..ClientOptions::default()
        };
        let client =
            DomainClient::connect("domain", &self.endpoints, tls, self.member.clone(), options)
                .await
                .map_err(|e| LinkError(describe(&e)))?;
        if client.domain_id() != self.domain_id.to_string() {
            return Err(LinkError(format!(
                "the sequencers serve domain {}, not {}: check `sequencers` and `domain-id`",
                client.domain_id(),
                self.domain_id
            )));
        }
        // Topology is verified against the namespace key; with an unpinned sequencer key the
        // client only connects once it knows it (the registration check needs it).
        let Some(namespace_key) = client.namespace_key() else {
            return Err(LinkError(format!(
                "the sequencers of {} do not know the domain's namespace key yet",
                self.domain_id
            )));
        };
        let _ = self.namespace_key.set(namespace_key.clone());
        tracing::info!(endpoints = ?self.endpoints, "connected to the sequencers");
        *slot = Some(client.clone());
        Ok(client)
    }
}

impl SequencerLink {
    /// The domain's namespace key, once [`Self::get`] has connected.
    pub fn namespace_key(&self) -> Option<&PublicKey> {
        self.namespace_key.get()
    }
}

/// A client error as one line, with the gRPC status and error code when present.
pub fn describe(e: &ClientError) -> String {
    match e {
        ClientError::Status(s) => {
            let code = domain_proto::error::error_code(s).unwrap_or("");
            format!("{:?} {code}: {}", s.code(), s.message())
        }
        other => other.to_string(),
    }
}
