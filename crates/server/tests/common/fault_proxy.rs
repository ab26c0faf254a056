//! A TCP fault proxy for tests: it listens on a loopback port and forwards every connection to
//! one upstream service (PostgreSQL, NATS), and can be told to misbehave the way a dependency
//! does in production, without touching the shared service itself:
//!
//! - [`FaultProxy::cut`]: every live connection is closed at once and new ones are closed as
//!   soon as they are accepted: what a client sees while PostgreSQL restarts or NATS is down.
//! - [`FaultProxy::blackhole`]: connections stay open (new ones are accepted) but nothing is
//!   forwarded either way: a partition dropping packets, where the client only sees silence.
//!   Data held back is delivered after [`FaultProxy::heal`], as TCP retransmission would.
//! - [`FaultProxy::delay`]: every chunk waits this long before it is forwarded.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinHandle;

/// Connections forwarded at once; further ones are closed on accept (a test server's pools
/// and listeners stay far below this).
pub const MAX_CONNECTIONS: usize = 128;
/// Bytes read from one side before they are forwarded to the other.
const CHUNK_BYTES: usize = 16 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Pass,
    Cut,
    Blackhole,
}

/// The proxy's switch: the mode, and how many cuts happened (a connection older than the last
/// cut closes).
#[derive(Debug, Clone, Copy)]
struct State {
    mode: Mode,
    cuts: u64,
}

struct Shared {
    state: watch::Sender<State>,
    delay_ms: AtomicU64,
    connections: Arc<Semaphore>,
    upstream: SocketAddr,
    /// Connections accepted in total, and closed on accept because of a cut or the limit.
    accepted: AtomicU64,
    refused: AtomicU64,
}

pub struct FaultProxy {
    pub addr: SocketAddr,
    shared: Arc<Shared>,
    task: JoinHandle<()>,
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.task.abort();
        // Close whatever is still open, so no forwarding task outlives the proxy.
        self.cut();
    }
}

impl FaultProxy {
    /// A proxy on a fresh loopback port forwarding to `upstream`, passing traffic through.
    pub async fn start(upstream: SocketAddr) -> FaultProxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let addr = listener.local_addr().unwrap();
        let (state, _) = watch::channel(State {
            mode: Mode::Pass,
            cuts: 0,
        });
        let shared = Arc::new(Shared {
            state,
            delay_ms: AtomicU64::new(0),
            connections: Arc::new(Semaphore::new(MAX_CONNECTIONS)),
            upstream,
            accepted: AtomicU64::new(0),
            refused: AtomicU64::new(0),
        });
        let task = tokio::spawn(accept_loop(listener, shared.clone()));
        FaultProxy { addr, shared, task }
    }

    /// Closes every live connection and closes new ones on accept, until [`Self::heal`].
    pub fn cut(&self) {
        self.shared.state.send_modify(|s| {
            s.mode = Mode::Cut;
            s.cuts += 1;
        });
    }

    /// Keeps connections open but forwards nothing, until [`Self::heal`].
    pub fn blackhole(&self) {
        self.shared.state.send_modify(|s| s.mode = Mode::Blackhole);
    }

    /// Forwards traffic again (delay unchanged).
    pub fn heal(&self) {
        self.shared.state.send_modify(|s| s.mode = Mode::Pass);
    }

    /// Adds `ms` milliseconds before each forwarded chunk, both ways (0 removes it).
    pub fn delay(&self, ms: u64) {
        self.shared.delay_ms.store(ms, Ordering::Relaxed);
    }

    /// Connections accepted so far, and how many of them were closed at once.
    pub fn counts(&self) -> (u64, u64) {
        (
            self.shared.accepted.load(Ordering::Relaxed),
            self.shared.refused.load(Ordering::Relaxed),
        )
    }
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    loop {
        let Ok((client, _)) = listener.accept().await else {
            continue;
        };
        shared.accepted.fetch_add(1, Ordering::Relaxed);
        let state = *shared.state.borrow();
        let permit = match shared.connections.clone().try_acquire_owned() {
            Ok(p) if state.mode != Mode::Cut => p,
            _ => {
                shared.refused.fetch_add(1, Ordering::Relaxed);
                drop(client);
                continue;
            }
        };
        let shared = shared.clone();
        tokio::spawn(async move {
            let _permit = permit;
            connection(client, shared, state.cuts).await;
        });
    }
}

/// Forwards one connection until either side closes or a cut comes.
async fn connection(client: TcpStream, shared: Arc<Shared>, cuts_at_start: u64) {
    let mut state = shared.state.subscribe();
    // A partition: the connect "succeeds" (the SYN reached us) but the upstream is unreachable
    // until healed; a cut meanwhile closes it.
    if state
        .wait_for(|s| s.mode != Mode::Blackhole || s.cuts != cuts_at_start)
        .await
        .map(|s| s.cuts != cuts_at_start || s.mode == Mode::Cut)
        .unwrap_or(true)
    {
        return;
    }
    let Ok(upstream) = TcpStream::connect(shared.upstream).await else {
        return;
    };
    let _ = client.set_nodelay(true);
    let _ = upstream.set_nodelay(true);
    let (cr, cw) = client.into_split();
    let (ur, uw) = upstream.into_split();
    let cut = async {
        let _ = state
            .wait_for(|s| s.cuts != cuts_at_start || s.mode == Mode::Cut)
            .await;
    };
    tokio::select! {
        _ = pump(cr, uw, &shared) => {}
        _ = pump(ur, cw, &shared) => {}
        _ = cut => {}
    }
    // Dropping both halves of both sockets closes the connection on both sides.
}

/// Copies one direction, chunk by chunk, with the configured delay, holding chunks back while
/// the proxy is a black hole.
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    shared: &Shared,
) {
    let mut state = shared.state.subscribe();
    let mut buf = vec![0u8; CHUNK_BYTES];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => {
                let _ = to.shutdown().await;
                return;
            }
            Ok(n) => n,
        };
        let delay_ms = shared.delay_ms.load(Ordering::Relaxed);
        if delay_ms > 0 {
            tokio::time::sleep(Duration::from_millis(delay_ms)).await;
        }
        if state.wait_for(|s| s.mode != Mode::Blackhole).await.is_err() {
            return;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}
