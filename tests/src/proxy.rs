//! A small TCP proxy for fault injection between a process and its database (or
//! any TCP peer): it forwards `127.0.0.1:<port>` to a target address and can cut
//! the link on demand.
//!
//! - [`TcpProxy::block`] closes every current connection (both directions) and
//!   refuses new ones (accepted, then closed at once) until [`TcpProxy::unblock`]:
//!   the peer sees its connections die, like a restarted server or a firewall
//!   sending resets.
//! - [`TcpProxy::strand`] cuts every current connection on the client side only: the
//!   client's socket is closed, the server's stays open and silent (no FIN, no reset),
//!   like a connection lost at the client whose server has not noticed; new
//!   connections are forwarded normally.
//! - [`TcpProxy::stall`] black-holes the link: current connections stay open but
//!   nothing is forwarded any more, and new connections are accepted but never
//!   answered, like a network partition. [`TcpProxy::unblock`] resumes forwarding
//!   on the stalled connections.
//!
//! ```no_run
//! # async fn t() -> anyhow::Result<()> {
//! use domain_e2e::proxy::TcpProxy;
//! let proxy = TcpProxy::start("127.0.0.1:5432".parse()?).await?;
//! let url = format!("postgres://postgres@{}/db", proxy.local_addr());
//! proxy.block();
//! proxy.unblock();
//! # Ok(()) }
//! ```

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinSet;

/// State of the link.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkState {
    /// Bytes flow both ways.
    Open,
    /// Connections are closed and new ones refused.
    Blocked,
    /// Nothing is forwarded; connections stay open (black hole).
    Stalled,
}

/// A running proxy; stops (closing every connection) when dropped.
pub struct TcpProxy {
    local: SocketAddr,
    target: SocketAddr,
    controls: Arc<Controls>,
    accept_task: tokio::task::JoinHandle<()>,
}

/// What the proxy's methods set and its accept loop and connections follow.
struct Controls {
    state: watch::Sender<LinkState>,
    /// Incremented by `block()`: every connection of an older generation closes.
    generation: watch::Sender<u64>,
    /// Incremented by `strand()`: every connection of an older one is stranded.
    stranded: watch::Sender<u64>,
    /// Connections accepted so far.
    accepted: AtomicU64,
}

impl TcpProxy {
    /// Listens on `127.0.0.1:0` and forwards every connection to `target`.
    pub async fn start(target: SocketAddr) -> anyhow::Result<Self> {
        let listener = TcpListener::bind(("127.0.0.1", 0)).await?;
        let local = listener.local_addr()?;
        let controls = Arc::new(Controls {
            state: watch::channel(LinkState::Open).0,
            generation: watch::channel(0u64).0,
            stranded: watch::channel(0u64).0,
            accepted: AtomicU64::new(0),
        });
        let accept_task = tokio::spawn(accept_loop(listener, target, controls.clone()));
        Ok(Self {
            local,
            target,
            controls,
            accept_task,
        })
    }

    /// Address clients connect to (`127.0.0.1:<port>`).
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// Address connections are forwarded to.
    pub fn target(&self) -> SocketAddr {
        self.target
    }

    /// Connections accepted so far (including refused ones).
    pub fn accepted(&self) -> u64 {
        self.controls.accepted.load(Ordering::Relaxed)
    }

    pub fn state(&self) -> LinkState {
        *self.controls.state.borrow()
    }

    /// Closes every current connection and refuses new ones.
    pub fn block(&self) {
        self.controls.state.send_replace(LinkState::Blocked);
        self.controls.generation.send_modify(|g| *g += 1);
    }

    /// Stops forwarding without closing anything (black hole).
    pub fn stall(&self) {
        self.controls.state.send_replace(LinkState::Stalled);
    }

    /// Closes the client side of every current connection and keeps the server side open
    /// and silent until the proxy is dropped; new connections are forwarded.
    pub fn strand(&self) {
        self.controls.stranded.send_modify(|g| *g += 1);
    }

    /// Opens the link again: new connections are forwarded, stalled ones resume.
    pub fn unblock(&self) {
        self.controls.state.send_replace(LinkState::Open);
    }
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        self.accept_task.abort();
    }
}

async fn accept_loop(listener: TcpListener, target: SocketAddr, controls: Arc<Controls>) {
    let state = controls.state.subscribe();
    // Owns the connection tasks: aborting the accept task (drop) aborts them all.
    let mut connections = JoinSet::new();
    loop {
        let (client, _) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(_) => continue,
            },
            // Reap finished connection tasks so the set does not grow.
            Some(_) = connections.join_next(), if !connections.is_empty() => continue,
        };
        controls.accepted.fetch_add(1, Ordering::Relaxed);
        let _ = client.set_nodelay(true);
        let current = *state.borrow();
        match current {
            LinkState::Blocked => {
                // Refuse: close at once (with a reset, not an orderly FIN).
                let _ = client.set_zero_linger();
                drop(client);
            }
            LinkState::Open | LinkState::Stalled => {
                let state = state.clone();
                let gen_rx = controls.generation.subscribe();
                let strand_rx = controls.stranded.subscribe();
                connections.spawn(serve(client, target, state, gen_rx, strand_rx));
            }
        }
    }
}

/// Forwards one connection until either side closes or the link is blocked.
async fn serve(
    client: TcpStream,
    target: SocketAddr,
    mut state: watch::Receiver<LinkState>,
    mut generation: watch::Receiver<u64>,
    mut stranded: watch::Receiver<u64>,
) {
    // `subscribe()` in the accept loop marked the generation seen at accept time, so
    // any later block() wakes `generation.changed()` below.
    // A connection accepted while stalled must not even reach the target yet.
    if wait_open(&mut state).await.is_err() {
        return;
    }
    if *state.borrow() == LinkState::Blocked {
        return;
    }
    let Ok(server) = TcpStream::connect(target).await else {
        return;
    };
    let _ = server.set_nodelay(true);
    let mut server = server;
    let (client_read, client_write) = client.into_split();
    // Borrowed halves: dropping them does not shut the server socket down, so a stranded
    // connection's server side stays open and silent while `server` lives.
    let (server_read, server_write) = server.split();
    let up = pump(client_read, server_write, state.clone());
    let down = pump(server_read, client_write, state.clone());
    let blocked = async {
        // Ends when block() bumps the generation (or the proxy is dropped).
        let _ = generation.changed().await;
    };
    let strand = async {
        let _ = stranded.changed().await;
    };
    tokio::select! {
        _ = async { tokio::join!(up, down) } => {}
        _ = blocked => {}
        _ = strand => {
            // The pumps (and the client socket) are dropped here; the server socket lives
            // on until the proxy is dropped (aborting this task).
            std::future::pending::<()>().await;
        }
    }
    // Dropping both halves of both sockets closes the connection both ways.
}

/// Copies `from` to `to`, holding data back while the link is stalled.
async fn pump(
    mut from: impl tokio::io::AsyncRead + Unpin,
    mut to: impl tokio::io::AsyncWrite + Unpin,
    mut state: watch::Receiver<LinkState>,
) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        if wait_open(&mut state).await.is_err() {
            return;
        }
        let n = tokio::select! {
            r = from.read(&mut buf) => match r {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            },
            // Re-check the state while a read is pending: a stall must also hold back
            // data that arrives after it began.
            _ = state.changed() => continue,
        };
        if wait_open(&mut state).await.is_err() || *state.borrow() == LinkState::Blocked {
            return;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
    let _ = to.shutdown().await;
}

/// Waits while the link is stalled; returns Err when the proxy is gone.
async fn wait_open(state: &mut watch::Receiver<LinkState>) -> Result<(), ()> {
    state
        .wait_for(|s| *s != LinkState::Stalled)
        .await
        .map(|_| ())
        .map_err(|_| ())
}
