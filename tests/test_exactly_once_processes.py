"""Exactly-once writes and read-your-writes tokens across real `nixie-cli` processes.

A node frozen with SIGSTOP still completes TCP handshakes in the kernel, so a
request sent to it waits in its socket, neither refused nor answered: the
state of a write whose attempt timed out. The tests retry such writes on
another node with the same Idempotency-Key, let the frozen node go on, and
check that once every node holds the same state the write counted once.
"""

import contextlib
import logging
import operator
import re
import signal
from collections.abc import Iterator, Mapping, Sequence
from http.client import HTTPConnection
from pathlib import Path

import httpx
import pytest

from nixie.client import Client
from tests import test_cluster_processes as processes
from tests.nodeproc import HOST, NodeProcess, run_node
from tests.test_cluster_processes import (
    REQUEST_TIMEOUT,
    MakeCluster,
    all_equal,
    create,
    settled,
    values,
    wait_until_served,
)

pytestmark = pytest.mark.process

# The real-process cluster fixtures, shared with tests/test_cluster_processes.py.
make_cluster = processes.make_cluster
http = processes.http

# Gossip rounds far apart, so within a test only a Nixie-Context pull or a
# Nixie-Consistency level can carry a write to another node. A node's first
# round runs as it starts; the next comes after the interval, well after the
# test. The peer timeout must exceed the interval.
SLOW_GOSSIP = ("--gossip-interval", "30", "--peer-timeout", "31")

# Seconds each attempt of a `nixie.client.Client` may take in these tests.
CLIENT_TIMEOUT = 0.5

# Seconds an Idempotency-Key is remembered in the retention test; its
# receipt is folded after that, and dropped after twice that.
RETENTION = 1.0

# The log line of a node that dropped receipts.
PURGED = re.compile(r"receipts: \d+ folded, [1-9]\d* purged")

# A write's status and body.
Answer = tuple[int, str]


@contextlib.contextmanager
def frozen(node: NodeProcess) -> Iterator[None]:
    """Stop `node` with SIGSTOP for the block; it resumes however the block ends."""
    node.process.send_signal(signal.SIGSTOP)
    try:
        yield
    finally:
        node.process.send_signal(signal.SIGCONT)


def send(
    node: NodeProcess,
    method: str,
    path: str,
    headers: Mapping[str, str],
    body: bytes = b"",
) -> HTTPConnection:
    """Send a request to `node` and return the connection its answer comes on.

    This returns as soon as the request is in the node's socket, whether the
    node is running or frozen.
    """
    connection = HTTPConnection(HOST, node.port, timeout=REQUEST_TIMEOUT)
    connection.request(method, path, body=body, headers=dict(headers))
    return connection


def answer(connection: HTTPConnection) -> Answer:
    """Wait for the answer on `connection`, close it, and return the answer."""
    with contextlib.closing(connection):
        response = connection.getresponse()
        return response.status, response.read().decode()


def race(
    first: NodeProcess,
    second: NodeProcess,
    method: str,
    path: str,
    headers: Mapping[str, str],
    body: bytes = b"",
) -> list[Answer]:
    """Send a write to `first` while it is frozen, retry it on `second`.

    The first attempt is answered only after the retry was, once `first`
    resumes. Return both answers, the first attempt's first.
    """
    with frozen(first):
        waiting = send(first, method, path, headers, body)
        retried = answer(send(second, method, path, headers, body))
    return [answer(waiting), retried]


def digests(http: httpx.Client, nodes: Sequence[NodeProcess]) -> list[str]:
    """Return each node's state digest; equal digests mean equal states."""
    return [http.get(f"{node.url}/_nixie/cluster").json()["digest"] for node in nodes]


def settle(http: httpx.Client, nodes: Sequence[NodeProcess]) -> list[str]:
    """Wait until every node holds the same state; return their digests.

    Equal values alone could be a passing moment: two attempts applied on two
    nodes show the same value before their receipts meet. Equal digests mean
    every receipt reached every node, so no later merge can move a value.
    """
    return settled(lambda: digests(http, nodes), all_equal)


def idempotency(name: str) -> dict[str, str]:
    """Return the header that makes a write idempotent under `name`."""
    return {"Idempotency-Key": name}


def attempt(
    http: httpx.Client,
    node: NodeProcess,
    method: str,
    path: str,
    headers: Mapping[str, str],
    body: bytes = b"",
) -> tuple[int, str, str | None]:
    """Send one attempt of a write; return its status, body and Nixie-Replay."""
    response = http.request(
        method, f"{node.url}{path}", headers=dict(headers), content=body or None
    )
    return response.status_code, response.text, response.headers.get("Nixie-Replay")


# A write retried while its first attempt waits


def test_increments_retried_while_the_first_attempt_waits_count_once(
    make_cluster: MakeCluster, http: httpx.Client
) -> None:
    """Each increment sent to a frozen node and retried on another counts once."""
    cluster = make_cluster(3)
    starts = [0, 100, -50]
    keys = [create(http, cluster[0], start, {b"Nixie-Step": b"7"}) for start in starts]
    wait_until_served(http, cluster.nodes, *keys)
    expected = [str(start + 7) for start in starts]

    # Every node is frozen once, and the retry goes to the next one.
    answers = [
        race(cluster[i], cluster[(i + 1) % 3], "POST", f"/{key}", idempotency(key))
        for i, key in enumerate(keys)
    ]
    digest = settle(http, cluster.nodes)
    seen = [values(http, cluster.nodes, key) for key in keys]
    third = [
        attempt(http, cluster[(i + 2) % 3], "POST", f"/{key}", idempotency(key))
        for i, key in enumerate(keys)
    ]

    assert all_equal(digest), digest
    assert [[(200, value)] * 2 for value in expected] == answers
    assert [[value] * 3 for value in expected] == seen
    assert [(200, value, "true") for value in expected] == third


def test_create_retried_while_the_first_attempt_waits_makes_one_counter(
    make_cluster: MakeCluster, http: httpx.Client
) -> None:
    """A create sent to a frozen node and retried on another makes one counter."""
    cluster = make_cluster(3)
    headers = idempotency("create-once") | {"Nixie-Name": "once"}

    answers = race(cluster[0], cluster[1], "POST", "/", headers, b"5")
    digest = settle(http, cluster.nodes)
    key = answers[1][1]
    listings = [http.get(f"{node.url}/").text for node in cluster.nodes]
    third = attempt(http, cluster[2], "POST", "/", headers, b"5")

    assert all_equal(digest), digest
    assert [(201, key)] * 2 == answers
    assert [key] * 3 == listings
    assert ["5"] * 3 == values(http, cluster.nodes, key)
    assert (201, key, "true") == third


def test_put_retried_while_the_first_attempt_waits_sets_the_value_once(
    make_cluster: MakeCluster, http: httpx.Client
) -> None:
    """A PUT sent to a frozen node and retried on another applies one difference."""
    cluster = make_cluster(3)
    key = create(http, cluster[0], start=5)
    wait_until_served(http, cluster.nodes, key)

    # Applied twice, the difference of 7 would leave the counter at 19.
    answers = race(cluster[2], cluster[0], "PUT", f"/{key}", idempotency(key), b"12")
    digest = settle(http, cluster.nodes)

    assert all_equal(digest), digest
    assert [(204, "")] * 2 == answers
    assert ["12"] * 3 == values(http, cluster.nodes, key)


def test_client_retries_past_a_frozen_node_and_each_write_counts_once(
    make_cluster: MakeCluster,
    http: httpx.Client,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A client whose first node is frozen times out, retries, and counts once."""
    cluster = make_cluster(3)
    stuck, other = cluster[0], cluster[1]
    keys = [create(http, other, start) for start in (0, 10, 20)]
    wait_until_served(http, cluster.nodes, *keys)
    # The client tries the first node listed that is not cooling down, the
    # frozen one, rather than a random one; it cools down once it fails.
    monkeypatch.setattr("nixie.client.random.choice", operator.itemgetter(0))
    caplog.set_level(logging.DEBUG, logger="nixie.client")

    returned = []
    with frozen(stuck):
        for key in keys:
            with Client(
                [stuck.url, other.url], timeout=CLIENT_TIMEOUT, attempts=3, cooldown=60
            ) as nixie:
                returned.append(nixie.increment(key).value)
    # The attempts that timed out may still be applied by the frozen node now.
    digest = settle(http, cluster.nodes)
    timeouts = [
        record.getMessage()
        for record in caplog.records
        if record.getMessage().startswith(f"node {stuck.url} failed: ReadTimeout")
    ]

    assert [1, 11, 21] == returned
    assert len(keys) == len(timeouts), caplog.text
    assert all_equal(digest), digest
    assert [["1"] * 3, ["11"] * 3, ["21"] * 3] == [
        values(http, cluster.nodes, key) for key in keys
    ]


# Read-your-writes


def create_everywhere(http: httpx.Client, node: NodeProcess, start: int) -> str:
    """Create a counter acknowledged only once every node has merged it."""
    response = http.post(
        f"{node.url}/", content=str(start), headers={"Nixie-Consistency": "all"}
    )
    assert 201 == response.status_code, response.text
    return response.text


def test_a_token_makes_another_node_serve_the_write_at_once(
    make_cluster: MakeCluster, http: httpx.Client
) -> None:
    """A read or a write carrying a token sees the write on a node gossip missed."""
    cluster = make_cluster(3, args=SLOW_GOSSIP)
    a, b, c = cluster.nodes
    key = create_everywhere(http, a, 5)

    written = http.post(f"{a.url}/{key}")
    token = {"Nixie-Context": written.headers["Nixie-Context"]}
    stale = values(http, [b, c], key)
    read = http.get(f"{b.url}/{key}", headers=token)
    incremented = http.post(f"{c.url}/{key}", headers=token)

    assert (200, "6") == (written.status_code, written.text)
    assert ["5", "5"] == stale
    assert (200, "6") == (read.status_code, read.text)
    assert (200, "7") == (incremented.status_code, incremented.text)


def test_a_token_the_node_cannot_reach_gets_503_until_the_writer_is_back(
    make_cluster: MakeCluster, http: httpx.Client
) -> None:
    """With the writer frozen, a token read elsewhere is 503, never the stale value."""
    cluster = make_cluster(3, args=SLOW_GOSSIP)
    a, b, c = cluster.nodes
    key = create_everywhere(http, a, 5)
    written = http.post(f"{a.url}/{key}")
    token = {"Nixie-Context": written.headers["Nixie-Context"]}

    with frozen(a):
        stale = values(http, [b, c], key)
        refused = http.get(f"{b.url}/{key}", headers=token)
    read = http.get(f"{b.url}/{key}", headers=token)

    assert ["5", "5"] == stale
    assert 503 == refused.status_code
    assert refused.text.startswith("Nixie-Context:"), refused.text
    assert "Nixie-Context" not in refused.headers
    assert (200, "6") == (read.status_code, read.text)


# Retention of idempotency keys


def test_a_node_forgets_an_idempotency_key_after_its_retention(
    tmp_path: Path, http: httpx.Client
) -> None:
    """A write retried after twice --idempotency-retention is a new write."""
    args = ["--idempotency-retention", str(RETENTION)]
    with run_node(tmp_path / "node", args=args) as node:
        key = create(http, node)
        first = attempt(http, node, "POST", f"/{key}", idempotency("late"))
        # Receipt upkeep runs every quarter of the window; allow a few windows.
        settled(node.log, lambda log: PURGED.search(log) is not None, 5 * RETENTION)
        late = attempt(http, node, "POST", f"/{key}", idempotency("late"))

    assert (200, "1", None) == first
    assert (200, "2", None) == late, node.log()
