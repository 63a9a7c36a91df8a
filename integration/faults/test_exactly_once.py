"""Exactly-once increments and read-your-writes tokens on the Compose cluster.

The clients here are `nixie.client.Client`: each increment is retried on
other nodes under one Idempotency-Key until a node answers, so with faults
healed every increment issued counts exactly once, and none is left unknown.
"""

import logging
import time
from collections import Counter

import httpx
import pytest

from integration.faults.checker import History, RetryingWorkload, check
from integration.faults.conftest import ComposeCluster

STEPS = [1, -1, 3, -7]

# Seconds a token read may keep answering 503 after its node is reconnected.
RECONNECT_TIMEOUT = 30.0

REQUEST_TIMEOUT = 5.0  # seconds, for one request of the test itself

# Seconds each attempt of a retrying client may take; a node pulling what a
# token names gives up after its sync timeout, 1 s, so this must be longer.
CLIENT_TIMEOUT = 2.0
COOLDOWN = 2.0  # seconds a client skips a node that failed


def test_retried_increments_count_once_through_freeze_crash_and_partition(
    cluster: ComposeCluster, caplog: pytest.LogCaptureFixture
) -> None:
    """Through a freeze, a crash and a partition, every increment issued counts once."""
    counters = cluster.create_counters(STEPS)
    history = History()
    caplog.set_level(logging.DEBUG, logger="nixie.client")

    urls = list(cluster.urls.values())
    with RetryingWorkload(
        urls,
        list(counters),
        timeout=CLIENT_TIMEOUT,
        cooldown=COOLDOWN,
        history=history,
    ):
        time.sleep(1.0)
        cluster.disconnect("nixie3")
        # Attempts sent to the frozen node time out and are retried elsewhere;
        # thawed, it applies them too, just before it crashes.
        cluster.docker("pause", cluster.container("nixie2"))
        # Longer than a client's timeout and cooldown together, so that even
        # clients that had just put nixie2 in cooldown (after a 503 from a
        # token pull across the cut, say) send it attempts that time out.
        time.sleep(CLIENT_TIMEOUT + COOLDOWN + 1.5)
        cluster.docker("unpause", cluster.container("nixie2"))
        time.sleep(0.3)
        cluster.docker("kill", "--signal", "KILL", cluster.container("nixie2"))
        time.sleep(3.0)
        cluster.docker("start", cluster.container("nixie2"))
        cluster.wait_serving(("nixie2",))
        time.sleep(1.0)
        cluster.connect("nixie3")
        time.sleep(1.0)
    cluster.heal()
    seconds = cluster.converge(list(counters))
    verdict = check(
        history, counters, cluster.values(list(counters)), seconds, exact=True
    )
    events = _client_events(caplog.records)
    print(verdict.report)
    print(f"  client: {dict(events)}")

    assert verdict.valid, verdict.report
    # Timed-out attempts are the ones a node may apply without answering.
    assert events["ReadTimeout"], "no attempt timed out: the freeze missed"


def test_a_token_read_on_a_partitioned_node_is_503_until_it_heals(
    cluster: ComposeCluster,
) -> None:
    """A node cut off from a write answers its token with 503, never a stale value."""
    writer, reader = cluster.urls["nixie1"], cluster.urls["nixie2"]
    (key,) = cluster.create_counters([1])

    # Cut off before the write, so that no gossip round can carry it across.
    cluster.disconnect("nixie2")
    written = httpx.post(f"{writer}/{key}", timeout=REQUEST_TIMEOUT)
    token = {"Nixie-Context": written.headers["Nixie-Context"]}
    stale = httpx.get(f"{reader}/{key}", timeout=REQUEST_TIMEOUT).text
    refused = httpx.get(f"{reader}/{key}", headers=token, timeout=REQUEST_TIMEOUT)
    cluster.connect("nixie2")
    answers = _read_until_served(f"{reader}/{key}", token)

    assert (200, "1001") == (written.status_code, written.text)
    assert "1000" == stale
    assert 503 == refused.status_code
    assert refused.text.startswith("Nixie-Context:"), refused.text
    assert (200, "1001") == answers[-1]
    assert all(status == 503 for status, _ in answers[:-1]), answers


def _client_events(records: list[logging.LogRecord]) -> Counter[str]:
    """Count the client's failed attempts by error type or status, and its replays."""
    events: Counter[str] = Counter()
    for record in records:
        # "node URL failed: ErrorType: ...", "node URL answered 503", or
        # "METHOD PATH replayed by URL".
        _, _, outcome = record.getMessage().partition(" ")[2].partition(" ")
        if outcome.startswith("failed: "):
            events[outcome.removeprefix("failed: ").partition(":")[0]] += 1
        elif outcome.startswith(("answered ", "replayed ")):
            events[outcome.rpartition(" by ")[0] or outcome] += 1
    return events


def _read_until_served(url: str, headers: dict[str, str]) -> list[tuple[int, str]]:
    """Read `url` until it answers 200; return every answer, the last one 200."""
    answers: list[tuple[int, str]] = []
    deadline = time.monotonic() + RECONNECT_TIMEOUT
    while time.monotonic() < deadline:
        response = httpx.get(url, headers=headers, timeout=REQUEST_TIMEOUT)
        answers.append((response.status_code, response.text))
        if response.status_code == 200:
            break
        time.sleep(0.2)
    return answers
