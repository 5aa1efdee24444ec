// SPDX-License-Identifier: MIT
//
// The DataLoader peer of tests/bench/core.c: the same three core shapes,
// written the way a Node service would write them, each timed as best and
// median of several rounds in this process. Prints one line per shape,
//
//   <shape> best <ns> median <ns> units <n>
//
// then "ok" once every result checked out (values, batch counts); a wrong
// result prints "error: ..." and exits 1. Shapes and sizes match core.c:
//
//   fanout: 100,000 empty async functions started by one and awaited
//           together (Promise.all), time per function;
//   chain:  an async function awaiting its child, 500 deep, time per level;
//   lookup: 10,000 answer ids, one async function per id that awaits the
//           author of the answer, then the author's name, each through a
//           DataLoader (so 2 batches for all 20,000 loads), time per load.
//
// Run with run.sh, which installs dataloader@2 into a cache directory.
'use strict';

const DataLoader = require('dataloader');

const FAN_N = 100000;
const CHAIN_DEPTH = 500;
const LK_N = 10000;
const LK_AUTHORS = 4096;
const ROUNDS = Number(process.env.ASYNQ_DL_ROUNDS || 30);

function fail(what) {
  console.log('error: ' + what);
  process.exit(1);
}

function nowNs() {
  return process.hrtime.bigint();
}

// ---- fan-out ----------------------------------------------------------

async function emptyTask(i) {
  return i;
}

async function fanRoot(n) {
  const ps = new Array(n);
  for (let i = 0; i < n; i++) ps[i] = emptyTask(i);
  return Promise.all(ps);
}

async function fanout() {
  const t0 = nowNs();
  const vs = await fanRoot(FAN_N);
  const t1 = nowNs();
  for (let i = 0; i < FAN_N; i++) if (vs[i] !== i) fail('fanout value ' + i);
  return Number(t1 - t0) / FAN_N;
}

// ---- chain --------------------------------------------------------------

async function chainTask(d) {
  if (d === CHAIN_DEPTH) return d;
  const v = await chainTask(d + 1);
  return v + d;
}

async function chain() {
  const want = (CHAIN_DEPTH * (CHAIN_DEPTH + 1)) / 2;
  const t0 = nowNs();
  const v = await chainTask(1);
  const t1 = nowNs();
  if (v !== want) fail('chain sum ' + v + ', want ' + want);
  return Number(t1 - t0) / CHAIN_DEPTH;
}

// ---- two-level batched lookup -------------------------------------------

function authorOf(aid) {
  return (aid * 7919) % LK_AUTHORS;
}

const names = Array.from({ length: LK_AUTHORS }, (_, i) => 'user-' + i);
let batches = 0;
let loads = 0;

// Loaders answer from memory, as core.c's backends do; no cache, so every
// load is an item of a batch, as every asynq_batch_add is.
function loaders() {
  const answers = new DataLoader(async (aids) => {
    batches++;
    loads += aids.length;
    return aids.map(authorOf);
  }, { cache: false });
  const users = new DataLoader(async (uids) => {
    batches++;
    loads += uids.length;
    return uids.map((u) => names[u]);
  }, { cache: false });
  return { answers, users };
}

async function authorName(l, aid) {
  const author = await l.answers.load(aid);
  return l.users.load(author);
}

async function lookup() {
  const l = loaders();
  const aids = Array.from({ length: LK_N }, (_, i) => 1000000 + i);
  batches = loads = 0;
  const t0 = nowNs();
  const ps = new Array(LK_N);
  for (let i = 0; i < LK_N; i++) ps[i] = authorName(l, aids[i]);
  const got = await Promise.all(ps);
  const t1 = nowNs();
  for (let i = 0; i < LK_N; i++)
    if (got[i] !== names[authorOf(aids[i])]) fail('lookup name ' + i);
  if (batches !== 2 || loads !== 2 * LK_N)
    fail(batches + ' batches of ' + loads + ' loads, want 2 of ' + 2 * LK_N);
  return Number(t1 - t0) / (2 * LK_N);
}

// ---- main ---------------------------------------------------------------

async function measure(name, fn, units) {
  const t = [];
  for (let r = 0; r < ROUNDS; r++) t.push(await fn());
  t.sort((a, b) => a - b);
  const median = t.length % 2 ? t[(t.length - 1) / 2]
                              : (t[t.length / 2 - 1] + t[t.length / 2]) / 2;
  console.log(name + ' best ' + t[0].toFixed(1) + ' median ' +
              median.toFixed(1) + ' units ' + units);
}

(async () => {
  console.log('node ' + process.version + ', dataloader ' +
              require('dataloader/package.json').version + ', ' + ROUNDS +
              ' rounds');
  await measure('fanout', fanout, FAN_N);
  await measure('chain', chain, CHAIN_DEPTH);
  await measure('lookup', lookup, 2 * LK_N);
  console.log('ok');
})().catch((e) => fail(String(e && e.stack || e)));
