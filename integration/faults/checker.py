"""A Jepsen-style check of counters under faults.

Client threads send increments to random nodes and record each operation's
outcome:

- ok: the node answered 200, so the increment is applied;
- failed: the node answered something else, or the connection was never
  made, so it is not applied;
- unknown: the request may have reached the node but no answer came (a
  timeout, a dropped connection), so it may or may not be applied.

Each counter has its own step, positive or negative. Once faults heal and the
nodes agree, every node must serve the same value for every counter, and that
value must be the start plus the step times (the ok increments plus some
number, from none to all, of the unknown ones).

`RetryingWorkload` sends the increments through `nixie.client.Client`
instead, which retries each one on other nodes under one Idempotency-Key
until an attempt is answered. Its history is checked exactly: every
increment must be ok, and each value must be the start plus the step times
the ok increments, no more and no fewer.
"""

import random
import threading
import time
from collections import Counter
from dataclasses import dataclass, field

import httpx

from nixie.client import Client
from nixie.errors import NixieError, Unavailable

OK, FAILED, UNKNOWN = "ok", "failed", "unknown"

# The node of an operation sent through `nixie.client.Client`: any of them.
ANY_NODE = "any node (client)"


@dataclass(frozen=True)
class Operation:
    """One increment attempt and what became of it."""

    key: str
    node: str
    outcome: str
    latency: float  # seconds
    started: float  # monotonic seconds


@dataclass
class History:
    """Every operation of a run, gathered from all client threads."""

    operations: list[Operation] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, operation: Operation) -> None:
        """Record one operation."""
        with self.lock:
            self.operations.append(operation)

    def count(self, key: str, outcome: str) -> int:
        """Count a counter's operations with the given outcome."""
        return sum(
            1 for op in self.operations if op.key == key and op.outcome == outcome
        )


class Workload:
    """Send increments from several threads until stopped."""

    def __init__(
        self,
        urls: list[str],
        keys: list[str],
        clients: int = 6,
        timeout: float = 2.0,
        seed: int = 7,
        history: History | None = None,
    ) -> None:
        self.urls = urls
        self.keys = keys
        self.history = history or History()
        self._clients = clients
        self._timeout = timeout
        self._seed = seed
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    def __enter__(self) -> "Workload":
        for index in range(self._clients):
            thread = threading.Thread(target=self._client, args=(index,), daemon=True)
            thread.start()
            self._threads.append(thread)
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=self.join_timeout)

    @property
    def join_timeout(self) -> float:
        """Return the seconds a client thread may take to finish its operation."""
        return self._timeout * 3

    def _client(self, index: int) -> None:
        rng = random.Random(self._seed + index)
        # A new connection per request, as k6 does, so a node that dies
        # mid-run costs one request, not a pooled connection's worth.
        limits = httpx.Limits(max_keepalive_connections=0)
        with httpx.Client(timeout=self._timeout, limits=limits) as client:
            while not self._stop.is_set():
                key, url = rng.choice(self.keys), rng.choice(self.urls)
                started = time.monotonic()
                outcome = _increment(client, f"{url}/{key}")
                latency = time.monotonic() - started
                self.history.add(Operation(key, url, outcome, latency, started))
                if outcome != OK:
                    time.sleep(0.05)  # do not spin on a node that is down


class RetryingWorkload(Workload):
    """Send increments through `nixie.client.Client`, which retries them.

    Each thread has its own client. A client sends every attempt of one
    increment under one Idempotency-Key, to a node of its choice, carrying the
    counter's Nixie-Context token, and skips a node that failed for
    `cooldown` seconds. An increment whose call returned is ok; one whose
    call raised `Unavailable` after `attempts` attempts is unknown, and one
    refused with a 4xx failed.
    """

    def __init__(
        self,
        urls: list[str],
        keys: list[str],
        clients: int = 6,
        timeout: float = 3.0,
        attempts: int = 15,
        cooldown: float = 2.0,
        seed: int = 7,
        history: History | None = None,
    ) -> None:
        super().__init__(urls, keys, clients, timeout, seed, history)
        self._attempts = attempts
        self._cooldown = cooldown

    @property
    def join_timeout(self) -> float:
        """Return the seconds one call may take: every attempt, and back-off."""
        return self._attempts * (self._timeout + 1.0)

    def _client(self, index: int) -> None:
        rng = random.Random(self._seed + index)
        with Client(
            self.urls,
            timeout=self._timeout,
            attempts=self._attempts,
            cooldown=self._cooldown,
        ) as nixie:
            while not self._stop.is_set():
                key = rng.choice(self.keys)
                started = time.monotonic()
                outcome = _increment_retrying(nixie, key)
                latency = time.monotonic() - started
                self.history.add(Operation(key, ANY_NODE, outcome, latency, started))


def _increment_retrying(nixie: Client, key: str) -> str:
    try:
        nixie.increment(key)
    except Unavailable:
        return UNKNOWN  # some attempt may have reached a node
    except NixieError:
        return FAILED  # refused with a 4xx: nothing applied
    return OK


def _increment(client: httpx.Client, url: str) -> str:
    try:
        response = client.post(url)
    except (httpx.ConnectError, httpx.ConnectTimeout):
        return FAILED  # never reached the node
    except httpx.TransportError:
        return UNKNOWN  # may have reached it: timed out or cut mid-way
    return OK if response.status_code == 200 else FAILED


@dataclass
class Verdict:
    """The outcome of checking a run; `problems` is empty when it passed."""

    problems: list[str]
    report: str

    @property
    def valid(self) -> bool:
        """Tell whether every counter is consistent with the history."""
        return not self.problems


def check(
    history: History,
    counters: dict[str, tuple[int, int]],
    finals: dict[str, dict[str, int | None]],
    converge_seconds: float,
    *,
    exact: bool = False,
) -> Verdict:
    """Check final values against the history.

    `counters` maps each key to its (start, step); `finals` maps each node
    URL to the value it serves for each key (None when it has none). With
    `exact`, an unknown or failed operation is a problem in itself, and each
    value must count the ok increments alone.
    """
    problems = []
    lines = []
    outcomes = Counter(op.outcome for op in history.operations)
    lines.append(
        f"operations {len(history.operations)}: ok {outcomes[OK]}, "
        f"failed {outcomes[FAILED]}, unknown {outcomes[UNKNOWN]}; "
        f"converged in {converge_seconds:.2f} s"
    )
    if exact:
        for outcome in (UNKNOWN, FAILED):
            if outcomes[outcome]:
                problems.append(
                    f"{outcomes[outcome]} increments {outcome}: a retrying client "
                    "must leave none"
                )
    per_node = Counter((op.node, op.outcome) for op in history.operations)
    others = sorted({op.node for op in history.operations} - set(finals))
    for node in [*finals, *others]:
        lines.append(
            f"  {node}: ok {per_node[node, OK]}, failed {per_node[node, FAILED]}, "
            f"unknown {per_node[node, UNKNOWN]}"
        )

    for key, (start, step) in counters.items():
        ok, unknown = history.count(key, OK), history.count(key, UNKNOWN)
        values = {finals[node].get(key) for node in finals}
        lines.append(
            f"  {key} start {start} step {step:+d}: ok {ok} unknown {unknown} "
            f"-> final {sorted(values, key=str)}"
        )
        if len(values) != 1:
            problems.append(f"{key}: nodes disagree: {finals}")
            continue
        value = values.pop()
        applied = None if value is None else (value - start) / step
        most = ok if exact else ok + unknown
        if applied is None or applied != int(applied) or not ok <= applied <= most:
            problems.append(
                f"{key}: final {value} is not {start} + {step} x n "
                f"for any n in [{ok}, {most}]"
            )
    lines.append("VALID" if not problems else "INVALID: " + "; ".join(problems))
    return Verdict(problems, "\n".join(lines))
