//! The rollout controller: runs each route's plan (`rollout.rs` decides, this module acts),
//! keeps every plan's state in a file next to the route file, moves the route's weight through
//! the same `Gateway::set_route` the admin PUT uses, and serves the rollout admin endpoints.
//!
//! Durability: a transition (advance, rollback, completion, an admin action) is written to the
//! state file (temp file, fsync, rename, fsync of the directory) before the route's weight is
//! changed, and marked applied once the weight is set. A crash between the two leaves
//! `weight_applied: false`, and the next start (or tick) sets the weight again, so a rolled-back
//! plan stays at 0 % whatever the route file says. The dwell is measured from the wall-clock
//! instant the step was entered, so a restart does not serve it again; the window's counts are
//! in memory only, so after a restart a step needs `min_requests` afresh before it is judged.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::config::RouteConfig;
use super::rollout::{self, RolloutPlan, StepView, Verdict, WindowMetrics};
use super::{Gateway, RouteStats, Side, SideStats};
use crate::error::ApiError;
use crate::extract::PathParams;

/// Decision records kept per route (the oldest go first).
pub const ROLLOUT_HISTORY: usize = 50;
/// Version of the state file's layout.
const STATE_FILE_VERSION: u32 = 1;

/// Where a plan stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RolloutStatus {
    Running,
    Paused,
    RolledBack,
    Succeeded,
    Aborted,
}

impl RolloutStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            RolloutStatus::Running => "running",
            RolloutStatus::Paused => "paused",
            RolloutStatus::RolledBack => "rolled_back",
            RolloutStatus::Succeeded => "succeeded",
            RolloutStatus::Aborted => "aborted",
        }
    }
}

/// One entry of a plan's history: what was decided, when, at which step, on what evidence.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DecisionRecord {
    pub at_ms: i64,
    pub at: String,
    /// `started`, `advance`, `hold`, `rollback`, `succeeded`, `paused`, `resumed`, `aborted`.
    pub outcome: String,
    /// The step index (from 0) and weight after the decision.
    pub step: usize,
    pub weight_new: u8,
    pub reason: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metrics: Option<WindowMetrics>,
}

impl DecisionRecord {
    fn new(outcome: &str, state: &RolloutState, reason: String, m: Option<WindowMetrics>) -> Self {
        let at_ms = ficus_store::now_ms();
        Self {
            at_ms,
            at: ficus_core::time::format_rfc3339_ms(at_ms),
            outcome: outcome.to_owned(),
            step: state.step,
            weight_new: state.weight_new,
            reason,
            metrics: m,
        }
    }
}

/// A plan's durable state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RolloutState {
    pub status: RolloutStatus,
    /// Index into the plan's steps.
    pub step: usize,
    /// The weight this state puts on the route.
    pub weight_new: u8,
    pub started_at_ms: i64,
    /// When the current step was entered (wall clock, so it survives a restart).
    pub entered_at_ms: i64,
    /// Dwell already served when the plan was paused.
    #[serde(default)]
    pub dwell_served_ms: u64,
    /// Why the plan stopped (rolled back, aborted).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// False between writing this state and setting its weight on the route.
    pub weight_applied: bool,
    #[serde(default)]
    pub history: VecDeque<DecisionRecord>,
}

impl RolloutState {
    fn push(&mut self, record: DecisionRecord) {
        if self.history.len() == ROLLOUT_HISTORY {
            self.history.pop_front();
        }
        self.history.push_back(record);
    }
}

#[derive(Serialize, Deserialize)]
struct StateFile {
    version: u32,
    routes: BTreeMap<String, RolloutState>,
}

#[derive(Default)]
struct Inner {
    states: BTreeMap<String, RolloutState>,
    /// The latest evaluation of each running plan (holds are not kept in the history).
    last_eval: HashMap<String, DecisionRecord>,
    decisions: BTreeMap<(String, &'static str), u64>,
    rollbacks: BTreeMap<String, u64>,
}

/// Every route's rollout state, and the file it is kept in.
pub struct Rollouts {
    file: Option<PathBuf>,
    inner: Mutex<Inner>,
    /// One transition at a time, from writing the state to setting the weight, so an admin
    /// action and the controller cannot interleave.
    transition: Mutex<()>,
}

/// Why a rollout request was refused.
fn conflict(code: &'static str, message: impl Into<String>) -> ApiError {
    ApiError::new(StatusCode::CONFLICT, code, message)
}

fn not_saved(e: String) -> ApiError {
    ApiError::new(
        StatusCode::INTERNAL_SERVER_ERROR,
        "rollout_not_saved",
        format!("saving the rollout state: {e}"),
    )
}

/// The state file of a route file: `routes.toml` → `routes.rollouts.json`.
pub fn state_file_of(routes_file: &Path) -> PathBuf {
    routes_file.with_extension("rollouts.json")
}

/// Writes `bytes` to `file` so that a crash leaves either the old or the new content.
pub(crate) fn write_atomically(file: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write as _;
    let tmp = file.with_extension(format!("{}.tmp", uuid::Uuid::now_v7()));
    let result = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, file)?;
        // The rename itself is durable only once the directory is.
        let dir = file.parent().filter(|d| !d.as_os_str().is_empty());
        std::fs::File::open(dir.unwrap_or(Path::new(".")))?.sync_all()
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

fn locked<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl RouteStats {
    /// The counters of one side. A refusal by that side's breaker or bulkhead is recorded in
    /// its window as a failure: the client got a 503 from that side, so it counts against a
    /// canary, though it never reached the upstream.
    pub(super) fn side(&self, side: Side) -> &SideStats {
        match side {
            Side::Legacy => &self.legacy,
            Side::New => &self.new,
        }
    }
}

/// The window metrics of a route's counters.
fn window_metrics(stats: &RouteStats) -> WindowMetrics {
    WindowMetrics {
        legacy: stats.legacy.window.metrics(),
        new: stats.new.window.metrics(),
        shadow: stats.shadow.window.metrics(),
    }
}

impl Rollouts {
    /// Loads the state kept next to `routes_file` (none yet is an empty state; a file that
    /// does not parse is an error, never a silent fresh start).
    pub fn load(routes_file: Option<&Path>) -> Result<Self, String> {
        let file = routes_file.map(state_file_of);
        let mut inner = Inner::default();
        if let Some(f) = &file {
            match std::fs::read(f) {
                Ok(bytes) => {
                    let parsed: StateFile = serde_json::from_slice(&bytes)
                        .map_err(|e| format!("rollout state {}: {e}", f.display()))?;
                    if parsed.version != STATE_FILE_VERSION {
                        return Err(format!(
                            "rollout state {}: version {} is not {STATE_FILE_VERSION}",
                            f.display(),
                            parsed.version
                        ));
                    }
                    inner.states = parsed.routes;
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(format!("reading {}: {e}", f.display())),
            }
        }
        Ok(Self {
            file,
            inner: Mutex::new(inner),
            transition: Mutex::new(()),
        })
    }

    fn persist(&self, states: &BTreeMap<String, RolloutState>) -> Result<(), String> {
        let Some(file) = &self.file else {
            return Ok(());
        };
        let doc = StateFile {
            version: STATE_FILE_VERSION,
            routes: states.clone(),
        };
        let bytes = serde_json::to_vec_pretty(&doc).map_err(|e| e.to_string())?;
        write_atomically(file, &bytes).map_err(|e| format!("{}: {e}", file.display()))
    }

    /// Writes `state` for `name` durably, then makes it the one in memory.
    fn commit(&self, name: &str, state: RolloutState) -> Result<(), String> {
        let mut inner = locked(&self.inner);
        let mut states = inner.states.clone();
        states.insert(name.to_owned(), state);
        self.persist(&states)?;
        inner.states = states;
        Ok(())
    }

    /// Sets on each route the weight its state asks for, where that is not yet done (after a
    /// transition, or after a crash between a transition and its weight change).
    pub fn apply_pending(&self, gw: &Gateway) -> Result<(), String> {
        let _t = locked(&self.transition);
        self.apply_pending_locked(gw)
    }

    /// `apply_pending`, for a caller holding `transition`.
    fn apply_pending_locked(&self, gw: &Gateway) -> Result<(), String> {
        let pending: Vec<(String, RolloutState)> = locked(&self.inner)
            .states
            .iter()
            .filter(|(_, s)| !s.weight_applied)
            .map(|(n, s)| (n.clone(), s.clone()))
            .collect();
        for (name, mut state) in pending {
            let table = gw.table();
            let Some(route) = table.config.routes.iter().find(|r| r.name == name) else {
                continue;
            };
            if route.weight_new != state.weight_new {
                let mut route: RouteConfig = route.clone();
                route.weight_new = state.weight_new;
                gw.set_route(route).map_err(|e| e.to_string())?;
                tracing::info!(route = %name, weight_new = state.weight_new, "rollout set the weight");
            }
            state.weight_applied = true;
            self.commit(&name, state)?;
        }
        Ok(())
    }

    /// Turns each route's windows on (plan) or off (no plan), then judges each running plan.
    pub fn tick(&self, gw: &Gateway) {
        let table = gw.table();
        for (i, r) in table.config.routes.iter().enumerate() {
            let window_ms = r.rollout.as_ref().map(|p| p.window_ms);
            let st = &table.stats[i];
            st.legacy.window.configure(window_ms);
            st.new.window.configure(window_ms);
            st.shadow.window.configure(window_ms);
        }
        if let Err(e) = self.apply_pending(gw) {
            tracing::error!(error = %e, "rollout could not set a route's weight; retrying");
            return;
        }
        let running: Vec<String> = locked(&self.inner)
            .states
            .iter()
            .filter(|(_, s)| s.status == RolloutStatus::Running)
            .map(|(n, _)| n.clone())
            .collect();
        for name in running {
            let Some((i, route)) = table
                .config
                .routes
                .iter()
                .enumerate()
                .find(|(_, r)| r.name == name)
            else {
                continue;
            };
            let Some(plan) = &route.rollout else {
                continue;
            };
            let metrics = window_metrics(&table.stats[i]);
            if let Err(e) = self.evaluate(gw, &name, plan, metrics) {
                tracing::error!(route = %name, error = %e, "rollout decision not saved; retrying");
            }
        }
    }

    /// Judges one running plan and carries out the verdict.
    fn evaluate(
        &self,
        gw: &Gateway,
        name: &str,
        plan: &RolloutPlan,
        metrics: WindowMetrics,
    ) -> Result<(), String> {
        let _t = locked(&self.transition);
        let Some(mut state) = locked(&self.inner).states.get(name).cloned() else {
            return Ok(());
        };
        if state.status != RolloutStatus::Running {
            return Ok(());
        }
        // A plan edited to fewer steps continues from its new last step.
        let step = state.step.min(plan.steps.len() - 1);
        let now = ficus_store::now_ms();
        let served = now.saturating_sub(state.entered_at_ms).max(0) as u64;
        let at = StepView {
            dwell_done: served >= plan.dwell_ms,
            last: step + 1 == plan.steps.len(),
        };
        let verdict = rollout::decide(plan, &metrics, at);
        let outcome = verdict.outcome();
        {
            let mut inner = locked(&self.inner);
            *inner
                .decisions
                .entry((name.to_owned(), outcome))
                .or_default() += 1;
            if matches!(verdict, Verdict::Rollback(_)) {
                *inner.rollbacks.entry(name.to_owned()).or_default() += 1;
            }
        }
        state.step = step;
        let reason = match verdict {
            Verdict::Hold(reason) => {
                let record = DecisionRecord::new("hold", &state, reason, Some(metrics));
                locked(&self.inner)
                    .last_eval
                    .insert(name.to_owned(), record);
                return Ok(());
            }
            Verdict::Advance => {
                state.step = step + 1;
                state.weight_new = plan.steps[step + 1];
                state.entered_at_ms = now;
                format!(
                    "within bounds for {served} ms at {} %; next step",
                    plan.steps[step]
                )
            }
            Verdict::Complete => {
                state.status = RolloutStatus::Succeeded;
                state.weight_new = 100;
                format!(
                    "within bounds for {served} ms at the last step ({} %); 100 % on the new side",
                    plan.steps[step]
                )
            }
            Verdict::Rollback(reason) => {
                state.status = RolloutStatus::RolledBack;
                state.weight_new = 0;
                state.reason = Some(reason.clone());
                tracing::warn!(route = %name, %reason, "rollout rolled back");
                reason
            }
        };
        state.weight_applied = false;
        let record = DecisionRecord::new(outcome, &state, reason, Some(metrics));
        state.push(record.clone());
        self.commit(name, state)?;
        locked(&self.inner)
            .last_eval
            .insert(name.to_owned(), record);
        self.apply_pending_locked(gw)
    }

    /// An admin action on a route's plan: `start`, `pause`, `resume` or `abort`.
    pub fn act(&self, gw: &Gateway, name: &str, action: &str) -> Result<(), ApiError> {
        let _t = locked(&self.transition);
        let table = gw.table();
        let Some(route) = table.config.routes.iter().find(|r| r.name == name) else {
            return Err(ApiError::not_found(
                "route_not_found",
                format!("no route {name}"),
            ));
        };
        let Some(plan) = &route.rollout else {
            return Err(ApiError::not_found(
                "rollout_not_configured",
                format!("route {name} has no rollout plan"),
            ));
        };
        let current = locked(&self.inner).states.get(name).cloned();
        let status = current.as_ref().map(|s| s.status);
        let now = ficus_store::now_ms();
        let mut state = match (action, current) {
            ("start", Some(s))
                if matches!(s.status, RolloutStatus::Running | RolloutStatus::Paused) =>
            {
                return Err(conflict(
                    "rollout_in_progress",
                    format!(
                        "route {name}'s rollout is {}; abort it first",
                        s.status.as_str()
                    ),
                ));
            }
            ("start", previous) => {
                let st = gw.route_stats(name);
                // The new run is judged on its own traffic only.
                st.legacy.window.reset();
                st.new.window.reset();
                st.shadow.window.reset();
                RolloutState {
                    status: RolloutStatus::Running,
                    step: 0,
                    weight_new: plan.steps[0],
                    started_at_ms: now,
                    entered_at_ms: now,
                    dwell_served_ms: 0,
                    reason: None,
                    weight_applied: false,
                    history: previous.map(|p| p.history).unwrap_or_default(),
                }
            }
            ("pause", Some(mut s)) if s.status == RolloutStatus::Running => {
                s.status = RolloutStatus::Paused;
                s.dwell_served_ms = now.saturating_sub(s.entered_at_ms).max(0) as u64;
                s
            }
            ("resume", Some(mut s)) if s.status == RolloutStatus::Paused => {
                // The dwell served before the pause counts; the paused time does not.
                s.status = RolloutStatus::Running;
                s.entered_at_ms = now - s.dwell_served_ms as i64;
                s
            }
            ("abort", Some(mut s))
                if matches!(s.status, RolloutStatus::Running | RolloutStatus::Paused) =>
            {
                s.status = RolloutStatus::Aborted;
                s.weight_new = 0;
                s.reason = Some("aborted by an admin".into());
                s
            }
            ("pause" | "resume" | "abort", _) => {
                return Err(conflict(
                    "rollout_not_active",
                    format!(
                        "cannot {action} route {name}'s rollout: it is {}",
                        status.map_or("not started", RolloutStatus::as_str)
                    ),
                ));
            }
            _ => {
                return Err(ApiError::not_found(
                    "unknown_action",
                    format!("{action:?} is not start, pause, resume or abort"),
                ))
            }
        };
        state.weight_applied = false;
        let outcome = match action {
            "start" => "started",
            "pause" => "paused",
            "resume" => "resumed",
            _ => "aborted",
        };
        let record = DecisionRecord::new(outcome, &state, format!("{action} by an admin"), None);
        state.push(record);
        self.commit(name, state).map_err(not_saved)?;
        self.apply_pending_locked(gw)
            .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "route_not_saved", e))
    }

    /// The plan, its state, the live window metrics and the history of one route. Waits for a
    /// transition under way, so the state and the route's weight agree.
    pub fn describe(&self, gw: &Gateway, name: &str) -> Result<Value, ApiError> {
        let _t = locked(&self.transition);
        self.describe_locked(gw, name)
    }

    fn describe_locked(&self, gw: &Gateway, name: &str) -> Result<Value, ApiError> {
        let table = gw.table();
        let Some((i, route)) = table
            .config
            .routes
            .iter()
            .enumerate()
            .find(|(_, r)| r.name == name)
        else {
            return Err(ApiError::not_found(
                "route_not_found",
                format!("no route {name}"),
            ));
        };
        let Some(plan) = &route.rollout else {
            return Err(ApiError::not_found(
                "rollout_not_configured",
                format!("route {name} has no rollout plan"),
            ));
        };
        let inner = locked(&self.inner);
        let state = inner.states.get(name);
        let now = ficus_store::now_ms();
        let rfc = |ms: i64| ficus_core::time::format_rfc3339_ms(ms);
        let dwell_remaining_ms = state.map(|s| match s.status {
            RolloutStatus::Running => plan
                .dwell_ms
                .saturating_sub(now.saturating_sub(s.entered_at_ms).max(0) as u64),
            RolloutStatus::Paused => plan.dwell_ms.saturating_sub(s.dwell_served_ms),
            _ => 0,
        });
        Ok(json!({
            "route": name,
            "plan": plan,
            "status": state.map_or("not_started", |s| s.status.as_str()),
            "step": state.map(|s| s.step.min(plan.steps.len() - 1)),
            "steps": plan.steps.len(),
            "weight_new": route.weight_new,
            "started_at": state.map(|s| rfc(s.started_at_ms)),
            "entered_at": state.map(|s| rfc(s.entered_at_ms)),
            "dwell_remaining_ms": dwell_remaining_ms,
            "reason": state.and_then(|s| s.reason.clone()),
            "window": window_metrics(&table.stats[i]),
            "last_evaluation": inner.last_eval.get(name),
            "history": state.map(|s| s.history.iter().collect::<Vec<_>>()).unwrap_or_default(),
        }))
    }

    /// The rollout series of the Prometheus text: step, weight and state per route with a
    /// plan, rollbacks and decisions by outcome.
    pub fn prometheus(&self, gw: &Gateway, out: &mut String) {
        use std::fmt::Write as _;
        let table = gw.table();
        let inner = locked(&self.inner);
        let planned: Vec<&RouteConfig> = table
            .config
            .routes
            .iter()
            .filter(|r| r.rollout.is_some())
            .collect();
        let gauges: [(&str, &str); 3] = [
            (
                "ficus_gateway_rollout_step",
                "Current step of each route's rollout, from 1 (0: never started).",
            ),
            (
                "ficus_gateway_rollout_weight",
                "Percent of traffic on the new side of each route with a rollout plan.",
            ),
            (
                "ficus_gateway_rollout_running",
                "1 while a route's rollout is running.",
            ),
        ];
        for (k, (name, help)) in gauges.iter().enumerate() {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge");
            for r in &planned {
                let s = inner.states.get(&r.name);
                let v = match k {
                    0 => s.map_or(0, |s| s.step as u64 + 1),
                    1 => u64::from(r.weight_new),
                    _ => u64::from(s.is_some_and(|s| s.status == RolloutStatus::Running)),
                };
                let _ = writeln!(out, "{name}{{route=\"{}\"}} {v}", r.name);
            }
        }
        let name = "ficus_gateway_rollout_rollbacks_total";
        let _ = writeln!(
            out,
            "# HELP {name} Automatic rollbacks, by route.\n# TYPE {name} counter"
        );
        for r in &planned {
            let n = inner.rollbacks.get(&r.name).copied().unwrap_or(0);
            let _ = writeln!(out, "{name}{{route=\"{}\"}} {n}", r.name);
        }
        let name = "ficus_gateway_rollout_decisions_total";
        let _ = writeln!(
            out,
            "# HELP {name} Rollout evaluations, by route and outcome.\n# TYPE {name} counter"
        );
        for r in &planned {
            for outcome in ["hold", "advance", "succeeded", "rollback"] {
                let n = inner
                    .decisions
                    .get(&(r.name.clone(), outcome))
                    .copied()
                    .unwrap_or(0);
                let _ = writeln!(
                    out,
                    "{name}{{route=\"{}\",outcome=\"{outcome}\"}} {n}",
                    r.name
                );
            }
        }
    }
}

/// Brings the routes in line with the saved rollout state (before serving), then judges every
/// running plan each `every`, until `shutdown`.
pub async fn run(gw: Arc<Gateway>, every: Duration, shutdown: ficus_runtime::Shutdown) {
    loop {
        let g = gw.clone();
        // File writes with fsync: off the async threads.
        let _ = tokio::task::spawn_blocking(move || g.rollouts.tick(&g)).await;
        tokio::select! {
            _ = shutdown.wait() => return,
            _ = tokio::time::sleep(every) => {}
        }
    }
}

/// `GET /v1/admin/routes/{name}/rollout`.
pub(super) async fn get_rollout(
    State(gw): State<Arc<Gateway>>,
    headers: axum::http::HeaderMap,
    PathParams(name): PathParams<String>,
) -> Result<Json<Value>, ApiError> {
    super::require_admin(&gw, &headers)?;
    let g = gw.clone();
    tokio::task::spawn_blocking(move || g.rollouts.describe(&g, &name))
        .await
        .map_err(internal)?
        .map(Json)
}

fn internal(e: tokio::task::JoinError) -> ApiError {
    ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string())
}

/// `POST /v1/admin/routes/{name}/rollout/{action}`: start, pause, resume or abort; answers
/// the rollout as `GET` would, once the change is durable.
pub(super) async fn post_action(
    State(gw): State<Arc<Gateway>>,
    headers: axum::http::HeaderMap,
    PathParams((name, action)): PathParams<(String, String)>,
) -> Result<Json<Value>, ApiError> {
    super::require_admin(&gw, &headers)?;
    let g = gw.clone();
    tokio::task::spawn_blocking(move || {
        g.rollouts.act(&g, &name, &action)?;
        g.rollouts.describe(&g, &name)
    })
    .await
    .map_err(internal)?
    .map(Json)
}
