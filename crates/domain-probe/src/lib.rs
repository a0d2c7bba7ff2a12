//! One plaintext HTTP/1.1 `GET` on hyper's client, for the ops endpoints every component
//! serves (`/health/live`, `/health/ready`, `/metrics`; plaintext by design, see
//! docs/operations.md). Used by the domain manager's `Status` probes, devnet, the test
//! harness, the e2e tests and the benchmarks, so the wire is handled in one place (status
//! line, headers, chunked bodies, HTTP/1.0 peers).
//!
//! One connection per call (`Connection: close`), no pool, no TLS, no redirects; the whole
//! exchange, connect included, is bounded by the given timeout.
//!
//! ```no_run
//! # async fn t() -> Result<(), domain_probe::ProbeError> {
//! use std::time::Duration;
//! let ready = domain_probe::get("http://127.0.0.1:4403/health/ready", Duration::from_secs(1)).await?;
//! println!("{}", ready.status);
//! # Ok(()) }
//! ```

use std::time::Duration;

use bytes::Bytes;
use http::header::{CONNECTION, HOST, USER_AGENT};
use http::{HeaderMap, Request, StatusCode, Uri};
use http_body_util::{BodyExt as _, Empty};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

/// The answer to a [`get`].
#[derive(Debug, Clone)]
pub struct Response {
    pub status: StatusCode,
    pub headers: HeaderMap,
    /// The body (dechunked), decoded as UTF-8 with invalid sequences replaced.
    pub body: String,
}

impl Response {
    /// Whether the status is 2xx.
    pub fn is_success(&self) -> bool {
        self.status.is_success()
    }
}

/// Why a [`get`] got no HTTP answer.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error("GET {url}: invalid URL: {reason}")]
    InvalidUrl { url: String, reason: String },
    #[error("GET {url}: cannot connect: {source}")]
    Connect {
        url: String,
        #[source]
        source: std::io::Error,
    },
    /// The peer answered something that is not HTTP/1, or the connection broke.
    #[error("GET {url}: {source}")]
    Http {
        url: String,
        #[source]
        source: hyper::Error,
    },
    #[error("GET {url}: no answer within {timeout:?}")]
    Timeout { url: String, timeout: Duration },
}

/// `GET url` (`http://host:port/path`), within `timeout` (connect included).
pub async fn get(url: &str, timeout: Duration) -> Result<Response, ProbeError> {
    let target = Target::parse(url)?;
    match tokio::time::timeout(timeout, fetch(url, &target)).await {
        Ok(result) => result,
        Err(_) => Err(ProbeError::Timeout {
            url: url.to_owned(),
            timeout,
        }),
    }
}

/// [`get`] of `base` (an ops URL such as `http://127.0.0.1:4403`) joined with `path`.
pub async fn get_path(base: &str, path: &str, timeout: Duration) -> Result<Response, ProbeError> {
    get(&join(base, path), timeout).await
}

/// `base` and `path` with exactly one `/` between them.
#[must_use]
pub fn join(base: &str, path: &str) -> String {
    format!(
        "{}/{}",
        base.trim_end_matches('/'),
        path.trim_start_matches('/')
    )
}

/// Where a GET goes.
struct Target {
    /// `host:port` to connect to.
    address: String,
    /// The `Host` header.
    authority: String,
    path_and_query: String,
}

impl Target {
    fn parse(url: &str) -> Result<Self, ProbeError> {
        let invalid = |reason: &str| ProbeError::InvalidUrl {
            url: url.to_owned(),
            reason: reason.to_owned(),
        };
        let uri: Uri = url
            .parse()
            .map_err(|e: http::uri::InvalidUri| invalid(&format!("{e}")))?;
        match uri.scheme_str() {
            Some("http") => {}
            Some(_) => return Err(invalid("ops endpoints are plaintext: http:// only")),
            None => return Err(invalid("http://host:port expected")),
        }
        let authority = uri
            .authority()
            .filter(|a| !a.host().is_empty())
            .ok_or_else(|| invalid("no host"))?;
        if authority.as_str().contains('@') {
            return Err(invalid("user information is not supported"));
        }
        let port = authority.port_u16().unwrap_or(80);
        Ok(Self {
            // `[::1]` keeps its brackets, as `host:port` parsing needs.
            address: format!("{}:{port}", authority.host()),
            authority: authority.as_str().to_owned(),
            path_and_query: uri
                .path_and_query()
                .map_or_else(|| "/".to_owned(), |p| p.as_str().to_owned()),
        })
    }
}

/// Aborts the connection task when the request is done or abandoned (timeout).
struct AbortOnDrop(tokio::task::AbortHandle);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

async fn fetch(url: &str, target: &Target) -> Result<Response, ProbeError> {
    let http = |source| ProbeError::Http {
        url: url.to_owned(),
        source,
    };
    let stream = TcpStream::connect(&target.address)
        .await
        .map_err(|source| ProbeError::Connect {
            url: url.to_owned(),
            source,
        })?;
    let _ = stream.set_nodelay(true);
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(http)?;
    let _connection = AbortOnDrop(tokio::spawn(connection).abort_handle());
    let request = Request::get(target.path_and_query.as_str())
        .header(HOST, target.authority.as_str())
        .header(USER_AGENT, "domain-probe")
        .header(CONNECTION, "close")
        .body(Empty::<Bytes>::new())
        .map_err(|e| ProbeError::InvalidUrl {
            url: url.to_owned(),
            reason: e.to_string(),
        })?;
    let (parts, body) = sender
        .send_request(request)
        .await
        .map_err(http)?
        .into_parts();
    let body = body.collect().await.map_err(http)?.to_bytes();
    Ok(Response {
        status: parts.status,
        headers: parts.headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    })
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    use tokio::net::TcpListener;

    use super::*;

    const TIMEOUT: Duration = Duration::from_secs(2);

    /// Serves `answer` to one connection; yields the request head it read.
    async fn serve_once(answer: &'static str) -> (String, tokio::task::JoinHandle<String>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let task = tokio::spawn(async move {
            let Ok((mut s, _)) = listener.accept().await else {
                return String::new();
            };
            let mut buf = Vec::new();
            let mut chunk = [0u8; 1024];
            while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                match s.read(&mut chunk).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => buf.extend_from_slice(&chunk[..n]),
                }
            }
            let _ = s.write_all(answer.as_bytes()).await;
            let _ = s.shutdown().await;
            String::from_utf8_lossy(&buf).into_owned()
        });
        (format!("http://{addr}"), task)
    }

    #[tokio::test]
    async fn answers_statuses_headers_and_bodies() {
        let (url, seen) =
            serve_once("HTTP/1.1 200 OK\r\ncontent-length: 6\r\nx-a: b\r\n\r\nready\n").await;
        let r = get(&join(&url, "/health/ready"), TIMEOUT)
            .await
            .expect("get");
        assert_eq!(r.status, StatusCode::OK);
        assert_eq!(r.body, "ready\n");
        assert_eq!(r.headers.get("x-a").map(|v| v.as_bytes()), Some(&b"b"[..]));
        let head = seen.await.expect("server");
        assert!(head.starts_with("GET /health/ready HTTP/1.1\r\n"), "{head}");
        assert!(
            head.to_ascii_lowercase().contains("connection: close"),
            "{head}"
        );

        let (url, _) =
            serve_once("HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\n\r\n").await;
        let r = get(&url, TIMEOUT).await.expect("get");
        assert_eq!(r.status.as_u16(), 503);
        assert!(!r.is_success());

        // Chunked bodies and HTTP/1.0 peers that close instead of a length.
        let (url, _) = serve_once(
            "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n",
        )
        .await;
        assert_eq!(
            get_path(&url, "metrics", TIMEOUT).await.expect("get").body,
            "abcde"
        );
        let (url, _) = serve_once("HTTP/1.0 200 OK\r\n\r\nuntil close").await;
        assert_eq!(get(&url, TIMEOUT).await.expect("get").body, "until close");
    }

    #[tokio::test]
    async fn failures_say_why() {
        // Nothing listens there any more.
        let closed = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = closed.local_addr().expect("addr");
        drop(closed);
        let e = get(&format!("http://{addr}/"), TIMEOUT)
            .await
            .expect_err("refused");
        assert!(matches!(e, ProbeError::Connect { .. }), "{e}");

        // Not HTTP.
        let (url, _) = serve_once("SSH-2.0-OpenSSH\r\n\r\n").await;
        let e = get(&url, TIMEOUT).await.expect_err("not http");
        assert!(matches!(e, ProbeError::Http { .. }), "{e}");

        // Accepts but never answers: bounded by the timeout.
        let silent = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = silent.local_addr().expect("addr");
        let e = get(&format!("http://{addr}/"), Duration::from_millis(200))
            .await
            .expect_err("silent");
        assert!(matches!(e, ProbeError::Timeout { .. }), "{e}");
        drop(silent);

        for bad in [
            "https://127.0.0.1:1/",
            "127.0.0.1:1",
            "http://u@h:1/",
            "http:///x",
        ] {
            let e = get(bad, TIMEOUT).await.expect_err(bad);
            assert!(matches!(e, ProbeError::InvalidUrl { .. }), "{bad}: {e}");
        }
    }

    #[test]
    fn targets() {
        let t = Target::parse("http://[::1]:4403/health/ready?x=1").expect("v6");
        assert_eq!(t.address, "[::1]:4403");
        assert_eq!(t.authority, "[::1]:4403");
        assert_eq!(t.path_and_query, "/health/ready?x=1");
        let t = Target::parse("http://ops.example").expect("default port");
        assert_eq!(t.address, "ops.example:80");
        assert_eq!(t.path_and_query, "/");
        assert_eq!(join("http://h:1/", "/metrics"), "http://h:1/metrics");
        assert_eq!(join("http://h:1", "metrics"), "http://h:1/metrics");
    }
}
