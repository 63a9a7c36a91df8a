"""Faults against the Compose cluster, each judged by the Jepsen-style checker.

Every test runs client threads that increment counters (steps of both signs)
on random nodes while a fault happens, heals the fault, waits for the nodes
to agree, and asserts the checker's verdict: every node serves the same value
for every counter, equal to the start plus every acknowledged increment plus
some of the unknown ones, and nothing that failed.
"""

import contextlib
import statistics
import time

import httpx

from integration.faults.checker import OK, History, Verdict, Workload, check
from integration.faults.conftest import ComposeCluster

STEPS = [1, -1, 3, -7]


def run_checked(
    cluster: ComposeCluster,
    urls: list[str],
    fault: object,
    probe_urls: list[str] | None = None,
) -> tuple[Verdict, History]:
    """Run the workload around `fault()`, converge, and check the history.

    With `probe_urls`, two more clients increment only those nodes, into the
    same history, so they keep going while the main clients wait on a node
    that hangs.
    """
    counters = cluster.create_counters(STEPS)
    history = History()
    with contextlib.ExitStack() as stack:
        stack.enter_context(Workload(urls, list(counters), history=history))
        if probe_urls:
            stack.enter_context(
                Workload(
                    probe_urls, list(counters), clients=2, seed=99, history=history
                )
            )
        time.sleep(1.0)
        fault()  # type: ignore[operator]
        time.sleep(1.0)
    cluster.heal()
    seconds = cluster.converge(list(counters))
    verdict = check(history, counters, cluster.values(list(counters)), seconds)
    print(verdict.report)
    return verdict, history


def test_writes_through_every_node_and_the_balancer_converge(
    cluster: ComposeCluster,
) -> None:
    """Writes spread over the nodes and the load balancer all count, once."""
    urls = [*cluster.urls.values(), cluster.lb_url]

    verdict, history = run_checked(cluster, urls, lambda: time.sleep(2.0))

    assert verdict.valid, verdict.report
    lb_ok = [op for op in history.operations if op.node == cluster.lb_url]
    assert any(op.outcome == OK for op in lb_ok)


def test_partitioned_node_keeps_writing_and_merges_back(
    cluster: ComposeCluster,
) -> None:
    """Both sides of a partition take writes, and all of them count after it heals."""
    started: list[float] = []

    def partition() -> None:
        cluster.disconnect("nixie3")
        started.append(time.monotonic())
        time.sleep(4.0)
        cluster.connect("nixie3")

    verdict, history = run_checked(cluster, list(cluster.urls.values()), partition)

    assert verdict.valid, verdict.report
    during = [
        op
        for op in history.operations
        if op.outcome == OK and started[0] < op.started < started[0] + 3.5
    ]
    assert {op.node for op in during} == set(cluster.urls.values())


def test_killed_node_loses_nothing_acknowledged(cluster: ComposeCluster) -> None:
    """A node killed with SIGKILL under load comes back and catches up."""

    def crash() -> None:
        cluster.docker("kill", "--signal", "KILL", cluster.container("nixie2"))
        time.sleep(2.0)
        cluster.docker("start", cluster.container("nixie2"))
        cluster.wait_serving(("nixie2",))

    verdict, _ = run_checked(cluster, list(cluster.urls.values()), crash)

    assert verdict.valid, verdict.report


def test_frozen_node_does_not_slow_the_others(cluster: ComposeCluster) -> None:
    """While one node is paused the others serve at their usual latency."""
    window: list[float] = []
    reads: list[float] = []
    others = [cluster.urls["nixie1"], cluster.urls["nixie2"]]

    def freeze() -> None:
        cluster.docker("pause", cluster.container("nixie3"))
        window.append(time.monotonic())
        time.sleep(1.0)
        for url in others * 10:
            started = time.monotonic()
            assert httpx.get(f"{url}/", timeout=2).status_code == 200
            reads.append(time.monotonic() - started)
        time.sleep(2.0)
        window.append(time.monotonic())
        cluster.docker("unpause", cluster.container("nixie3"))

    verdict, history = run_checked(
        cluster, list(cluster.urls.values()), freeze, probe_urls=others
    )

    assert verdict.valid, verdict.report
    writes = [op for op in history.operations if op.node in others and op.outcome == OK]
    before = [op.latency for op in writes if op.started < window[0]]
    during = [op.latency for op in writes if window[0] + 0.5 < op.started < window[1]]
    assert len(during) > 20
    p95_before = statistics.quantiles(before, n=20)[-1]
    p95_during = statistics.quantiles(during, n=20)[-1]
    assert p95_during < max(5 * p95_before, 0.25), (p95_before, p95_during)
    assert max(reads) < 0.5


def test_wiped_node_returns_with_a_fresh_id_and_nothing_lost(
    cluster: ComposeCluster,
) -> None:
    """A node whose volume is destroyed rejoins under a new id, losing no write."""
    old_id = cluster.replica_id("nixie2")

    def wipe() -> None:
        cluster.compose("rm", "--stop", "--force", "nixie2")
        cluster.docker("volume", "rm", "nixie-faults_nixie2-data")
        cluster.compose("up", "--detach", "--wait", "--no-build", "nixie2")

    verdict, _ = run_checked(cluster, list(cluster.urls.values()), wipe)

    assert verdict.valid, verdict.report
    assert cluster.replica_id("nixie2") != old_id


def test_the_balancer_keeps_the_peer_endpoints_to_the_nodes(
    cluster: ComposeCluster,
) -> None:
    """Through the balancer the peer endpoints are refused; the rest is served."""
    peer_paths = [
        "/_nixie/gossip",
        "/_nixie/digest",
        "/_nixie/repair",
        "/_nixie/sync",
        "/_nixie/%67ossip",
        "/%5Fnixie/sync",
    ]

    refused = [
        httpx.post(f"{cluster.lb_url}{path}", content="{}", timeout=5).status_code
        for path in peer_paths
    ]
    health = httpx.get(f"{cluster.lb_url}/_nixie/health", timeout=5)
    created = httpx.post(f"{cluster.lb_url}/", content="7", timeout=5)

    assert [403] * len(peer_paths) == refused
    assert 200 == health.status_code
    assert 201 == created.status_code
