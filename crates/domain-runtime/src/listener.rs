//! The accept side of a gRPC listener: caps on open connections (per listener and per peer
//! address), so that a client opening connections and leaving them idle, or never finishing
//! the TLS handshake, cannot make the process hold an unbounded number of sockets, TLS states
//! and HTTP/2 connection states.
//!
//! tonic accepts without limit and (with TLS) runs each handshake in its own task, so the
//! caps are applied here, between the TCP listener and tonic: a connection over a cap is
//! closed right after `accept`, before any TLS work, and counted in
//! `grpc_server_connections_refused_total`. The permit of an admitted connection travels with
//! its socket and is returned when tonic/hyper drop the socket (handshake failed or timed
//! out, connection closed).

use std::collections::HashMap;
use std::future::Future as _;
use std::io;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tonic::transport::server::{Connected, TcpConnectInfo};

use crate::metrics::{GRPC_SERVER_CONNECTIONS, GRPC_SERVER_CONNECTIONS_REFUSED};

/// How long accepting pauses after an error that is not about one connection (`EMFILE`,
/// `ENFILE`, `ENOBUFS`, ...). Accepting again at once would spin on the same error while the
/// pending connection stays in the backlog.
const ACCEPT_ERROR_BACKOFF: Duration = Duration::from_millis(100);

/// Connection caps of one listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionLimits {
    /// Open connections (TLS handshakes in progress included) of the listener.
    pub max_connections: usize,
    /// Open connections from one IPv4 address or one IPv6 /64; `None` for no per-address cap.
    pub max_connections_per_ip: Option<usize>,
}

/// Why a connection was closed right after accept (the `reason` label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Refusal {
    MaxConnections,
    MaxConnectionsPerIp,
}

impl Refusal {
    fn label(self) -> &'static str {
        match self {
            Refusal::MaxConnections => "max_connections",
            Refusal::MaxConnectionsPerIp => "max_connections_per_ip",
        }
    }
}

#[derive(Debug, Default)]
struct Counts {
    total: usize,
    per_ip: HashMap<IpAddr, usize>,
}

/// Open-connection bookkeeping of one listener.
#[derive(Debug)]
struct Admission {
    limits: ConnectionLimits,
    api: &'static str,
    counts: Mutex<Counts>,
}

impl Admission {
    fn admit(self: &Arc<Self>, peer: IpAddr) -> Result<Permit, Refusal> {
        let key = address_key(peer);
        let total = {
            let mut counts = self.counts.lock().unwrap_or_else(|e| e.into_inner());
            if counts.total >= self.limits.max_connections {
                return Err(Refusal::MaxConnections);
            }
            let from_peer = counts.per_ip.get(&key).copied().unwrap_or(0);
            if self
                .limits
                .max_connections_per_ip
                .is_some_and(|max| from_peer >= max)
            {
                return Err(Refusal::MaxConnectionsPerIp);
            }
            counts.total += 1;
            counts.per_ip.insert(key, from_peer + 1);
            counts.total
        };
        ::metrics::gauge!(GRPC_SERVER_CONNECTIONS, "api" => self.api).set(total as f64);
        Ok(Permit {
            admission: Arc::clone(self),
            key,
        })
    }

    fn release(&self, key: IpAddr) {
        let total = {
            let mut counts = self.counts.lock().unwrap_or_else(|e| e.into_inner());
            counts.total = counts.total.saturating_sub(1);
            if let Some(n) = counts.per_ip.get_mut(&key) {
                *n -= 1;
                if *n == 0 {
                    // Keeps the map as small as the set of connected peers.
                    counts.per_ip.remove(&key);
                }
            }
            counts.total
        };
        ::metrics::gauge!(GRPC_SERVER_CONNECTIONS, "api" => self.api).set(total as f64);
    }
}

/// The address a per-address cap counts under: the IPv4 address (also when it arrives
/// IPv4-mapped on a dual-stack socket), or the /64 of an IPv6 address, since one IPv6 host
/// usually owns a whole /64 and could otherwise pick a fresh address per connection.
fn address_key(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V4(v4) => IpAddr::V4(v4),
        IpAddr::V6(v6) => {
            let prefix = u128::from(v6) & !((1u128 << 64) - 1);
            IpAddr::V6(Ipv6Addr::from(prefix))
        }
    }
}

/// One admitted connection's place under the caps; returned on drop.
#[derive(Debug)]
struct Permit {
    admission: Arc<Admission>,
    key: IpAddr,
}

impl Drop for Permit {
    fn drop(&mut self) {
        self.admission.release(self.key);
    }
}

/// An accepted TCP connection holding its place under the listener's caps.
#[derive(Debug)]
pub struct LimitedStream {
    stream: TcpStream,
    _permit: Permit,
}

impl AsyncRead for LimitedStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for LimitedStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}

impl Connected for LimitedStream {
    // The same connect info as a plain `TcpStream`, so `Request::remote_addr` keeps working.
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.stream.connect_info()
    }
}

/// The connections of a listener that are within its caps; the stream tonic serves.
#[derive(Debug)]
pub struct LimitedIncoming {
    listener: TcpListener,
    admission: Arc<Admission>,
    backoff: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl LimitedIncoming {
    /// Accepts on `listener` under `limits`; `api` labels the connection metrics.
    pub fn new(listener: TcpListener, limits: ConnectionLimits, api: &'static str) -> Self {
        ::metrics::gauge!(GRPC_SERVER_CONNECTIONS, "api" => api).set(0.0);
        Self {
            listener,
            admission: Arc::new(Admission {
                limits,
                api,
                counts: Mutex::default(),
            }),
            backoff: None,
        }
    }

    /// Address the listener is bound to.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.listener.local_addr()
    }
}

impl futures::Stream for LimitedIncoming {
    type Item = io::Result<LimitedStream>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        loop {
            if let Some(backoff) = this.backoff.as_mut() {
                std::task::ready!(backoff.as_mut().poll(cx));
                this.backoff = None;
            }
            match std::task::ready!(this.listener.poll_accept(cx)) {
                Ok((stream, peer)) => match this.admission.admit(peer.ip()) {
                    Ok(permit) => {
                        // Without it every small HTTP/2 frame waits for Nagle.
                        if let Err(error) = stream.set_nodelay(true) {
                            tracing::debug!(%error, %peer, "cannot set TCP_NODELAY");
                        }
                        return Poll::Ready(Some(Ok(LimitedStream {
                            stream,
                            _permit: permit,
                        })));
                    }
                    Err(refusal) => {
                        // Dropping the socket closes it: the client sees the connection end
                        // at once and can try another endpoint.
                        drop(stream);
                        ::metrics::counter!(
                            GRPC_SERVER_CONNECTIONS_REFUSED,
                            "api" => this.admission.api,
                            "reason" => refusal.label()
                        )
                        .increment(1);
                        tracing::debug!(%peer, reason = refusal.label(), "connection refused");
                    }
                },
                // The peer gave up between SYN and accept: nothing to do about it.
                Err(error)
                    if matches!(
                        error.kind(),
                        io::ErrorKind::ConnectionAborted
                            | io::ErrorKind::ConnectionReset
                            | io::ErrorKind::Interrupted
                            | io::ErrorKind::WouldBlock
                    ) => {}
                Err(error) => {
                    tracing::warn!(%error, "accepting a connection failed; pausing accepts");
                    this.backoff = Some(Box::pin(tokio::time::sleep(ACCEPT_ERROR_BACKOFF)));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn admission(max: usize, per_ip: Option<usize>) -> Arc<Admission> {
        Arc::new(Admission {
            limits: ConnectionLimits {
                max_connections: max,
                max_connections_per_ip: per_ip,
            },
            api: "test",
            counts: Mutex::default(),
        })
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("ip")
    }

    #[test]
    fn total_cap_refuses_beyond_and_readmits_after_release() {
        let a = admission(2, None);
        let p1 = a.admit(ip("10.0.0.1")).expect("first");
        let _p2 = a.admit(ip("10.0.0.2")).expect("second");
        assert_eq!(
            a.admit(ip("10.0.0.3")).map(drop),
            Err(Refusal::MaxConnections)
        );
        drop(p1);
        assert!(a.admit(ip("10.0.0.3")).is_ok());
    }

    #[test]
    fn per_ip_cap_counts_v4_mapped_and_v6_slash_64_together() {
        let a = admission(100, Some(2));
        let _p1 = a.admit(ip("10.0.0.1")).expect("v4");
        let _p2 = a.admit(ip("::ffff:10.0.0.1")).expect("v4-mapped");
        assert_eq!(
            a.admit(ip("10.0.0.1")).map(drop),
            Err(Refusal::MaxConnectionsPerIp)
        );
        assert!(
            a.admit(ip("10.0.0.2")).is_ok(),
            "another address is not affected"
        );

        let _q1 = a.admit(ip("2001:db8:1:2::1")).expect("v6");
        let _q2 = a.admit(ip("2001:db8:1:2:ffff::9")).expect("same /64");
        assert_eq!(
            a.admit(ip("2001:db8:1:2::77")).map(drop),
            Err(Refusal::MaxConnectionsPerIp)
        );
        assert!(a.admit(ip("2001:db8:1:3::1")).is_ok(), "another /64");
    }

    #[test]
    fn released_addresses_leave_the_map() {
        let a = admission(10, Some(5));
        let p = a.admit(ip("10.0.0.1")).expect("admit");
        drop(p);
        let counts = a.counts.lock().expect("lock");
        assert_eq!(counts.total, 0);
        assert!(counts.per_ip.is_empty());
    }
}
