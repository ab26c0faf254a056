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
