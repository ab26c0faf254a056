// The pg-boss peer: enqueue N no-op jobs with insert() in batches, then run workers until all
// N are done; prints one JSON line (bulk enqueue rate, processing rate). Four workers each
// fetch and complete batches of up to 1000 jobs (pg-boss hands a batch to one
// handler call) and poll every 0.5 s, its shortest interval.
//
//   node pgboss.js <postgres url of a fresh database> <jobs>
"use strict";
const PgBoss = require("pg-boss");

const ENQUEUE_BATCH = 1000;
const WORKERS = 4;
const FETCH_BATCH = 1000;
const DRAIN_LIMIT_MS = 600_000;
const QUEUE = "bench";

async function main() {
  const [url, jobsArg] = process.argv.slice(2);
  const jobs = Number(jobsArg);
  if (!url || !(jobs > 0)) throw new Error("usage: node pgboss.js <url> <jobs>");
  const boss = new PgBoss({ connectionString: url, max: 10, supervise: false, schedule: false });
  boss.on("error", (e) => console.error(e));
  await boss.start();
  await boss.createQueue(QUEUE);

  let t = process.hrtime.bigint();
  for (let k = 0; k < jobs; k += ENQUEUE_BATCH) {
    const batch = [];
    for (let i = k; i < Math.min(jobs, k + ENQUEUE_BATCH); i++) batch.push({ name: QUEUE, data: { k: i } });
    await boss.insert(batch);
  }
  const enqueueSecs = Number(process.hrtime.bigint() - t) / 1e9;

  let done = 0;
  let finish;
  const finished = new Promise((resolve) => (finish = resolve));
  const timer = setTimeout(() => finish(new Error("pg-boss did not finish in time")), DRAIN_LIMIT_MS);
  t = process.hrtime.bigint();
  for (let w = 0; w < WORKERS; w++) {
    await boss.work(QUEUE, { batchSize: FETCH_BATCH, pollingIntervalSeconds: 0.5 }, async (batch) => {
      done += batch.length;
      if (done >= jobs) setImmediate(() => finish());
    });
  }
  const err = await finished;
  if (err) throw err;
  // A handler's batch is completed after it returns: wait until the queue is really empty.
  for (;;) {
    const left = await boss.getQueueSize(QUEUE, { before: "completed" });
    if (left === 0) break;
    await new Promise((r) => setTimeout(r, 5));
  }
  const processSecs = Number(process.hrtime.bigint() - t) / 1e9;
  clearTimeout(timer);
  await boss.stop({ graceful: false, wait: false });
  console.log(JSON.stringify({ jobs, enqueue_per_sec: jobs / enqueueSecs, processed_per_sec: jobs / processSecs }));
  process.exit(0);
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
