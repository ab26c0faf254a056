// The Ficus operator console: plain JavaScript over the admin JSON API, no build step.
// Every call carries the admin token the operator signed in with (kept in localStorage);
// the server checks it on each request, so the page can do no more than the token allows.
"use strict";

const TOKEN_KEY = "ficus.console.token";
const POLL_MS = 2000;          // how often visible panels and the chart refresh
const CHART_POINTS = 90;       // 3 minutes of 2 s samples
const LOG_ROWS = 50;           // events shown in the log table
const LIVE_ROWS_MAX = 500;     // rows kept while following live (older ones are dropped)
const DEAD_LIST_LIMIT = 200;   // dead letters listed per queue

const $ = (sel, root = document) => root.querySelector(sel);
const el = (tag, attrs = {}, ...children) => {
  const n = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") n.className = v;
    else if (k.startsWith("on")) n.addEventListener(k.slice(2), v);
    else if (v !== undefined && v !== null) n.setAttribute(k, v);
  }
  for (const c of children.flat()) n.append(c instanceof Node ? c : document.createTextNode(String(c ?? "")));
  return n;
};

let token = localStorage.getItem(TOKEN_KEY) || "";
let current = "overview";
let follow = null;             // AbortController of the live subscription
let deadQueue = null;

function toast(message, bad = false) {
  const t = $("#toast");
  t.textContent = message;
  t.className = "show" + (bad ? " bad" : "");
  clearTimeout(toast.timer);
  toast.timer = setTimeout(() => (t.className = ""), 2600);
}

class ApiError extends Error {
  constructor(status, body) {
    super(body && body.message ? `${body.message} (${body.code})` : `HTTP ${status}`);
    this.status = status;
    this.code = body && body.code;
  }
}

async function api(method, path, body) {
  const headers = { authorization: `Bearer ${token}` };
  if (body !== undefined) headers["content-type"] = "application/json";
  const r = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
  const text = await r.text();
  let json = null;
  try { json = text ? JSON.parse(text) : null; } catch (_) { /* not JSON */ }
  if (!r.ok) {
    if (r.status === 401) signOut("Your token was refused; sign in again.");
    throw new ApiError(r.status, json);
  }
  return json;
}

// ---- sign-in -------------------------------------------------------------------------

async function signIn(candidate) {
  token = candidate.trim();
  try {
    await api("GET", "/v1/projections");
  } catch (e) {
    token = "";
    $("#login-error").textContent = e.status === 403 ? "This token has no admin role." : `Sign-in failed: ${e.message}`;
    return;
  }
  localStorage.setItem(TOKEN_KEY, token);
  $("#login").hidden = true;
  $("#tabs").hidden = false;
  $("#logout").hidden = false;
  show(location.hash.slice(1) || "overview");
}

function signOut(message) {
  stopFollow();
  token = "";
  localStorage.removeItem(TOKEN_KEY);
  document.querySelectorAll(".tab").forEach((s) => (s.hidden = true));
  $("#tabs").hidden = true;
  $("#logout").hidden = true;
  $("#login").hidden = false;
  $("#login-error").textContent = message || "";
}

function show(tab) {
  if (!document.getElementById(tab) || tab === "login") tab = "overview";
  current = tab;
  document.querySelectorAll(".tab").forEach((s) => (s.hidden = s.id !== tab));
  document.querySelectorAll("#tabs a").forEach((a) => a.classList.toggle("active", a.dataset.tab === tab));
  refresh();
}

// ---- formatting ----------------------------------------------------------------------

const fmtMs = (ms) => (ms < 1000 ? `${ms} ms` : ms < 60000 ? `${(ms / 1000).toFixed(1)} s` : `${Math.round(ms / 60000)} min`);
const pill = (text, kind) => el("span", { class: `pill ${kind || ""}` }, text);
const stateKind = (s) => (/Live|Running|CatchingUp|closed/.test(s) ? "ok" : /Failed|Stopped|open/.test(s) ? "bad" : "warn");

// ---- overview and chart --------------------------------------------------------------

const samples = [];
let lastScrape = null;

// Parses the Prometheus text format into {name, labels, value} samples.
function parseMetrics(text) {
  const out = [];
  for (const line of text.split("\n")) {
    if (!line || line.startsWith("#")) continue;
    const m = line.match(/^([a-zA-Z_:][\w:]*)(\{(.*)\})?\s+(\S+)$/);
    if (!m) continue;
    const labels = {};
    if (m[3]) for (const p of m[3].matchAll(/(\w+)="((?:[^"\\]|\\.)*)"/g)) labels[p[1]] = p[2];
    out.push({ name: m[1], labels, value: Number(m[4]) });
  }
  return out;
}

const sum = (ms, name, pred = () => true) => ms.filter((s) => s.name === name && pred(s.labels)).reduce((a, s) => a + s.value, 0);

// Cumulative latency buckets (upper bound in s → count) summed over all routes.
function latencyBuckets(ms) {
  const buckets = new Map();
  for (const s of ms) if (s.name === "ficus_http_request_duration_seconds_bucket") {
    const le = s.labels.le === "+Inf" ? Infinity : Number(s.labels.le);
    buckets.set(le, (buckets.get(le) || 0) + s.value);
  }
  return buckets;
}

function bucketDelta(prev, now, q) {
  const les = [...now.keys()].sort((a, b) => a - b);
  const total = (now.get(Infinity) || 0) - ((prev && prev.get(Infinity)) || 0);
  if (total <= 0) return 0;
  for (const le of les) {
    const n = now.get(le) - ((prev && prev.get(le)) || 0);
    if (n >= q * total) return le === Infinity ? les[les.length - 2] || 0 : le;
  }
  return 0;
}

async function scrape() {
  const r = await fetch("/metrics");
  if (!r.ok) return null;
  const ms = parseMetrics(await r.text());
  const now = {
    at: performance.now(),
    requests: sum(ms, "ficus_http_requests_total"),
    jobsDone: sum(ms, "ficus_jobs_completed_total"),
    errors: sum(ms, "ficus_http_requests_total", (l) => l.status >= "500"),
    latencySum: sum(ms, "ficus_http_request_duration_seconds_sum"),
    latencyCount: sum(ms, "ficus_http_request_duration_seconds_count"),
    buckets: latencyBuckets(ms),
    ms,
  };
  if (lastScrape) {
    const dt = (now.at - lastScrape.at) / 1000;
    const dn = now.latencyCount - lastScrape.latencyCount;
    samples.push({
      rps: (now.requests - lastScrape.requests) / dt,
      jobsPerSec: (now.jobsDone - lastScrape.jobsDone) / dt,
      mean: dn > 0 ? ((now.latencySum - lastScrape.latencySum) / dn) * 1000 : 0,
      p95: bucketDelta(lastScrape.buckets, now.buckets, 0.95) * 1000,
    });
    if (samples.length > CHART_POINTS) samples.shift();
  }
  lastScrape = now;
  return now;
}

function drawChart() {
  const c = $("#chart");
  const dpr = window.devicePixelRatio || 1;
  const w = c.clientWidth, h = c.clientHeight;
  if (c.width !== w * dpr) { c.width = w * dpr; c.height = h * dpr; }
  const g = c.getContext("2d");
  g.setTransform(dpr, 0, 0, dpr, 0, 0);
  g.clearRect(0, 0, w, h);
  const pad = { l: 44, r: 48, t: 12, b: 22 };
  const pw = w - pad.l - pad.r, ph = h - pad.t - pad.b;
  const maxRps = Math.max(1, ...samples.map((s) => s.rps)) * 1.15;
  const maxMs = Math.max(1, ...samples.map((s) => Math.max(s.mean, s.p95))) * 1.15;
  g.strokeStyle = "#edf1ef"; g.fillStyle = "#6b7a72"; g.font = "11px system-ui"; g.lineWidth = 1;
  for (let i = 0; i <= 4; i++) {
    const y = pad.t + (ph * i) / 4;
    g.beginPath(); g.moveTo(pad.l, y); g.lineTo(w - pad.r, y); g.stroke();
    g.textAlign = "right"; g.fillText((maxRps * (1 - i / 4)).toFixed(maxRps < 10 ? 1 : 0), pad.l - 6, y + 4);
    g.textAlign = "left"; g.fillText((maxMs * (1 - i / 4)).toFixed(maxMs < 10 ? 1 : 0), w - pad.r + 6, y + 4);
  }
  g.textAlign = "left"; g.fillText("req/s", 4, h - 6); g.textAlign = "right"; g.fillText("ms", w - 4, h - 6);
  const x = (i) => pad.l + (pw * i) / Math.max(1, CHART_POINTS - 1) + pw * (CHART_POINTS - samples.length) / Math.max(1, CHART_POINTS - 1);
  const line = (key, max, color, fill) => {
    if (samples.length < 2) return;
    g.beginPath();
    samples.forEach((s, i) => { const y = pad.t + ph * (1 - s[key] / max); i ? g.lineTo(x(i), y) : g.moveTo(x(i), y); });
    g.strokeStyle = color; g.lineWidth = 2; g.stroke();
    if (fill) {
      g.lineTo(x(samples.length - 1), pad.t + ph); g.lineTo(x(0), pad.t + ph); g.closePath();
      g.fillStyle = fill; g.fill();
    }
  };
  line("rps", maxRps, "#2f7d57", "rgba(47,125,87,.10)");
  line("mean", maxMs, "#2b6cb0");
  line("p95", maxMs, "#d69e2e");
}

function stat(k, v, bad) {
  return el("div", { class: "stat" }, el("div", { class: "k" }, k), el("div", { class: "v" + (bad ? " bad" : "") }, v));
}

async function refreshOverview() {
  const m = await scrape();
  drawChart();
  if (!m) return;
  const s = samples[samples.length - 1] || { rps: 0, mean: 0, jobsPerSec: 0 };
  const g = (name) => sum(m.ms, name);
  const lag = Math.max(0, ...m.ms.filter((x) => x.name === "ficus_projection_lag_events").map((x) => x.value));
  const dead = g("ficus_queue_dead");
  $("#overview-cards").replaceChildren(
    stat("Requests/s", s.rps.toFixed(s.rps >= 100 ? 0 : 1)),
    stat("Latency", `${s.mean.toFixed(1)} ms`),
    stat("5xx errors", m.errors, m.errors > 0),
    stat("Log head", g("ficus_event_store_head_position")),
    stat("Read lag", `${lag} ev`, lag > 1000),
    stat("Jobs ready", g("ficus_queue_ready")),
    stat("Jobs done/s", s.jobsPerSec.toFixed(s.jobsPerSec >= 100 ? 0 : 1)),
    stat("Dead letters", dead, dead > 0),
  );
}

// ---- streams -------------------------------------------------------------------------

function eventRow(e, fresh) {
  return el("tr", { class: fresh ? "new" : "", "data-position": e.position },
    el("td", { class: "mono" }, e.position),
    el("td", {}, el("a", { class: "link", onclick: () => readStream(e.stream) }, e.stream)),
    el("td", {}, e.version),
    el("td", {}, el("a", { class: "link", onclick: () => showEvent(e) }, e.type)),
    el("td", { class: "muted" }, e.recorded_at),
    el("td", { class: "mono muted" }, (e.metadata && e.metadata.correlation_id) || ""));
}

function showEvent(e) {
  $("#event-title").textContent = `${e.type} · ${e.stream} v${e.version}`;
  $("#event-json").textContent = JSON.stringify(e, null, 2);
  $("#event-detail").hidden = false;
}

async function refreshLog() {
  if (follow) return; // the live feed owns the table
  const head = (await api("GET", "/v1/all?limit=1")).head_position;
  const from = Math.max(1, head - LOG_ROWS + 1);
  const { events } = await api("GET", `/v1/all?from_position=${from}&limit=${LOG_ROWS}`);
  const tbody = $("#events tbody");
  tbody.replaceChildren(...events.reverse().map((e) => eventRow(e)));
  if (!events.length) tbody.append(el("tr", {}, el("td", { colspan: 6, class: "empty" }, "The log is empty.")));
  $("#log-note").textContent = `The last ${events.length} of ${head} events, newest first.`;
}

async function readStream(id) {
  stopFollow();
  $("#stream-id").value = id;
  try {
    const { events } = await api("GET", `/v1/streams/${encodeURIComponent(id)}?limit=${LOG_ROWS * 4}`);
    $("#events tbody").replaceChildren(...events.reverse().map((e) => eventRow(e)));
    $("#log-note").textContent = `Stream ${id}: ${events.length} events, newest first.`;
    current = "stream-view"; // keep the polling from replacing it
    $("#streams").hidden = false;
  } catch (e) {
    toast(e.message, true);
  }
}

// EventSource cannot send an Authorization header, so the SSE feed is read with fetch and
// parsed here (fields per the SSE spec: `id:`, `event:`, `data:`, blank line ends a message).
async function startFollow() {
  const head = (await api("GET", "/v1/all?limit=1")).head_position;
  const ctl = new AbortController();
  follow = ctl;
  $("#follow").textContent = "Stop following";
  $("#follow").classList.remove("primary");
  $("#log-note").textContent = `Following live from position ${head + 1}…`;
  $("#log-note").dataset.live = "1";
  try {
    const r = await fetch(`/v1/subscribe?from_position=${head + 1}`, {
      headers: { authorization: `Bearer ${token}`, accept: "text/event-stream" },
      signal: ctl.signal,
    });
    if (!r.ok) throw new ApiError(r.status, await r.json().catch(() => null));
    const reader = r.body.pipeThrough(new TextDecoderStream()).getReader();
    let buf = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buf += value;
      let i;
      while ((i = buf.indexOf("\n\n")) >= 0) {
        const msg = buf.slice(0, i);
        buf = buf.slice(i + 2);
        let kind = "message", data = "";
        for (const line of msg.split("\n")) {
          if (line.startsWith("event:")) kind = line.slice(6).trim();
          else if (line.startsWith("data:")) data += line.slice(5).trim();
        }
        if (!data) continue; // keep-alive comment
        if (kind === "error") { toast(JSON.parse(data).message, true); continue; }
        const tbody = $("#events tbody");
        tbody.prepend(eventRow(JSON.parse(data), true));
        while (tbody.rows.length > LIVE_ROWS_MAX) tbody.deleteRow(-1);
      }
    }
  } catch (e) {
    if (e.name !== "AbortError") toast(`Live feed stopped: ${e.message}`, true);
  } finally {
    if (follow === ctl) stopFollow();
  }
}

function stopFollow() {
  if (!follow) return;
  const ctl = follow;
  follow = null;
  ctl.abort();
  $("#follow").textContent = "Follow live";
  $("#follow").classList.add("primary");
  delete $("#log-note").dataset.live;
}

// ---- projections ---------------------------------------------------------------------

async function refreshProjections() {
  const { projections, head_position } = await api("GET", "/v1/projections");
  $("#head-note").textContent = `log head at position ${head_position}`;
  $("#proj tbody").replaceChildren(...projections.map((p) => {
    const pct = head_position ? Math.min(100, (100 * p.checkpoint) / head_position) : 100;
    const button = el("button", {
      onclick: async () => {
        if (!confirm(`Rebuild ${p.name}? Its read model is dropped and refolded from the log.`)) return;
        button.disabled = true;
        try { await api("POST", `/v1/projections/${encodeURIComponent(p.name)}/rebuild`); toast(`Rebuilding ${p.name}`); }
        catch (e) { toast(e.message, true); }
        finally { button.disabled = false; refresh(); }
      },
    }, "Rebuild");
    return el("tr", { "data-name": p.name },
      el("td", {}, el("b", {}, p.name)),
      el("td", {}, pill(p.state, stateKind(p.state))),
      el("td", { class: "muted" }, p.mode || ""),
      el("td", { class: "mono" }, p.checkpoint),
      el("td", {}, el("div", { class: "bar", title: `${pct.toFixed(1)} %` }, el("span", { style: `width:${pct}%` }))),
      el("td", {}, p.lag_events),
      el("td", {}, p.last_lag_ms),
      el("td", {}, button));
  }));
}

// ---- queues and the dead-letter queue ------------------------------------------------

async function refreshQueues() {
  const { queues } = await api("GET", "/v1/queues");
  const tbody = $("#queue-table tbody");
  tbody.replaceChildren(...queues.map((q) => el("tr", { "data-queue": q.name },
    el("td", {}, el("b", {}, q.name)),
    el("td", {}, q.ready), el("td", {}, q.delayed), el("td", {}, q.in_flight),
    el("td", {}, q.dead ? pill(q.dead, "bad") : "0"),
    el("td", {}, fmtMs(q.oldest_ready_wait_ms)),
    el("td", {}, el("button", { onclick: () => openDead(q.name) }, "Dead letters")))));
  if (!queues.length) tbody.append(el("tr", {}, el("td", { colspan: 7, class: "empty" }, "No queue holds jobs.")));
  if (deadQueue) await loadDead();
}

async function openDead(name) {
  deadQueue = name;
  $("#dead-queue").textContent = name;
  $("#dead-card").hidden = false;
  await loadDead();
}

async function loadDead() {
  const checked = new Set([...document.querySelectorAll("#dead-table tbody input:checked")].map((c) => c.value));
  const { jobs } = await api("GET", `/v1/queues/${encodeURIComponent(deadQueue)}/dead?limit=${DEAD_LIST_LIMIT}`);
  const tbody = $("#dead-table tbody");
  tbody.replaceChildren(...jobs.map((j) => el("tr", { "data-job": j.id },
    el("td", {}, Object.assign(el("input", { type: "checkbox", value: j.id, "aria-label": `select job ${j.id}` }), { checked: checked.has(String(j.id)) })),
    el("td", { class: "mono" }, j.id),
    el("td", {}, j.kind),
    el("td", {}, `${j.attempts}/${j.max_attempts}`),
    el("td", { class: "muted" }, j.last_error || ""),
    el("td", { class: "muted" }, j.created_at))));
  if (!jobs.length) tbody.append(el("tr", {}, el("td", { colspan: 6, class: "empty" }, "No dead letters.")));
}

function selectedDead() {
  return [...document.querySelectorAll("#dead-table tbody input:checked")].map((c) => Number(c.value));
}

async function deadAction(kind) {
  const ids = selectedDead();
  if (!ids.length) return toast("Select dead letters first.", true);
  const q = encodeURIComponent(deadQueue);
  try {
    if (kind === "redrive") {
      const r = await api("POST", `/v1/queues/${q}/dead/redrive`, { ids });
      toast(`Redrove ${r.redriven} job(s)`);
    } else {
      if (!confirm(`Delete ${ids.length} dead job(s) for good?`)) return;
      const r = await api("DELETE", `/v1/queues/${q}/dead`, { ids });
      toast(`Purged ${r.purged} job(s)`);
    }
  } catch (e) {
    toast(e.message, true);
  }
  $("#dead-all").checked = false;
  await refreshQueues();
}

// A bulk job's progress: finished items (done + dead + cancelled) over its total.
let batchId = null;
async function refreshBatch() {
  if (!batchId) return;
  let b;
  try {
    b = await api("GET", `/v1/jobs/${encodeURIComponent(batchId)}`);
  } catch (e) {
    $("#batch-view").replaceChildren(el("span", { class: "error" }, e.message));
    batchId = null;
    return;
  }
  const pct = Math.round(100 * b.progress);
  $("#batch-view").replaceChildren(
    el("div", { class: "split-row" },
      el("b", {}, b.kind), pill(b.state, b.state === "running" ? "warn" : b.dead ? "bad" : "ok"),
      el("div", { class: `bar wide${b.dead ? " bad" : ""}`, title: `${pct} %` }, el("span", { style: `width:${pct}%` })),
      el("span", { class: "batch-pct" }, `${pct} %`)),
    el("div", { class: "nums" },
      el("span", {}, "total ", el("b", {}, b.total)), el("span", {}, "done ", el("b", {}, b.done)),
      el("span", {}, "dead ", el("b", {}, b.dead)), el("span", {}, "cancelled ", el("b", {}, b.cancelled))),
    b.result ? el("pre", {}, JSON.stringify(b.result, null, 2)) : "");
}

// ---- sagas ---------------------------------------------------------------------------

// Saga counters from /metrics: per kind, and per (kind, step) by outcome.
async function refreshSagas() {
  const m = await scrape();
  if (!m) return;
  const kinds = new Map();
  const steps = new Map();
  const kind = (k) => kinds.get(k) || kinds.set(k, { started: 0, completed: 0, failed: 0 }).get(k);
  const step = (k) => steps.get(k) || steps.set(k, { sum: 0, count: 0 }).get(k);
  for (const x of m.ms) {
    const l = x.labels;
    if (x.name === "ficus_sagas_started_total") kind(l.saga).started += x.value;
    if (x.name === "ficus_sagas_finished_total") kind(l.saga)[l.outcome] = (kind(l.saga)[l.outcome] || 0) + x.value;
    const key = `${l.saga} · ${l.step}`;
    if (x.name === "ficus_saga_steps_total") step(key)[l.outcome] = (step(key)[l.outcome] || 0) + x.value;
    if (x.name === "ficus_saga_step_duration_seconds_sum") step(key).sum += x.value;
    if (x.name === "ficus_saga_step_duration_seconds_count") step(key).count += x.value;
  }
  const empty = (n, text) => el("tr", {}, el("td", { colspan: n, class: "empty" }, text));
  $("#saga-table tbody").replaceChildren(...(kinds.size ? [...kinds].map(([k, v]) =>
    el("tr", { "data-saga": k }, el("td", {}, el("b", {}, k)), el("td", {}, v.started),
      el("td", {}, pill(v.completed, "ok")), el("td", {}, pill(v.failed, v.failed ? "bad" : "")),
      el("td", {}, Math.max(0, v.started - v.completed - v.failed))))
    : [empty(5, "No saga has run in this process (order fulfilment runs with --payments).")]));
  $("#saga-steps tbody").replaceChildren(...[...steps].map(([k, v]) =>
    el("tr", { "data-step": k }, el("td", {}, k), el("td", {}, v.succeeded || 0), el("td", {}, v.retried || 0),
      el("td", {}, v.gave_up ? pill(v.gave_up, "bad") : 0), el("td", {}, v.compensated || 0),
      el("td", {}, v.compensation_failed ? pill(v.compensation_failed, "warn") : 0),
      el("td", { class: "muted" }, v.count ? fmtMs(Math.round((1000 * v.sum) / v.count)) : "—"))));
}

async function showSaga(id) {
  let s;
  try {
    s = await api("GET", `/v1/sagas/${encodeURIComponent(id)}`);
  } catch (e) {
    $("#saga-view").replaceChildren(el("span", { class: "error" }, e.message));
    return;
  }
  const kindOf = (st) => (/succeeded|compensated/.test(st) ? "ok" : /failed/.test(st) ? "bad" : "warn");
  $("#saga-view").replaceChildren(
    el("div", { class: "split-row" }, el("b", {}, `${s.kind} ${s.id}`), pill(s.status, kindOf(s.status === "completed" ? "succeeded" : s.status))),
    el("table", { class: "grid" },
      el("thead", {}, el("tr", {}, el("th", {}, "step"), el("th", {}, "status"), el("th", {}, "attempts"), el("th", {}, "last error"))),
      el("tbody", {}, ...(s.steps || []).map((st) => el("tr", { "data-step": st.name },
        el("td", {}, st.name), el("td", {}, pill(st.status, kindOf(st.status))), el("td", {}, st.attempts),
        el("td", { class: "muted" }, st.last_error || ""))))),
    s.failure ? el("p", { class: "error" }, `failed at ${s.failure.step}: ${s.failure.reason}`) : "");
}

// ---- façade routes -------------------------------------------------------------------

function routeCard(r) {
  const s = r.stats || {};
  const sh = s.shadow || {};
  const rate = sh.compared ? ((100 * sh.mismatched) / sh.compared).toFixed(1) + " %" : "—";
  const label = el("b", { class: "weight" }, `${r.weight_new} % new`);
  const slider = el("input", { type: "range", min: 0, max: 100, step: 5, value: r.weight_new, "aria-label": `weight of the new side for ${r.name}` });
  slider.addEventListener("input", () => (label.textContent = `${slider.value} % new`));
  slider.addEventListener("change", async () => {
    const body = { ...r, weight_new: Number(slider.value) };
    delete body.stats;
    try {
      await api("PUT", `/v1/admin/routes/${encodeURIComponent(r.name)}`, body);
      toast(`${r.name}: ${slider.value} % to the new side`);
    } catch (e) {
      toast(e.message, true);
      slider.value = r.weight_new;
    }
    refresh();
  });
  const breakers = s.breakers || {};
  const br = (side) => (breakers[side]
    ? pill(`breaker ${side}: ${breakers[side].state} · tripped ${breakers[side].times_opened}×`, stateKind(breakers[side].state))
    : "");
  const ref = s.refusals || {};
  const refused = (ref.rate_limited || 0) + (ref.circuit_open || 0) + (ref.bulkhead_full || 0);
  return el("div", { class: "route", "data-route": r.name },
    el("div", { class: "route-head" }, el("h2", {}, r.name), el("span", { class: "mono muted" }, `${(r.methods || []).join(",") || "*"} ${r.path_prefix}`)),
    el("div", { class: "split" }, el("span", { class: "muted" }, "legacy"), slider, el("span", { class: "muted" }, "new"), label),
    el("div", { class: "nums" },
      el("span", {}, "legacy requests ", el("b", {}, (s.legacy || {}).requests ?? 0)),
      el("span", {}, "new requests ", el("b", {}, (s.new || {}).requests ?? 0)),
      el("span", {}, "shadow mismatch ", el("b", { class: "mismatch" }, rate)),
      el("span", { title: `rate limit ${ref.rate_limited || 0} · open breaker ${ref.circuit_open || 0} · full bulkhead ${ref.bulkhead_full || 0}` },
        "refused ", el("b", { class: "refused" }, refused)),
      br("legacy"), br("new")),
    sh.samples && sh.samples.length ? el("details", {}, el("summary", { class: "muted" }, `${sh.samples.length} sample diff(s)`), el("pre", {}, JSON.stringify(sh.samples, null, 2))) : "");
}

async function refreshRoutes() {
  const list = $("#route-list");
  // Only re-render while no slider is being dragged.
  if (list.contains(document.activeElement) && document.activeElement.type === "range") return;
  try {
    const { routes } = await api("GET", "/v1/admin/routes");
    $("#routes-note").textContent = `${routes.length} route(s)`;
    list.replaceChildren(...routes.map(routeCard));
  } catch (e) {
    $("#routes-note").textContent = "";
    list.replaceChildren(el("p", { class: "empty" }, e.status === 404
      ? "The façade's admin API is not served here. Open the console on the gateway's address (ficus serve --gateway-listen) to steer its routes."
      : `Routes unavailable: ${e.message}`));
  }
}

// ---- refresh loop --------------------------------------------------------------------

let busy = false;
async function refresh() {
  if (!token || busy) return;
  busy = true;
  try {
    const r = await fetch("/health/ready");
    $("#status-dot").className = "dot " + (r.ok ? "ok" : "bad");
    if (current === "overview") await refreshOverview();
    else { scrape().catch(() => {}); }
    if (current === "streams") await refreshLog();
    if (current === "projections") await refreshProjections();
    if (current === "queues") { await refreshQueues(); await refreshBatch(); }
    if (current === "routes") await refreshRoutes();
    if (current === "sagas") await refreshSagas();
  } catch (e) {
    if (e.status !== 401) $("#status-dot").className = "dot bad";
  } finally {
    busy = false;
  }
}

document.addEventListener("DOMContentLoaded", () => {
  $("#login-form").addEventListener("submit", (ev) => { ev.preventDefault(); signIn($("#token").value); });
  $("#logout").addEventListener("click", () => signOut());
  window.addEventListener("hashchange", () => token && show(location.hash.slice(1)));
  $("#follow").addEventListener("click", () => (follow ? stopFollow() : startFollow().catch((e) => toast(e.message, true))));
  $("#stream-open").addEventListener("click", () => $("#stream-id").value.trim() && readStream($("#stream-id").value.trim()));
  $("#event-close").addEventListener("click", () => ($("#event-detail").hidden = true));
  $("#batch-open").addEventListener("click", () => { batchId = $("#batch-id").value.trim() || null; refreshBatch(); });
  $("#saga-open").addEventListener("click", () => $("#saga-id").value.trim() && showSaga($("#saga-id").value.trim()));
  $("#redrive").addEventListener("click", () => deadAction("redrive"));
  $("#purge").addEventListener("click", () => deadAction("purge"));
  $("#dead-all").addEventListener("change", (ev) => document.querySelectorAll("#dead-table tbody input").forEach((c) => (c.checked = ev.target.checked)));
  window.addEventListener("resize", drawChart);
  setInterval(refresh, POLL_MS);
  if (token) signIn(token);
});
