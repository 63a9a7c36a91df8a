"""Tests of clusters of real `nixie-cli` processes gossiping over loopback.

Each test picks its ports up front, so every node starts with all the others
as peers, and waits for the cluster to converge under a deadline. Nodes are
stopped, killed, wiped, copied and partitioned as an operator or a crash
would; what the tests check is only what clients can see over HTTP.
"""

import asyncio
import contextlib
import ipaddress
import random
import shutil
import socket
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Protocol, TypeVar

import httpx
import pytest

from nixie import codec, crdt
from nixie.crdt import Stamp
from nixie.digest import bucket_of
from nixie.hlc import from_millis, wall_millis
from nixie.node import new_key
from tests.nodeproc import HOST, NodeProcess, free_port, run_node

pytestmark = pytest.mark.process

T = TypeVar("T")

SECRET = "process-tests-secret"

# Seconds between anti-entropy rounds; the default peer timeout (2 s) exceeds it.
GOSSIP_INTERVAL = 0.1

# Seconds any single request to a node may take.
REQUEST_TIMEOUT = 10.0

# Seconds a cluster gets to agree after the last write. A few rounds normally
# suffice: a restarted node repairs against its peers in its first round,
# although they retry it only as their back-off allows (capped at 10 s).
CONVERGE_TIMEOUT = 20.0

# Seconds between two looks at the cluster while waiting.
POLL_INTERVAL = 0.05

# What a node serves for a counter: status, body, and Nixie-* headers as bytes.
Served = tuple[int, str, dict[bytes, bytes]]


# Waiting


def wait_until(
    predicate: Callable[[], bool], timeout: float, what: str = "the condition"
) -> None:
    """Poll `predicate` every 50 ms; fail the test if it is not true by `timeout`."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"{what} did not hold within {timeout} s")
        time.sleep(POLL_INTERVAL)


def settled(
    observe: Callable[[], T],
    done: Callable[[T], bool],
    timeout: float = CONVERGE_TIMEOUT,
) -> T:
    """Poll `observe` until `done` accepts what it returns, or until `timeout`.

    Return the last observation either way, so that the test's own assert
    shows what the cluster ended with when it did not converge.
    """
    deadline = time.monotonic() + timeout
    seen = observe()
    while not done(seen) and time.monotonic() < deadline:
        time.sleep(POLL_INTERVAL)
        seen = observe()
    return seen


def all_equal(seen: Sequence[object]) -> bool:
    """Tell whether every node reported the same thing."""
    return all(item == seen[0] for item in seen)


# The cluster


class Cluster:
    """Nodes on ports chosen up front, each with every other node as a peer."""

    def __init__(
        self,
        root: Path,
        size: int,
        secret: str | None,
        args: Sequence[str],
        stack: contextlib.ExitStack,
    ) -> None:
        self.root = root
        self.secret = secret
        self.args = list(args)
        self.ports: list[int] = []
        self._stack = stack
        self._running: dict[int, tuple[NodeProcess, contextlib.ExitStack]] = {}
        for _ in range(size):
            self.add()

    def __getitem__(self, index: int) -> NodeProcess:
        """Return the running node at `index`."""
        return self._running[index][0]

    @property
    def nodes(self) -> list[NodeProcess]:
        """Return the running nodes in index order."""
        return [self._running[index][0] for index in sorted(self._running)]

    def data_dir(self, index: int) -> Path:
        """Return the data dir the node at `index` uses by default."""
        return self.root / f"node{index}"

    def add(self) -> int:
        """Reserve a port for one more node and return its index.

        Nodes started from now on list it among their peers; the running
        ones learn it from gossip.
        """
        port = free_port()
        while port in self.ports:
            port = free_port()
        self.ports.append(port)
        return len(self.ports) - 1

    def start(
        self,
        index: int,
        data_dir: Path | None = None,
        secret: str | None = None,
    ) -> NodeProcess:
        """Start the node at `index`, on its own data dir unless given one.

        `secret` replaces the cluster's secret, to cut the node off.
        """
        peers = [f"http://{HOST}:{port}" for i, port in enumerate(self.ports)]
        del peers[index]
        args = ["--peers", ",".join(peers), "--gossip-interval", str(GOSSIP_INTERVAL)]
        secret = secret or self.secret
        if secret:
            args += ["--cluster-secret", secret]

        # Each node gets its own stack so that a test can stop one; the
        # fixture's stack stops whatever is still running at the end.
        lifetime = contextlib.ExitStack()
        self._stack.callback(lifetime.close)
        node = lifetime.enter_context(
            run_node(
                data_dir or self.data_dir(index),
                self.ports[index],
                args=[*args, *self.args],
            )
        )
        self._running[index] = (node, lifetime)
        return node

    def stop(self, index: int) -> None:
        """Stop the node at `index` with SIGTERM, as an operator would."""
        _, lifetime = self._running.pop(index)
        lifetime.close()

    def kill(self, index: int) -> None:
        """Kill the node at `index` with SIGKILL, as a crash would."""
        self[index].process.kill()
        self[index].process.wait(timeout=REQUEST_TIMEOUT)
        self.stop(index)


class MakeCluster(Protocol):
    """Start a cluster of `size` nodes and return it."""

    def __call__(
        self, size: int, secret: str | None = SECRET, args: Sequence[str] = ()
    ) -> Cluster: ...


@pytest.fixture
def make_cluster(tmp_path: Path) -> Iterator[MakeCluster]:
    """Yield a factory of started clusters; every node is stopped at the end."""
    with contextlib.ExitStack() as stack:

        def make(
            size: int, secret: str | None = SECRET, args: Sequence[str] = ()
        ) -> Cluster:
            cluster = Cluster(tmp_path, size, secret, args, stack)
            for index in range(size):
                cluster.start(index)
            return cluster

        yield make


@pytest.fixture
def http() -> Iterator[httpx.Client]:
    """Yield an HTTP client for requests to any node."""
    with httpx.Client(timeout=REQUEST_TIMEOUT) as client:
        yield client


# Talking to nodes


def create(
    http: httpx.Client,
    node: NodeProcess,
    start: int = 0,
    headers: dict[bytes, bytes] | None = None,
) -> str:
    """Create a counter on `node` and return its key."""
    response = http.post(f"{node.url}/", content=str(start), headers=headers)
    assert 201 == response.status_code, response.text
    return response.text


def served(http: httpx.Client, node: NodeProcess, key: str) -> Served:
    """Return what `node` serves for `key`."""
    response = http.get(f"{node.url}/{key}")
    metadata = {
        name.lower(): value
        for name, value in response.headers.raw
        if name.lower() in (b"nixie-name", b"nixie-description", b"nixie-step")
    }
    return response.status_code, response.text, metadata


def values(http: httpx.Client, nodes: list[NodeProcess], key: str) -> list[str]:
    """Return the body each node answers to GET of `key`."""
    return [http.get(f"{node.url}/{key}").text for node in nodes]


def view(
    http: httpx.Client, node: NodeProcess, keys: Sequence[str]
) -> tuple[str, list[Served]]:
    """Return `node`'s listing and what it serves for each of `keys`."""
    return http.get(f"{node.url}/").text, [served(http, node, key) for key in keys]


def views(
    http: httpx.Client, nodes: list[NodeProcess], keys: Sequence[str]
) -> list[tuple[str, list[Served]]]:
    """Return every node's view of `keys`."""
    return [view(http, node, keys) for node in nodes]


def wait_until_served(http: httpx.Client, nodes: list[NodeProcess], *keys: str) -> None:
    """Wait until every node serves every one of `keys`."""
    wait_until(
        lambda: all(
            http.get(f"{node.url}/{key}").status_code == 200
            for node in nodes
            for key in keys
        ),
        CONVERGE_TIMEOUT,
        f"every node serving {', '.join(keys)}",
    )


def replica_of(http: httpx.Client, node: NodeProcess) -> str:
    """Return the replica id `node` reports in its cluster status."""
    replica: str = http.get(f"{node.url}/_nixie/cluster").json()["replica"]
    return replica


def increment_from_many_clients(urls: list[str], clients: int, each: int) -> list[int]:
    """Send `each` increments from each of `clients` concurrent clients.

    Every increment goes to one of `urls` picked at random; return the status
    codes of all the answers. Each client is a thread with its own connection
    pool: one asyncio pool shared by 50 tasks is several times slower.
    """
    rng = random.Random(7312)
    plans = [[rng.choice(urls) for _ in range(each)] for _ in range(clients)]

    def client(targets: list[str]) -> list[int]:
        with httpx.Client(timeout=REQUEST_TIMEOUT) as http:
            return [http.post(url).status_code for url in targets]

    with ThreadPoolExecutor(max_workers=clients) as pool:
        answers = list(pool.map(client, plans))
    return [status for statuses in answers for status in statuses]


def utf8(text: str) -> bytes:
    """Encode a header value as the raw UTF-8 bytes Nixie expects."""
    return text.encode()


# Convergence


def test_increments_on_different_nodes_add_up(
    make_cluster: MakeCluster, http: httpx.Client
) -> None:
    """5000 increments from 50 clients on random nodes make 5000 on every node."""
    cluster = make_cluster(3)
    key = create(http, cluster[0])
    wait_until_served(http, cluster.nodes, key)
    urls = [f"{node.url}/{key}" for node in cluster.nodes]

    statuses = increment_from_many_clients(urls, clients=50, each=100)
    seen = settled(
        lambda: values(http, cluster.nodes, key), lambda v: v == ["5000"] * 3
    )

    assert 5000 == statuses.count(200)
    assert ["5000"] * 3 == seen


def test_counters_are_served_with_metadata_by_every_node(
    make_cluster: MakeCluster, http: httpx.Client
) -> None:
    """Counters created on different nodes are listed and served alike by all."""
    cluster = make_cluster(3)
    specs = [
        (0, 5, {b"nixie-name": utf8("Zähler ☕"), b"nixie-step": b"3"}),
        (1, -2, {b"nixie-description": utf8("visites de l'été"), b"nixie-step": b"-1"}),
        (2, 0, {b"nixie-name": utf8("名前"), b"nixie-description": b"plain"}),
        (0, 9, {}),
    ]
    keys = [create(http, cluster[i], start, headers) for i, start, headers in specs]
    expected = [
        (200, str(start), {b"nixie-step": b"1", **headers})
        for _, start, headers in specs
    ]

    seen = settled(
        lambda: views(http, cluster.nodes, keys),
        lambda v: all(set(listing.split("\n")) == set(keys) for listing, _ in v),
    )
    listings = [http.get(f"{node.url}/").content for node in cluster.nodes]

    assert [expected] * 3 == [counters for _, counters in seen]
    assert [set(keys)] * 3 == [set(listing.split("\n")) for listing, _ in seen]
    assert all_equal(listings), listings


def test_concurrent_patches_of_one_field_agree_on_one_winner(
    make_cluster: MakeCluster, http: httpx.Client
) -> None:
    """Two nodes renaming a counter at once end with the same one of both names."""
    cluster = make_cluster(3)
    key = create(http, cluster[0], headers={b"Nixie-Name": b"before"})
    wait_until_served(http, cluster.nodes, key)
    names = [utf8("from A ✓"), utf8("from B ✓")]

    # Both PATCHes are sent before either node answers, let alone gossips.
    requests = [
        httpx.Request("PATCH", f"{node.url}/{key}", headers={b"Nixie-Name": name})
        for node, name in zip(cluster.nodes[:2], names, strict=True)
    ]
    answers = asyncio.run(_send_together(requests))
    seen = settled(
        lambda: [served(http, node, key)[2][b"nixie-name"] for node in cluster.nodes],
        lambda v: all_equal(v) and v[0] != b"before",
    )

    assert [204, 204] == answers
    assert all_equal(seen), seen
    assert seen[0] in names


def test_concurrent_patches_of_different_fields_both_survive(
    make_cluster: MakeCluster, http: httpx.Client
) -> None:
    """A description set on one node and a step set on another both reach all."""
    cluster = make_cluster(3)
    key = create(http, cluster[0], headers={b"Nixie-Name": b"kept"})
    wait_until_served(http, cluster.nodes, key)
    expected = (
        200,
        "0",
        {b"nixie-step": b"-4", b"nixie-name": b"kept", b"nixie-description": b"new"},
    )

    requests = [
        httpx.Request(
            "PATCH", f"{cluster[0].url}/{key}", headers={b"Nixie-Description": b"new"}
        ),
        httpx.Request(
            "PATCH", f"{cluster[1].url}/{key}", headers={b"Nixie-Step": b"-4"}
        ),
    ]
    answers = asyncio.run(_send_together(requests))
    seen = settled(
        lambda: [served(http, node, key) for node in cluster.nodes],
        lambda v: v == [expected] * 3,
    )

    assert [204, 204] == answers
    assert [expected] * 3 == seen


async def _send_together(requests: list[httpx.Request]) -> list[int]:
    """Send `requests` concurrently; return their status codes in order."""
    async with httpx.AsyncClient(timeout=REQUEST_TIMEOUT) as client:
        answers = await asyncio.gather(*(client.send(r) for r in requests))
    return [answer.status_code for answer in answers]


# Deletion


def test_delete_wins_over_concurrent_writes(
    make_cluster: MakeCluster, http: httpx.Client
) -> None:
    """Increments and patches on a node cut off from a delete do not undo it."""
    cluster = make_cluster(3)
    key = create(http, cluster[0], start=3)
    wait_until_served(http, cluster.nodes, key)

    # A node with another secret can neither send to its peers nor be heard.
    cluster.stop(2)
    isolated = cluster.start(2, secret="not-the-cluster-secret")
    deleted = http.delete(f"{cluster[0].url}/{key}")
    wait_until(
        lambda: http.get(f"{cluster[1].url}/{key}").status_code == 404,
        CONVERGE_TIMEOUT,
        "the delete reaching the second node",
    )
    writes = [http.post(f"{isolated.url}/{key}").status_code for _ in range(5)]
    writes.append(
        http.patch(f"{isolated.url}/{key}", headers={b"Nixie-Name": b"x"}).status_code
    )

    # Healing: the node rejoins with the cluster's secret, on its data dir.
    cluster.stop(2)
    cluster.start(2)
    seen = settled(lambda: views(http, cluster.nodes, [key]), all_equal)

    assert 204 == deleted.status_code
    assert [200] * 5 + [204] == writes
    assert [("", [(404, f"Unknown key {key}", {})])] * 3 == seen


def test_node_down_during_a_delete_does_not_revive_the_counter(
    make_cluster: MakeCluster, http: httpx.Client
) -> None:
    """A node restarted with a counter deleted while it was down forgets it."""
    cluster = make_cluster(3)
    key = create(http, cluster[0], start=3)
    wait_until_served(http, cluster.nodes, key)

    cluster.stop(2)
    deleted = http.delete(f"{cluster[0].url}/{key}")
    wait_until(
        lambda: http.get(f"{cluster[1].url}/{key}").status_code == 404,
        CONVERGE_TIMEOUT,
        "the delete reaching the second node",
    )
    cluster.start(2)
    seen = settled(lambda: views(http, cluster.nodes, [key]), all_equal)

    assert 204 == deleted.status_code
    assert [("", [(404, f"Unknown key {key}", {})])] * 3 == seen


# Restarts and data dirs


def test_restarted_node_keeps_its_state_and_catches_up(
    make_cluster: MakeCluster, http: httpx.Client
) -> None:
    """A node restarted on its data dir keeps its id and learns what it missed."""
    cluster = make_cluster(3)
    kept = create(http, cluster[2], start=1, headers={b"Nixie-Name": b"kept"})
    http.post(f"{cluster[2].url}/{kept}")
    doomed = create(http, cluster[0])
    wait_until_served(http, cluster.nodes, kept, doomed)
    replica = replica_of(http, cluster[2])

    cluster.stop(2)
    for _ in range(5):
        http.post(f"{cluster[0].url}/{kept}")
    http.patch(f"{cluster[1].url}/{kept}", headers={b"Nixie-Name": utf8("renamed ✓")})
    born = create(http, cluster[1], start=7)
    http.delete(f"{cluster[0].url}/{doomed}")
    cluster.start(2)
    expected = (
        f"{kept}\n{born}",
        [
            (200, "7", {b"nixie-step": b"1", b"nixie-name": utf8("renamed ✓")}),
            (404, f"Unknown key {doomed}", {}),
            (200, "7", {b"nixie-step": b"1"}),
        ],
    )
    seen = settled(
        lambda: views(http, cluster.nodes, [kept, doomed, born]),
        lambda v: v == [expected] * 3,
    )

    assert replica == replica_of(http, cluster[2])
    assert [expected] * 3 == seen


def test_wiped_node_rejoins_under_a_new_id_and_loses_nothing(
    make_cluster: MakeCluster, http: httpx.Client
) -> None:
    """A node killed and wiped takes a new id, catches up, and every write counts."""
    cluster = make_cluster(3)
    key = create(http, cluster[0])
    wait_until_served(http, cluster.nodes, key)
    statuses = [http.post(f"{cluster[0].url}/{key}").status_code for _ in range(40)]
    wait_until(
        lambda: http.get(f"{cluster[1].url}/{key}").text == "40",
        CONVERGE_TIMEOUT,
        "the second node seeing 40",
    )
    replica = cluster[0].replica_id()

    cluster.kill(0)
    shutil.rmtree(cluster.data_dir(0))
    wiped = cluster.start(0)
    wait_until_served(http, [wiped], key)
    statuses += [http.post(f"{wiped.url}/{key}").status_code for _ in range(5)]
    seen = settled(lambda: values(http, cluster.nodes, key), lambda v: v == ["45"] * 3)

    assert [200] * 45 == statuses
    assert replica != wiped.replica_id()
    assert ["45"] * 3 == seen


def test_copied_data_dir_starts_a_node_with_a_new_id(
    make_cluster: MakeCluster, http: httpx.Client
) -> None:
    """A node started on a copy of another's data dir takes its own replica id."""
    cluster = make_cluster(3)
    key = create(http, cluster[0], start=10)
    wait_until_served(http, cluster.nodes, key)
    replica = replica_of(http, cluster[0])

    cluster.stop(0)
    copy = cluster.add()
    shutil.copytree(cluster.data_dir(0), cluster.data_dir(copy))
    original = cluster.start(0)
    clone = cluster.start(copy)
    answers = [http.post(f"{original.url}/{key}").status_code for _ in range(5)]
    answers += [http.post(f"{clone.url}/{key}").status_code for _ in range(7)]
    seen = settled(lambda: values(http, cluster.nodes, key), lambda v: v == ["22"] * 4)

    assert replica == replica_of(http, original)
    assert replica != replica_of(http, clone)
    assert [200] * 12 == answers
    assert ["22"] * 4 == seen


# Peer authentication


def _intruding_message(path: str, key: str) -> dict[str, Any]:
    """Return a peer message for `path` that would create the counter `key`."""
    state = codec.encode_state(
        crdt.create(Stamp(from_millis(wall_millis()), "intruder"), start=99)
    )
    sender = {"replica": "intruder", "instance": "i1", "url": f"http://{HOST}:9"}
    if path == "/_nixie/repair":
        return {"from": sender, "buckets": [bucket_of(key)], "states": {key: state}}
    return {"from": sender, "deltas": {key: state}, "root": 0, "peers": []}


@pytest.mark.parametrize("path", ["/_nixie/gossip", "/_nixie/repair"])
def test_peer_requests_without_the_secret_are_refused(
    make_cluster: MakeCluster, http: httpx.Client, path: str
) -> None:
    """Peer messages without the right bearer token get 401 and change nothing."""
    (node,) = make_cluster(1).nodes
    key = new_key()
    body = codec.dumps(_intruding_message(path, key)).encode()
    wrong = [
        {},
        {"Authorization": "Bearer wrong"},
        {"Authorization": f"Bearer {SECRET}x"},
        {"Authorization": f"Basic {SECRET}"},
        {"Authorization": SECRET},
    ]

    refused = [
        http.post(node.url + path, content=body, headers=headers).status_code
        for headers in wrong
    ]
    listing_after_refusals = http.get(f"{node.url}/").text
    accepted = http.post(
        node.url + path, content=body, headers={"Authorization": f"Bearer {SECRET}"}
    )

    assert [401] * len(wrong) == refused
    assert "" == listing_after_refusals
    assert 200 == accepted.status_code
    assert key == http.get(f"{node.url}/").text


def _non_loopback_address() -> str | None:
    """Return an address of this machine other than loopback, if it has one."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            # Connecting a UDP socket sends nothing; it only picks a route.
            probe.connect(("192.0.2.1", 9))
        except OSError:
            return None
        address: str = probe.getsockname()[0]
    return None if ipaddress.ip_address(address).is_loopback else address


def test_node_without_a_secret_refuses_peers_off_loopback(
    make_cluster: MakeCluster, http: httpx.Client
) -> None:
    """Without a secret, a peer message from a non-loopback address gets 401."""
    address = _non_loopback_address()
    if address is None:
        pytest.skip("this machine has no address other than loopback")
    (node,) = make_cluster(1, secret=None, args=["--host", "0.0.0.0"]).nodes
    key = new_key()
    body = codec.dumps(_intruding_message("/_nixie/gossip", key)).encode()

    remote = http.post(f"http://{address}:{node.port}/_nixie/gossip", content=body)
    listing_after_refusal = http.get(f"{node.url}/").text
    local = http.post(f"{node.url}/_nixie/gossip", content=body)

    assert 401 == remote.status_code
    assert "" == listing_after_refusal
    assert 200 == local.status_code
    assert key == http.get(f"{node.url}/").text
