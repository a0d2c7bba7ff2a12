//! Readiness probes of other components for the `Status` call: an HTTP/1.1
//! `GET <ops-url>/health/ready` ([`domain_probe`]).

use std::time::Duration;

use domain_proto::manager::admin::v1::ComponentState;

use crate::config::ComponentKind;

/// Time limit of one probe, connection included.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(1);

/// Result of probing `/health/ready`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Probe {
    /// HTTP status code of the answer.
    Answered(u16),
    /// No HTTP answer (connection refused, timeout, garbage); the reason.
    Unreachable(String),
}

impl Probe {
    /// The `ComponentStatus.state` for a component of `kind`: `ACTIVE`/`PASSIVE` for
    /// active-passive components, `SERVING`/`NOT_SERVING` for others, `UNREACHABLE`.
    pub fn state(&self, kind: ComponentKind) -> ComponentState {
        match (self, kind.is_active_passive()) {
            (Probe::Answered(200), true) => ComponentState::Active,
            (Probe::Answered(_), true) => ComponentState::Passive,
            (Probe::Answered(200), false) => ComponentState::Serving,
            (Probe::Answered(_), false) => ComponentState::NotServing,
            (Probe::Unreachable(_), _) => ComponentState::Unreachable,
        }
    }

    pub fn detail(&self) -> String {
        match self {
            Probe::Answered(code) => format!("/health/ready answered {code}"),
            Probe::Unreachable(reason) => reason.clone(),
        }
    }
}

/// Probes `<ops_url>/health/ready` within `timeout`.
pub async fn probe_ready(ops_url: &str, timeout: Duration) -> Probe {
    match domain_probe::get_path(ops_url, "/health/ready", timeout).await {
        Ok(answer) => Probe::Answered(answer.status.as_u16()),
        Err(domain_probe::ProbeError::Timeout { .. }) => {
            Probe::Unreachable(format!("no answer within {timeout:?}"))
        }
        Err(e) => Probe::Unreachable(e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    use tokio::net::TcpListener;

    #[test]
    fn maps_probes_to_states() {
        // (component, HTTP status of its readiness probe or None if unreachable, state)
        let cases = [
            (ComponentKind::Mediator, Some(200), ComponentState::Active),
            (
                ComponentKind::DomainManager,
                Some(503),
                ComponentState::Passive,
            ),
            (ComponentKind::Sequencer, Some(200), ComponentState::Serving),
            (
                ComponentKind::Participant,
                Some(503),
                ComponentState::NotServing,
            ),
            (ComponentKind::Sequencer, None, ComponentState::Unreachable),
        ];
        for (kind, answer, state) in cases {
            let probe = match answer {
                Some(status) => Probe::Answered(status),
                None => Probe::Unreachable("x".into()),
            };
            assert_eq!(probe.state(kind), state, "{probe:?} of a {kind:?}");
        }
    }

    async fn serve_once(answer: &'static str) -> String {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move {
            if let Ok((mut s, _)) = listener.accept().await {
                let mut buf = [0u8; 1024];
                let n = s.read(&mut buf).await.unwrap_or(0);
                assert!(
                    std::str::from_utf8(&buf[..n])
                        .unwrap_or_default()
                        .starts_with("GET /health/ready HTTP/1.1\r\n")
                );
                let _ = s.write_all(answer.as_bytes()).await;
            }
        });
        format!("http://{addr}")
    }

    #[tokio::test]
    async fn probes_over_tcp() {
        let url = serve_once("HTTP/1.1 200 OK\r\ncontent-length: 6\r\n\r\nready\n").await;
        assert_eq!(probe_ready(&url, PROBE_TIMEOUT).await, Probe::Answered(200));
        let url = serve_once("HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\n\r\n").await;
        assert_eq!(probe_ready(&url, PROBE_TIMEOUT).await, Probe::Answered(503));

        // Nothing listens there any more.
        let closed = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = closed.local_addr().expect("addr");
        drop(closed);
        assert!(matches!(
            probe_ready(&format!("http://{addr}"), PROBE_TIMEOUT).await,
            Probe::Unreachable(_)
        ));

        // Accepts but never answers: bounded by the timeout.
        let silent = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = silent.local_addr().expect("addr");
        let probe = probe_ready(&format!("http://{addr}"), Duration::from_millis(200)).await;
        assert!(matches!(probe, Probe::Unreachable(_)), "{probe:?}");
        drop(silent);
    }
}
