//! Hostile and malformed input is refused with the right status and a JSON `code`, quickly,
//! and changes nothing: oversized bodies, 100 000 nested brackets, absurd query limits,
//! invalid UTF-8 in bodies, paths and headers, non-JSON content types, unknown fields,
//! negative and overflowing numbers; a slowloris client (headers at one byte per second) has
//! its connection closed by the header-read timeout while the server keeps serving.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use ficus_server::app::{self, Running, ServerConfig};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const SECRET: &str = "bad-input-secret";
/// Header-read timeout of the test server: short, so the slowloris test is quick.
const HEADER_TIMEOUT: Duration = Duration::from_millis(1500);
/// The most any single refusal may take: bad input must be cheap to refuse.
const REFUSAL_BUDGET: Duration = Duration::from_secs(2);

struct Server {
    running: Running,
    _dir: tempfile::TempDir,
    http: reqwest::Client,
    admin: String,
    seller: String,
    product: String,
}

impl Server {
    async fn start() -> Server {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = ServerConfig::new(dir.path(), "127.0.0.1:0".parse().unwrap());
        cfg.auth_secret = Some(SECRET.into());
        cfg.header_read_timeout = HEADER_TIMEOUT;
        let running = app::start(cfg).await.expect("server starts");
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .unwrap();
        let admin = running.token("ada", &["admin"], 3600);
        let seller = running.token("sam", &["seller"], 3600);
        let product = common::create_lamp(&http, &running.url(), &seller).await;
        Server {
            running,
            _dir: dir,
            http,
            admin,
            seller,
            product,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.running.url())
    }

    fn addr(&self) -> SocketAddr {
        self.running.addr
    }

    /// The log's head and the product stream's version: what "changes nothing" compares.
    async fn state(&self) -> (u64, usize) {
        let all: Value = self
            .http
            .get(self.url("/v1/all?limit=1"))
            .bearer_auth(&self.admin)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let stream: Value = self
            .http
            .get(self.url(&format!("/v1/streams/product-{}", self.product)))
            .bearer_auth(&self.admin)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        (
            all["head_position"].as_u64().unwrap(),
            stream["events"].as_array().unwrap().len(),
        )
    }
}

/// Sends `req`, asserts the status and a JSON `{code, message}` body within the budget, and
/// returns the code.
#[track_caller]
fn expect_refusal(status: u16, started: Instant, got: u16, body: &str, what: &str) -> String {
    assert_eq!(got, status, "{what}: body {body}");
    let v: Value =
        serde_json::from_str(body).unwrap_or_else(|_| panic!("{what}: not JSON: {body}"));
    assert!(v["message"].is_string(), "{what}: no message: {body}");
    assert!(
        started.elapsed() < REFUSAL_BUDGET,
        "{what}: took {:?}",
        started.elapsed()
    );
    v["code"]
        .as_str()
        .unwrap_or_else(|| panic!("{what}: no code: {body}"))
        .to_owned()
}

async fn send(req: reqwest::RequestBuilder, status: u16, what: &str) -> String {
    let started = Instant::now();
    let r = req.send().await.unwrap_or_else(|e| panic!("{what}: {e}"));
    let got = r.status().as_u16();
    let body = r.text().await.unwrap();
    expect_refusal(status, started, got, &body, what)
}

/// Writes raw bytes on a fresh connection and reads the answer until the server closes it.
async fn raw(addr: SocketAddr, request: &[u8]) -> (u16, String) {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(request).await.unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out))
        .await
        .expect("server answers raw request")
        .unwrap();
    let text = String::from_utf8_lossy(&out).into_owned();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b)
        .unwrap_or("")
        .to_owned();
    (status, body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_deep_and_malformed_bodies_are_refused_and_change_nothing() {
    let s = Server::start().await;
    let before = s.state().await;
    let create = || {
        s.http
            .post(s.url("/v1/products"))
            .bearer_auth(&s.seller)
            .header("content-type", "application/json")
    };
    let price = || {
        s.http
            .put(s.url(&format!("/v1/products/{}/price", s.product)))
            .bearer_auth(&s.seller)
            .header("content-type", "application/json")
    };

    // Over the 1 MiB body limit, with and without a declared length.
    let big = format!(
        r#"{{"name":"{}","category":"a","price":1,"currency":"EUR"}}"#,
        "x".repeat(2 << 20)
    );
    assert_eq!(
        send(create().body(big.clone()), 413, "2 MiB body").await,
        "body_too_large"
    );
    // Chunked, no declared length: the server answers 413 once the limit is crossed and may
    // hang up before the client is done sending, so this one is written on a raw socket.
    let started = Instant::now();
    let mut conn = TcpStream::connect(s.addr()).await.unwrap();
    let head = format!(
        "POST /v1/products HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {}\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n",
        s.seller
    );
    conn.write_all(head.as_bytes()).await.unwrap();
    for chunk in big.as_bytes().chunks(64 * 1024) {
        let framed = [format!("{:x}\r\n", chunk.len()).as_bytes(), chunk, b"\r\n"].concat();
        if conn.write_all(&framed).await.is_err() {
            break; // the server already refused and closed
        }
    }
    let _ = conn.write_all(b"0\r\n\r\n").await;
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), conn.read_to_end(&mut answer)).await;
    let text = String::from_utf8_lossy(&answer);
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("");
    assert_eq!(
        expect_refusal(413, started, status, body, "2 MiB chunked body"),
        "body_too_large"
    );

    // 100 000 nested brackets: refused by the depth pre-check, not by a stack overflow.
    let deep = "[".repeat(100_000);
    assert_eq!(
        send(create().body(deep), 400, "100k [").await,
        "invalid_json"
    );
    let deep_obj = r#"{"a":"#.repeat(50_000);
    assert_eq!(
        send(create().body(deep_obj), 400, "50k {").await,
        "invalid_json"
    );

    // Invalid UTF-8 inside a JSON string.
    let mut bad_utf8 = br#"{"name":"Lamp "#.to_vec();
    bad_utf8.extend_from_slice(&[0xff, 0xfe]);
    bad_utf8.extend_from_slice(br#"","category":"a","price":1,"currency":"EUR"}"#);
    assert_eq!(
        send(create().body(bad_utf8), 400, "invalid UTF-8 body").await,
        "invalid_json"
    );

    // Not JSON, or not declared as JSON.
    let ok_body = r#"{"name":"Lamp","category":"a","price":1,"currency":"EUR"}"#;
    for ct in [
        "text/plain",
        "application/x-www-form-urlencoded",
        "application/jsonx",
        "",
    ] {
        let req = s
            .http
            .post(s.url("/v1/products"))
            .bearer_auth(&s.seller)
            .header("content-type", ct)
            .body(ok_body);
        assert_eq!(
            send(req, 415, &format!("content-type {ct:?}")).await,
            "unsupported_media_type"
        );
    }
    assert_eq!(
        send(create().body("name=Lamp"), 400, "form body").await,
        "invalid_json"
    );
    assert_eq!(
        send(create().body(""), 400, "empty body").await,
        "invalid_json"
    );

    // Unknown fields are refused, not ignored.
    let extra = r#"{"name":"Lamp","category":"a","price":1,"currency":"EUR","seller_id":"evil"}"#;
    assert_eq!(
        send(create().body(extra), 400, "unknown field").await,
        "invalid_json"
    );
    assert_eq!(
        send(
            price().body(r#"{"price":21,"admin":true}"#),
            400,
            "unknown field"
        )
        .await,
        "invalid_json"
    );

    // Negative, overflowing and non-decimal numbers.
    for (body, what) in [
        (r#"{"price":-1}"#, "negative price"),
        (r#"{"price":1e400}"#, "price 1e400"),
        (
            r#"{"price":99999999999999999999999}"#,
            "price overflowing i64",
        ),
        (r#"{"price":1.005}"#, "price with 3 decimals"),
        (r#"{"price":"20"}"#, "price as a string"),
        (r#"{"price":null}"#, "price null"),
        (r#"{"price":NaN}"#, "price NaN"),
    ] {
        // Malformed numbers are 400; a well-formed amount outside the rules is 422.
        let started = Instant::now();
        let r = price().body(body).send().await.unwrap();
        let status = r.status().as_u16();
        let text = r.text().await.unwrap();
        let want = if status == 422 { 422 } else { 400 };
        let code = expect_refusal(want, started, status, &text, what);
        eprintln!("{what}: {status} {code}");
    }
    let stock = |body: &'static str| {
        s.http
            .post(s.url(&format!("/v1/products/{}/stock", s.product)))
            .bearer_auth(&s.seller)
            .header("content-type", "application/json")
            .body(body)
    };
    assert_eq!(
        send(
            stock(r#"{"warehouse":"main","delta":9223372036854775808}"#),
            400,
            "delta > i64"
        )
        .await,
        "invalid_json"
    );
    assert_eq!(
        send(
            stock(r#"{"warehouse":"main","delta":1.5}"#),
            400,
            "fractional delta"
        )
        .await,
        "invalid_json"
    );
    let customer = s.running.token("cleo", &["customer"], 3600);
    for (q, what) in [
        ("-1", "negative quantity"),
        ("0", "zero quantity"),
        ("4294967296000", "huge quantity"),
    ] {
        let req = s
            .http
            .post(s.url("/v1/orders"))
            .bearer_auth(&customer)
            .header("content-type", "application/json")
            .body(format!(
                r#"{{"items":[{{"product_id":"{}","quantity":{q}}}]}}"#,
                s.product
            ));
        // A well-formed quantity out of range is the aggregate's rule (422), not a parse error.
        assert_eq!(send(req, 422, what).await, "invalid_quantity");
    }

    assert_eq!(s.state().await, before, "refused input changed the store");
    s.running.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn absurd_queries_paths_and_headers_are_refused() {
    let s = Server::start().await;
    let before = s.state().await;
    let get = |path: &str| s.http.get(s.url(path)).bearer_auth(&s.admin);

    // Huge, negative and overflowing limits and positions.
    for (path, code) in [
        ("/v1/all?limit=1000000000", "invalid_limit"),
        ("/v1/all?limit=0", "invalid_limit"),
        ("/v1/all?limit=-1", "invalid_query"),
        (
            "/v1/all?from_position=18446744073709551616",
            "invalid_query",
        ),
        ("/v1/products?limit=1000000000", "invalid_limit"),
        ("/v1/products?limit=100000000000000", "invalid_query"),
        ("/v1/products?offset=1000000000", "invalid_offset"),
        (
            "/v1/products?min_price=-99999999999999999999",
            "invalid_query",
        ),
        ("/v1/customers/ada/orders?limit=1000000000", "invalid_limit"),
        ("/v1/products?unknown=1", "invalid_query"),
    ] {
        assert_eq!(send(get(path), 400, path).await, code, "{path}");
    }
    let stream = format!("/v1/streams/product-{}?limit=1000000000", s.product);
    assert_eq!(
        send(get(&stream), 400, "stream limit").await,
        "invalid_limit"
    );
    // A min_position far beyond the head waits only the bounded read-your-writes time.
    let far = s
        .http
        .get(s.url("/v1/products?min_position=9000000000000000000"))
        .timeout(Duration::from_secs(8));
    let started = Instant::now();
    let r = far.send().await.unwrap();
    assert_eq!(r.status(), 503);
    assert!(started.elapsed() < Duration::from_secs(7));
    assert_eq!(
        r.json::<Value>().await.unwrap()["code"],
        "read_model_lagging"
    );

    // The extreme positions that do parse are answered, not refused and not wrapped: the
    // largest one is past the head (an empty page, the head unchanged), zero is the start.
    let page = |path: String| {
        let r = get(&path);
        async move {
            let r = r.send().await.unwrap();
            assert_eq!(r.status(), 200, "{path}");
            r.json::<Value>().await.unwrap()
        }
    };
    let top = page(format!("/v1/all?from_position={}&limit=1000", u64::MAX)).await;
    assert_eq!(top["events"], json!([]), "a page past the head is empty");
    assert_eq!(top["head_position"].as_u64(), Some(before.0));
    let start = page("/v1/all?from_position=0&limit=1".into()).await;
    assert_eq!(start["events"][0]["position"], 1, "position 0 reads from 1");
    // A live subscription from the largest position opens and delivers nothing (every event
    // is before it) while the server goes on serving.
    let mut sub = get(&format!("/v1/subscribe?from_position={}", u64::MAX))
        .send()
        .await
        .unwrap();
    assert_eq!(sub.status(), 200);
    let waited = tokio::time::timeout(Duration::from_millis(700), async {
        loop {
            match sub.chunk().await.unwrap() {
                // SSE comments (keep-alives) start with ':'; anything else is an event.
                Some(c) if c.starts_with(b":") => continue,
                other => return other,
            }
        }
    })
    .await;
    assert!(waited.is_err(), "an event was delivered: {waited:?}");
    drop(sub);

    // Invalid UTF-8 in a path, percent-encoded: a JSON refusal from the extractor.
    assert_eq!(
        send(get("/v1/products/%FF%FE"), 400, "path %FF").await,
        "invalid_path"
    );
    assert_eq!(
        send(get("/v1/streams/%C0%AF"), 400, "path overlong").await,
        "invalid_path"
    );
    // Raw non-ASCII bytes in the request line never reach a handler: the HTTP parser
    // refuses the request with 400.
    let (status, _) = raw(
        s.addr(),
        b"GET /v1/products/\xff\xfe HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(status, 400, "raw bytes in the path");

    // Invalid UTF-8 in headers: a token that is not text, an If-Match that is not a version,
    // a correlation id that is dropped for a fresh one.
    let mut req = format!("PUT /v1/products/{}/price HTTP/1.1\r\nhost: x\r\nconnection: close\r\ncontent-type: application/json\r\ncontent-length: 12\r\nauthorization: Bearer ", s.product).into_bytes();
    req.extend_from_slice(&[0xff, 0xfe, 0x80]);
    req.extend_from_slice(b"\r\n\r\n{\"price\":21}");
    let (status, body) = raw(s.addr(), &req).await;
    assert_eq!(
        expect_refusal(401, Instant::now(), status, &body, "token bytes"),
        "unauthorized"
    );
    let mut req = format!("PUT /v1/products/{}/price HTTP/1.1\r\nhost: x\r\nconnection: close\r\ncontent-type: application/json\r\ncontent-length: 12\r\nauthorization: Bearer {}\r\nif-match: \"", s.product, s.seller).into_bytes();
    req.extend_from_slice(&[0xff, b'"']);
    req.extend_from_slice(b"\r\n\r\n{\"price\":21}");
    let (status, body) = raw(s.addr(), &req).await;
    assert_eq!(
        expect_refusal(400, Instant::now(), status, &body, "if-match bytes"),
        "invalid_if_match"
    );
    let mut req =
        b"GET /v1/products/nope HTTP/1.1\r\nhost: x\r\nconnection: close\r\nx-correlation-id: "
            .to_vec();
    req.extend_from_slice(&[0xc3, 0x28]);
    req.extend_from_slice(b"\r\n\r\n");
    let (status, body) = raw(s.addr(), &req).await;
    assert_eq!(
        expect_refusal(404, Instant::now(), status, &body, "correlation bytes"),
        "product_not_found"
    );
    // An oversized bearer token is refused without being verified.
    let huge = "a".repeat(16 * 1024);
    let r = s.http.get(s.url("/v1/all")).bearer_auth(&huge);
    assert_eq!(send(r, 401, "16 KiB token").await, "unauthorized");

    assert_eq!(s.state().await, before, "refused input changed the store");
    s.running.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slowloris_connection_is_closed_by_the_header_read_timeout() {
    let s = Server::start().await;
    let mut slow = TcpStream::connect(s.addr()).await.unwrap();
    let request = b"GET /health/live HTTP/1.1\r\nhost: localhost\r\nx-padding: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n\r\n";
    let started = Instant::now();
    let mut sent = 0;
    let mut closed_after = None;
    // One byte per 250 ms (four times faster than the classic attack, to keep the test
    // short): the headers would take ~25 s; the server must hang up after its timeout.
    for b in request.iter() {
        if slow.write_all(&[*b]).await.is_err() {
            closed_after = Some(started.elapsed());
            break;
        }
        sent += 1;
        // A closed connection shows as a readable EOF (or a reset) before a write fails.
        let mut buf = [0u8; 512];
        match tokio::time::timeout(Duration::from_millis(250), slow.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => {
                closed_after = Some(started.elapsed());
                break;
            }
            Ok(Ok(n)) => {
                // hyper may answer 408 before closing; never a 200.
                let text = String::from_utf8_lossy(&buf[..n]);
                assert!(!text.contains(" 200 "), "slowloris got an answer: {text}");
            }
            Err(_) => {}
        }
        // The server keeps serving others meanwhile.
        if sent % 4 == 0 {
            let r = s.http.get(s.url("/health/live")).send().await.unwrap();
            assert_eq!(r.status(), 200);
        }
    }
    let closed_after = closed_after.unwrap_or_else(|| {
        panic!("the slow client sent all {sent} header bytes without being cut off")
    });
    assert!(
        closed_after >= HEADER_TIMEOUT && closed_after < HEADER_TIMEOUT + Duration::from_secs(2),
        "closed after {closed_after:?} ({sent} bytes sent); timeout is {HEADER_TIMEOUT:?}"
    );
    eprintln!("slowloris: connection closed after {closed_after:?}, {sent} header bytes in");
    s.running.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_prompt_keep_alive_client_is_not_cut_off() {
    let s = Server::start().await;
    let mut conn = TcpStream::connect(s.addr()).await.unwrap();
    // Three requests on one connection, each well inside the header-read timeout.
    for _ in 0..3 {
        conn.write_all(b"GET /health/live HTTP/1.1\r\nhost: x\r\n\r\n")
            .await
            .unwrap();
        let mut buf = [0u8; 1024];
        let n = tokio::time::timeout(Duration::from_secs(5), conn.read(&mut buf))
            .await
            .expect("answer on the kept-alive connection")
            .unwrap();
        assert!(
            String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"),
            "{}",
            String::from_utf8_lossy(&buf[..n])
        );
        tokio::time::sleep(HEADER_TIMEOUT / 3).await;
    }
    s.running.stop().await.unwrap();
}

#[test]
fn the_default_header_read_timeout_is_set() {
    let cfg = ServerConfig::new("/tmp/unused", "127.0.0.1:0".parse().unwrap());
    assert_eq!(cfg.header_read_timeout, app::HEADER_READ_TIMEOUT);
    assert!(app::HEADER_READ_TIMEOUT <= Duration::from_secs(30));
}
