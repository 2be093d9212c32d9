// Node BullMQ 6.7 peer for the Go interop tests and benchmarks of
// github.com/redisleak/redisleak/bullmq_compat. Usage:
//
//   node peer.mjs <mode> <json params>
//
// params always has {host, port, queue, prefix?}. Every mode prints one JSON
// line with its result on stdout (the "events" mode prints {"ready":true}
// first) and exits 0; errors go to stderr with exit code 1.
import { Queue, Worker, QueueEvents, FlowProducer } from 'bullmq';
import IORedis from 'ioredis';

const [mode, raw] = process.argv.slice(2);
const p = JSON.parse(raw || '{}');
const prefix = p.prefix || 'bull';

// conn connects to p.host:p.port, or to the Redis Cluster of p.cluster
// ([{host, port}, ...]) when given.
function conn() {
  if (p.cluster) {
    return new IORedis.Cluster(p.cluster, { redisOptions: { maxRetriesPerRequest: null } });
  }
  return new IORedis({ host: p.host, port: p.port, maxRetriesPerRequest: null });
}

function out(v) {
  process.stdout.write(JSON.stringify(v) + '\n');
}

async function add() {
  const c = conn();
  const q = new Queue(p.queue, { connection: c, prefix });
  const ids = [];
  for (const j of p.jobs) {
    const job = await q.add(j.name, j.data, j.opts || {});
    ids.push(job.id);
  }
  await q.close();
  c.disconnect();
  out({ ids });
}

// tryAdd adds each of p.jobs with queue.add and reports, per job, whether
// Node accepted it ({ok, id}) or threw ({ok: false, error}).
async function tryAdd() {
  const c = conn();
  const q = new Queue(p.queue, { connection: c, prefix });
  const results = [];
  for (const j of p.jobs) {
    try {
      const job = await q.add(j.name, j.data, j.opts || {});
      results.push({ ok: true, id: job.id });
    } catch (e) {
      results.push({ ok: false, error: String((e && e.message) || e) });
    }
  }
  await q.close();
  c.disconnect();
  out({ results });
}

// work processes until `count` jobs finished (completed or failed for good).
// A job whose data has {failTimes: n} throws on its first n attempts;
// {sleepMs: n} waits first; the result is {echo: data, by: "node"}.
async function work() {
  const c = conn();
  const seen = [];
  const strategyCalls = [];
  // customBackoff {type: ms}: settings.backoffStrategy returns the type's ms
  // (-1 fails for good) and records its arguments.
  const settings = p.customBackoff
    ? {
        backoffStrategy: (attemptsMade, type, err, job) => {
          strategyCalls.push({ attemptsMade, type, err: err && err.message, id: job.id });
          return p.customBackoff[type] ?? 0;
        },
      }
    : undefined;
  let finished = 0;
  let done;
  const all = new Promise((r) => (done = r));
  const w = new Worker(
    p.queue,
    async (job) => {
      const entry = { id: job.id, name: job.name, data: job.data, attemptsMade: job.attemptsMade, priority: job.priority };
      if (p.children) {
        entry.children = await job.getChildrenValues();
        entry.failedChildren = await job.getFailedChildrenValues();
        entry.ignoredFailures = await job.getIgnoredChildrenFailures();
      }
      seen.push(entry);
      if (job.data && job.data.sleepMs) await new Promise((r) => setTimeout(r, job.data.sleepMs));
      if (job.data && job.data.failTimes && job.attemptsMade < job.data.failTimes) {
        throw new Error(`node fails attempt ${job.attemptsMade + 1}`);
      }
      return { echo: job.data, by: 'node' };
    },
    { connection: c, prefix, concurrency: p.concurrency || 1, settings, ...(p.workerOpts || {}) },
  );
  const finish = () => {
    finished++;
    if (finished >= p.count) done();
  };
  w.on('completed', finish);
  w.on('failed', (job) => {
    if (job && job.finishedOn) finish();
  });
  const errors = [];
  w.on('error', (e) => {
    errors.push(String((e && e.message) || e));
    process.stderr.write(`worker error: ${e}\n`);
  });
  await w.waitUntilReady();
  out({ ready: true });
  await all;
  await w.close();
  c.disconnect();
  out({ seen, strategyCalls, errors });
}

// flow adds p.flow ({name, queueName, data, opts, children: [...]}) with a FlowProducer.
async function flow() {
  const c = conn();
  const fp = new FlowProducer({ connection: c, prefix });
  const tree = await fp.add(p.flow);
  await fp.close();
  c.disconnect();
  out({ id: tree.job.id, children: (tree.children || []).map((ch) => ch.job.id) });
}

async function counts() {
  const c = conn();
  const q = new Queue(p.queue, { connection: c, prefix });
  const counts = await q.getJobCounts();
  const completed = (await q.getCompleted()).map((j) => ({
    id: j.id, name: j.name, data: j.data, returnvalue: j.returnvalue, attemptsMade: j.attemptsMade,
    finishedOn: j.finishedOn, processedOn: j.processedOn,
  }));
  const failed = (await q.getFailed()).map((j) => ({
    id: j.id, failedReason: j.failedReason, stacktrace: j.stacktrace, attemptsMade: j.attemptsMade,
  }));
  const workers = (await q.getWorkers()).map((w) => w.rawname);
  const jobs = {};
  for (const id of p.jobIds || []) {
    const j = await q.getJob(id);
    jobs[id] = j ? { name: j.name, data: j.data, opts: j.opts, progress: j.progress, returnvalue: j.returnvalue,
      attemptsMade: j.attemptsMade, state: await j.getState(), delay: j.delay, priority: j.priority,
      logs: (await q.getJobLogs(id)).logs } : null;
  }
  const paused = await q.isPaused();
  const rateLimitTtl = await q.getRateLimitTtl();
  const metrics = p.metrics ? { completed: await q.getMetrics('completed'), failed: await q.getMetrics('failed') } : undefined;
  await q.close();
  c.disconnect();
  out({ counts, completed, failed, workers, jobs, paused, rateLimitTtl, metrics });
}

// events collects events until it has seen `count` of the names in p.names.
async function events() {
  const c = conn();
  const qe = new QueueEvents(p.queue, { connection: c, prefix });
  const got = [];
  let done;
  const all = new Promise((r) => (done = r));
  for (const name of p.names) {
    qe.on(name, (args) => {
      got.push({ event: name, ...args });
      if (got.length >= p.count) done();
    });
  }
  qe.on('error', (e) => process.stderr.write(`queue events error: ${e}\n`));
  await qe.waitUntilReady();
  // The XREAD loop starts asynchronously: wait until its connection blocks.
  await new Promise((r) => setTimeout(r, 200));
  out({ ready: true });
  await all;
  await qe.close();
  c.disconnect();
  out({ events: got });
}

// meta pauses or resumes the queue and sets its global limits.
async function meta() {
  const c = conn();
  const q = new Queue(p.queue, { connection: c, prefix });
  if (p.pause) await q.pause();
  if (p.resume) await q.resume();
  if (p.globalConcurrency) await q.setGlobalConcurrency(p.globalConcurrency);
  if (p.rateMax) await q.setGlobalRateLimit(p.rateMax, p.rateDuration);
  await q.close();
  c.disconnect();
  out({ ok: true });
}

async function schedule() {
  const c = conn();
  const q = new Queue(p.queue, { connection: c, prefix });
  const job = await q.upsertJobScheduler(p.id, p.repeat, p.template || {});
  await q.close();
  c.disconnect();
  out({ id: job && job.id });
}

// benchWork times a worker with concurrency p.concurrency over p.count jobs
// already in the queue (no-op handler).
async function benchWork() {
  const c = conn();
  let finished = 0;
  let done;
  const all = new Promise((r) => (done = r));
  const start = process.hrtime.bigint();
  const w = new Worker(p.queue, async () => null, { connection: c, prefix, concurrency: p.concurrency || 8, removeOnComplete: p.removeOnComplete ?? undefined });
  w.on('completed', () => {
    finished++;
    if (finished >= p.count) done();
  });
  await all;
  const ns = Number(process.hrtime.bigint() - start);
  await w.close();
  c.disconnect();
  out({ ns, count: finished });
}

// benchAdd times p.count sequential queue.add calls.
async function benchAdd() {
  const c = conn();
  const q = new Queue(p.queue, { connection: c, prefix });
  await q.waitUntilReady();
  await q.add('warm', { i: -1 });
  const start = process.hrtime.bigint();
  for (let i = 0; i < p.count; i++) {
    await q.add('bench', { i });
  }
  const ns = Number(process.hrtime.bigint() - start);
  await q.close();
  c.disconnect();
  out({ ns, count: p.count });
}

const modes = { add, tryAdd, work, flow, counts, events, meta, schedule, benchWork, benchAdd };
if (!modes[mode]) {
  process.stderr.write(`unknown mode ${mode}\n`);
  process.exit(2);
}
modes[mode]().then(
  () => process.exit(0),
  (e) => {
    process.stderr.write(String((e && e.stack) || e) + '\n');
    process.exit(1);
  },
);
