"""Runs every benchmark scenario side by side with its peers and writes the results.

Called by bench/run.sh (which installs and builds what this needs); not meant to be run
alone. Writes bench/results/<date>.json (every run and the medians), <date>.md (the tables)
and PNG plots. Each scenario runs `runs` rounds; a round measures Ficus and every peer once,
one after the other, so a ratio is always taken between figures of the same round, and the
reported ratio is the median of the per-round ratios.

A failure of any measured system is an error (the script exits non-zero): a smoke check
must fail loudly. Slow numbers never are.
"""

import argparse
import datetime
import json
import os
import platform
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
FICUS = ROOT / "target" / "release" / "ficus"
PEERS_RUST = BENCH / "peers" / "rust" / "target" / "release"
PEERS_NODE = BENCH / "peers" / "node"
# Every child process gets at most this long before the run counts as failed.
STEP_TIMEOUT_S = 900
# Connections wrk keeps open in the HTTP scenarios.
HTTP_CONNS = 64


def log(msg):
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def sh(cmd, env=None, timeout=STEP_TIMEOUT_S, cwd=ROOT):
    """Runs a command, returns its stdout; a non-zero exit is an error with its stderr."""
    full_env = dict(os.environ, **(env or {}))
    p = subprocess.run(cmd, cwd=cwd, env=full_env, capture_output=True, text=True, timeout=timeout)
    if p.returncode != 0:
        raise RuntimeError(f"{' '.join(map(str, cmd))} exited {p.returncode}:\n{p.stderr[-4000:]}\n{p.stdout[-2000:]}")
    return p.stdout


def last_json_line(out):
    for line in reversed(out.strip().splitlines()):
        line = line.strip()
        if line.startswith("{"):
            return json.loads(line)
    raise RuntimeError(f"no JSON line in output:\n{out[-2000:]}")


def median(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def ratio(a, b):
    return a / b if a and b else None


class Pg:
    """The shared PostgreSQL server: every peer gets a database of its own per run."""

    def __init__(self, url):
        self.url = url
        m = re.match(r"^(postgres(?:ql)?://[^/]+)/([^?]*)(\?.*)?$", url)
        if not m:
            raise SystemExit(f"not a postgres:// URL with a database: {url}")
        self.server, self.db, self.query = m.group(1), m.group(2), m.group(3) or ""

    def url_of(self, db):
        return f"{self.server}/{db}{self.query}"

    def psql(self, sql, db=None):
        return sh(["psql", "-v", "ON_ERROR_STOP=1", "-qAt", self.url_of(db or self.db), "-c", sql])

    def fresh_db(self, tag):
        name = f"ficus_bench_{tag}_{uuid.uuid4().hex[:8]}"
        self.psql(f"CREATE DATABASE {name}")
        return name

    def drop_db(self, name):
        self.psql(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")

    def version(self):
        return self.psql("SHOW server_version").strip()


class FreshDb:
    def __init__(self, pg, tag):
        self.pg, self.tag = pg, tag

    def __enter__(self):
        self.name = self.pg.fresh_db(self.tag)
        return self.pg.url_of(self.name)

    def __exit__(self, *exc):
        self.pg.drop_db(self.name)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url, timeout_s=60):
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        except Exception:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{url} did not answer 200 within {timeout_s} s")


class Proc:
    """A background server, stopped (SIGTERM, then SIGKILL) when the block ends."""

    def __init__(self, cmd, env=None, log_path=None):
        self.cmd, self.env, self.log_path = cmd, env, log_path

    def __enter__(self):
        out = open(self.log_path, "w") if self.log_path else subprocess.DEVNULL
        self.p = subprocess.Popen(self.cmd, cwd=ROOT, env=dict(os.environ, **(self.env or {})),
                                  stdout=out, stderr=subprocess.STDOUT)
        return self

    def check(self):
        if self.p.poll() is not None:
            extra = Path(self.log_path).read_text()[-3000:] if self.log_path else ""
            raise RuntimeError(f"{self.cmd[0]} exited early ({self.p.returncode}):\n{extra}")

    def __exit__(self, *exc):
        if self.p.poll() is None:
            self.p.send_signal(signal.SIGTERM)
            try:
                self.p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.p.kill()
                self.p.wait()


WRK_UNITS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0}


def wrk_ms(v):
    m = re.match(r"^([\d.]+)(us|ms|s|m)$", v)
    return float(m.group(1)) * WRK_UNITS[m.group(2)]


def wrk(url, secs, conns=HTTP_CONNS, script=None, env=None):
    cmd = ["wrk", "-t2", f"-c{conns}", f"-d{secs}s", "--latency"]
    if script:
        cmd += ["-s", str(script)]
    out = sh(cmd + [url], env=env)
    res = {"requests_per_sec": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))}
    for p in ("50", "90", "99"):
        res[f"p{p}_ms"] = wrk_ms(re.search(rf"^\s+{p}(?:\.000)?%\s+(\S+)", out, re.M).group(1))
    m = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    res["non_2xx"] = int(m.group(1)) if m else 0
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    res["socket_errors"] = sum(map(int, m.groups())) if m else 0
    if res["socket_errors"]:
        raise RuntimeError(f"wrk saw socket errors against {url}:\n{out}")
    return res


# ---------------------------------------------------------------- the machine's limits


def disk_limits(work, secs):
    """4 KiB write + fdatasync per second (what one commit per append could reach at best),
    and sequential write bandwidth with a final fdatasync (what group commit could fill)."""
    path = work / f"disk-{uuid.uuid4().hex}.bin"
    block = b"\x5a" * 4096
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        n, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < secs:
            os.write(fd, block)
            os.fdatasync(fd)
            n += 1
        fsync_per_sec = n / (time.perf_counter() - t0)
    finally:
        os.close(fd)
    chunk = b"\xa5" * (1 << 20)
    total_mib = 256
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        t0 = time.perf_counter()
        for _ in range(total_mib):
            os.write(fd, chunk)
        os.fdatasync(fd)
        mib_per_sec = total_mib / (time.perf_counter() - t0)
    finally:
        os.close(fd)
        path.unlink()
    return {"fsync_per_sec": fsync_per_sec, "seq_write_mib_per_sec": mib_per_sec}


PG_TABLE = ("CREATE TABLE bench_events (position bigserial PRIMARY KEY, stream text NOT NULL, "
            "version bigint NOT NULL, type text NOT NULL, data jsonb NOT NULL)")


def pg_insert_ceiling(pg, secs, rows_per_commit, clients):
    """Bare PostgreSQL: rows/s that pgbench gets from INSERTs of an event-shaped row with
    `rows_per_commit` rows per transaction, `clients` at once, synchronous_commit on."""
    with FreshDb(pg, "pgbench") as url:
        sh(["psql", "-v", "ON_ERROR_STOP=1", "-qAt", url, "-c", PG_TABLE])
        with tempfile.NamedTemporaryFile("w", suffix=".sql", delete=False) as f:
            f.write("INSERT INTO bench_events (stream, version, type, data) "
                    f"SELECT 'bench-' || :client_id, g, 'BenchEvent', "
                    f"'{{\"sku\": \"SKU-1\", \"qty\": 1}}'::jsonb FROM generate_series(1, {rows_per_commit}) g;\n")
            script = f.name
        try:
            out = sh(["pgbench", "-n", "-f", script, "-c", str(clients), "-j", "2", "-T", str(secs), url],
                     env={"PGOPTIONS": "-c synchronous_commit=on"})
        finally:
            os.unlink(script)
    tps = float(re.search(r"tps = ([\d.]+)", out).group(1))
    return {"rows_per_commit": rows_per_commit, "clients": clients, "commits_per_sec": tps,
            "rows_per_sec": tps * rows_per_commit}


# ---------------------------------------------------------------- scenario 1: appends


def ficus_append(work, writers, secs, store=None):
    out_json = work / f"append-{uuid.uuid4().hex}.json"
    cmd = [str(FICUS), "bench", "append", "--writers", ",".join(map(str, writers)),
           "--duration-secs", str(secs), "--runs", "1", "--dir", str(work / "append"),
           "--json-out", str(out_json)]
    if store:
        cmd += ["--store", store]
    sh(cmd)
    res = json.loads(out_json.read_text())
    out_json.unlink()
    return {r["writers"]: {"appends_per_sec": r["appends_per_sec"], "p50_us": r["p50_us"],
                           "p99_us": r["p99_us"]} for r in res["results"]}


def cqrs_append(pg, writers, secs):
    out = {}
    for w in writers:
        with FreshDb(pg, "cqrs") as url:
            r = last_json_line(sh([str(PEERS_RUST / "cqrs_append"), url, str(w), str(secs)]))
        out[w] = {k: r[k] for k in ("appends_per_sec", "p50_us", "p99_us")}
    return out


def scenario_append(cfg, pg, work):
    writers = [1, 16, 64]
    systems = ["ficus-sqlite", "ficus-postgres", "cqrs-es+postgres-es"]
    rounds = []
    for i in range(cfg.runs):
        log(f"append round {i + 1}/{cfg.runs}")
        limits = disk_limits(work, cfg.limit_secs)
        limits["pg_insert_1_row_64_clients"] = pg_insert_ceiling(pg, cfg.limit_secs, 1, 64)
        limits["pg_insert_1000_rows_4_clients"] = pg_insert_ceiling(pg, cfg.limit_secs, 1000, 4)
        r = {"limits": limits,
             "ficus-sqlite": ficus_append(work, writers, cfg.append_secs),
             # Ficus makes (and drops) a fresh schema per run in the given database.
             "ficus-postgres": None,
             "cqrs-es+postgres-es": cqrs_append(pg, writers, cfg.append_secs)}
        with FreshDb(pg, "ficus") as url:
            r["ficus-postgres"] = ficus_append(work, writers, cfg.append_secs, store=url)
        for s in systems:
            log(f"  {s}: " + ", ".join(f"{w}w {r[s][w]['appends_per_sec']:.0f}/s" for w in writers))
        rounds.append(r)
    med = {s: {w: {k: median([r[s][w][k] for r in rounds]) for k in ("appends_per_sec", "p50_us", "p99_us")}
               for w in writers} for s in systems}
    ratios = {}
    for f in ("ficus-sqlite", "ficus-postgres"):
        for w in writers:
            ratios[f"{f} / cqrs-es+postgres-es @{w}"] = median(
                [ratio(r[f][w]["appends_per_sec"], r["cqrs-es+postgres-es"][w]["appends_per_sec"]) for r in rounds])
    lim = {
        "fsync_per_sec": median([r["limits"]["fsync_per_sec"] for r in rounds]),
        "seq_write_mib_per_sec": median([r["limits"]["seq_write_mib_per_sec"] for r in rounds]),
        "pg_insert_1_row_64_clients_rows_per_sec": median([r["limits"]["pg_insert_1_row_64_clients"]["rows_per_sec"] for r in rounds]),
        "pg_insert_1000_rows_4_clients_rows_per_sec": median([r["limits"]["pg_insert_1000_rows_4_clients"]["rows_per_sec"] for r in rounds]),
    }
    return {"writers": writers, "duration_secs": cfg.append_secs, "rounds": rounds, "median": med,
            "ratios": ratios, "limits": lim}


# ---------------------------------------------------------------- scenario 2: jobs


def ficus_jobs(work, jobs, store=None):
    out_json = work / f"jobs-{uuid.uuid4().hex}.json"
    cmd = [str(FICUS), "bench", "jobs", "--jobs", str(jobs), "--slow-jobs", "1000",
           "--latency-samples", "50", "--concurrency", "64", "--runs", "1",
           "--dir", str(work / "jobs"), "--json-out", str(out_json)]
    if store:
        cmd += ["--store", store]
    sh(cmd)
    r = json.loads(out_json.read_text())["runs"][0]
    out_json.unlink()
    return {"enqueue_per_sec": r["enqueue_per_sec"], "processed_per_sec": r["processed_per_sec"]}


def node_jobs(pg, script, jobs):
    with FreshDb(pg, script.split(".")[0]) as url:
        return last_json_line(sh(["node", script, url, str(jobs)], cwd=PEERS_NODE))


def apalis_jobs(pg, jobs):
    with FreshDb(pg, "apalis") as url:
        return last_json_line(sh([str(PEERS_RUST / "apalis_jobs"), url, str(jobs), "64"]))


def scenario_jobs(cfg, pg, work):
    systems = {
        "ficus-sqlite": lambda: ficus_jobs(work, cfg.jobs),
        "ficus-postgres": None,
        "graphile-worker": lambda: node_jobs(pg, "graphile.js", cfg.jobs),
        "pg-boss": lambda: node_jobs(pg, "pgboss.js", cfg.jobs),
        "apalis": lambda: apalis_jobs(pg, cfg.jobs),
    }
    rounds = []
    for i in range(cfg.runs):
        log(f"jobs round {i + 1}/{cfg.runs} ({cfg.jobs} no-op jobs)")
        r = {}
        for name, run in systems.items():
            if name == "ficus-postgres":
                with FreshDb(pg, "ficus") as url:
                    r[name] = ficus_jobs(work, cfg.jobs, store=url)
            else:
                r[name] = run()
            r[name] = {k: r[name][k] for k in ("enqueue_per_sec", "processed_per_sec")}
            log(f"  {name}: enqueue {r[name]['enqueue_per_sec']:.0f}/s, process {r[name]['processed_per_sec']:.0f}/s")
        rounds.append(r)
    med = {s: {k: median([r[s][k] for r in rounds]) for k in ("enqueue_per_sec", "processed_per_sec")} for s in systems}
    ratios = {}
    for f in ("ficus-sqlite", "ficus-postgres"):
        for p in ("graphile-worker", "pg-boss", "apalis"):
            ratios[f"{f} / {p} (process)"] = median([ratio(r[f]["processed_per_sec"], r[p]["processed_per_sec"]) for r in rounds])
    return {"jobs": cfg.jobs, "rounds": rounds, "median": med, "ratios": ratios}


# ---------------------------------------------------------------- scenario 3: gateway


def scenario_gateway(cfg, work):
    log(f"gateway: {cfg.runs} round(s) of wrk {cfg.http_secs} s per path")
    out_json = work / "gateway.json"
    sh(["bash", str(BENCH / "gateway.sh")], env={
        "BIN": str(FICUS), "RUNS": str(cfg.runs), "DURATION": str(cfg.http_secs),
        "CONNS": str(HTTP_CONNS), "JSON_OUT": str(out_json)})
    runs = json.loads(out_json.read_text())["runs"]
    targets = ["upstream", "ficus", "nginx", "haproxy"]
    med = {t: {k: median([r[k] for r in runs if r["target"] == t]) for k in ("requests_per_sec", "p50_ms", "p99_ms", "cpu_us_per_request")}
           for t in targets}
    ratios = {}
    for p in ("nginx", "haproxy"):
        per_round = []
        for i in range(1, cfg.runs + 1):
            f = next(r for r in runs if r["run"] == i and r["target"] == "ficus")
            q = next(r for r in runs if r["run"] == i and r["target"] == p)
            per_round.append(ratio(f["requests_per_sec"], q["requests_per_sec"]))
        ratios[f"ficus / {p} (throughput)"] = median(per_round)
    for t in ("ficus", "nginx", "haproxy"):
        med[t]["p99_added_ms"] = med[t]["p99_ms"] - med["upstream"]["p99_ms"]
    return {"conns": HTTP_CONNS, "duration_secs": cfg.http_secs, "rounds": runs, "median": med, "ratios": ratios}


# ---------------------------------------------------------------- a running `ficus serve`


SECRET = "ficus-bench-secret"


class FicusServer:
    """`ficus serve` on the embedded store in a fresh data dir, seeded with products."""

    def __init__(self, work, products, extra=()):
        self.work, self.products, self.extra = work, products, list(extra)

    def __enter__(self):
        self.dir = self.work / f"serve-{uuid.uuid4().hex[:8]}"
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.env = {"FICUS_AUTH_HS256_SECRET": SECRET}
        self.proc = Proc([str(FICUS), "serve", "--data-dir", str(self.dir), "--listen", f"127.0.0.1:{self.port}",
                          "--log-format", "text", *self.extra], env={**self.env, "FICUS_LOG": "warn"},
                         log_path=str(self.work / "serve.log")).__enter__()
        try:
            wait_http(f"{self.base}/health/ready")
            self.seller = sh([str(FICUS), "token", "--sub", "bench-seller", "--roles", "seller",
                              "--data-dir", str(self.dir)], env=self.env).strip()
            self.ids = []
            for i in range(self.products):
                body = {"name": f"Bench product {i}", "description": "A product the benchmark reads and restocks",
                        "category": "kitchen", "price": 10 + i % 90, "currency": "EUR", "stock": 100}
                req = urllib.request.Request(f"{self.base}/v1/products", data=json.dumps(body).encode(),
                                             headers={"Content-Type": "application/json",
                                                      "Authorization": f"Bearer {self.seller}"})
                with urllib.request.urlopen(req, timeout=10) as r:
                    self.ids.append(json.loads(r.read())["id"])
            # Wait until the read model shows the last product before measuring reads.
            wait_http(f"{self.base}/v1/products/{self.ids[-1]}")
        except Exception:
            self.proc.__exit__(None, None, None)
            raise
        return self

    def metrics(self):
        with urllib.request.urlopen(f"{self.base}/metrics", timeout=5) as r:
            return r.read().decode()

    def __exit__(self, *exc):
        self.proc.check()
        self.proc.__exit__(*exc)
        shutil.rmtree(self.dir, ignore_errors=True)


# ---------------------------------------------------------------- scenario 4: query serving


def scenario_query(cfg, work):
    rounds = []
    for i in range(cfg.runs):
        # A fresh server per round: a server that has served one wrk run already answered
        # its cut-off requests, and each round should start from the same state.
        rounds.append(query_round(cfg, work, i))
    body_len = rounds[0].pop("body_bytes")
    for r in rounds[1:]:
        r.pop("body_bytes")
    keys = ("requests_per_sec", "p50_ms", "p90_ms", "p99_ms")
    servers = ("ficus-serve", "ficus-serve --read-cache", "bare-axum")
    med = {s: {k: median([r[s][k] for r in rounds]) for k in keys} for s in servers}
    ratios = {f"{s} / bare-axum (throughput)": median(
        [ratio(r[s]["requests_per_sec"], r["bare-axum"]["requests_per_sec"]) for r in rounds])
        for s in servers[:2]}
    return {"body_bytes": body_len, "conns": HTTP_CONNS, "duration_secs": cfg.http_secs, "rounds": rounds,
            "median": med, "ratios": ratios}


def query_round(cfg, work, i):
    with FicusServer(work, products=1) as srv:
        url = f"{srv.base}/v1/products/{srv.ids[0]}"
        with urllib.request.urlopen(url, timeout=5) as r:
            body = r.read()
        body_file = work / "product.json"
        body_file.write_bytes(body)
        port = free_port()
        with Proc([str(PEERS_RUST / "bare_axum"), f"127.0.0.1:{port}", str(body_file)],
                  log_path=str(work / "bare_axum.log")) as bare:
            bare_url = f"http://127.0.0.1:{port}/v1/products/{srv.ids[0]}"
            wait_http(bare_url)
            with urllib.request.urlopen(bare_url, timeout=5) as r:
                assert r.read() == body, "bare axum must answer the same bytes"
            log(f"query round {i + 1}/{cfg.runs}")
            r = {"ficus-serve": wrk(url, cfg.http_secs), "bare-axum": wrk(bare_url, cfg.http_secs)}
            # The same query with the read cache on (answers invalidated by the read model's
            # checkpoint, not by a TTL): a fresh server seeded the same way.
            with FicusServer(work, products=1, extra=["--read-cache"]) as cached:
                curl = f"{cached.base}/v1/products/{cached.ids[0]}"
                r["ficus-serve --read-cache"] = wrk(curl, cfg.http_secs)
            for k, v in r.items():
                if v["non_2xx"]:
                    raise RuntimeError(f"{k} answered {v['non_2xx']} non-2xx responses")
                log(f"  {k}: {v['requests_per_sec']:.0f} req/s, p50 {v['p50_ms']:.2f} ms, p99 {v['p99_ms']:.2f} ms")
            bare.check()
    r["body_bytes"] = len(body)
    return r


# ---------------------------------------------------------------- scenario 5: end to end


def sample_lag(srv, stop_at, interval_s=0.05):
    """Samples `ficus_projection_lag_ms` (commit → applied, of the last applied event) of the
    product catalog read model while traffic runs."""
    samples = []
    while time.time() < stop_at:
        for line in srv.metrics().splitlines():
            if line.startswith("ficus_projection_lag_ms{") and "catalog" in line:
                samples.append(float(line.rsplit(" ", 1)[1]))
        time.sleep(interval_s)
    return samples


def scenario_e2e(cfg, work):
    rounds = []
    for i in range(cfg.runs):
        log(f"end-to-end round {i + 1}/{cfg.runs}")
        with FicusServer(work, products=100) as srv:
            ids_file = work / "product-ids.txt"
            ids_file.write_text("\n".join(srv.ids) + "\n")
            import threading
            lag = []
            t = threading.Thread(target=lambda: lag.extend(sample_lag(srv, time.time() + cfg.http_secs)))
            t.start()
            res = wrk(srv.base, cfg.http_secs, script=BENCH / "e2e.lua",
                      env={"BENCH_TOKEN": srv.seller, "BENCH_IDS": str(ids_file)})
            t.join()
            head = re.search(r"^ficus_event_store_head_position (\d+)", srv.metrics(), re.M)
            res["head_position"] = int(head.group(1)) if head else None
            if res["non_2xx"] > 0.01 * res["requests_per_sec"] * cfg.http_secs:
                raise RuntimeError(f"end to end: {res['non_2xx']} non-2xx answers (more than 1 %)")
            lag.sort()
            res["lag_samples"] = len(lag)
            res["lag_p50_ms"] = lag[len(lag) // 2] if lag else None
            res["lag_p99_ms"] = lag[min(len(lag) - 1, int(len(lag) * 0.99))] if lag else None
            log(f"  ficus: {res['requests_per_sec']:.0f} req/s, p50 {res['p50_ms']:.2f} ms, p99 {res['p99_ms']:.2f} ms, "
                f"lag p50 {res['lag_p50_ms']} ms p99 {res['lag_p99_ms']} ms ({len(lag)} samples)")
            rounds.append(res)
    keys = ("requests_per_sec", "p50_ms", "p99_ms", "lag_p50_ms", "lag_p99_ms", "non_2xx")
    # Lag at the goal's rate: 10,000 durable single-event appends/s into the catalog read
    # model, every 4th event followed from its acknowledgement until the read model has it.
    at_rate = []
    for i in range(cfg.runs):
        out = work / f"lag-{i}.json"
        log(f"projection lag at 10,000 events/s, round {i + 1}/{cfg.runs}")
        sh([str(FICUS), "bench", "lag", "--rate", "10000", "--duration-secs", str(cfg.http_secs),
            "--dir", str(work), "--json-out", str(out), "--log-format", "text"])
        at_rate.append(json.loads(out.read_text()))
        r = at_rate[-1]
        log(f"  achieved {r['events_per_sec']:.0f} events/s, lag p50 {r['lag_p50_ms']:.2f} ms p99 {r['lag_p99_ms']:.2f} ms")
    lag_keys = ("events_per_sec", "lag_p50_ms", "lag_p99_ms", "lag_max_ms", "append_p99_us")
    return {"mix": "90 % GET /v1/products/{id}, 10 % POST /v1/products/{id}/stock over 100 products",
            "conns": HTTP_CONNS, "duration_secs": cfg.http_secs, "rounds": rounds,
            "median": {k: median([r[k] for r in rounds]) for k in keys},
            "lag_at_rate": {"target_events_per_sec": 10000, "rounds": at_rate,
                            "median": {k: median([r[k] for r in at_rate]) for k in lag_keys}}}


# ---------------------------------------------------------------- scenario 6: scaling curve


def scenario_scaling(cfg, pg, work):
    out_json = work / "snapshots.json"
    lengths = "100,1000,10000,100000" if cfg.quick else "100,1000,10000,100000,1000000"
    log(f"scaling: aggregate load and append time vs stream length ({lengths} events)")
    sh([str(FICUS), "bench", "snapshots", "--lengths", lengths, "--loads", str(cfg.runs),
        "--dir", str(work / "snapshots"), "--json-out", str(out_json), "--log-format", "text"])
    res = {"status": "measured", "result": json.loads(out_json.read_text()), "log_size": {}}
    # One store per backend grows through the sizes; each size is probed once (a round of
    # `probes` appends and reads), so the curve is within one run by construction.
    sizes = "10000,100000,1000000" if cfg.quick else "10000,100000,1000000,10000000"
    probes = "200" if cfg.quick else "1000"
    for backend in ("sqlite", "postgres"):
        log(f"scaling: append and read cost vs global log size on {backend} ({sizes} events)")
        out = work / f"log-size-{backend}.json"
        cmd = [str(FICUS), "bench", "log-size", "--sizes", sizes, "--probes", probes,
               "--json-out", str(out), "--log-format", "text"]
        if backend == "postgres":
            with FreshDb(pg, "logsize") as url:
                sh(cmd + ["--store", url], timeout=STEP_TIMEOUT_S * 3)
        else:
            sh(cmd + ["--dir", str(work / "log-size")], timeout=STEP_TIMEOUT_S * 3)
        res["log_size"][backend] = json.loads(out.read_text())
    return res


# ---------------------------------------------------------------- report


def machine(pg):
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    def ver(cmd):
        try:
            p = subprocess.run(cmd, capture_output=True, text=True, timeout=10)
            return (p.stdout + p.stderr).strip().splitlines()[0]
        except Exception:
            return "unknown"
    lock = json.loads((PEERS_NODE / "package-lock.json").read_text())["packages"]
    cargo_lock = (BENCH / "peers" / "rust" / "Cargo.lock").read_text()
    def crate(name):
        m = re.search(rf'name = "{re.escape(name)}"\nversion = "([^"]+)"', cargo_lock)
        return m.group(1) if m else "?"
    return {"cpu": cpu, "cores": os.cpu_count(), "memory_gib": round(mem_gib, 1), "kernel": platform.release(),
            "postgresql": pg.version(), "nginx": ver(["nginx", "-v"]), "haproxy": ver(["haproxy", "-v"]),
            "wrk": ver(["wrk", "-v"]), "node": ver(["node", "--version"]),
            "graphile-worker": lock["node_modules/graphile-worker"]["version"],
            "pg-boss": lock["node_modules/pg-boss"]["version"],
            "cqrs-es": crate("cqrs-es"), "postgres-es": crate("postgres-es"), "apalis": crate("apalis"),
            "apalis-postgres": crate("apalis-postgres"), "axum (bare handler)": crate("axum")}


def n(x, d=0):
    return "–" if x is None else f"{x:,.{d}f}"


def markdown(res):
    m, out = res["meta"], []
    out.append(f"# Ficus benchmarks — {m['date']} ({'quick' if m['quick'] else 'full'} run)\n")
    out.append(f"Command: `{m['command']}`. Machine: {m['machine']['cpu']}, {m['machine']['cores']} cores, "
               f"{m['machine']['memory_gib']} GiB, Linux {m['machine']['kernel']}, PostgreSQL {m['machine']['postgresql']} "
               f"on the same machine. Every figure is the median of {m['runs']} round(s); a ratio is the median "
               f"of the ratios taken within each round. Took {m['seconds']:.0f} s.\n")
    a = res.get("append")
    if a:
        out.append(f"## 1. Event append (single-event appends, durable, {a['duration_secs']} s per point)\n")
        out.append("| system | writers | appends/s | ack p50 | ack p99 |")
        out.append("|---|---:|---:|---:|---:|")
        for s, by_w in a["median"].items():
            for w, v in by_w.items():
                out.append(f"| {s} | {w} | {n(v['appends_per_sec'])} | {n(v['p50_us'] / 1000, 2)} ms | {n(v['p99_us'] / 1000, 2)} ms |")
        out.append("")
        out.append("| ratio (same round) | × |")
        out.append("|---|---:|")
        for k, v in a["ratios"].items():
            out.append(f"| {k} | {n(v, 2)} |")
        L = a["limits"]
        out.append("")
        out.append(f"Limits of this machine: {n(L['fsync_per_sec'])} 4 KiB write+fdatasync/s; sequential write "
                   f"{n(L['seq_write_mib_per_sec'])} MiB/s; bare PostgreSQL INSERT of an event-shaped row: "
                   f"{n(L['pg_insert_1_row_64_clients_rows_per_sec'])} rows/s at one row per commit from 64 clients, "
                   f"{n(L['pg_insert_1000_rows_4_clients_rows_per_sec'])} rows/s at 1,000 rows per commit from 4 clients (pgbench).\n")
    j = res.get("jobs")
    if j:
        out.append(f"## 2. Jobs ({j['jobs']:,} no-op jobs: bulk enqueue, then process)\n")
        out.append("| system | enqueue jobs/s | process jobs/s |")
        out.append("|---|---:|---:|")
        for s, v in j["median"].items():
            out.append(f"| {s} | {n(v['enqueue_per_sec'])} | {n(v['processed_per_sec'])} |")
        out.append("")
        out.append("| ratio (same round) | × |")
        out.append("|---|---:|")
        for k, v in j["ratios"].items():
            out.append(f"| {k} | {n(v, 2)} |")
        out.append("")
    g = res.get("gateway")
    if g:
        out.append(f"## 3. Gateway (reverse proxy, same upstream, wrk -t2 -c{g['conns']} -d{g['duration_secs']}s)\n")
        out.append("| path | requests/s | p50 | p99 | p99 added over direct |")
        out.append("|---|---:|---:|---:|---:|")
        for t, v in g["median"].items():
            added = f"{n(v['p99_added_ms'], 2)} ms" if "p99_added_ms" in v else "–"
            out.append(f"| {t} | {n(v['requests_per_sec'])} | {n(v['p50_ms'], 2)} ms | {n(v['p99_ms'], 2)} ms | {added} |")
        out.append("")
        for k, v in g["ratios"].items():
            out.append(f"- {k}: {n(v, 2)}")
        out.append("")
    q = res.get("query")
    if q:
        out.append(f"## 4. Query serving (GET product details, {q['body_bytes']} bytes, wrk -t2 -c{q['conns']} -d{q['duration_secs']}s)\n")
        out.append("| server | requests/s | p50 | p90 | p99 |")
        out.append("|---|---:|---:|---:|---:|")
        for s, v in q["median"].items():
            out.append(f"| {s} | {n(v['requests_per_sec'])} | {n(v['p50_ms'], 2)} ms | {n(v['p90_ms'], 2)} ms | {n(v['p99_ms'], 2)} ms |")
        out.append("")
        for k, v in q["ratios"].items():
            out.append(f"- {k}: {n(v, 2)}")
        out.append("")
    e = res.get("e2e")
    if e:
        v = e["median"]
        out.append(f"## 5. Command → projection → query ({e['mix']}; wrk -t2 -c{e['conns']} -d{e['duration_secs']}s)\n")
        out.append("| requests/s | p50 | p99 | projection lag p50 | projection lag p99 | non-2xx |")
        out.append("|---:|---:|---:|---:|---:|---:|")
        out.append(f"| {n(v['requests_per_sec'])} | {n(v['p50_ms'], 2)} ms | {n(v['p99_ms'], 2)} ms | "
                   f"{n(v['lag_p50_ms'], 1)} ms | {n(v['lag_p99_ms'], 1)} ms | {n(v['non_2xx'])} |")
        out.append("\nProjection lag: `ficus_projection_lag_ms` of the catalog read model (commit → applied, of "
                   "the last applied event), sampled from /metrics every 50 ms during the run.\n")
        lr = e.get("lag_at_rate")
        if lr:
            v = lr["median"]
            out.append(f"Projection lag at a steady {lr['target_events_per_sec']:,} durable single-event appends/s "
                       "(`ficus bench lag`: 64 writers, price changes over 1,000 products into the catalog read "
                       "model, every 4th event followed from its acknowledgement until the read model has applied "
                       "it; SQLite):\n")
            out.append("| achieved events/s | lag p50 | lag p99 | lag max | append p99 |")
            out.append("|---:|---:|---:|---:|---:|")
            out.append(f"| {n(v['events_per_sec'])} | {n(v['lag_p50_ms'], 2)} ms | {n(v['lag_p99_ms'], 2)} ms | "
                       f"{n(v['lag_max_ms'], 2)} ms | {n(v['append_p99_us'])} µs |\n")
    s = res.get("scaling")
    if s:
        out.append("## 6. Scaling curve (append and read cost vs stream length and log size)\n")
        if s["status"] != "measured":
            out.append(f"**TODO — not measured.** {s['reason']}\n")
        else:
            out.append("Time to load one aggregate (median), from a stream of N events, without and with a "
                       "snapshot 50 events before the end, and the median durable append of one more event "
                       "with its exact expected version (`ficus bench snapshots`, SQLite):\n")
            out.append("| events in the stream | load without snapshot | load with snapshot | append one more | time to write the stream |")
            out.append("|---:|---:|---:|---:|---:|")
            for r in s["result"]:
                out.append(f"| {r['events']:,} | {n(r['without_ms'], 2)} ms | {n(r['with_ms'], 2)} ms | "
                           f"{n(r.get('append_us'), 0)} µs | {n(r['write_secs'], 1)} s |")
            for backend, rows in s.get("log_size", {}).items():
                out.append(f"\nCost vs global log size on {backend} (`ficus bench log-size`): a durable single-event "
                           "append with its exact expected version, a read of a whole 100-event stream picked at "
                           "random, and a 100-event page of the global log at a random position; medians and p99 "
                           "of the probes at each size:\n")
                out.append("| events in the log | append p50 | append p99 | stream read p50 | stream read p99 | page read p50 | page read p99 |")
                out.append("|---:|---:|---:|---:|---:|---:|---:|")
                for r in rows:
                    out.append(f"| {r['log_events']:,} | {r['append_p50_us']} µs | {r['append_p99_us']} µs | "
                               f"{r['stream_read_p50_us']} µs | {r['stream_read_p99_us']} µs | "
                               f"{r['page_read_p50_us']} µs | {r['page_read_p99_us']} µs |")
                if len(rows) >= 2:
                    a, b = rows[0], rows[-1]
                    out.append(f"\nFrom {a['log_events']:,} to {b['log_events']:,} events: append p50 "
                               f"×{ratio(b['append_p50_us'], a['append_p50_us']) or 0:.2f}, stream read p50 "
                               f"×{ratio(b['stream_read_p50_us'], a['stream_read_p50_us']) or 0:.2f}, page read p50 "
                               f"×{ratio(b['page_read_p50_us'], a['page_read_p50_us']) or 0:.2f}.")
            out.append("")
    if res.get("skipped"):
        out.append("## Not measured\n")
        for k, v in res["skipped"].items():
            out.append(f"- {k}: {v}")
        out.append("")
    if res.get("plots"):
        out.append("## Plots\n")
        for p in res["plots"]:
            out.append(f"![{p}]({p})")
        out.append("")
    return "\n".join(out)


def plots(res, stem):
    """PNG plots beside the results; returns their file names."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    made = []
    a = res.get("append")
    if a:
        fig, ax = plt.subplots(figsize=(7, 4.2))
        for s, by_w in a["median"].items():
            ws = list(by_w)
            ax.plot(ws, [by_w[w]["appends_per_sec"] for w in ws], marker="o", label=s)
        ax.axhline(a["limits"]["fsync_per_sec"], color="grey", ls="--", label="disk: write+fdatasync/s")
        ax.axhline(a["limits"]["pg_insert_1_row_64_clients_rows_per_sec"], color="grey", ls=":",
                   label="bare PostgreSQL INSERT, 1 row/commit, 64 clients")
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xticks(a["writers"], [str(w) for w in a["writers"]])
        ax.set_xlabel("concurrent writers")
        ax.set_ylabel("durable single-event appends/s")
        ax.set_title("Event append: throughput vs concurrency")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
        fig.tight_layout()
        name = f"{stem}-append-throughput.png"
        fig.savefig(BENCH / "results" / name, dpi=110)
        plt.close(fig)
        made.append(name)

        fig, axs = plt.subplots(1, len(a["writers"]), figsize=(9, 3.6), sharey=True)
        for ax, w in zip(axs, a["writers"]):
            names = list(a["median"])
            p50 = [a["median"][s][w]["p50_us"] / 1000 for s in names]
            p99 = [a["median"][s][w]["p99_us"] / 1000 for s in names]
            xs = range(len(names))
            ax.bar([x - 0.2 for x in xs], p50, 0.4, label="p50")
            ax.bar([x + 0.2 for x in xs], p99, 0.4, label="p99")
            ax.set_xticks(list(xs), [s.replace("+postgres-es", "") for s in names], rotation=30, ha="right", fontsize=7)
            ax.set_title(f"{w} writer{'s' if w > 1 else ''}", fontsize=9)
            ax.set_yscale("log")
            ax.grid(True, axis="y", alpha=0.3)
        axs[0].set_ylabel("append ack latency (ms)")
        axs[0].legend(fontsize=7)
        fig.suptitle("Event append: latency percentiles", fontsize=10)
        fig.tight_layout()
        name = f"{stem}-append-latency.png"
        fig.savefig(BENCH / "results" / name, dpi=110)
        plt.close(fig)
        made.append(name)

    rows = []
    if res.get("gateway"):
        rows += [(f"gateway: {t}", v) for t, v in res["gateway"]["median"].items()]
    if res.get("query"):
        rows += [(f"query: {t}", v) for t, v in res["query"]["median"].items()]
    if res.get("e2e"):
        rows += [("end to end: ficus", res["e2e"]["median"])]
    if rows:
        fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
        labels = [r[0] for r in rows]
        ys = range(len(rows))
        ax1.barh(list(ys), [r[1]["requests_per_sec"] for r in rows], color="tab:green")
        ax1.set_yticks(list(ys), labels, fontsize=8)
        ax1.invert_yaxis()
        ax1.set_xlabel("requests/s (wrk, 64 connections)")
        ax1.grid(True, axis="x", alpha=0.3)
        ax2.barh([y - 0.2 for y in ys], [r[1]["p50_ms"] for r in rows], 0.4, label="p50")
        ax2.barh([y + 0.2 for y in ys], [r[1]["p99_ms"] for r in rows], 0.4, label="p99")
        ax2.set_yticks(list(ys), [""] * len(rows))
        ax2.invert_yaxis()
        ax2.set_xlabel("latency (ms)")
        ax2.legend(fontsize=8)
        ax2.grid(True, axis="x", alpha=0.3)
        fig.suptitle("HTTP: throughput and latency percentiles", fontsize=10)
        fig.tight_layout()
        name = f"{stem}-http.png"
        fig.savefig(BENCH / "results" / name, dpi=110)
        plt.close(fig)
        made.append(name)

    j = res.get("jobs")
    if j:
        fig, ax = plt.subplots(figsize=(7, 3.6))
        names = list(j["median"])
        xs = range(len(names))
        ax.bar([x - 0.2 for x in xs], [j["median"][s]["enqueue_per_sec"] or 0 for s in names], 0.4, label="bulk enqueue")
        ax.bar([x + 0.2 for x in xs], [j["median"][s]["processed_per_sec"] or 0 for s in names], 0.4, label="process")
        ax.set_xticks(list(xs), names, fontsize=8)
        ax.set_yscale("log")
        ax.set_ylabel("jobs/s")
        ax.set_title(f"Jobs: {j['jobs']:,} no-op jobs", fontsize=10)
        ax.grid(True, axis="y", alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        name = f"{stem}-jobs.png"
        fig.savefig(BENCH / "results" / name, dpi=110)
        plt.close(fig)
        made.append(name)
    sc = res.get("scaling") or {}
    if sc.get("log_size"):
        fig, ax = plt.subplots(figsize=(7, 4.2))
        for backend, rows in sc["log_size"].items():
            xs = [r["log_events"] for r in rows]
            for key, label, ls in (("append_p50_us", "append", "-"), ("stream_read_p50_us", "stream read", "--"),
                                   ("page_read_p50_us", "page read", ":")):
                ax.plot(xs, [r[key] / 1000 for r in rows], marker="o", ls=ls, label=f"{backend}: {label} p50")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("events in the global log")
        ax.set_ylabel("ms")
        ax.set_title("Append and read cost vs log size (flat is the goal)", fontsize=10)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
        fig.tight_layout()
        name = f"{stem}-log-size.png"
        fig.savefig(BENCH / "results" / name, dpi=110)
        plt.close(fig)
        made.append(name)
    return made


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--pg-url", required=True)
    ap.add_argument("--only", default="append,jobs,gateway,query,e2e,scaling")
    ap.add_argument("--command", default="bench/run.sh")
    cfg = ap.parse_args()
    if cfg.quick:
        cfg.runs, cfg.append_secs, cfg.limit_secs, cfg.jobs, cfg.http_secs = 1, 2, 1, 20_000, 4
    else:
        cfg.runs, cfg.append_secs, cfg.limit_secs, cfg.jobs, cfg.http_secs = 3, 5, 2, 200_000, 10
    pg = Pg(cfg.pg_url)
    work = BENCH / ".work"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    (BENCH / "results").mkdir(exist_ok=True)
    started = time.time()
    now = datetime.datetime.now(datetime.timezone.utc)
    stem = now.strftime("%Y-%m-%d") + ("-quick" if cfg.quick else "")
    res = {"meta": {"date": now.strftime("%Y-%m-%d %H:%M UTC"), "quick": cfg.quick, "runs": cfg.runs,
                    "command": cfg.command, "machine": machine(pg)}}
    steps = {"append": lambda: scenario_append(cfg, pg, work), "jobs": lambda: scenario_jobs(cfg, pg, work),
             "gateway": lambda: scenario_gateway(cfg, work), "query": lambda: scenario_query(cfg, work),
             "e2e": lambda: scenario_e2e(cfg, work), "scaling": lambda: scenario_scaling(cfg, pg, work)}
    partial = work.parent / "results" / f"{stem}.partial.json"
    for name in cfg.only.split(","):
        res[name] = steps[name]()
        # Keep what is measured so far: a later failure must not lose it.
        partial.write_text(json.dumps(res, indent=1) + "\n")
    res["meta"]["seconds"] = time.time() - started
    res["plots"] = plots(res, stem)
    (BENCH / "results" / f"{stem}.json").write_text(json.dumps(res, indent=1) + "\n")
    (BENCH / "results" / f"{stem}.md").write_text(markdown(res) + "\n")
    shutil.rmtree(work, ignore_errors=True)
    partial.unlink()
    log(f"wrote bench/results/{stem}.json, {stem}.md and {len(res['plots'])} plot(s) in {res['meta']['seconds']:.0f} s")
    print(markdown(res))


if __name__ == "__main__":
    main()
