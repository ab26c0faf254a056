//! Operator commands that talk to a running server over its HTTP API: `ficus jobs submit|
//! status` (with a progress bar) and `ficus dlq list|redrive|purge`.

use std::time::Duration;

use anyhow::{bail, Context};
use serde_json::{json, Value};

/// What `ficus routes set` changes in a route; `None` leaves a field as it is.
#[derive(Debug, Default)]
pub struct RouteChange {
    pub weight_new: Option<u8>,
    pub sticky: Option<String>,
    pub shadow: Option<bool>,
    pub shadow_ignore: Option<Vec<String>>,
    pub timeout_ms: Option<u64>,
}

/// Where the server is and who is asking.
#[derive(Debug, Clone)]
pub struct Remote {
    pub url: String,
    pub token: String,
}

impl Remote {
    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> anyhow::Result<Value> {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()?;
        let mut req = http
            .request(method, format!("{}{path}", self.url.trim_end_matches('/')))
            .bearer_auth(&self.token);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req
            .send()
            .await
            .with_context(|| format!("reaching {}", self.url))?;
        let status = resp.status();
        let body: Value = resp.json().await.unwrap_or(Value::Null);
        if !status.is_success() {
            bail!(
                "{} {}: {}",
                status.as_u16(),
                body["code"].as_str().unwrap_or("error"),
                body["message"].as_str().unwrap_or("")
            );
        }
        Ok(body)
    }

    /// Submits a bulk job; with `wait`, follows it with a progress bar until it finishes.
    pub async fn submit_job(&self, kind: &str, params: Value, wait: bool) -> anyhow::Result<()> {
        let job = self
            .call(
                reqwest::Method::POST,
                "/v1/jobs",
                Some(json!({"kind": kind, "params": params})),
            )
            .await?;
        let id = job["id"].as_str().context("job id")?.to_owned();
        println!("submitted {kind} job {id} with {} items", job["total"]);
        if wait {
            self.follow(&id).await
        } else {
            Ok(())
        }
    }

    /// Shows a job's status; with `wait`, follows it until it finishes.
    pub async fn job_status(&self, id: &str, wait: bool) -> anyhow::Result<()> {
        if wait {
            return self.follow(id).await;
        }
        let job = self
            .call(reqwest::Method::GET, &format!("/v1/jobs/{id}"), None)
            .await?;
        println!("{}", serde_json::to_string_pretty(&job)?);
        Ok(())
    }

    async fn follow(&self, id: &str) -> anyhow::Result<()> {
        let bar = indicatif::ProgressBar::new(0);
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "{spinner} [{bar:40}] {pos}/{len} items  {msg}",
            )?
            .progress_chars("=> "),
        );
        loop {
            let job = self
                .call(reqwest::Method::GET, &format!("/v1/jobs/{id}"), None)
                .await?;
            let n = |k: &str| job[k].as_u64().unwrap_or(0);
            bar.set_length(n("total"));
            bar.set_position(n("done") + n("dead") + n("cancelled"));
            bar.set_message(format!("done {} dead {}", n("done"), n("dead")));
            if job["state"] != "running" {
                bar.finish();
                println!("{}", serde_json::to_string_pretty(&job)?);
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// Asks the server to rebuild projection `name`; with `wait`, shows the replay's progress
    /// (its checkpoint against the head when the rebuild started) until it is done or
    /// `timeout` passes.
    pub async fn projection_rebuild(
        &self,
        name: &str,
        wait: bool,
        timeout: Duration,
    ) -> anyhow::Result<()> {
        let started = self
            .call(
                reqwest::Method::POST,
                &format!("/v1/projections/{name}/rebuild"),
                None,
            )
            .await?;
        let target = started["target_position"].as_u64().unwrap_or(0);
        println!("rebuilding {name} up to position {target}");
        if !wait {
            return Ok(());
        }
        let bar = indicatif::ProgressBar::new(target);
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "{spinner} [{bar:40}] {pos}/{len} events  {per_sec}  {msg}",
            )?
            .progress_chars("=> "),
        );
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let list = self
                .call(reqwest::Method::GET, "/v1/projections", None)
                .await?;
            let p = list["projections"]
                .as_array()
                .and_then(|ps| ps.iter().find(|p| p["name"] == name))
                .with_context(|| format!("no projection {name} in the server's list"))?;
            let checkpoint = p["checkpoint"].as_u64().unwrap_or(0);
            let state = p["state"].as_str().unwrap_or("");
            // Blue/green: the new copy's position while it is built (the serving copy keeps
            // its own checkpoint); once switched, the rebuild entry is gone.
            let rebuild = &p["rebuild"];
            let replayed = rebuild["position"].as_u64().unwrap_or(checkpoint);
            bar.set_position(replayed.min(target));
            match rebuild["error"].as_str() {
                Some(e) => bar.set_message(format!("{state}; retrying: {e}")),
                None => bar.set_message(state.to_owned()),
            }
            // Done once the replay passed the head it started from and left the rebuild state.
            if rebuild.is_null() && checkpoint >= target && !state.starts_with("Rebuilding") {
                bar.finish();
                println!("{name} rebuilt: checkpoint {checkpoint}, state {state}");
                return Ok(());
            }
            if tokio::time::Instant::now() >= deadline {
                bar.abandon();
                bail!("{name} not rebuilt within {timeout:?}: checkpoint {checkpoint} of {target}, state {state}");
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    pub async fn routes_list(&self) -> anyhow::Result<()> {
        let body = self
            .call(reqwest::Method::GET, "/v1/admin/routes", None)
            .await?;
        for r in body["routes"].as_array().cloned().unwrap_or_default() {
            println!(
                "{:<24} {:<28} new {:>3} %  legacy {} req  new {} req",
                r["name"].as_str().unwrap_or(""),
                r["path_prefix"].as_str().unwrap_or(""),
                r["weight_new"],
                r["stats"]["legacy"]["requests"],
                r["stats"]["new"]["requests"]
            );
        }
        Ok(())
    }

    /// Reads a route, changes what was asked, writes it back.
    pub async fn route_set(&self, name: &str, change: RouteChange) -> anyhow::Result<()> {
        let mut route = self
            .call(
                reqwest::Method::GET,
                &format!("/v1/admin/routes/{name}"),
                None,
            )
            .await?;
        if let Some(obj) = route.as_object_mut() {
            obj.remove("stats");
            if let Some(w) = change.weight_new {
                obj.insert("weight_new".into(), json!(w));
            }
            if let Some(s) = change.sticky {
                obj.insert("sticky".into(), json!(s));
            }
            if let Some(on) = change.shadow {
                obj.insert("shadow".into(), json!(on));
            }
            if let Some(fields) = change.shadow_ignore {
                obj.insert("shadow_ignore".into(), json!(fields));
            }
            if let Some(ms) = change.timeout_ms {
                obj.insert("timeout_ms".into(), json!(ms));
            }
        }
        let after = self
            .call(
                reqwest::Method::PUT,
                &format!("/v1/admin/routes/{name}"),
                Some(route),
            )
            .await?;
        let shadow = if after["shadow"].as_bool() == Some(true) {
            ", shadowed"
        } else {
            ""
        };
        println!(
            "route {name}: {} % to the new side{shadow}",
            after["weight_new"]
        );
        Ok(())
    }

    /// `ficus routes status [NAME]`: each rollout's plan, step, window metrics and decisions.
    pub async fn routes_status(&self, name: Option<&str>) -> anyhow::Result<()> {
        let names: Vec<String> = match name {
            Some(n) => vec![n.to_owned()],
            None => {
                let all = self
                    .call(reqwest::Method::GET, "/v1/admin/routes", None)
                    .await?;
                all["routes"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default()
                    .iter()
                    .filter(|r| r.get("rollout").is_some())
                    .filter_map(|r| r["name"].as_str().map(str::to_owned))
                    .collect()
            }
        };
        if names.is_empty() {
            println!("no route has a rollout plan");
        }
        for n in names {
            let r = self
                .call(
                    reqwest::Method::GET,
                    &format!("/v1/admin/routes/{n}/rollout"),
                    None,
                )
                .await?;
            print!("{}", render_rollout(&r));
        }
        Ok(())
    }

    /// `ficus routes rollout start|pause|resume|abort NAME`.
    pub async fn rollout_action(&self, name: &str, action: &str) -> anyhow::Result<()> {
        let r = self
            .call(
                reqwest::Method::POST,
                &format!("/v1/admin/routes/{name}/rollout/{action}"),
                None,
            )
            .await?;
        print!("{}", render_rollout(&r));
        Ok(())
    }

    pub async fn dlq_list(&self, queue: &str, limit: u32) -> anyhow::Result<()> {
        let body = self
            .call(
                reqwest::Method::GET,
                &format!("/v1/queues/{queue}/dead?limit={limit}"),
                None,
            )
            .await?;
        let jobs = body["jobs"].as_array().cloned().unwrap_or_default();
        if jobs.is_empty() {
            println!("the dead-letter queue of {queue} is empty");
        }
        for j in jobs {
            println!(
                "{:>8}  {:<28} attempts {}/{}  {}",
                j["id"],
                j["kind"].as_str().unwrap_or(""),
                j["attempts"],
                j["max_attempts"],
                j["last_error"].as_str().unwrap_or("")
            );
        }
        Ok(())
    }

    fn filter(ids: &[i64], kind: Option<&str>) -> Value {
        let mut f = serde_json::Map::new();
        if !ids.is_empty() {
            f.insert("ids".into(), json!(ids));
        }
        if let Some(k) = kind {
            f.insert("kind".into(), json!(k));
        }
        Value::Object(f)
    }

    pub async fn dlq_redrive(
        &self,
        queue: &str,
        ids: &[i64],
        kind: Option<&str>,
    ) -> anyhow::Result<()> {
        let body = self
            .call(
                reqwest::Method::POST,
                &format!("/v1/queues/{queue}/dead/redrive"),
                Some(Self::filter(ids, kind)),
            )
            .await?;
        println!("redriven: {}", body["redriven"]);
        Ok(())
    }

    pub async fn dlq_purge(
        &self,
        queue: &str,
        ids: &[i64],
        kind: Option<&str>,
    ) -> anyhow::Result<()> {
        let body = self
            .call(
                reqwest::Method::DELETE,
                &format!("/v1/queues/{queue}/dead"),
                Some(Self::filter(ids, kind)),
            )
            .await?;
        println!("purged: {}", body["purged"]);
        Ok(())
    }
}

/// A rollout as the gateway describes it, for people.
pub fn render_rollout(r: &Value) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let steps: Vec<String> = r["plan"]["steps"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .map(|w| format!("{w}"))
        .collect();
    let step = r["step"]
        .as_u64()
        .map_or("-".to_owned(), |s| (s + 1).to_string());
    let _ = writeln!(
        out,
        "route {}: rollout {}, step {} of {} (steps {} %), new side at {} %",
        r["route"].as_str().unwrap_or(""),
        r["status"].as_str().unwrap_or(""),
        step,
        r["steps"],
        steps.join(" → "),
        r["weight_new"]
    );
    if let Some(ms) = r["dwell_remaining_ms"].as_u64().filter(|ms| *ms > 0) {
        let _ = writeln!(out, "  dwell left: {ms} ms of {}", r["plan"]["dwell_ms"]);
    }
    if let Some(why) = r["reason"].as_str() {
        let _ = writeln!(out, "  reason: {why}");
    }
    let w = &r["window"];
    let side = |s: &Value| {
        let (n, e) = (
            s["requests"].as_u64().unwrap_or(0),
            s["errors"].as_u64().unwrap_or(0),
        );
        let rate = if n == 0 {
            0.0
        } else {
            e as f64 * 100.0 / n as f64
        };
        let p99 = s["p99_ms"]
            .as_u64()
            .map_or("-".to_owned(), |p| format!("{p} ms"));
        format!("{n} req, {e} errors ({rate:.2} %), p99 {p99}")
    };
    let _ = writeln!(
        out,
        "  window {} ms:  legacy {}  |  new {}",
        r["plan"]["window_ms"],
        side(&w["legacy"]),
        side(&w["new"])
    );
    let (c, m) = (
        w["shadow"]["requests"].as_u64().unwrap_or(0),
        w["shadow"]["errors"].as_u64().unwrap_or(0),
    );
    if c > 0 {
        let _ = writeln!(out, "  shadow: {m} of {c} comparisons differed");
    }
    if let Some(e) = r["last_evaluation"].as_object() {
        let _ = writeln!(
            out,
            "  last evaluation: {} ({})",
            e.get("outcome").and_then(Value::as_str).unwrap_or(""),
            e.get("reason").and_then(Value::as_str).unwrap_or("")
        );
    }
    let history = r["history"].as_array().cloned().unwrap_or_default();
    if !history.is_empty() {
        let _ = writeln!(out, "  decisions:");
    }
    for d in history {
        let _ = writeln!(
            out,
            "    {}  {:<10} step {} at {:>3} %  {}",
            d["at"].as_str().unwrap_or(""),
            d["outcome"].as_str().unwrap_or(""),
            d["step"].as_u64().unwrap_or(0) + 1,
            d["weight_new"],
            d["reason"].as_str().unwrap_or("")
        );
    }
    out
}
