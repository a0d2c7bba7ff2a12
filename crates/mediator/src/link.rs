//! The mediator's connection to the sequencers: one authenticated connection
//! at a time, moved to the next configured endpoint whenever a user of it sees
//! it fail. The subscription, verdict sends and time proofs share it.

use std::time::Duration;

use domain_sequencer_client::{ClientError, MemberIdentity, SequencerConnection, connect_channel};
use tokio::sync::Mutex;
use tonic::transport::ClientTlsConfig;

use crate::config::{Scheme, endpoint_scheme};

/// One connection attempt round failed on every endpoint.
#[derive(Debug, thiserror::Error)]
#[error("no sequencer endpoint is usable: {0}")]
pub struct LinkError(pub String);

struct LinkState {
    current: Option<(u64, usize, SequencerConnection)>,
    next_index: usize,
    generation: u64,
}

/// Shared, self-healing connection to one of several sequencer endpoints.
pub struct SequencerLink {
    endpoints: Vec<String>,
    tls: Option<ClientTlsConfig>,
    member: MemberIdentity,
    domain_id: String,
    timeout: Duration,
    state: Mutex<LinkState>,
}

/// A connection handed out by the link, with its generation (to report failures).
#[derive(Clone)]
pub struct Conn {
    pub generation: u64,
    pub endpoint: String,
    pub conn: SequencerConnection,
}

impl SequencerLink {
    pub fn new(
        endpoints: Vec<String>,
        tls: Option<ClientTlsConfig>,
        member: MemberIdentity,
        domain_id: String,
        timeout: Duration,
    ) -> Self {
        Self {
            endpoints,
            tls,
            member,
            domain_id,
            timeout,
            state: Mutex::new(LinkState {
                current: None,
                next_index: 0,
                generation: 0,
            }),
        }
    }

    /// The current connection, or a new one to the first endpoint (from the
    /// preferred one on) that connects and authenticates.
    pub async fn get(&self) -> Result<Conn, LinkError> {
        let mut state = self.state.lock().await;
        if let Some((generation, index, conn)) = &state.current {
            return Ok(Conn {
                generation: *generation,
                endpoint: self.endpoints[*index].clone(),
                conn: conn.clone(),
            });
        }
        let n = self.endpoints.len();
        let mut errors = Vec::new();
        for k in 0..n {
            let index = (state.next_index + k) % n;
            let endpoint = &self.endpoints[index];
            match self.connect(endpoint).await {
                Ok(conn) => {
                    state.generation += 1;
                    state.next_index = index;
                    state.current = Some((state.generation, index, conn.clone()));
                    tracing::info!(%endpoint, "connected to sequencer");
                    return Ok(Conn {
                        generation: state.generation,
                        endpoint: endpoint.clone(),
                        conn,
                    });
                }
                Err(error) => {
                    tracing::warn!(%endpoint, error = %error, "cannot connect to sequencer");
                    errors.push(format!("{endpoint}: {error}"));
                }
            }
        }
        state.next_index = (state.next_index + 1) % n.max(1);
        Err(LinkError(errors.join("; ")))
    }

    /// Reports that connection `generation` failed: the next [`get`](Self::get)
    /// connects to the next endpoint. Stale reports are ignored.
    pub async fn failed(&self, generation: u64, why: &str) {
        let mut state = self.state.lock().await;
        if let Some((current, index, _)) = &state.current
            && *current == generation
        {
            tracing::warn!(endpoint = %self.endpoints[*index], reason = why, "dropping sequencer connection");
            let n = self.endpoints.len().max(1);
            state.next_index = (*index + 1) % n;
            state.current = None;
        }
    }

    async fn connect(&self, endpoint: &str) -> Result<SequencerConnection, String> {
        let tls = match endpoint_scheme(endpoint) {
            Some(Scheme::Https) => self.tls.clone(),
            _ => None,
        };
        let attempt = async {
            let channel = connect_channel(endpoint, tls, self.timeout)
                .await
                .map_err(|e| describe(&e))?;
            let conn = SequencerConnection::new(channel, self.member.clone())
                .await
                .map_err(|e| describe(&e))?;
            if conn.domain_id != self.domain_id {
                return Err(format!(
                    "serves domain {}, not {}: check `sequencers`",
                    conn.domain_id, self.domain_id
                ));
            }
            conn.authenticate()
                .await
                .map_err(|e| format!("authentication failed: {}", describe(&e)))?;
            Ok(conn)
        };
        tokio::time::timeout(self.timeout * 2, attempt)
            .await
            .map_err(|_| format!("timed out after {:?}", self.timeout * 2))?
    }
}

/// A client error as one line, with the gRPC status and error code when present.
pub fn describe(e: &ClientError) -> String {
    match e {
        ClientError::Status(s) => {
            let code = s
                .metadata()
                .get("domain-error-code")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("");
            format!("{:?} {code}: {}", s.code(), s.message())
        }
        other => other.to_string(),
    }
}

/// Whether an error means the connection itself is unusable (move to another endpoint).
pub fn is_connection_failure(e: &ClientError) -> bool {
    match e {
        ClientError::Status(s) => matches!(
            s.code(),
            tonic::Code::Unavailable
                | tonic::Code::Unauthenticated
                | tonic::Code::Unknown
                | tonic::Code::Internal
                | tonic::Code::Cancelled
                | tonic::Code::DeadlineExceeded
        ),
        _ => true,
    }
}
