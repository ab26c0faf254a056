//! The façade's upstream connections: a pool of HTTP/1.1 connections per thread and upstream
//! address, lent to one request at a time and taken back when its answer's body has been read
//! to the end.
//!
//! Each gateway worker is a single-threaded runtime (`ficus gateway`), so a thread's pool is
//! used by that thread alone: a checkout is a `Vec::pop`, with no lock and no task spawned per
//! request to watch the connection come free (what a general-purpose pooled client does). A
//! connection goes back to the pool of the thread that reads the end of its body, and only
//! then: an answer dropped before its end takes its connection with it (hyper closes it, as
//! the rest of that body would be left on it).
//!
//! A request sent on a reused connection that the upstream had closed in the meantime (its
//! keep-alive timeout) is not lost: hyper hands back a request it did not send, and it is sent
//! once more on a new connection.

use std::cell::RefCell;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::body::Bytes;
use axum::http::uri::{Authority, PathAndQuery};
use axum::http::{header, HeaderValue, Request, Response, Uri};
use http_body::{Body as HttpBody, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;

/// Idle connections a thread keeps per upstream address; a connection coming free past it is
/// closed.
pub const IDLE_PER_UPSTREAM: usize = super::POOL_IDLE_PER_HOST;
/// An idle connection older than this is closed rather than reused (upstreams close idle
/// keep-alive connections on their own schedule; nginx's default is 75 s).
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Upstream addresses a thread keeps connections for; past it the pool of the least recently
/// used one is closed.
pub const MAX_UPSTREAMS: usize = 64;
/// Longest wait for an idle connection to be ready again. One given back at the end of its
/// answer is ready as soon as its connection task has run (microseconds); one still sending a
/// request body that the upstream stopped reading (it answered early) may never be, and is
/// closed rather than waited on: the request goes on a new connection.
pub const READY_WAIT: Duration = Duration::from_millis(50);

struct Idle {
    sender: http1::SendRequest<Body>,
    since: Instant,
}

#[derive(Default)]
struct Pool {
    /// Per upstream address (`host:port`), its idle connections, most recently freed last.
    /// Few upstreams per gateway: a list searched in order beats hashing the key.
    by_upstream: Vec<(Authority, Vec<Idle>)>,
}

impl Pool {
    fn take(&mut self, at: &Authority) -> Option<http1::SendRequest<Body>> {
        let idle = &mut self.by_upstream.iter_mut().find(|(a, _)| a == at)?.1;
        let now = Instant::now();
        while let Some(c) = idle.pop() {
            if !c.sender.is_closed() && now.duration_since(c.since) < IDLE_TIMEOUT {
                return Some(c.sender);
            }
        }
        None
    }

    fn give_back(&mut self, at: Authority, sender: http1::SendRequest<Body>) {
        if sender.is_closed() {
            return;
        }
        let idle = Idle {
            sender,
            since: Instant::now(),
        };
        match self.by_upstream.iter_mut().position(|(a, _)| *a == at) {
            Some(i) => {
                let list = &mut self.by_upstream[i].1;
                if list.len() >= IDLE_PER_UPSTREAM {
                    // The oldest goes: it is the likeliest to have been closed upstream.
                    list.remove(0);
                }
                list.push(idle);
            }
            None => {
                if self.by_upstream.len() >= MAX_UPSTREAMS {
                    self.by_upstream.remove(0);
                }
                self.by_upstream.push((at, vec![idle]));
            }
        }
    }
}

thread_local! {
    static POOL: RefCell<Pool> = RefCell::new(Pool::default());
}

/// Why an upstream request failed.
#[derive(Debug)]
pub enum SendError {
    /// The URI names no `http` upstream address.
    Target(String),
    /// No connection could be opened.
    Connect(std::io::Error),
    /// The connection failed while the request was sent or its answer read.
    Http(hyper::Error),
}

impl std::fmt::Display for SendError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SendError::Target(m) => write!(f, "{m}"),
            SendError::Connect(e) => write!(f, "connecting: {e}"),
            SendError::Http(e) => write!(f, "{e}"),
        }
    }
}

/// The answer's body: the upstream's, and the connection it arrives on, given back to the
/// pool when the body has been read to its end.
pub struct PooledBody {
    inner: Incoming,
    back: Option<(Authority, http1::SendRequest<Body>)>,
}

impl PooledBody {
    fn release(&mut self) {
        if let Some((at, sender)) = self.back.take() {
            // `try_with`: a body read to its end while its thread shuts down just closes.
            let _ = POOL.try_with(|p| {
                if let Ok(mut pool) = p.try_borrow_mut() {
                    pool.give_back(at, sender);
                }
            });
        }
    }
}

impl HttpBody for PooledBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(None) => self.release(),
            Poll::Ready(Some(Ok(_))) if self.inner.is_end_stream() => self.release(),
            // An error: the connection is not reusable (hyper has closed it).
            Poll::Ready(Some(Err(_))) => self.back = None,
            _ => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Opens a connection to `at` and starts its connection task on the current runtime.
async fn connect(at: &Authority) -> Result<http1::SendRequest<Body>, SendError> {
    let port = at.port_u16().unwrap_or(80);
    let stream = tokio::net::TcpStream::connect((at.host(), port))
        .await
        .map_err(SendError::Connect)?;
    let _ = stream.set_nodelay(true);
    let (sender, conn) = http1::Builder::new()
        .handshake(TokioIo::new(stream))
        .await
        .map_err(SendError::Http)?;
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!(error = %e, "upstream connection ended with an error");
        }
    });
    Ok(sender)
}

/// A pooled connection to `at` that is ready for a request, or a new one.
async fn checkout(at: &Authority) -> Result<(http1::SendRequest<Body>, bool), SendError> {
    loop {
        let Some(mut sender) = POOL.with(|p| p.borrow_mut().take(at)) else {
            return connect(at).await.map(|s| (s, false));
        };
        // Given back at the end of a body, a connection may take a moment to be ready again.
        if sender.is_ready()
            || matches!(
                tokio::time::timeout(READY_WAIT, sender.ready()).await,
                Ok(Ok(()))
            )
        {
            return Ok((sender, true));
        }
    }
}

/// Sends `req`, whose URI is absolute (`http://host:port/path?query`), on a connection of this
/// thread's pool, and answers the upstream's response head; its body gives the connection
/// back when read to its end.
pub async fn send(mut req: Request<Body>) -> Result<Response<PooledBody>, SendError> {
    let uri = req.uri();
    if uri.scheme_str() != Some("http") {
        return Err(SendError::Target(format!(
            "upstream URI {uri} is not http://host:port/..."
        )));
    }
    let Some(at) = uri.authority().cloned() else {
        return Err(SendError::Target(format!("upstream URI {uri} has no host")));
    };
    // Origin form on the wire, with the upstream's address as the Host.
    let path = uri
        .path_and_query()
        .cloned()
        .unwrap_or_else(|| PathAndQuery::from_static("/"));
    *req.uri_mut() = Uri::from(path);
    if !req.headers().contains_key(header::HOST) {
        if let Ok(host) = HeaderValue::from_str(at.as_str()) {
            req.headers_mut().insert(header::HOST, host);
        }
    }
    let (mut sender, reused) = checkout(&at).await?;
    let resp = match sender.try_send_request(req).await {
        Ok(resp) => resp,
        Err(mut e) => match e.take_message() {
            // Not sent: the reused connection was closed under it. Once more, on a new one.
            Some(req) if reused => {
                sender = connect(&at).await?;
                sender.send_request(req).await.map_err(SendError::Http)?
            }
            _ => return Err(SendError::Http(e.into_error())),
        },
    };
    let (parts, inner) = resp.into_parts();
    let mut body = PooledBody {
        inner,
        back: Some((at, sender)),
    };
    if body.inner.is_end_stream() {
        body.release();
    }
    Ok(Response::from_parts(parts, body))
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// How the test upstream treats a connection after each answer.
    #[derive(Clone, Copy)]
    enum After {
        KeepAlive,
        /// Closes the connection a moment after answering (its keep-alive timeout).
        CloseSoon,
    }

    /// A loopback listener serving each accepted connection with `serve` in a task of its
    /// own; its address and its count of accepted connections.
    async fn listen<F, Fut>(serve: F) -> (String, Arc<AtomicUsize>)
    where
        F: Fn(tokio::net::TcpStream) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = ()> + Send + 'static,
    {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let accepted = Arc::new(AtomicUsize::new(0));
        let count = accepted.clone();
        tokio::spawn(async move {
            while let Ok((s, _)) = listener.accept().await {
                count.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(serve(s));
            }
        });
        (addr, accepted)
    }

    /// A raw HTTP/1.1 upstream on loopback answering every request with `body_len` bytes.
    async fn upstream(after: After, body_len: usize) -> (String, Arc<AtomicUsize>) {
        listen(move |mut s| async move {
            let mut buf = Vec::new();
            let mut chunk = [0u8; 4096];
            loop {
                while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
                let end = buf.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
                buf.drain(..end);
                let head = format!("HTTP/1.1 200 OK\r\ncontent-length: {body_len}\r\n\r\n");
                let mut answer = head.into_bytes();
                answer.resize(answer.len() + body_len, b'x');
                if s.write_all(&answer).await.is_err() {
                    return;
                }
                if let After::CloseSoon = after {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    return;
                }
            }
        })
        .await
    }

    fn get(addr: &str) -> Request<Body> {
        Request::get(format!("http://{addr}/p"))
            .body(Body::empty())
            .unwrap()
    }

    async fn fetch(addr: &str) -> usize {
        let resp = send(get(addr)).await.expect("answered");
        assert_eq!(resp.status(), 200);
        resp.into_body().collect().await.unwrap().to_bytes().len()
    }

    #[tokio::test(flavor = "current_thread")]
    async fn one_connection_carries_requests_one_after_another() {
        let (addr, accepted) = upstream(After::KeepAlive, 100).await;
        for _ in 0..50 {
            assert_eq!(fetch(&addr).await, 100);
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 1);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_connection_the_upstream_closed_is_not_reused() {
        let (addr, accepted) = upstream(After::CloseSoon, 10).await;
        for _ in 0..10 {
            assert_eq!(fetch(&addr).await, 10);
            tokio::time::sleep(Duration::from_millis(60)).await;
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 10);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn an_answer_dropped_before_its_end_takes_its_connection_with_it() {
        let (addr, accepted) = upstream(After::KeepAlive, 1 << 20).await;
        let resp = send(get(&addr)).await.unwrap();
        let mut body = resp.into_body();
        let first = body.frame().await.unwrap().unwrap();
        assert!(first.data_ref().is_some_and(|d| d.len() < 1 << 20));
        drop(body);
        // The next request gets a new connection and its whole answer.
        assert_eq!(fetch(&addr).await, 1 << 20);
        assert_eq!(fetch(&addr).await, 1 << 20);
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn concurrent_requests_open_one_connection_each_and_keep_them() {
        let (addr, accepted) = upstream(After::KeepAlive, 10).await;
        for _ in 0..3 {
            let all = (0..8).map(|_| fetch(&addr));
            let sizes = futures::future::join_all(all).await;
            assert!(sizes.iter().all(|n| *n == 10));
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 8);
    }

    /// An upstream that answers at once without reading the request body, then holds the
    /// connection open: the connection's request body can never finish.
    async fn early_answering_upstream() -> (String, Arc<AtomicUsize>) {
        listen(|mut s| async move {
            let mut chunk = [0u8; 1024];
            let _ = s.read(&mut chunk).await;
            let _ = s
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                .await;
            tokio::time::sleep(Duration::from_secs(30)).await;
        })
        .await
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_connection_stuck_sending_a_body_is_not_waited_on() {
        let (addr, accepted) = early_answering_upstream().await;
        let big = Request::post(format!("http://{addr}/upload"))
            .body(Body::from(vec![7u8; 16 << 20]))
            .unwrap();
        let resp = send(big).await.expect("answered early");
        assert_eq!(resp.into_body().collect().await.unwrap().to_bytes(), "ok");
        let next = tokio::time::timeout(Duration::from_secs(5), fetch(&addr))
            .await
            .expect("the next request must not wait on the stuck connection");
        assert_eq!(next, 2);
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_refused_connection_and_a_bad_target_are_errors() {
        let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = closed.local_addr().unwrap().to_string();
        drop(closed);
        assert!(matches!(send(get(&addr)).await, Err(SendError::Connect(_))));
        let relative = Request::get("/p").body(Body::empty()).unwrap();
        assert!(matches!(send(relative).await, Err(SendError::Target(_))));
    }
}
