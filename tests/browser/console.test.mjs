// The operator console in a real browser: Playwright (playwright-core) drives Debian's
// headless Chromium against a real `ficus serve` (with its embedded gateway) on loopback
// ports. It signs in, follows a live stream while events are appended, follows a bulk job's
// progress and redrives one of its dead items,
// shifts a façade route's weight with the slider, rebuilds a projection, and saves a
// screenshot of each step into tests/browser/output/.

import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { spawn, execFileSync } from "node:child_process";
import { mkdtempSync, mkdirSync, writeFileSync, rmSync, createWriteStream } from "node:fs";
import { tmpdir } from "node:os";
import { join, dirname, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import http from "node:http";
import net from "node:net";
import { chromium } from "playwright-core";

const HERE = dirname(fileURLToPath(import.meta.url));
const ROOT = resolve(HERE, "../..");
const FICUS = process.env.FICUS_BIN || join(ROOT, "target/debug/ficus");
const OUT = join(HERE, "output");
const SECRET = "browser-test-secret";
const STEP_TIMEOUT_MS = 15_000;

let dir, server, payments, legacy, browser, api, gw, admin, seller, serverLog;

const freePort = () =>
  new Promise((ok, fail) => {
    const s = net.createServer();
    s.listen(0, "127.0.0.1", () => {
      const { port } = s.address();
      s.close(() => ok(port));
    });
    s.on("error", fail);
  });

const token = (sub, roles) =>
  execFileSync(FICUS, ["token", "--sub", sub, "--roles", roles], {
    env: { ...process.env, FICUS_AUTH_HS256_SECRET: SECRET },
  })
    .toString()
    .trim();

async function call(method, url, tok, body) {
  const r = await fetch(url, {
    method,
    headers: { authorization: `Bearer ${tok}`, "content-type": "application/json" },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const text = await r.text();
  return { status: r.status, body: text ? JSON.parse(text) : null };
}

async function until(what, probe) {
  const deadline = Date.now() + STEP_TIMEOUT_MS;
  for (;;) {
    const v = await probe().catch(() => null);
    if (v) return v;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

const createProduct = (name, price = 20) =>
  call("POST", `${api}/v1/products`, seller, { name, category: "kitchen", price, currency: "EUR" });

async function signedInPage(base) {
  const page = await browser.newPage();
  page.setDefaultTimeout(STEP_TIMEOUT_MS);
  const errors = [];
  page.on("pageerror", (e) => errors.push(e));
  page.on("dialog", (d) => d.accept());
  // Each test signs in afresh: the profile keeps the last token in localStorage, so it is
  // cleared first on a page of the same origin that runs no script.
  await page.goto(`${base}/console/app.css`);
  await page.evaluate(() => localStorage.clear());
  await page.goto(`${base}/console`);
  await page.fill("#token", admin);
  await page.click("#login-form button[type=submit]");
  await page.waitForSelector("#tabs:not([hidden])");
  page.jsErrors = errors;
  return page;
}

before(async () => {
  mkdirSync(OUT, { recursive: true });
  dir = mkdtempSync(join(tmpdir(), "ficus-browser-"));
  // A legacy shop for the façade's route: answers every read with its own JSON.
  legacy = http.createServer((req, res) => {
    res.setHeader("content-type", "application/json");
    res.end(JSON.stringify({ legacy: true, path: req.url }));
  });
  await new Promise((ok) => legacy.listen(0, "127.0.0.1", ok));
  const [apiPort, gwPort, payPort] = [await freePort(), await freePort(), await freePort()];
  // The payment service of order fulfilment, so placing an order runs its saga.
  payments = spawn(FICUS, ["debug", "payments", "--listen", `127.0.0.1:${payPort}`],
    { stdio: ["ignore", "ignore", "ignore"] });
  api = `http://127.0.0.1:${apiPort}`;
  gw = `http://127.0.0.1:${gwPort}`;
  const routes = join(dir, "routes.toml");
  writeFileSync(
    routes,
    `[upstreams]
legacy = "http://127.0.0.1:${legacy.address().port}"
ficus = "${api}"

[[routes]]
name = "products"
path_prefix = "/api/products"
legacy = "legacy"
new_reads = "ficus"
new_prefix = "/v1/products"
weight_new = 20
shadow = true
rate_limit = { requests = 3, window_s = 60 }

# Everything else goes to the Ficus API, so the console opened on the gateway's address
# reaches the API through the façade.
[[routes]]
name = "ficus-api"
path_prefix = "/"
legacy = "ficus"
`,
  );
  serverLog = join(OUT, "server.log");
  server = spawn(
    FICUS,
    ["serve", "--listen", `127.0.0.1:${apiPort}`, "--data-dir", join(dir, "data"),
     "--gateway-routes", routes, "--gateway-listen", `127.0.0.1:${gwPort}`,
     "--payments", `http://127.0.0.1:${payPort}`],
    { env: { ...process.env, FICUS_AUTH_HS256_SECRET: SECRET }, stdio: ["ignore", "ignore", "pipe"] },
  );
  server.stderr.pipe(createWriteStream(serverLog));
  await until("the server to be ready", async () => (await fetch(`${api}/health/ready`)).ok);
  await until("the gateway to answer", async () => (await fetch(`${gw}/health/live`)).ok);
  admin = token("ada", "admin");
  seller = token("sam", "seller");
  for (let i = 0; i < 6; i++) assert.equal((await createProduct(`Kettle ${i}`, 20 + i)).status, 201);
  // A fresh profile directory per run (Playwright passes it as --user-data-dir).
  browser = await chromium.launchPersistentContext(join(dir, "chromium-profile"), {
    executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
    headless: true,
    viewport: { width: 1280, height: 860 },
    args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync"],
  });
});

after(async () => {
  await browser?.close();
  server?.kill("SIGTERM");
  payments?.kill("SIGTERM");
  legacy?.close();
  if (dir) rmSync(dir, { recursive: true, force: true });
});

test("sign in and see the overview chart", async () => {
  const page = await signedInPage(api);
  // Traffic for the chart while it polls.
  for (let i = 0; i < 3; i++) {
    await createProduct(`Pot ${i}`);
    await page.waitForTimeout(700);
  }
  await page.waitForFunction(() => document.querySelectorAll("#overview-cards .stat").length >= 6);
  await page.waitForTimeout(2200);
  await page.screenshot({ path: join(OUT, "overview.png") });
  assert.match(await page.textContent("#overview-cards"), /Log head/);
  assert.deepEqual(page.jsErrors, []);
  await page.close();
});

test("follow a live stream", async () => {
  const page = await signedInPage(api);
  await page.click("a[data-tab=streams]");
  await page.waitForSelector("#events tbody tr[data-position]");
  await page.click("#follow");
  await page.waitForSelector("#log-note[data-live]");
  // Appended after the page subscribed: they must arrive over SSE.
  const created = await createProduct("Live teapot");
  assert.equal(created.status, 201);
  const pos = created.body.position;
  await page.waitForSelector(`#events tbody tr.new[data-position="${pos}"]`);
  assert.match(await page.textContent(`#events tbody tr[data-position="${pos}"]`), /product-/);
  await page.screenshot({ path: join(OUT, "streams-live.png") });
  // Reading one stream shows its events.
  await page.click("#follow");
  await page.click(`#events tbody tr[data-position="${pos}"] td:nth-child(4) a`);
  await page.waitForSelector("#event-detail:not([hidden])");
  assert.match(await page.textContent("#event-json"), /Live teapot/);
  assert.deepEqual(page.jsErrors, []);
  await page.close();
});

test("redrive a dead job from the dead-letter list", async () => {
  // A cut of 60 % breaks a pricing rule: every item of this bulk job dies at once.
  const job = await call("POST", `${api}/v1/jobs`, seller,
    { kind: "reprice_category", params: { category: "kitchen", percent: -60 } });
  assert.equal(job.status, 202);
  await until("dead letters", async () => {
    const q = await call("GET", `${api}/v1/queues`, admin);
    return q.body.queues.some((x) => x.dead > 0);
  });
  const page = await signedInPage(api);
  await page.click("a[data-tab=queues]");
  const row = page.locator("#queue-table tbody tr", { has: page.locator("span.pill.bad") }).first();
  await row.locator("button").click();
  await page.waitForSelector("#dead-table tbody tr[data-job]");
  const firstId = await page.getAttribute("#dead-table tbody tr[data-job]", "data-job");
  const before = await call("GET", `${api}/v1/jobs/items/${firstId}`, admin);
  assert.equal(before.body.state, "dead");
  await new Promise((r) => setTimeout(r, 20)); // so the redrive's time is a later ms
  await page.check(`#dead-table tbody tr[data-job="${firstId}"] input`);
  // The bulk job's progress: every item finished (dead), so it is at 100 %.
  await page.fill("#batch-id", job.body.id);
  await page.click("#batch-open");
  await page.waitForSelector("#batch-view .bar");
  await page.waitForFunction(() => /100 %/.test(document.querySelector("#batch-view").textContent));
  assert.match(await page.textContent("#batch-view"), /reprice_category/);
  await page.screenshot({ path: join(OUT, "dead-letters.png") });
  const [resp] = await Promise.all([
    page.waitForResponse((r) => r.url().endsWith("/dead/redrive") && r.request().method() === "POST"),
    page.click("#redrive"),
  ]);
  assert.equal(resp.status(), 200);
  assert.equal((await resp.json()).redriven, 1);
  await page.waitForSelector("#toast.show");
  assert.match(await page.textContent("#toast"), /Redrove 1 job/);
  // The store took it back: its run time is the redrive's, after the one it died with.
  const redriven = await call("GET", `${api}/v1/jobs/items/${firstId}`, admin);
  assert.equal(redriven.status, 200);
  assert.ok(redriven.body.run_at > before.body.run_at, `${before.body.run_at} -> ${redriven.body.run_at}`);
  assert.deepEqual(page.jsErrors, []);
  await page.close();
});

test("rebuild a projection", async () => {
  const page = await signedInPage(api);
  await page.click("a[data-tab=projections]");
  await page.waitForSelector('#proj tbody tr[data-name="catalog"]');
  const [resp] = await Promise.all([
    page.waitForResponse((r) => r.url().includes("/v1/projections/catalog/rebuild")),
    page.click('#proj tbody tr[data-name="catalog"] button'),
  ]);
  assert.ok(resp.status() < 300, `rebuild answered ${resp.status()}`);
  await page.waitForTimeout(2200);
  await page.screenshot({ path: join(OUT, "projections.png") });
  assert.deepEqual(page.jsErrors, []);
  await page.close();
});

test("see a fulfilment saga's counters and steps", async () => {
  const customer = token("cy", "customer");
  const product = await call("POST", `${api}/v1/products`, seller,
    { name: "Saga kettle", category: "kitchen", price: 30, currency: "EUR", stock: 5 });
  assert.equal(product.status, 201);
  const order = await call("POST", `${api}/v1/orders`, customer,
    { items: [{ product_id: product.body.id, quantity: 1 }] });
  assert.equal(order.status, 201);
  const placed = await call("POST", `${api}/v1/orders/${order.body.id}/place`, customer);
  assert.equal(placed.status, 200);
  const saga = `fulfilment-${order.body.id}`;
  await until("the saga to complete", async () =>
    (await call("GET", `${api}/v1/sagas/${saga}`, admin)).body?.status === "completed");
  const page = await signedInPage(api);
  await page.click("a[data-tab=sagas]");
  const row = page.locator('#saga-table tbody tr[data-saga="order_fulfilment"]');
  await row.waitFor();
  // Started, completed, failed, running: this process ran the one saga to its end.
  await page.waitForFunction(() => [...document.querySelectorAll(
    '#saga-table tbody tr[data-saga="order_fulfilment"] td')].map((c) => c.textContent.trim()).join("|")
    === "order_fulfilment|1|1|0|0");
  assert.match(await page.textContent("#saga-steps"), /charge_payment/);
  await page.fill("#saga-id", saga);
  await page.click("#saga-open");
  await page.waitForSelector('#saga-view tr[data-step="create_shipment"]');
  assert.match(await page.textContent("#saga-view"), /completed/);
  await page.screenshot({ path: join(OUT, "sagas.png") });
  assert.deepEqual(page.jsErrors, []);
  await page.close();
});

test("shift a route's weight with the slider on the gateway's console", async () => {
  // Five reads through the route: three pass (to legacy, or 20 % of them to Ficus, which
  // does not know these ids), the rate limit refuses two.
  const statuses = [];
  for (let i = 0; i < 5; i++) statuses.push((await fetch(`${gw}/api/products/p-${i}`)).status);
  assert.deepEqual(statuses.map((s) => s === 429), [false, false, false, true, true]);
  const page = await signedInPage(gw);
  await page.click("a[data-tab=routes]");
  const slider = page.locator('.route[data-route="products"] input[type=range]');
  await slider.waitFor();
  assert.equal(await slider.inputValue(), "20");
  assert.equal(await page.textContent('.route[data-route="products"] .refused'), "2");
  const [resp] = await Promise.all([
    page.waitForResponse((r) => r.url().endsWith("/v1/admin/routes/products") && r.request().method() === "PUT"),
    slider.fill("70"),
  ]);
  assert.equal(resp.status(), 200, await resp.text());
  const routes = await call("GET", `${gw}/v1/admin/routes`, admin);
  assert.equal(routes.body.routes.find((r) => r.name === "products").weight_new, 70);
  await page.waitForSelector('.route[data-route="products"] .weight:text("70 % new")');
  await page.screenshot({ path: join(OUT, "routes.png") });
  assert.deepEqual(page.jsErrors, []);
  await page.close();
});
