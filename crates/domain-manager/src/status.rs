//! Readiness probes of other components for the `Status` call: a minimal
//! HTTP/1.1 `GET <ops-url>/health/ready` over a plain TCP stream.

use std::time::Duration;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

use crate::config::{ComponentKind, parse_endpoint};

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
    /// The `ComponentStatus.state` for a component of `kind`: `active`/`passive` for
    /// active-passive components, `serving`/`not-serving` for others, `unreachable`.
    pub fn state(&self, kind: ComponentKind) -> &'static str {
        match (self, kind.is_active_passive()) {
            (Probe::Answered(200), true) => "active",
            (Probe::Answered(_), true) => "passive",
            (Probe::Answered(200), false) => "serving",
            (Probe::Answered(_), false) => "not-serving",
            (Probe::Unreachable(_), _) => "unreachable",
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
    match tokio::time::timeout(timeout, probe_inner(ops_url)).await {
        Ok(Ok(code)) => Probe::Answered(code),
        Ok(Err(reason)) => Probe::Unreachable(reason),
        Err(_) => Probe::Unreachable(format!("no answer within {timeout:?}")),
    }
}

async fn probe_inner(ops_url: &str) -> Result<u16, String> {
    let ep = parse_endpoint(ops_url)?;
    if ep.https {
        return Err("ops endpoints are plaintext; https is not supported".into());
    }
    let mut stream = TcpStream::connect((ep.host.as_str(), ep.port))
        .await
        .map_err(|e| format!("cannot connect: {e}"))?;
    let host = if ep.host.contains(':') {
        format!("[{}]:{}", ep.host, ep.port)
    } else {
        format!("{}:{}", ep.host, ep.port)
    };
    let request = format!(
        "GET {}/health/ready HTTP/1.1\r\nHost: {host}\r\nUser-Agent: domain-manager\r\nAccept: */*\r\nConnection: close\r\n\r\n",
        ep.path
    );
    stream
        .write_all(request.as_bytes())
        .await
        .map_err(|e| format!("cannot send request: {e}"))?;
    let mut buf = Vec::with_capacity(256);
    let mut chunk = [0u8; 256];
    while !buf.windows(2).any(|w| w == b"\r\n") && buf.len() < 4096 {
        let n = stream
            .read(&mut chunk)
            .await
            .map_err(|e| format!("cannot read answer: {e}"))?;
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    parse_status_line(&buf).ok_or_else(|| "not an HTTP answer".to_owned())
}

/// Extracts the status code of `HTTP/1.x <code> …`.
fn parse_status_line(buf: &[u8]) -> Option<u16> {
    let line_end = buf.windows(2).position(|w| w == b"\r\n")?;
    let line = std::str::from_utf8(&buf[..line_end]).ok()?;
    let mut parts = line.split(' ');
    let version = parts.next()?;
    if !version.starts_with("HTTP/1.") {
        return None;
    }
    let code = parts.next()?;
    if code.len() != 3 {
        return None;
    }
    code.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpListener;

    #[test]
    fn parses_status_lines() {
        assert_eq!(parse_status_line(b"HTTP/1.1 200 OK\r\n"), Some(200));
        assert_eq!(
            parse_status_line(b"HTTP/1.0 503 Service Unavailable\r\nx"),
            Some(503)
        );
        assert_eq!(parse_status_line(b"SSH-2.0-OpenSSH\r\n"), None);
        assert_eq!(parse_status_line(b"HTTP/1.1 200 OK"), None);
    }

    #[test]
    fn maps_probes_to_states() {
        assert_eq!(
            Probe::Answered(200).state(ComponentKind::Mediator),
            "active"
        );
        assert_eq!(
            Probe::Answered(503).state(ComponentKind::DomainManager),
            "passive"
        );
        assert_eq!(
            Probe::Answered(200).state(ComponentKind::Sequencer),
            "serving"
        );
        assert_eq!(
            Probe::Answered(503).state(ComponentKind::Participant),
            "not-serving"
        );
        assert_eq!(
            Probe::Unreachable("x".into()).state(ComponentKind::Sequencer),
            "unreachable"
        );
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
        let url = serve_once("HTTP/1.1 503 Service Unavailable\r\n\r\n").await;
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
