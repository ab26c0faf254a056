//! The `ficus` binary as a user runs it: `ficus serve` with no secret configured creates one
//! in the data directory, `ficus token` signs with it, the server takes that token, and SIGTERM
//! shuts it down gracefully with exit status 0, keeping every acknowledged write.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn serve(dir: &std::path::Path, port: u16) -> Child {
    Command::new(env!("CARGO_BIN_EXE_ficus"))
        .args([
            "serve",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--data-dir",
        ])
        .arg(dir)
        .env_remove("FICUS_AUTH_HS256_SECRET")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn ficus serve")
}

async fn wait_ready(http: &reqwest::Client, base: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(r) = http.get(format!("{base}/health/ready")).send().await {
            if r.status() == 200 {
                return;
            }
        }
        assert!(Instant::now() < deadline, "server never became ready");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn token(dir: &std::path::Path, sub: &str, roles: &str) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_ficus"))
        .args(["token", "--sub", sub, "--roles", roles, "--data-dir"])
        .arg(dir)
        .env_remove("FICUS_AUTH_HS256_SECRET")
        .output()
        .expect("run ficus token");
    assert!(out.status.success());
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

fn sigterm(child: &Child) {
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("run kill");
    assert!(status.success());
}

fn wait_exit(child: &mut Child) -> std::process::ExitStatus {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(s) = child.try_wait().unwrap() {
            return s;
        }
        assert!(
            Instant::now() < deadline,
            "server did not exit after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_token_and_graceful_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let http = reqwest::Client::new();
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let mut child = serve(dir.path(), port);
    wait_ready(&http, &base).await;
    assert!(dir.path().join("auth.secret").exists());

    let seller = token(dir.path(), "sam", "seller");
    let body = json!({"name": "Kettle", "description": "steel", "category": "kitchen",
                      "price": 12.5, "currency": "EUR", "stock": 3});
    let r = http
        .post(format!("{base}/v1/products"))
        .bearer_auth(&seller)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let created: Value = r.json().await.unwrap();
    let id = created["id"].as_str().unwrap().to_owned();
    let position = created["position"].as_u64().unwrap();

    sigterm(&child);
    let status = wait_exit(&mut child);
    assert!(status.success(), "exit status after SIGTERM: {status:?}");
    assert!(
        http.get(format!("{base}/health/live"))
            .send()
            .await
            .is_err(),
        "the port still answers after shutdown"
    );

    // Restart on the same data: the same secret, the acknowledged product, the read model.
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let mut child = serve(dir.path(), port);
    wait_ready(&http, &base).await;
    let r = http
        .get(format!("{base}/v1/products/{id}?min_position={position}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let product: Value = r.json().await.unwrap();
    assert_eq!(product["name"], "Kettle");
    assert_eq!(product["stock_total"], 3);
    let r = http
        .put(format!("{base}/v1/products/{id}/price"))
        .bearer_auth(&seller)
        .json(&json!({"price": 13}))
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.status(),
        200,
        "a token minted before the restart still works"
    );
    sigterm(&child);
    assert!(wait_exit(&mut child).success());
}

fn cli(args: &[&str], url: &str, token: &str) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_ficus"))
        .args(args)
        .env("FICUS_URL", url)
        .env("FICUS_TOKEN", token)
        .output()
        .expect("run ficus");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_and_dlq_commands_drive_a_running_server() {
    let dir = tempfile::tempdir().unwrap();
    let http = reqwest::Client::new();
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let mut child = serve(dir.path(), port);
    wait_ready(&http, &base).await;
    let seller = token(dir.path(), "sam", "seller");
    let admin = token(dir.path(), "ada", "admin");
    for price in [10, 20] {
        let r = http
            .post(format!("{base}/v1/products"))
            .bearer_auth(&seller)
            .json(&json!({"name": "Atlas", "category": "maps", "price": price, "currency": "EUR"}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201);
    }
    // Let the catalog catch up so the job sees both products.
    let r = http
        .get(format!("{base}/v1/products?category=maps&min_position=2"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);

    // A 60 % cut breaks the rules: both items end in the dead-letter queue.
    let (ok, out) = cli(
        &[
            "jobs",
            "submit",
            "reprice_category",
            r#"{"category":"maps","percent":-60}"#,
        ],
        &base,
        &seller,
    );
    assert!(ok, "{out}");
    assert!(out.contains("completed_with_failures"), "{out}");
    let (ok, out) = cli(&["dlq", "list", "shop"], &base, &admin);
    assert!(ok, "{out}");
    assert_eq!(out.matches("reprice_category.item").count(), 2, "{out}");
    assert!(
        out.contains("price"),
        "the last error names the rule: {out}"
    );
    let (ok, out) = cli(
        &["dlq", "purge", "shop", "--kind", "reprice_category.item"],
        &base,
        &admin,
    );
    assert!(ok && out.contains("purged: 2"), "{out}");
    let (ok, out) = cli(&["dlq", "list"], &base, &admin);
    assert!(ok && out.contains("empty"), "{out}");
    // Refusals come back as a failing exit with the server's code.
    let (ok, out) = cli(&["jobs", "submit", "no_such_kind"], &base, &seller);
    assert!(!ok && out.contains("invalid_job"), "{out}");
    let (ok, out) = cli(&["dlq", "list"], &base, &seller);
    assert!(!ok && out.contains("403"), "{out}");

    sigterm(&child);
    assert!(wait_exit(&mut child).success());
}
