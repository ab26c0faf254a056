//! Proves canary analysis with automatic rollback through the real gateway on loopback: a
//! healthy new target walks every step to 100 % and succeeds; one that starts failing, gets
//! slow, or disagrees in shadow mode is rolled back to 0 % by itself with the reason recorded
//! and traffic then all on legacy; the plan's state survives a gateway restart (same step,
//! dwell not served again; rolled back stays rolled back, even if the route file lost the
//! weight); bad plans and actions get 4xx; `ficus routes status` prints it all.

use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{Request, State};
use axum::response::Response;
use axum::Router;
use ficus_gateway::{Auth, Claims};
use ficus_server::gateway::{self, RunningGateway};
use serde_json::{json, Value};
use tempfile::TempDir;

const SECRET: &str = "gateway-rollout-test-secret";
/// Requests in flight at once from the load generator.
const CONCURRENCY: usize = 8;
/// Longest a test waits for a rollout to reach a state.
const WAIT: Duration = Duration::from_secs(30);

const HEALTHY: u8 = 0;
const FAILING: u8 = 1;
const SLOW: u8 = 2;
const MISMATCHING: u8 = 3;

/// An upstream answering a small product document; what the new one does is switched at run
/// time: healthy, 500s, 150 ms late, or a different price.
async fn upstream(mode: Arc<AtomicU8>) -> String {
    async fn answer(State(mode): State<Arc<AtomicU8>>, req: Request) -> Response {
        let m = mode.load(Ordering::Relaxed);
        if m == SLOW {
            tokio::time::sleep(Duration::from_millis(150)).await;
        }
        let status = if m == FAILING { 500 } else { 200 };
        let price = if m == MISMATCHING { 12 } else { 10 };
        let body = json!({"path": req.uri().path(), "name": "Kettle", "price": price});
        Response::builder()
            .status(status)
            .header("content-type", "application/json")
            .body(axum::body::Body::from(body.to_string()))
            .unwrap()
    }
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = Router::new().fallback(answer).with_state(mode);
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    format!("http://{addr}")
}

struct Setup {
    dir: TempDir,
    gw: Option<RunningGateway>,
    url: String,
    auth: Arc<Auth>,
    admin: String,
    /// What the new upstream does.
    new_mode: Arc<AtomicU8>,
    http: reqwest::Client,
}

impl Setup {
    /// A gateway with one route `products` from a legacy upstream to a new one, with
    /// `extra` lines (the rollout plan, shadow) appended to the route.
    async fn start(extra: &str) -> Self {
        let legacy = upstream(Arc::new(AtomicU8::new(HEALTHY))).await;
        let new_mode = Arc::new(AtomicU8::new(HEALTHY));
        let new = upstream(new_mode.clone()).await;
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("routes.toml"),
            format!(
                r#"
[upstreams]
legacy = "{legacy}"
new = "{new}"

[[routes]]
name = "products"
path_prefix = "/api/products"
legacy = "legacy"
new_reads = "new"
timeout_ms = 5000
{extra}
"#
            ),
        )
        .unwrap();
        let auth = Arc::new(Auth::new(SECRET));
        let admin = auth.mint(&Claims {
            sub: "ada".into(),
            roles: vec!["admin".into()],
            exp: None,
            nbf: None,
        });
        let mut s = Setup {
            dir,
            gw: None,
            url: String::new(),
            auth,
            admin,
            new_mode,
            http: reqwest::Client::new(),
        };
        s.restart().await;
        s
    }

    /// Stops the gateway if it runs and starts it again on the same route file.
    async fn restart(&mut self) {
        if let Some(gw) = self.gw.take() {
            gw.stop().await.unwrap();
        }
        let gw = gateway::start(
            self.dir.path().join("routes.toml"),
            "127.0.0.1:0".parse().unwrap(),
            self.auth.clone(),
        )
        .await
        .unwrap();
        self.url = gw.url();
        self.gw = Some(gw);
    }

    async fn admin(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        let mut req = self
            .http
            .request(method, format!("{}{path}", self.url))
            .bearer_auth(&self.admin);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let r = req.send().await.unwrap();
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    async fn rollout(&self) -> Value {
        let (status, v) = self
            .admin(
                reqwest::Method::GET,
                "/v1/admin/routes/products/rollout",
                None,
            )
            .await;
        assert_eq!(status, 200, "{v}");
        v
    }

    async fn act(&self, action: &str) -> (u16, Value) {
        self.admin(
            reqwest::Method::POST,
            &format!("/v1/admin/routes/products/rollout/{action}"),
            None,
        )
        .await
    }

    /// Polls the rollout until `done` holds; fails with the last answer after `WAIT`.
    async fn wait_for(&self, what: &str, done: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + WAIT;
        loop {
            let v = self.rollout().await;
            if done(&v) {
                return v;
            }
            assert!(Instant::now() < deadline, "waited for {what}: {v:#}");
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// Sends requests, `CONCURRENCY` at a time, until the returned flag is raised.
    fn load(&self) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let tasks = (0..CONCURRENCY)
            .map(|i| {
                let (http, url, stop) = (self.http.clone(), self.url.clone(), stop.clone());
                tokio::spawn(async move {
                    let mut n = 0u64;
                    while !stop.load(Ordering::Relaxed) {
                        let r = http
                            .get(format!("{url}/api/products/{}", (n % 50) + i as u64))
                            .send()
                            .await;
                        if let Ok(r) = r {
                            let _ = r.bytes().await;
                        }
                        n += 1;
                    }
                })
            })
            .collect();
        Load { stop, tasks }
    }

    /// The side each of `n` requests was served by: (legacy, new).
    async fn sides(&self, n: usize) -> (usize, usize) {
        let mut counts = (0, 0);
        for i in 0..n {
            let r = self
                .http
                .get(format!("{}/api/products/{i}", self.url))
                .send()
                .await
                .unwrap();
            match r.headers()["ficus-target"].to_str().unwrap() {
                "legacy" => counts.0 += 1,
                _ => counts.1 += 1,
            }
        }
        counts
    }

    async fn prometheus(&self) -> String {
        self.http
            .get(format!("{}/v1/admin/metrics", self.url))
            .bearer_auth(&self.admin)
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    /// Runs `ficus <args>` against the gateway; (success, stdout, stderr).
    async fn ficus(&self, args: &[&str]) -> (bool, String, String) {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_ficus"));
        cmd.args(args)
            .env("FICUS_URL", &self.url)
            .env("FICUS_TOKEN", &self.admin)
            .env("NO_PROXY", "127.0.0.1")
            .env_remove("HTTP_PROXY")
            .env_remove("http_proxy")
            .env_remove("ALL_PROXY")
            .env_remove("all_proxy");
        let out = tokio::task::spawn_blocking(move || cmd.output())
            .await
            .unwrap()
            .expect("run ficus");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    async fn stop(mut self) {
        if let Some(gw) = self.gw.take() {
            gw.stop().await.unwrap();
        }
    }
}

struct Load {
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    async fn stop(self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.tasks {
            t.await.unwrap();
        }
    }
}

fn plan(steps: &str, dwell_ms: u64, bounds: &str) -> String {
    format!(
        "[routes.rollout]\nsteps = {steps}\ndwell_ms = {dwell_ms}\nwindow_ms = 2000\nmin_requests = 3\n\
         [routes.rollout.bounds]\n{bounds}\n"
    )
}

/// Checks a rollout answer against the gateway's own OpenAPI document: every required field
/// is there, no field is undocumented, and so for each decision record.
async fn conforms(s: &Setup, rollout: &Value) {
    let doc: Value = s
        .http
        .get(format!("{}/v1/admin/openapi.json", s.url))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(doc["paths"]["/v1/admin/routes/{name}/rollout"]["get"].is_object());
    let schemas = &doc["components"]["schemas"];
    let check = |name: &str, v: &Value| {
        let schema = &schemas[name];
        for k in schema["required"].as_array().unwrap() {
            assert!(
                v.get(k.as_str().unwrap()).is_some(),
                "{name} lacks {k}: {v}"
            );
        }
        let props = schema["properties"].as_object().unwrap();
        for k in v.as_object().unwrap().keys() {
            assert!(props.contains_key(k), "{name}.{k} is not in the document");
        }
    };
    check("Rollout", rollout);
    check("RolloutPlan", &rollout["plan"]);
    check("WindowMetrics", &rollout["window"]);
    for d in rollout["history"].as_array().unwrap() {
        check("RolloutDecision", d);
    }
    let status = rollout["status"].as_str().unwrap();
    let statuses = schemas["Rollout"]["properties"]["status"]["enum"]
        .as_array()
        .unwrap();
    assert!(statuses.iter().any(|s| s == status), "{status}");
}

fn outcomes(v: &Value) -> Vec<String> {
    v["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["outcome"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_healthy_canary_walks_every_step_and_succeeds() {
    let s = Setup::start(&plan(
        "[1, 5, 25, 50, 100]",
        300,
        "max_error_rate = 0.05\nmax_p99_ms = 1000\nmax_error_rate_increase = 0.02",
    ))
    .await;
    let before = s.rollout().await;
    assert_eq!(before["status"], "not_started", "{before}");
    assert_eq!(
        s.sides(20).await,
        (20, 0),
        "no traffic moves before the start"
    );
    let load = s.load();
    let (status, started) = s.act("start").await;
    assert_eq!(status, 200, "{started}");
    assert_eq!(started["status"], "running");
    assert_eq!(
        (started["step"].as_u64(), started["weight_new"].as_u64()),
        (Some(0), Some(1))
    );
    let done = s.wait_for("success", |v| v["status"] != "running").await;
    load.stop().await;
    assert_eq!(done["status"], "succeeded", "{done:#}");
    assert_eq!(done["weight_new"], 100);
    assert_eq!(
        outcomes(&done),
        [
            "started",
            "advance",
            "advance",
            "advance",
            "advance",
            "succeeded"
        ],
        "{done:#}"
    );
    let weights: Vec<u64> = done["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["weight_new"].as_u64().unwrap())
        .collect();
    assert_eq!(weights, [1, 5, 25, 50, 100, 100]);
    // Every advance was judged on evidence: enough new-side requests in its window, none failed.
    for d in &done["history"].as_array().unwrap()[1..] {
        let new = &d["metrics"]["new"];
        assert!(new["requests"].as_u64().unwrap() >= 3, "{d}");
        assert_eq!(new["errors"], 0, "{d}");
    }
    assert_eq!(s.sides(20).await, (0, 20), "all traffic on the new side");
    conforms(&s, &done).await;
    let metrics = s.prometheus().await;
    for line in [
        "ficus_gateway_rollout_step{route=\"products\"} 5",
        "ficus_gateway_rollout_weight{route=\"products\"} 100",
        "ficus_gateway_rollout_running{route=\"products\"} 0",
        "ficus_gateway_rollout_rollbacks_total{route=\"products\"} 0",
        "ficus_gateway_rollout_decisions_total{route=\"products\",outcome=\"advance\"} 4",
        "ficus_gateway_rollout_decisions_total{route=\"products\",outcome=\"succeeded\"} 1",
    ] {
        assert!(metrics.contains(line), "{line} in\n{metrics}");
    }
    // The route file holds the final weight and the plan, so the table reloads as it is.
    let file = std::fs::read_to_string(s.dir.path().join("routes.toml")).unwrap();
    assert!(file.contains("weight_new = 100"), "{file}");
    assert!(file.contains("[routes.rollout]"), "{file}");
    let (ok, out, err) = s.ficus(&["routes", "status", "products"]).await;
    assert!(ok, "{err}");
    assert!(
        out.contains("route products: rollout succeeded, step 5 of 5"),
        "{out}"
    );
    assert!(out.contains("1 → 5 → 25 → 50 → 100"), "{out}");
    assert!(out.contains("advance"), "{out}");
    assert!(out.contains("succeeded"), "{out}");
    // A succeeded plan may be started again, explicitly; a running one may not be.
    let (_, again) = s.act("start").await;
    assert_eq!(again["status"], "running");
    let (status, refused) = s.act("start").await;
    assert_eq!(
        (status, refused["code"].as_str()),
        (409, Some("rollout_in_progress"))
    );
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_canary_rolls_itself_back_and_stays_rolled_back_across_restarts() {
    let mut s = Setup::start(&plan("[5, 25, 50, 100]", 1000, "max_error_rate = 0.05")).await;
    let load = s.load();
    assert_eq!(s.act("start").await.0, 200);
    s.wait_for("step 2", |v| v["step"] == 1).await;
    // Mid-rollout, the new target starts failing.
    s.new_mode.store(FAILING, Ordering::Relaxed);
    let v = s.wait_for("rollback", |v| v["status"] != "running").await;
    load.stop().await;
    assert_eq!(v["status"], "rolled_back", "{v:#}");
    assert_eq!(v["weight_new"], 0);
    let reason = v["reason"].as_str().unwrap();
    assert!(reason.contains("max_error_rate"), "{reason}");
    let last = v["history"].as_array().unwrap().last().unwrap().clone();
    assert_eq!(
        (last["outcome"].as_str(), last["step"].as_u64()),
        (Some("rollback"), Some(1))
    );
    assert!(
        last["metrics"]["new"]["errors"].as_u64().unwrap() > 0,
        "{last}"
    );
    assert_eq!(s.sides(30).await, (30, 0), "all traffic back on legacy");
    assert!(s
        .prometheus()
        .await
        .contains("ficus_gateway_rollout_rollbacks_total{route=\"products\"} 1"));
    let (ok, out, err) = s.ficus(&["routes", "status"]).await;
    assert!(ok, "{err}");
    assert!(out.contains("rollout rolled_back"), "{out}");
    assert!(out.contains("reason: new error rate"), "{out}");

    // The new target is fixed: the plan stays rolled back, across a restart too.
    s.new_mode.store(HEALTHY, Ordering::Relaxed);
    s.restart().await;
    let v = s.rollout().await;
    assert_eq!(
        (v["status"].as_str(), v["weight_new"].as_u64()),
        (Some("rolled_back"), Some(0))
    );
    assert_eq!(v["reason"].as_str(), Some(reason));
    assert_eq!(s.sides(20).await, (20, 0));

    // A crash after the state was written but before the route file got the weight: the next
    // start sets the weight the state asks for.
    s.gw.take().unwrap().stop().await.unwrap();
    let routes = s.dir.path().join("routes.toml");
    let text = std::fs::read_to_string(&routes).unwrap();
    std::fs::write(&routes, text.replace("weight_new = 0", "weight_new = 25")).unwrap();
    let state_file = s.dir.path().join("routes.rollouts.json");
    let mut state: Value = serde_json::from_slice(&std::fs::read(&state_file).unwrap()).unwrap();
    state["routes"]["products"]["weight_applied"] = json!(false);
    std::fs::write(&state_file, serde_json::to_vec(&state).unwrap()).unwrap();
    s.restart().await;
    assert_eq!(s.rollout().await["weight_new"], 0);
    assert_eq!(s.sides(20).await, (20, 0));

    // Starting again is explicit, and judges only the new run's traffic.
    let load = s.load();
    let (status, v) = s.act("start").await;
    assert_eq!(status, 200, "{v}");
    let v = s.wait_for("success", |v| v["status"] != "running").await;
    load.stop().await;
    assert_eq!(v["status"], "succeeded", "{v:#}");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_canary_breaks_the_p99_bound() {
    let s = Setup::start(&plan(
        "[10, 50, 100]",
        1000,
        "max_p99_ms = 100\nmax_p99_ratio = 3.0",
    ))
    .await;
    s.new_mode.store(SLOW, Ordering::Relaxed);
    let load = s.load();
    assert_eq!(s.act("start").await.0, 200);
    let v = s.wait_for("rollback", |v| v["status"] != "running").await;
    load.stop().await;
    assert_eq!(v["status"], "rolled_back", "{v:#}");
    let reason = v["reason"].as_str().unwrap();
    assert!(reason.contains("max_p99_ms"), "{reason}");
    assert!(reason.contains("max_p99_ratio"), "{reason}");
    conforms(&s, &v).await;
    assert_eq!(v["history"].as_array().unwrap().last().unwrap()["step"], 0);
    assert_eq!(s.sides(10).await, (10, 0));
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_by_the_new_sides_bulkhead_count_against_it() {
    // The new side is slow but never fails; one call at a time may reach it, so most of its
    // share is refused with 503 `bulkhead_full` before any upstream is called.
    let s = Setup::start(&format!(
        "[routes.bulkhead]\nmax_concurrent = 1\nmax_wait_ms = 0\n{}",
        plan("[50, 100]", 1000, "max_error_rate = 0.2")
    ))
    .await;
    s.new_mode.store(SLOW, Ordering::Relaxed);
    let load = s.load();
    assert_eq!(s.act("start").await.0, 200);
    let v = s.wait_for("rollback", |v| v["status"] != "running").await;
    load.stop().await;
    assert_eq!(v["status"], "rolled_back", "{v:#}");
    assert!(
        v["reason"].as_str().unwrap().contains("max_error_rate"),
        "{v:#}"
    );
    let (_, route) = s
        .admin(reqwest::Method::GET, "/v1/admin/routes/products", None)
        .await;
    assert!(
        route["stats"]["refusals"]["bulkhead_full"]
            .as_u64()
            .unwrap()
            > 0,
        "{route:#}"
    );
    assert_eq!(
        route["stats"]["new"]["errors"], 0,
        "the upstream itself never failed"
    );
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mismatching_shadow_breaks_the_mismatch_bound() {
    let s = Setup::start(&format!(
        "shadow = true\n{}",
        plan(
            "[5, 50, 100]",
            1000,
            "max_mismatch_rate = 0.1\nmax_error_rate = 0.5"
        )
    ))
    .await;
    let load = s.load();
    assert_eq!(s.act("start").await.0, 200);
    // Healthy and equal: comparisons match, the first step is passed.
    let v = s.wait_for("step 2", |v| v["step"] == 1).await;
    assert_eq!(v["status"], "running", "{v:#}");
    s.new_mode.store(MISMATCHING, Ordering::Relaxed);
    let v = s.wait_for("rollback", |v| v["status"] != "running").await;
    load.stop().await;
    assert_eq!(v["status"], "rolled_back", "{v:#}");
    let reason = v["reason"].as_str().unwrap();
    assert!(reason.contains("shadow mismatch rate"), "{reason}");
    assert!(
        v["window"]["shadow"]["errors"].as_u64().unwrap() > 0,
        "{v:#}"
    );
    assert_eq!(v["weight_new"], 0);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_plan_resumes_at_its_step_after_a_restart() {
    let mut s = Setup::start(&plan("[10, 50, 100]", 1500, "max_error_rate = 0.05")).await;
    let load = s.load();
    assert_eq!(s.act("start").await.0, 200);
    let before = s.wait_for("step 2", |v| v["step"] == 1).await;
    load.stop().await;
    s.restart().await;
    let after = s.rollout().await;
    assert_eq!(after["status"], "running", "{after:#}");
    assert_eq!(
        (after["step"].as_u64(), after["weight_new"].as_u64()),
        (Some(1), Some(50))
    );
    assert_eq!(
        after["entered_at"], before["entered_at"],
        "the dwell is not served again"
    );
    assert_eq!(after["history"], before["history"]);
    // The window is in memory: after the restart the step holds until it has evidence again.
    tokio::time::sleep(Duration::from_millis(400)).await;
    let idle = s.rollout().await;
    assert_eq!(idle["step"], 1);
    assert!(
        idle["last_evaluation"]["reason"]
            .as_str()
            .unwrap()
            .contains("too few requests"),
        "{idle:#}"
    );
    // Pause (here through the CLI) keeps the step; resume goes on.
    let (ok, out, err) = s.ficus(&["routes", "rollout", "pause", "products"]).await;
    assert!(ok, "{err}");
    assert!(out.contains("rollout paused, step 2 of 3"), "{out}");
    let (ok, _, err) = s.ficus(&["routes", "rollout", "pause", "products"]).await;
    assert!(!ok && err.contains("409 rollout_not_active"), "{err}");
    s.restart().await;
    assert_eq!(s.rollout().await["status"], "paused");
    let load = s.load();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        s.rollout().await["step"],
        1,
        "a paused plan does not advance"
    );
    assert_eq!(s.act("resume").await.0, 200);
    let v = s.wait_for("success", |v| v["status"] != "running").await;
    load.stop().await;
    assert_eq!(v["status"], "succeeded", "{v:#}");
    assert_eq!(
        outcomes(&v),
        [
            "started",
            "advance",
            "paused",
            "resumed",
            "advance",
            "succeeded"
        ]
    );
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_plans_and_actions_are_refused_and_change_nothing() {
    let s = Setup::start(&plan("[10, 50, 100]", 60_000, "max_error_rate = 0.05")).await;
    let (_, route) = s
        .admin(reqwest::Method::GET, "/v1/admin/routes/products", None)
        .await;
    let mut route = route;
    route.as_object_mut().unwrap().remove("stats");
    let good = route["rollout"].clone();
    for (rollout, why) in [
        (
            json!({"steps": [10, 10], "dwell_ms": 100, "bounds": {"max_error_rate": 0.1}}),
            "strictly increasing",
        ),
        (
            json!({"steps": [], "dwell_ms": 100, "bounds": {"max_error_rate": 0.1}}),
            "1 to 20",
        ),
        (
            json!({"steps": [0, 10], "dwell_ms": 100, "bounds": {"max_error_rate": 0.1}}),
            "1..=100",
        ),
        (
            json!({"steps": [10], "dwell_ms": 0, "bounds": {"max_error_rate": 0.1}}),
            "dwell_ms",
        ),
        (
            json!({"steps": [10], "dwell_ms": 100}),
            "at least one bound",
        ),
        (
            json!({"steps": [10], "dwell_ms": 100, "bounds": {"max_error_rate": 2.0}}),
            "0..=1",
        ),
        (
            json!({"steps": [10], "dwell_ms": 100, "window_ms": 5, "bounds": {"max_p99_ms": 9}}),
            "window_ms",
        ),
    ] {
        let mut bad = route.clone();
        bad["rollout"] = rollout;
        let (status, body) = s
            .admin(reqwest::Method::PUT, "/v1/admin/routes/products", Some(bad))
            .await;
        assert_eq!(status, 400, "{why}: {body}");
        assert_eq!(body["code"], "invalid_route", "{body}");
        assert!(
            body["message"].as_str().unwrap().contains(why),
            "{why}: {body}"
        );
    }
    // Unknown fields and wrong types are refused by the body parser.
    let mut bad = route.clone();
    bad["rollout"]["stepz"] = json!([1]);
    let (status, body) = s
        .admin(reqwest::Method::PUT, "/v1/admin/routes/products", Some(bad))
        .await;
    assert!((400..500).contains(&status), "{status} {body}");
    assert!(
        body["code"].is_string() && body["message"].is_string(),
        "{body}"
    );
    // Nothing changed.
    assert_eq!(s.rollout().await["plan"], good);

    // A route without a new side cannot have a plan.
    let mut legacy_only = route.clone();
    legacy_only.as_object_mut().unwrap().remove("new_reads");
    let (status, body) = s
        .admin(
            reqwest::Method::PUT,
            "/v1/admin/routes/other",
            Some(legacy_only.clone()),
        )
        .await;
    assert_eq!(
        (status, body["code"].as_str()),
        (400, Some("invalid_route")),
        "{body}"
    );
    legacy_only.as_object_mut().unwrap().remove("rollout");
    legacy_only["path_prefix"] = json!("/api/other");
    assert_eq!(
        s.admin(
            reqwest::Method::PUT,
            "/v1/admin/routes/other",
            Some(legacy_only)
        )
        .await
        .0,
        200
    );

    // Actions in the wrong state, on the wrong route, unknown, or without the admin role.
    for (path, status, code) in [
        (
            "/v1/admin/routes/products/rollout/pause",
            409,
            "rollout_not_active",
        ),
        (
            "/v1/admin/routes/products/rollout/resume",
            409,
            "rollout_not_active",
        ),
        (
            "/v1/admin/routes/products/rollout/abort",
            409,
            "rollout_not_active",
        ),
        (
            "/v1/admin/routes/products/rollout/explode",
            404,
            "unknown_action",
        ),
        (
            "/v1/admin/routes/nope/rollout/start",
            404,
            "route_not_found",
        ),
        (
            "/v1/admin/routes/other/rollout/start",
            404,
            "rollout_not_configured",
        ),
    ] {
        let (got, body) = s.admin(reqwest::Method::POST, path, None).await;
        assert_eq!(
            (got, body["code"].as_str()),
            (status, Some(code)),
            "{path}: {body}"
        );
    }
    let (got, body) = s
        .admin(reqwest::Method::GET, "/v1/admin/routes/other/rollout", None)
        .await;
    assert_eq!(
        (got, body["code"].as_str()),
        (404, Some("rollout_not_configured"))
    );
    let r = s
        .http
        .post(format!("{}/v1/admin/routes/products/rollout/start", s.url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let customer = s.auth.mint(&Claims {
        sub: "bob".into(),
        roles: vec!["customer".into()],
        exp: None,
        nbf: None,
    });
    let r = s
        .http
        .post(format!("{}/v1/admin/routes/products/rollout/start", s.url))
        .bearer_auth(customer)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    assert_eq!(s.rollout().await["status"], "not_started");
    // Abort puts the weight back to 0.
    assert_eq!(s.act("start").await.0, 200);
    let (status, v) = s.act("abort").await;
    assert_eq!(
        (status, v["status"].as_str(), v["weight_new"].as_u64()),
        (200, Some("aborted"), Some(0))
    );
    s.stop().await;

    // A route file with a broken plan does not load.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("routes.toml");
    std::fs::write(
        &file,
        format!(
            "[upstreams]\nl = \"http://127.0.0.1:1\"\n[[routes]]\nname = \"r\"\npath_prefix = \"/\"\nlegacy = \"l\"\nnew_reads = \"l\"\n{}",
            plan("[50, 10]", 100, "max_error_rate = 0.1")
        ),
    )
    .unwrap();
    let err = gateway::start(
        file,
        "127.0.0.1:0".parse().unwrap(),
        Arc::new(Auth::new(SECRET)),
    )
    .await
    .err()
    .expect("a broken plan is refused");
    assert!(
        format!("{err:#}").contains("strictly increasing"),
        "{err:#}"
    );
}
