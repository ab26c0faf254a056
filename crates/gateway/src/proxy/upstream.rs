//! The façade's upstream connections: a pool of HTTP/1.1 connections per thread and upstream
//! address, lent to one request at a time and taken back when its answer's body has been read
//! to the end.
//!
//! The client is written here rather than taken from hyper for one reason: cost. A request
//! is written, and its answer read, by the task serving the façade's client, on a connection
//! that task owns for the time of the exchange. A general-purpose client runs each connection
//! in a task of its own and passes every request, answer and body chunk between tasks
//! through channels; on this machine that was a third of the façade's own CPU per request.
//!
//! Each gateway worker is a single-threaded runtime (`ficus gateway`), so a thread's pool is
//! used by that thread alone: a checkout is a `Vec::pop`, with no lock. A connection goes back
//! to the pool of the thread that reads the end of its answer's body, and only then: an
//! answer dropped before its end takes its connection with it (it is closed, as the rest of
//! that body would be left on it).
//!
//! What the client does, as RFC 9112 asks:
//! - the request goes in origin form with the upstream's address as `Host`; its body is sent
//!   with `Content-Length` when its length is known and chunked otherwise, while the answer is
//!   read, so an upstream answering before the whole body was sent (a `413`, say) is heard at
//!   once; such a connection is not reused;
//! - an answer's body is framed by `Transfer-Encoding: chunked`, else by `Content-Length`,
//!   else by the end of the connection; `HEAD`, `1xx`, `204` and `304` answers have none;
//!   interim `1xx` answers are skipped;
//! - a connection is reused only after a whole answer that asked for no `Connection: close`
//!   (HTTP/1.1, or HTTP/1.0 with keep-alive), with nothing unasked left on it;
//! - an idle connection the upstream closed in the meantime (its keep-alive timeout) is seen
//!   before it is lent out, without a system call unless the socket has become readable;
//!   one closed just as an idempotent request without a body was sent on it is retried once
//!   on a new connection.

use std::cell::RefCell;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::http::uri::Authority;
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, Method, Request, Response};
use axum::http::{StatusCode, Version};
use bytes::BytesMut;
use futures::FutureExt;
use http_body::{Body as HttpBody, Frame, SizeHint};
use http_body_util::BodyExt;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;

/// Idle connections a thread keeps per upstream address; a connection coming free past it is
/// closed.
pub const IDLE_PER_UPSTREAM: usize = super::POOL_IDLE_PER_HOST;
/// An idle connection older than this is closed rather than reused (upstreams close idle
/// keep-alive connections on their own schedule; nginx's default is 75 s).
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Upstream addresses a thread keeps connections for; past it the pool of the least recently
/// used one is closed.
pub const MAX_UPSTREAMS: usize = 64;
/// Longest answer head (status line and header fields) read from an upstream.
pub const MAX_HEAD_BYTES: usize = 64 * 1024;
/// Most header fields in an answer head.
pub const MAX_HEADERS: usize = 128;
/// Longest line of a chunked body: a chunk's size with its extensions, or a trailer field.
pub const MAX_CHUNK_LINE_BYTES: usize = 4 * 1024;
/// Longest trailer section of a chunked answer (it is read and dropped).
pub const MAX_TRAILER_BYTES: usize = 16 * 1024;
/// Interim (`1xx`) answers skipped before the final one.
pub const MAX_INTERIM_ANSWERS: usize = 8;
/// Room made in a connection's read buffer before each read.
const READ_CHUNK: usize = 16 * 1024;
/// Request body bytes gathered before they are written (a larger frame is written alone).
const WRITE_GATHER: usize = 64 * 1024;

/// One connection to an upstream, with what has been read from it and not yet used.
struct Conn {
    io: Io,
    buf: BytesMut,
}

/// A connection's socket: whole, or only its reading half while the request's body is still
/// being written beside the answer (such a connection is never reused).
enum Io {
    Whole(TcpStream),
    Reading(OwnedReadHalf),
}

impl AsyncRead for Io {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Io::Whole(s) => Pin::new(s).poll_read(cx, buf),
            Io::Reading(r) => Pin::new(r).poll_read(cx, buf),
        }
    }
}

/// The rest of a request's body, written while its answer is read; it gives back the
/// writing half when done.
type Upload = Pin<Box<dyn Future<Output = Result<OwnedWriteHalf, SendError>> + Send>>;

impl Conn {
    /// Whether the connection can carry another request: the upstream has neither closed it
    /// nor sent anything unasked. No system call unless the socket has become readable.
    fn alive(&self) -> bool {
        // Only whole connections are ever pooled.
        let Io::Whole(stream) = &self.io else {
            return false;
        };
        if !self.buf.is_empty() {
            return false;
        }
        let mut probe = [0u8; 1];
        matches!(stream.try_read(&mut probe), Err(e) if e.kind() == io::ErrorKind::WouldBlock)
    }
}

struct Idle {
    conn: Conn,
    since: Instant,
}

#[derive(Default)]
struct Pool {
    /// Per upstream address (`host:port`), its idle connections, most recently freed last.
    /// Few upstreams per gateway: a list searched in order beats hashing the key.
    by_upstream: Vec<(Authority, Vec<Idle>)>,
}

impl Pool {
    fn take(&mut self, at: &Authority) -> Option<Conn> {
        let idle = &mut self.by_upstream.iter_mut().find(|(a, _)| a == at)?.1;
        let now = Instant::now();
        while let Some(c) = idle.pop() {
            if now.duration_since(c.since) < IDLE_TIMEOUT && c.conn.alive() {
                return Some(c.conn);
            }
        }
        None
    }

    fn give_back(&mut self, at: Authority, conn: Conn) {
        let now = Instant::now();
        let idle = Idle { conn, since: now };
        match self.by_upstream.iter_mut().position(|(a, _)| *a == at) {
            Some(i) => {
                let list = &mut self.by_upstream[i].1;
                // The oldest are first: those past the idle timeout are closed now, rather
                // than left open (the upstream may have closed its end) until reached.
                let stale = list
                    .iter()
                    .take_while(|c| now.duration_since(c.since) >= IDLE_TIMEOUT)
                    .count();
                list.drain(..stale);
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

fn give_back(at: Authority, conn: Conn) {
    // `try_with`: a body read to its end while its thread shuts down just closes.
    let _ = POOL.try_with(|p| {
        if let Ok(mut pool) = p.try_borrow_mut() {
            pool.give_back(at, conn);
        }
    });
}

/// Why an upstream request failed.
#[derive(Debug)]
pub enum SendError {
    /// The URI names no `http` upstream address.
    Target(String),
    /// No connection could be opened.
    Connect(io::Error),
    /// The connection failed while the request was sent or its answer read.
    Io(io::Error),
    /// The upstream closed the connection without answering.
    Closed,
    /// The upstream's answer is not well-formed HTTP/1.1, or is past a limit.
    Protocol(String),
    /// The client's request body failed while it was passed on.
    RequestBody(String),
}

impl std::fmt::Display for SendError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SendError::Target(m) | SendError::Protocol(m) => write!(f, "{m}"),
            SendError::Connect(e) => write!(f, "connecting: {e}"),
            SendError::Io(e) => write!(f, "{e}"),
            SendError::Closed => write!(f, "the connection was closed before an answer"),
            SendError::RequestBody(m) => write!(f, "reading the request body: {m}"),
        }
    }
}

fn protocol(m: impl Into<String>) -> SendError {
    SendError::Protocol(m.into())
}

/// How an answer's body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BodyState {
    /// This many bytes are left.
    Length(u64),
    /// A chunk-size line is next.
    ChunkSize,
    /// This many bytes of the current chunk are left.
    ChunkData(u64),
    /// The CRLF ending a chunk is next.
    ChunkEnd,
    /// The trailer section is next; this many of its bytes have been read.
    Trailers(usize),
    /// The body runs to the end of the connection.
    UntilClose,
    /// The body has been read to its end.
    Done,
}

/// The answer's body, read from the connection it arrives on; the connection goes back to
/// the pool when the body has been read to its end.
pub struct PooledBody {
    /// The connection, while the body is being read (`None` once done or failed).
    conn: Option<Conn>,
    at: Authority,
    state: BodyState,
    /// Whether the connection may carry another request after this body.
    reusable: bool,
    /// The request body's rest, when the upstream answered before it was all sent and goes
    /// on reading it: written as the answer is read.
    upload: Option<Upload>,
}

impl PooledBody {
    /// The body is over: the connection goes back to the pool if it may be reused.
    fn finish(&mut self) {
        self.state = BodyState::Done;
        self.upload = None;
        if let Some(conn) = self.conn.take() {
            if self.reusable && conn.buf.is_empty() && matches!(conn.io, Io::Whole(_)) {
                give_back(self.at.clone(), conn);
            }
        }
    }

    fn fail(&mut self, e: io::Error) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        self.conn = None;
        self.state = BodyState::Done;
        Poll::Ready(Some(Err(e)))
    }
}

fn bad_body(m: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, format!("upstream body: {m}"))
}

/// A chunk-size line's size (RFC 9112 §7.1): 1 to 16 hex digits, then optionally
/// whitespace and `;` extensions, which are ignored.
fn chunk_size(line: &[u8]) -> Option<u64> {
    let digits = line.iter().take_while(|b| b.is_ascii_hexdigit()).count();
    let rest = &line[digits..];
    let rest_ok = rest.is_empty()
        || rest
            .iter()
            .position(|b| *b != b' ' && *b != b'\t')
            .is_some_and(|i| rest[i] == b';');
    if !(1..=16).contains(&digits) || !rest_ok {
        return None;
    }
    u64::from_str_radix(std::str::from_utf8(&line[..digits]).ok()?, 16).ok()
}

/// The position just past the first CRLF in `buf`, if there is one.
fn line_end(buf: &[u8]) -> Option<usize> {
    buf.windows(2).position(|w| w == b"\r\n").map(|i| i + 2)
}

impl HttpBody for PooledBody {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        let this = &mut *self;
        if let Some(upload) = this.upload.as_mut() {
            // Done or failed, the upload is over; the answer is read on either way.
            if upload.as_mut().poll(cx).is_ready() {
                this.upload = None;
            }
        }
        loop {
            let Some(conn) = this.conn.as_mut() else {
                return Poll::Ready(None);
            };
            // Whether the state needs more bytes than the buffer holds.
            let need_more = match this.state {
                BodyState::Done => return Poll::Ready(None),
                BodyState::Length(0) => {
                    this.finish();
                    return Poll::Ready(None);
                }
                BodyState::Length(left) | BodyState::ChunkData(left) if !conn.buf.is_empty() => {
                    let take = (conn.buf.len() as u64).min(left) as usize;
                    let data = conn.buf.split_to(take).freeze();
                    let left = left - take as u64;
                    match this.state {
                        BodyState::Length(_) if left == 0 => this.finish(),
                        BodyState::Length(_) => this.state = BodyState::Length(left),
                        _ if left == 0 => this.state = BodyState::ChunkEnd,
                        _ => this.state = BodyState::ChunkData(left),
                    }
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                BodyState::UntilClose if !conn.buf.is_empty() => {
                    let data = conn.buf.split().freeze();
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                BodyState::ChunkSize => match line_end(&conn.buf) {
                    Some(end) if end > MAX_CHUNK_LINE_BYTES => {
                        return this.fail(bad_body("a chunk-size line is too long"))
                    }
                    Some(end) => {
                        let line = conn.buf.split_to(end);
                        let Some(size) = chunk_size(&line[..end - 2]) else {
                            return this.fail(bad_body("a chunk size is not 1-16 hex digits"));
                        };
                        this.state = match size {
                            0 => BodyState::Trailers(0),
                            n => BodyState::ChunkData(n),
                        };
                        false
                    }
                    None if conn.buf.len() > MAX_CHUNK_LINE_BYTES => {
                        return this.fail(bad_body("a chunk-size line is too long"))
                    }
                    None => true,
                },
                BodyState::ChunkEnd if conn.buf.len() >= 2 => {
                    if &conn.buf[..2] != b"\r\n" {
                        return this.fail(bad_body("a chunk does not end with CRLF"));
                    }
                    let _ = conn.buf.split_to(2);
                    this.state = BodyState::ChunkSize;
                    false
                }
                BodyState::Trailers(seen) => match line_end(&conn.buf) {
                    Some(2) => {
                        let _ = conn.buf.split_to(2);
                        this.finish();
                        return Poll::Ready(None);
                    }
                    Some(end) if seen + end <= MAX_TRAILER_BYTES => {
                        let _ = conn.buf.split_to(end);
                        this.state = BodyState::Trailers(seen + end);
                        false
                    }
                    Some(_) => return this.fail(bad_body("the trailer section is too long")),
                    None if conn.buf.len() > MAX_CHUNK_LINE_BYTES => {
                        return this.fail(bad_body("a trailer line is too long"))
                    }
                    None => true,
                },
                _ => true,
            };
            if !need_more {
                continue;
            }
            conn.buf.reserve(READ_CHUNK);
            let read = match ready!(tokio_util::io::poll_read_buf(
                Pin::new(&mut conn.io),
                cx,
                &mut conn.buf
            )) {
                Ok(n) => n,
                Err(e) => return this.fail(e),
            };
            if read == 0 {
                if this.state == BodyState::UntilClose {
                    this.reusable = false;
                    this.finish();
                    return Poll::Ready(None);
                }
                return this.fail(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "upstream body: the connection closed before the body's end",
                ));
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        matches!(self.state, BodyState::Done | BodyState::Length(0))
    }

    fn size_hint(&self) -> SizeHint {
        match self.state {
            BodyState::Done => SizeHint::with_exact(0),
            BodyState::Length(n) => SizeHint::with_exact(n),
            _ => SizeHint::default(),
        }
    }
}

/// Opens a connection to `at`.
async fn connect(at: &Authority) -> Result<Conn, SendError> {
    let port = at.port_u16().unwrap_or(80);
    let io = TcpStream::connect((at.host(), port))
        .await
        .map_err(SendError::Connect)?;
    let _ = io.set_nodelay(true);
    Ok(Conn {
        io: Io::Whole(io),
        buf: BytesMut::with_capacity(READ_CHUNK),
    })
}

/// How the request's body is sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    /// No body, and no `Content-Length` either.
    None,
    Length(u64),
    Chunked,
}

/// Request headers not passed on as they are: the client's framing (the body is framed here
/// anew), and `Expect` (the body is sent without waiting for a `100 Continue`).
fn passed_on(name: &HeaderName) -> bool {
    name != header::CONTENT_LENGTH && name != header::TRANSFER_ENCODING && name != header::EXPECT
}

/// The request head in origin form.
fn encode_head(
    out: &mut Vec<u8>,
    method: &Method,
    target: &str,
    headers: &HeaderMap,
    at: &Authority,
    framing: Framing,
) {
    use std::io::Write;
    out.extend_from_slice(method.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(target.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    if !headers.contains_key(header::HOST) {
        out.extend_from_slice(b"host: ");
        out.extend_from_slice(at.as_str().as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    for (name, value) in headers {
        if passed_on(name) {
            out.extend_from_slice(name.as_str().as_bytes());
            out.extend_from_slice(b": ");
            out.extend_from_slice(value.as_bytes());
            out.extend_from_slice(b"\r\n");
        }
    }
    match framing {
        Framing::None => {}
        Framing::Length(n) => {
            let _ = write!(out, "content-length: {n}\r\n");
        }
        Framing::Chunked => out.extend_from_slice(b"transfer-encoding: chunked\r\n"),
    }
    out.extend_from_slice(b"\r\n");
}

/// Writes the head and the body (framed as `framing`) to `wr`, and gives `wr` back. What
/// the client has sent goes on at once: frames already there are gathered into one write,
/// and nothing waits in the buffer for a frame still to come.
async fn write_request<W: AsyncWrite + Unpin>(
    mut wr: W,
    mut out: Vec<u8>,
    mut body: Body,
    framing: Framing,
) -> Result<W, SendError> {
    use std::io::Write;
    let mut sent: u64 = 0;
    loop {
        let frame = match body.frame().now_or_never() {
            Some(frame) => frame,
            None => {
                flush(&mut wr, &mut out).await?;
                body.frame().await
            }
        };
        let Some(frame) = frame else { break };
        let frame = frame.map_err(|e| SendError::RequestBody(e.to_string()))?;
        let Ok(data) = frame.into_data() else {
            // Trailers: not passed on.
            continue;
        };
        if data.is_empty() {
            continue;
        }
        sent += data.len() as u64;
        if let Framing::Length(n) = framing {
            if sent > n {
                return Err(SendError::RequestBody(format!(
                    "the body is longer than its {n} bytes"
                )));
            }
        }
        if framing == Framing::Chunked {
            let _ = write!(out, "{:x}\r\n", data.len());
        }
        if out.len() + data.len() <= WRITE_GATHER {
            out.extend_from_slice(&data);
        } else {
            flush(&mut wr, &mut out).await?;
            wr.write_all(&data).await.map_err(SendError::Io)?;
        }
        if framing == Framing::Chunked {
            out.extend_from_slice(b"\r\n");
        }
        if out.len() >= WRITE_GATHER {
            flush(&mut wr, &mut out).await?;
        }
    }
    match framing {
        Framing::Length(n) if sent != n => {
            return Err(SendError::RequestBody(format!(
                "the body ended after {sent} of its {n} bytes"
            )))
        }
        Framing::Chunked => out.extend_from_slice(b"0\r\n\r\n"),
        _ => {}
    }
    flush(&mut wr, &mut out).await?;
    Ok(wr)
}

/// Writes what `out` has gathered, if anything, and empties it.
async fn flush<W: AsyncWrite + Unpin>(wr: &mut W, out: &mut Vec<u8>) -> Result<(), SendError> {
    if !out.is_empty() {
        wr.write_all(out).await.map_err(SendError::Io)?;
        out.clear();
    }
    Ok(())
}

/// An answer's head, and how its body is delimited.
struct Head {
    parts: axum::http::response::Parts,
    state: BodyState,
    reusable: bool,
}

/// Whether the comma-separated field `name` holds `token` (case-insensitive).
fn has_token(headers: &HeaderMap, name: HeaderName, token: &str) -> bool {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

/// Parses an answer head at the start of `buf` and takes it out; `Ok(None)` when more bytes
/// are needed.
fn parse_head(buf: &mut BytesMut, method: &Method) -> Result<Option<Head>, SendError> {
    // Where each field's name and value lie in the head, so that the values can share the
    // head's bytes instead of being copied.
    let mut at = [(0usize, 0usize, 0usize, 0usize); MAX_HEADERS];
    let (len, code, minor, count) = {
        let mut slots = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut resp = httparse::Response::new(&mut slots);
        let len = match resp.parse(buf) {
            Ok(httparse::Status::Complete(len)) => len,
            Ok(httparse::Status::Partial) if buf.len() >= MAX_HEAD_BYTES => {
                return Err(protocol(format!(
                    "the upstream's answer head is over {MAX_HEAD_BYTES} bytes"
                )))
            }
            Ok(httparse::Status::Partial) => return Ok(None),
            Err(e) => {
                return Err(protocol(format!(
                    "the upstream's answer is not HTTP/1.1: {e}"
                )))
            }
        };
        let base = buf.as_ptr() as usize;
        for (slot, h) in at.iter_mut().zip(resp.headers.iter()) {
            let name = h.name.as_ptr() as usize - base;
            let value = h.value.as_ptr() as usize - base;
            *slot = (name, name + h.name.len(), value, value + h.value.len());
        }
        (
            len,
            resp.code.unwrap_or(0),
            resp.version.unwrap_or(1),
            resp.headers.len(),
        )
    };
    let head = buf.split_to(len).freeze();
    let status = StatusCode::from_u16(code)
        .map_err(|_| protocol(format!("the upstream answered status {code}")))?;
    let mut headers = HeaderMap::with_capacity(count);
    for &(ns, ne, vs, ve) in &at[..count] {
        let name = HeaderName::from_bytes(&head[ns..ne])
            .map_err(|_| protocol("the upstream's answer has a malformed field name"))?;
        let value = HeaderValue::from_maybe_shared(head.slice(vs..ve))
            .map_err(|_| protocol("the upstream's answer has a malformed field value"))?;
        headers.append(name, value);
    }
    let version = if minor == 0 {
        Version::HTTP_10
    } else {
        Version::HTTP_11
    };
    // `close` wins over `keep-alive` (RFC 9112 §9.3).
    let mut reusable = !has_token(&headers, header::CONNECTION, "close")
        && (version == Version::HTTP_11 || has_token(&headers, header::CONNECTION, "keep-alive"));
    let no_body = method == Method::HEAD
        || status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED;
    let state = if no_body {
        BodyState::Done
    } else if headers.contains_key(header::TRANSFER_ENCODING) {
        // Framed by its codings; a `Content-Length` beside them is dropped (it must not
        // be passed on), and the connection is not trusted with another request (RFC 9112
        // §6.3); nor is it after an HTTP/1.0 answer with codings (§6.1).
        if headers.remove(header::CONTENT_LENGTH).is_some() || version == Version::HTTP_10 {
            reusable = false;
        }
        let last = headers
            .get_all(header::TRANSFER_ENCODING)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .rfind(|t| !t.is_empty());
        if last.is_some_and(|t| t.eq_ignore_ascii_case("chunked")) {
            BodyState::ChunkSize
        } else {
            reusable = false;
            BodyState::UntilClose
        }
    } else if headers.contains_key(header::CONTENT_LENGTH) {
        let mut lengths = headers
            .get_all(header::CONTENT_LENGTH)
            .iter()
            .flat_map(|v| v.to_str().unwrap_or("x").split(','))
            .map(|t| t.trim())
            .map(|t| match t.bytes().all(|b| b.is_ascii_digit()) {
                true => t.parse::<u64>().map_err(|_| ()),
                false => Err(()),
            });
        let first = lengths.next();
        match first {
            Some(Ok(n)) if lengths.all(|l| l.as_ref() == Ok(&n)) => BodyState::Length(n),
            _ => {
                return Err(protocol(
                    "the upstream's answer has an invalid Content-Length",
                ))
            }
        }
    } else {
        reusable = false;
        BodyState::UntilClose
    };
    let mut parts = Response::new(()).into_parts().0;
    parts.status = status;
    parts.version = version;
    parts.headers = headers;
    Ok(Some(Head {
        parts,
        state,
        reusable,
    }))
}

/// Reads the final answer head (skipping interim `1xx` ones) from `rd` into `buf`.
async fn read_head<R: AsyncRead + Unpin>(
    rd: &mut R,
    buf: &mut BytesMut,
    method: &Method,
) -> Result<Head, SendError> {
    let mut interim = 0;
    loop {
        if let Some(head) = parse_head(buf, method)? {
            if !head.parts.status.is_informational() {
                return Ok(head);
            }
            if head.parts.status == StatusCode::SWITCHING_PROTOCOLS {
                return Err(protocol(
                    "the upstream switched protocols, which is not proxied",
                ));
            }
            interim += 1;
            if interim > MAX_INTERIM_ANSWERS {
                return Err(protocol(format!(
                    "the upstream sent over {MAX_INTERIM_ANSWERS} interim answers"
                )));
            }
            continue;
        }
        buf.reserve(READ_CHUNK);
        let before = buf.len();
        match rd.read_buf(buf).await {
            Ok(0) if before == 0 => return Err(SendError::Closed),
            Ok(0) => return Err(protocol("the upstream closed the connection mid-answer")),
            Ok(_) => {}
            Err(e) if before == 0 && is_reset(&e) => return Err(SendError::Closed),
            Err(e) => return Err(SendError::Io(e)),
        }
    }
}

fn is_reset(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionReset
            | io::ErrorKind::BrokenPipe
            | io::ErrorKind::ConnectionAborted
    )
}

/// Whether a request framed as `framing` has no body bytes to send.
fn nothing_to_send(framing: Framing, body: &Body) -> bool {
    framing != Framing::Chunked && body.is_end_stream()
}

/// One request and its answer's head on `conn`; the head, whether the whole request was
/// sent, and the rest of the body when it is still to be sent beside the answer. A
/// connection whose request was cut short, or is still being sent, is not reused.
async fn exchange(
    conn: Conn,
    head: Vec<u8>,
    body: Body,
    framing: Framing,
    method: &Method,
) -> Result<(Conn, Head, bool, Option<Upload>), SendError> {
    let Conn {
        io: Io::Whole(mut stream),
        mut buf,
    } = conn
    else {
        return Err(SendError::Closed);
    };
    if nothing_to_send(framing, &body) {
        // No body to send (the common case): the head is written, then the answer read.
        return match stream.write_all(&head).await {
            Ok(()) => {
                let h = read_head(&mut stream, &mut buf, method).await?;
                let conn = Conn {
                    io: Io::Whole(stream),
                    buf,
                };
                Ok((conn, h, true, None))
            }
            Err(e) if is_reset(&e) => Err(SendError::Closed),
            Err(e) => Err(SendError::Io(e)),
        };
    }
    // The body is sent while the answer is read: an upstream may answer before it has read
    // the whole body, and may then never read the rest.
    let (mut rd, wr) = stream.into_split();
    let mut send: Upload = Box::pin(write_request(wr, head, body, framing));
    let mut sent: Option<Result<OwnedWriteHalf, SendError>> = None;
    loop {
        tokio::select! {
            biased;
            answer = read_head(&mut rd, &mut buf, method) => {
                let h = match (answer, sent) {
                    (Ok(h), Some(Ok(wr))) => {
                        // All sent: the connection is whole again.
                        let io = rd.reunite(wr).map_or_else(|e| Io::Reading(e.0), Io::Whole);
                        return Ok((Conn { io, buf }, h, true, None));
                    }
                    (Ok(h), None) => h,
                    (Ok(h), Some(Err(_))) => {
                        return Ok((Conn { io: Io::Reading(rd), buf }, h, false, None));
                    }
                    // The write failed first: that is the cause to report.
                    (Err(_), Some(Err(e))) => return Err(e),
                    (Err(e), _) => return Err(e),
                };
                // Answered before the body was all sent. An upstream that refuses it (an
                // error, or closing) is sent no more; one that accepts it (a streaming
                // endpoint) is sent the rest as its answer is read.
                let goes_on = h.reusable && !h.parts.status.is_client_error()
                    && !h.parts.status.is_server_error();
                let conn = Conn { io: Io::Reading(rd), buf };
                return Ok((conn, h, false, goes_on.then_some(send)));
            }
            done = &mut send, if sent.is_none() => {
                if let Err(e @ SendError::RequestBody(_)) = done {
                    // The client's body broke: the upstream is sent no more.
                    return Err(e);
                }
                sent = Some(done);
            }
        }
    }
}

/// Sends `req`, whose URI is absolute (`http://host:port/path?query`), on a connection of this
/// thread's pool, and answers the upstream's answer head; its body gives the connection back
/// when read to its end.
pub async fn send(req: Request<Body>) -> Result<Response<PooledBody>, SendError> {
    let (parts, body) = req.into_parts();
    let uri = &parts.uri;
    if uri.scheme_str() != Some("http") {
        return Err(SendError::Target(format!(
            "upstream URI {uri} is not http://host:port/..."
        )));
    }
    let Some(at) = uri.authority().cloned() else {
        return Err(SendError::Target(format!("upstream URI {uri} has no host")));
    };
    let target = uri.path_and_query().map_or("/", |p| p.as_str());
    let hint = body.size_hint();
    let framing = match hint.exact() {
        Some(0)
            if body.is_end_stream()
                && !parts.headers.contains_key(header::CONTENT_LENGTH)
                && !matches!(parts.method, Method::POST | Method::PUT | Method::PATCH) =>
        {
            Framing::None
        }
        Some(n) => Framing::Length(n),
        None => Framing::Chunked,
    };
    let mut head = Vec::with_capacity(256 + 64 * parts.headers.len());
    encode_head(
        &mut head,
        &parts.method,
        target,
        &parts.headers,
        &at,
        framing,
    );
    let pooled = POOL.with(|p| p.borrow_mut().take(&at));
    let reused = pooled.is_some();
    let conn = match pooled {
        Some(c) => c,
        None => Box::pin(connect(&at)).await?,
    };
    // A retry sends the same request again: only one without a body, safe to repeat. Its
    // head is encoded anew then, rather than copied ahead for every request.
    let may_retry =
        reused && nothing_to_send(framing, &body) && super::is_idempotent(&parts.method);
    let (conn, answer, whole, upload) =
        match exchange(conn, head, body, framing, &parts.method).await {
            Err(SendError::Closed) if may_retry => {
                // The idle connection was closed under the request: once more, on a new one.
                let conn = Box::pin(connect(&at)).await?;
                let mut head = Vec::new();
                encode_head(
                    &mut head,
                    &parts.method,
                    target,
                    &parts.headers,
                    &at,
                    framing,
                );
                Box::pin(exchange(conn, head, Body::empty(), framing, &parts.method)).await?
            }
            other => other?,
        };
    let mut body = PooledBody {
        conn: Some(conn),
        at,
        state: answer.state,
        reusable: answer.reusable && whole,
        upload,
    };
    if body.state == BodyState::Done || body.state == BodyState::Length(0) {
        body.finish();
    }
    Ok(Response::from_parts(answer.parts, body))
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

    /// An upstream that plays a script per connection: the k-th connection answers its
    /// requests with `scripts[k]` in turn (the last script for later connections), then
    /// closes; an empty answer closes the connection without answering. Everything received
    /// is kept.
    async fn scripted(
        scripts: Vec<Vec<&'static [u8]>>,
    ) -> (String, Arc<AtomicUsize>, Arc<std::sync::Mutex<Vec<u8>>>) {
        let received = Arc::new(std::sync::Mutex::new(Vec::new()));
        let seen = received.clone();
        let n = Arc::new(AtomicUsize::new(0));
        let (addr, accepted) = listen(move |mut s| {
            let script = scripts[n.fetch_add(1, Ordering::SeqCst).min(scripts.len() - 1)].clone();
            let seen = seen.clone();
            async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                for answer in script {
                    // A request: its head, then a body by length or chunked to its end.
                    let complete = |b: &[u8]| {
                        let end = b.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
                        let head = String::from_utf8_lossy(&b[..end]).to_ascii_lowercase();
                        if head.contains("transfer-encoding: chunked") {
                            let tail = b[end..].windows(5).position(|w| w == b"0\r\n\r\n")?;
                            return Some(end + tail + 5);
                        }
                        let len = head
                            .lines()
                            .find_map(|l| l.strip_prefix("content-length: "))
                            .map_or(0, |v| v.trim().parse::<usize>().unwrap());
                        (b.len() >= end + len).then_some(end + len)
                    };
                    let used = loop {
                        if let Some(used) = complete(&buf) {
                            break used;
                        }
                        match s.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    };
                    seen.lock().unwrap().extend(buf.drain(..used));
                    if answer.is_empty() || s.write_all(answer).await.is_err() {
                        return;
                    }
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
        .await;
        (addr, accepted, received)
    }

    async fn body_of(resp: Response<PooledBody>) -> Bytes {
        resp.into_body().collect().await.unwrap().to_bytes()
    }

    const OK: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";

    #[tokio::test(flavor = "current_thread")]
    async fn a_chunked_answer_is_decoded_and_its_connection_reused() {
        let chunked: &[u8] = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5;x=1\r\nhello\r\n6\r\n world\r\n0\r\nx-sum: 1\r\n\r\n";
        let (addr, accepted, _) = scripted(vec![vec![chunked, chunked]]).await;
        for _ in 0..2 {
            let resp = send(get(&addr)).await.unwrap();
            assert!(resp.body().size_hint().exact().is_none());
            assert_eq!(body_of(resp).await, "hello world");
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 1);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn an_answer_without_length_runs_to_the_close_and_is_not_reused() {
        let (addr, accepted, _) = scripted(vec![vec![b"HTTP/1.1 200 OK\r\n\r\nto the end"]]).await;
        for _ in 0..2 {
            assert_eq!(body_of(send(get(&addr)).await.unwrap()).await, "to the end");
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn head_204_and_304_answers_have_no_body() {
        let (addr, accepted, _) = scripted(vec![vec![
            b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\n",
            b"HTTP/1.1 204 No Content\r\n\r\n",
            b"HTTP/1.1 304 Not Modified\r\ncontent-length: 9\r\n\r\n",
            OK,
        ]])
        .await;
        let head = Request::head(format!("http://{addr}/p"))
            .body(Body::empty())
            .unwrap();
        let resp = send(head).await.unwrap();
        assert_eq!(resp.headers()[header::CONTENT_LENGTH], "5");
        assert_eq!(body_of(resp).await, "");
        let resp = send(get(&addr)).await.unwrap();
        assert_eq!(resp.status(), 204);
        assert_eq!(body_of(resp).await, "");
        let resp = send(get(&addr)).await.unwrap();
        assert_eq!(resp.status(), 304);
        assert_eq!(body_of(resp).await, "");
        assert_eq!(fetch(&addr).await, 2);
        assert_eq!(accepted.load(Ordering::SeqCst), 1);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn interim_answers_are_skipped() {
        let (addr, _, _) = scripted(vec![vec![
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nlink: </a>\r\n\r\nHTTP/1.1 201 Created\r\ncontent-length: 2\r\n\r\nok",
        ]])
        .await;
        let resp = send(get(&addr)).await.unwrap();
        assert_eq!(resp.status(), 201);
        assert!(resp.headers().get("link").is_none());
        assert_eq!(body_of(resp).await, "ok");
    }

    #[tokio::test(flavor = "current_thread")]
    async fn request_bodies_are_framed_by_length_or_chunked() {
        let (addr, _, received) = scripted(vec![vec![OK, OK]]).await;
        let known = Request::post(format!("http://{addr}/a"))
            .header("content-length", "999")
            .header("expect", "100-continue")
            .body(Body::from("abc"))
            .unwrap();
        assert_eq!(body_of(send(known).await.unwrap()).await, "ok");
        let parts = futures::stream::iter([Ok::<_, std::io::Error>("de"), Ok("fgh")]);
        let streamed = Request::post(format!("http://{addr}/b"))
            .body(Body::from_stream(parts))
            .unwrap();
        assert_eq!(body_of(send(streamed).await.unwrap()).await, "ok");
        let got = String::from_utf8(received.lock().unwrap().clone()).unwrap();
        assert!(got.starts_with("POST /a HTTP/1.1\r\nhost: "), "{got}");
        assert!(
            got.contains("content-length: 3\r\n\r\nabcPOST /b HTTP/1.1\r\n"),
            "{got}"
        );
        assert!(!got.contains("999") && !got.contains("expect"), "{got}");
        assert!(
            got.ends_with("transfer-encoding: chunked\r\n\r\n2\r\nde\r\n3\r\nfgh\r\n0\r\n\r\n"),
            "{got}"
        );
    }

    #[tokio::test(flavor = "current_thread")]
    async fn an_idle_connection_closed_under_a_get_is_retried_once_but_not_under_a_post() {
        // The first connection answers once and then closes on its next request unanswered.
        let (addr, accepted, _) = scripted(vec![vec![OK, b""], vec![OK]]).await;
        assert_eq!(fetch(&addr).await, 2);
        assert_eq!(fetch(&addr).await, 2, "retried on a new connection");
        assert_eq!(accepted.load(Ordering::SeqCst), 2);

        let (addr, accepted, _) = scripted(vec![vec![OK, b""], vec![OK]]).await;
        assert_eq!(fetch(&addr).await, 2);
        let post = Request::post(format!("http://{addr}/p"))
            .body(Body::from("x"))
            .unwrap();
        assert!(matches!(send(post).await, Err(SendError::Closed)));
        assert_eq!(
            accepted.load(Ordering::SeqCst),
            1,
            "a POST is not sent twice"
        );
    }

    #[tokio::test(flavor = "current_thread")]
    async fn connection_close_and_mixed_framing_are_not_reused() {
        // Each connection would answer a second request: reusing it would be seen.
        let close: &[u8] = b"HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 2\r\n\r\nok";
        let (addr, accepted, _) = scripted(vec![vec![close, OK]]).await;
        assert_eq!(fetch(&addr).await, 2);
        assert_eq!(fetch(&addr).await, 2);
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
        let mixed: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-length: 50\r\ntransfer-encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n";
        let (addr, accepted, _) = scripted(vec![vec![mixed, OK]]).await;
        let resp = send(get(&addr)).await.unwrap();
        assert!(
            resp.headers().get(header::CONTENT_LENGTH).is_none(),
            "not passed on"
        );
        assert_eq!(body_of(resp).await, "ok");
        assert_eq!(fetch(&addr).await, 2);
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn http_1_0_answers_are_reused_only_with_keep_alive_and_no_close() {
        let kept: &[u8] =
            b"HTTP/1.0 200 OK\r\nconnection: keep-alive\r\ncontent-length: 2\r\n\r\nok";
        let (addr, accepted, _) = scripted(vec![vec![kept, OK]]).await;
        assert_eq!(fetch(&addr).await, 2);
        assert_eq!(fetch(&addr).await, 2);
        assert_eq!(accepted.load(Ordering::SeqCst), 1);
        for answer in [
            &b"HTTP/1.0 200 OK\r\ncontent-length: 2\r\n\r\nok"[..],
            b"HTTP/1.0 200 OK\r\nconnection: keep-alive, close\r\ncontent-length: 2\r\n\r\nok",
            b"HTTP/1.0 200 OK\r\nconnection: keep-alive\r\ntransfer-encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n",
        ] {
            let (addr, accepted, _) = scripted(vec![vec![answer, OK]]).await;
            assert_eq!(fetch(&addr).await, 2);
            assert_eq!(fetch(&addr).await, 2);
            assert_eq!(accepted.load(Ordering::SeqCst), 2, "{}", String::from_utf8_lossy(answer));
        }
    }

    #[test]
    fn chunk_sizes_are_hex_digits_then_extensions() {
        assert_eq!(chunk_size(b"5"), Some(5));
        assert_eq!(chunk_size(b"1aF"), Some(0x1af));
        assert_eq!(chunk_size(b"5;name=value"), Some(5));
        assert_eq!(chunk_size(b"5 \t;x"), Some(5));
        assert_eq!(chunk_size(b"ffffffffffffffff"), Some(u64::MAX));
        for bad in [
            &b""[..],
            b"+5",
            b" 5",
            b"5 ",
            b"-1",
            b"0x5",
            b"g",
            b";x",
            b"10000000000000000",
        ] {
            assert_eq!(chunk_size(bad), None, "{}", String::from_utf8_lossy(bad));
        }
    }

    /// A request body that the test feeds piece by piece, ending when its sender is dropped.
    fn fed_body() -> (tokio::sync::mpsc::Sender<&'static str>, Body) {
        let (tx, rx) = tokio::sync::mpsc::channel::<&'static str>(4);
        let stream = futures::stream::unfold(rx, |mut rx| async move {
            rx.recv().await.map(|s| (Ok::<_, std::io::Error>(s), rx))
        });
        (tx, Body::from_stream(stream))
    }

    /// An upstream that answers as soon as a request head has come, with a chunked body that
    /// echoes the request's chunked body as it arrives, and ends with it.
    async fn echoing_upstream() -> String {
        let (addr, _) = listen(|mut s| async move {
            let mut got = Vec::new();
            let mut chunk = [0u8; 4096];
            while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                match s.read(&mut chunk).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => got.extend_from_slice(&chunk[..n]),
                }
            }
            let end = got.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
            let mut echoed = got.split_off(end);
            let head = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n";
            if s.write_all(head).await.is_err() || s.write_all(&echoed).await.is_err() {
                return;
            }
            // The request body is chunked too: its bytes are a valid chunked answer body.
            while !echoed.ends_with(b"0\r\n\r\n") {
                match s.read(&mut chunk).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => {
                        echoed.extend_from_slice(&chunk[..n]);
                        if s.write_all(&chunk[..n]).await.is_err() {
                            return;
                        }
                    }
                }
            }
            tokio::time::sleep(Duration::from_secs(5)).await;
        })
        .await;
        addr
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_request_body_streams_both_ways_with_an_upstream_that_answers_as_it_reads() {
        let addr = echoing_upstream().await;
        let (tx, body) = fed_body();
        let req = Request::post(format!("http://{addr}/echo"))
            .body(body)
            .unwrap();
        let wait = Duration::from_secs(5);
        tx.send("one").await.unwrap();
        // The head and the first piece go out before the body's end: the answer comes.
        let resp = tokio::time::timeout(wait, send(req))
            .await
            .expect("answered before the request body ended")
            .unwrap();
        assert_eq!(resp.status(), 200);
        let mut answer = resp.into_body();
        async fn next(body: &mut PooledBody) -> Option<Bytes> {
            let frame = tokio::time::timeout(Duration::from_secs(5), body.frame())
                .await
                .expect("no hang");
            frame.map(|f| f.unwrap().into_data().unwrap())
        }
        assert_eq!(next(&mut answer).await.unwrap(), "one");
        // The rest of the request body is still sent, while the answer is read.
        tx.send("two").await.unwrap();
        assert_eq!(next(&mut answer).await.unwrap(), "two");
        drop(tx);
        assert!(
            next(&mut answer).await.is_none(),
            "the answer ends with the body"
        );
    }

    #[tokio::test(flavor = "current_thread")]
    async fn malformed_or_oversized_answers_are_errors() {
        let huge: &'static [u8] = {
            let mut h = b"HTTP/1.1 200 OK\r\nx-big: ".to_vec();
            h.resize(h.len() + MAX_HEAD_BYTES, b'a');
            h.extend_from_slice(b"\r\n\r\n");
            Vec::leak(h)
        };
        for answer in [
            &b"HTTP/1.1 200 OK\r\ncontent-length: +2\r\n\r\nok"[..],
            b"HTTP/1.1 200 OK\r\ncontent-length: 2x\r\n\r\nok",
            b"SMTP ready\r\n\r\n",
            huge,
        ] {
            let (addr, _, _) = scripted(vec![vec![answer]]).await;
            assert!(
                matches!(send(get(&addr)).await, Err(SendError::Protocol(_))),
                "{}",
                String::from_utf8_lossy(&answer[..answer.len().min(60)])
            );
        }
        let (addr, _, _) = scripted(vec![vec![
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nzz\r\nok\r\n0\r\n\r\n",
        ]])
        .await;
        let resp = send(get(&addr)).await.unwrap();
        assert!(resp.into_body().collect().await.is_err());
    }
}
