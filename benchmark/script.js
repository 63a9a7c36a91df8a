// Nixie's benchmark workload: increment a random counter, then read it back.
//
// NIXIE_URLS is a comma-separated list of base URLs (NIXIE_URL is accepted
// for a single one). Every request picks one at random, so the same script
// spreads its load over a cluster. NIXIE_SUMMARY names the JSON file that
// handleSummary writes for benchmark/run.py.
//
// Options for the read-your-writes scenarios (benchmark/consistency_k6.py),
// all off by default:
//
//   NIXIE_READ_ELSEWHERE=1  read on another base URL than the increment's
//                           (when there are two or more)
//   NIXIE_CARRY_CONTEXT=1   carry each counter's latest Nixie-Context token to
//                           the next request about it: the increment's token
//                           to the read, the read's to the next increment
//   NIXIE_CONSISTENCY=L     send Nixie-Consistency: L (local, quorum or all)
//                           with both the increment and the read
//   NIXIE_IDEMPOTENT=1      send a fresh Idempotency-Key with every increment
//   NIXIE_OWN_KEYS=1        each virtual user increments its own share of the
//                           counters alone, so no other user's increment can
//                           come between its write and its read

import http from "k6/http";
import { check, fail, sleep } from "k6";
import { Counter, Rate, Trend } from "k6/metrics";

const COUNTERS = 500;
const SCENARIO = "increment_read";
const REPLICATION_WAIT_MS = 30000; // setup's bound on waiting for gossip
const REPLICATION_POLL_S = 0.05;

const BASE_URLS = (__ENV.NIXIE_URLS || __ENV.NIXIE_URL || "http://127.0.0.1:7312")
  .split(",")
  .map((url) => url.trim().replace(/\/+$/, ""))
  .filter((url) => url !== "");

const AWAIT_URLS = (__ENV.NIXIE_AWAIT_URLS || BASE_URLS.join(","))
  .split(",")
  .map((url) => url.trim().replace(/\/+$/, ""))
  .filter((url) => url !== "");

const SUMMARY_PATH = __ENV.NIXIE_SUMMARY || "summary.json";

const CONSISTENCY_LEVELS = ["local", "quorum", "all"];

function flag(name) {
  const value = (__ENV[name] || "").trim().toLowerCase();
  if (["", "0", "false", "no"].includes(value)) {
    return false;
  }
  if (["1", "true", "yes"].includes(value)) {
    return true;
  }
  throw new Error(`${name}=${__ENV[name]}: expected 1 or 0`);
}

const MODE = {
  read_elsewhere: flag("NIXIE_READ_ELSEWHERE"),
  carry_context: flag("NIXIE_CARRY_CONTEXT"),
  consistency: (__ENV.NIXIE_CONSISTENCY || "").trim().toLowerCase() || null,
  idempotent: flag("NIXIE_IDEMPOTENT"),
  own_keys: flag("NIXIE_OWN_KEYS"),
};
if (MODE.consistency !== null && !CONSISTENCY_LEVELS.includes(MODE.consistency)) {
  throw new Error(
    `NIXIE_CONSISTENCY=${__ENV.NIXIE_CONSISTENCY}: expected one of ` +
      CONSISTENCY_LEVELS.join(", "),
  );
}

// A token, or a quorum or all level on both the write and the read, promises
// that the read sees the increment: its value is then at least the
// increment's answer. It may be more: when another virtual user incremented
// the same key in between, or when the increment was taken by a node that
// had not yet merged an earlier one. With NIXIE_OWN_KEYS and
// NIXIE_CARRY_CONTEXT neither can happen, and `counter match` is exact.
const READ_YOUR_WRITES =
  MODE.carry_context || MODE.consistency === "quorum" || MODE.consistency === "all";
const COVERS_CHECK = "read >= increment";
const VUS = 3;

// The scenario's own wall time: http_reqs' rate divides by the whole run,
// setup's 500 creations included, which would understate the workload rate.
const workloadDuration = new Trend("workload_duration", true);

// Across a cluster a read on another node than the increment's may lag by up
// to a gossip round; splitting the matches by where the read went tells that
// lag apart from two virtual users racing on one key.
const matchSameNode = new Rate("counter_match_same_node");
const matchOtherNode = new Rate("counter_match_other_node");

// Where the read stood against the increment's answer: equal; ahead, when
// another virtual user's write to the key came in between (a race, not
// lag); or behind, when the read missed the increment (replication lag, or
// a broken promise when READ_YOUR_WRITES holds).
const readEqual = new Counter("read_equal");
const readAhead = new Counter("read_ahead");
const readBehind = new Counter("read_behind");

export const options = {
  scenarios: {
    [SCENARIO]: {
      executor: "shared-iterations",
      vus: VUS,
      iterations: 1000,
      maxDuration: "2m",
    },
  },
  noConnectionReuse: true,
  summaryTrendStats: ["avg", "min", "med", "max", "p(90)", "p(95)", "p(99)"],
  // Thresholds without conditions never fail; they make k6 keep the
  // scenario-only sub-metrics that handleSummary reports.
  thresholds: {
    [`http_reqs{scenario:${SCENARIO}}`]: [],
    [`http_req_duration{scenario:${SCENARIO}}`]: [],
    [`http_req_failed{scenario:${SCENARIO}}`]: [],
    "http_req_duration{op:increment}": [],
    "http_req_duration{op:read}": [],
  },
};

function pickBaseUrl() {
  return BASE_URLS[Math.floor(Math.random() * BASE_URLS.length)];
}

function pickReadUrl(writeUrl) {
  if (!MODE.read_elsewhere || BASE_URLS.length < 2) {
    return pickBaseUrl();
  }
  const others = BASE_URLS.filter((url) => url !== writeUrl);
  return others[Math.floor(Math.random() * others.length)];
}

// This virtual user's latest token of each counter, with NIXIE_CARRY_CONTEXT.
const tokens = {};

function keepToken(key, response) {
  const token = response.headers["Nixie-Context"];
  if (MODE.carry_context && token) {
    tokens[key] = token;
  }
}

function incrementHeaders(key) {
  const headers = {};
  if (MODE.carry_context && tokens[key]) {
    headers["Nixie-Context"] = tokens[key];
  }
  if (MODE.consistency !== null) {
    headers["Nixie-Consistency"] = MODE.consistency;
  }
  if (MODE.idempotent) {
    headers["Idempotency-Key"] = crypto.randomUUID();
  }
  return headers;
}

function readHeaders(key) {
  const headers = {};
  if (MODE.consistency !== null) {
    headers["Nixie-Consistency"] = MODE.consistency;
  }
  if (MODE.carry_context && tokens[key]) {
    headers["Nixie-Context"] = tokens[key];
  }
  return headers;
}

// Compare two decimal bodies as exact integers: -1, 0 or 1, or null when
// either is not a number (a failed request).
function compareValues(read, written) {
  const decimal = /^[+-]?[0-9]+$/;
  const a = (read || "").trim();
  const b = (written || "").trim();
  if (!decimal.test(a) || !decimal.test(b)) {
    return null;
  }
  const difference = BigInt(a) - BigInt(b);
  return difference > 0n ? 1 : difference < 0n ? -1 : 0;
}

export function setup() {
  if (BASE_URLS.length === 0) {
    fail("NIXIE_URLS names no base URL");
  }

  const keys = [];
  for (let i = 0; i < COUNTERS; i++) {
    const res = http.post(`${BASE_URLS[0]}/`, null);
    if (!check(res, { "create status 201": (r) => r.status === 201 })) {
      fail(`POST / answered ${res.status} ${res.error || ""}`);
    }
    keys.push(res.body.trim());
  }
  awaitReplication(keys);

  return { keys, start: Date.now() };
}

// Only the node behind the first URL saw each creation, and another node
// answers 404 for a key until gossip brings it there: wait until every node
// lists every key. NIXIE_AWAIT_URLS names the nodes when NIXIE_URLS is a load
// balancer; it defaults to NIXIE_URLS.
function awaitReplication(keys) {
  const deadline = Date.now() + REPLICATION_WAIT_MS;
  for (const url of AWAIT_URLS) {
    for (;;) {
      const res = http.get(`${url}/`);
      if (res.status === 200) {
        const listed = new Set(res.body.split("\n"));
        if (keys.every((key) => listed.has(key))) {
          break;
        }
      }
      if (Date.now() > deadline) {
        fail(`${url} did not list all ${keys.length} keys within ${REPLICATION_WAIT_MS} ms`);
      }
      sleep(REPLICATION_POLL_S);
    }
  }
}

// The keys this virtual user may pick: all of them, or with NIXIE_OWN_KEYS
// every VUS-th one from its own offset (__VU counts from 1).
function keysOf(data) {
  if (!MODE.own_keys) {
    return data.keys;
  }
  return data.keys.filter((_, i) => i % VUS === (__VU - 1) % VUS);
}

export default function (data) {
  const keys = keysOf(data);
  const key = keys[Math.floor(Math.random() * keys.length)];

  const writeUrl = pickBaseUrl();
  const incremented = http.post(`${writeUrl}/${key}`, null, {
    headers: incrementHeaders(key),
    tags: { op: "increment" },
  });
  check(incremented, { "increment status 200": (r) => r.status === 200 });
  keepToken(key, incremented);

  const readUrl = pickReadUrl(writeUrl);
  const read = http.get(`${readUrl}/${key}`, {
    headers: readHeaders(key),
    tags: { op: "read" },
  });
  keepToken(key, read);
  const checks = {
    "read status 200": (r) => r.status === 200,
    "counter match": (r) => r.body === incremented.body,
  };
  const order = compareValues(read.body, incremented.body);
  if (READ_YOUR_WRITES) {
    checks[COVERS_CHECK] = () => order !== null && order >= 0;
  }
  check(read, checks);

  (readUrl === writeUrl ? matchSameNode : matchOtherNode).add(
    read.body === incremented.body,
  );
  if (order !== null) {
    [readBehind, readEqual, readAhead][order + 1].add(1);
  }
}

export function teardown(data) {
  workloadDuration.add(Date.now() - data.start);
}

function collectChecks(group, into) {
  for (const c of group.checks) {
    const seen = into[c.name] || { passes: 0, fails: 0 };
    seen.passes += c.passes;
    seen.fails += c.fails;
    into[c.name] = seen;
  }
  for (const sub of group.groups) {
    collectChecks(sub, into);
  }
  return into;
}

function values(data, name) {
  const metric = data.metrics[name];
  return metric ? metric.values : {};
}

function matches(data, name) {
  const rate = values(data, name);
  return { passes: rate.passes || 0, fails: rate.fails || 0 };
}

export function handleSummary(data) {
  const reqs = values(data, `http_reqs{scenario:${SCENARIO}}`);
  const duration = values(data, `http_req_duration{scenario:${SCENARIO}}`);
  const failed = values(data, `http_req_failed{scenario:${SCENARIO}}`);
  const workloadMs = values(data, "workload_duration").max;
  const rate = reqs.count && workloadMs ? (reqs.count * 1000) / workloadMs : null;
  const p95 = duration["p(95)"];

  const summary = {
    base_urls: BASE_URLS,
    workload: {
      requests: reqs.count,
      duration_ms: workloadMs,
      requests_per_s: rate,
      http_req_duration_ms: duration,
      http_req_failed_rate: failed.rate,
      http_req_duration_ms_by_op: {
        increment: values(data, "http_req_duration{op:increment}"),
        read: values(data, "http_req_duration{op:read}"),
      },
    },
    whole_run: {
      test_run_duration_ms: data.state.testRunDurationMs,
      http_reqs: values(data, "http_reqs"),
      http_req_duration_ms: values(data, "http_req_duration"),
    },
    checks: collectChecks(data.root_group, {}),
    counter_match_by_read_node: {
      same: matches(data, "counter_match_same_node"),
      other: matches(data, "counter_match_other_node"),
    },
    mode: { ...MODE, read_your_writes: READ_YOUR_WRITES },
    read_vs_increment: {
      equal: values(data, "read_equal").count || 0,
      ahead: values(data, "read_ahead").count || 0,
      behind: values(data, "read_behind").count || 0,
    },
  };

  const lines = [
    `workload: ${reqs.count || 0} requests, ` +
      `${rate == null ? "?" : rate.toFixed(1)} req/s, ` +
      `p95 ${p95 == null ? "?" : p95.toFixed(2)} ms`,
    ...Object.entries(summary.checks).map(
      ([name, c]) => `check ${name}: ${c.passes} passed, ${c.fails} failed`,
    ),
  ];
  if (BASE_URLS.length > 1) {
    for (const [where, c] of Object.entries(summary.counter_match_by_read_node)) {
      lines.push(
        `counter match, read on ${where} node: ${c.passes} passed, ${c.fails} failed`,
      );
    }
  }
  const { equal, ahead, behind } = summary.read_vs_increment;
  lines.push(`read vs increment: ${equal} equal, ${ahead} ahead, ${behind} behind`);

  return {
    stdout: lines.join("\n") + "\n",
    [SUMMARY_PATH]: JSON.stringify(summary, null, 2),
  };
}
