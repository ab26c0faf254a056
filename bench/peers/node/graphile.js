// The graphile-worker peer: enqueue N no-op jobs with addJobs in batches, then run a worker
// until all N are done; prints one JSON line (bulk enqueue rate, processing rate).
// Configured as graphile-worker's own performance page configures it: 24 concurrent jobs,
// a pool of 25, a local queue of 500 and batched completion.
//
//   node graphile.js <postgres url of a fresh database> <jobs>
"use strict";
const { run, makeWorkerUtils, Logger } = require("graphile-worker");

// Silent: a log line per job would measure the terminal, not the queue.
const logger = new Logger(() => () => {});

const ENQUEUE_BATCH = 1000;
const DRAIN_LIMIT_MS = 600_000;

async function main() {
  const [url, jobsArg] = process.argv.slice(2);
  const jobs = Number(jobsArg);
  if (!url || !(jobs > 0)) throw new Error("usage: node graphile.js <url> <jobs>");
  const utils = await makeWorkerUtils({ connectionString: url, logger });
  await utils.migrate();

  let t = process.hrtime.bigint();
  for (let k = 0; k < jobs; k += ENQUEUE_BATCH) {
    const specs = [];
    for (let i = k; i < Math.min(jobs, k + ENQUEUE_BATCH); i++) {
      specs.push({ identifier: "noop", payload: { k: i } });
    }
    await utils.addJobs(specs);
  }
  const enqueueSecs = Number(process.hrtime.bigint() - t) / 1e9;

  let done = 0;
  let finish;
  const finished = new Promise((resolve) => (finish = resolve));
  t = process.hrtime.bigint();
  const runner = await run({
    connectionString: url,
    concurrency: 24,
    maxPoolSize: 25,
    noHandleSignals: true,
    pollInterval: 1000,
    logger,
    crontab: "",
    preset: { worker: { localQueue: { size: 500 }, completeJobBatchDelay: 0, failJobBatchDelay: 0 } },
    taskList: {
      noop: async () => {
        done += 1;
        if (done === jobs) finish();
      },
    },
  });
  const timer = setTimeout(() => finish(new Error("graphile-worker did not finish in time")), DRAIN_LIMIT_MS);
  const err = await finished;
  if (err) throw err;
  const processSecs = Number(process.hrtime.bigint() - t) / 1e9;
  clearTimeout(timer);
  await runner.stop();
  await utils.release();
  console.log(JSON.stringify({ jobs, enqueue_per_sec: jobs / enqueueSecs, processed_per_sec: jobs / processSecs }));
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
