"""Anti-entropy between in-process nodes, rounds driven by hand."""

import logging
import time
from pathlib import Path

import pytest

from nixie.membership import Status
from tests.harness import Cluster, InProcessNode, create

pytestmark = pytest.mark.anyio


async def value(member: InProcessNode, key: str) -> int | None:
    response = await member.client.get(f"/{key}")
    return int(response.text) if response.status_code == 200 else None


async def test_creation_reaches_every_node_in_one_round(cluster: Cluster) -> None:
    """A counter created on one node is served, with metadata, by all after a round."""
    a, b, c = await cluster.add_three()
    key = await create(a, 5, **{"Nixie-Name": "visits", "Nixie-Step": "3"})

    await a.round()

    for member in (b, c):
        response = await member.client.get(f"/{key}")
        assert (response.status_code, response.text) == (200, "5")
        assert response.headers["nixie-name"] == "visits"
        assert response.headers["nixie-step"] == "3"


async def test_increments_on_every_node_add_up(cluster: Cluster) -> None:
    """Increments taken by different nodes sum up once the nodes have gossiped."""
    nodes = await cluster.add_three()
    key = await create(nodes[0])
    await cluster.rounds()

    for i in range(30):
        response = await nodes[i % 3].client.post(f"/{key}")
        assert response.status_code == 200
    await cluster.rounds(2)

    assert [30, 30, 30] == [await value(m, key) for m in nodes]
    assert cluster.converged()


async def test_listings_are_byte_identical(cluster: Cluster) -> None:
    """Converged nodes list the same keys in the same order."""
    nodes = await cluster.add_three()
    for member in nodes * 3:
        await create(member)

    await cluster.rounds(2)

    bodies = {(await m.client.get("/")).content for m in nodes}
    assert len(bodies) == 1
    assert len(bodies.pop().split(b"\n")) == 9


async def test_partitioned_writes_merge_after_healing(cluster: Cluster) -> None:
    """Writes on both sides of a partition all count once it heals."""
    a, b, c = await cluster.add_three()
    key = await create(a, 100)
    await cluster.rounds()
    cluster.network.partition([a.url], [b.url, c.url])

    for _ in range(4):
        await a.client.post(f"/{key}")
    for _ in range(6):
        await c.client.post(f"/{key}")
    await cluster.rounds(2)
    split = [await value(m, key) for m in (a, b, c)]
    cluster.heal()
    await cluster.rounds(2)

    assert [104, 106, 106] == split
    assert [110, 110, 110] == [await value(m, key) for m in (a, b, c)]


async def test_delete_wins_over_concurrent_writes(cluster: Cluster) -> None:
    """A delete on one side of a partition beats increments on the other."""
    a, b, c = await cluster.add_three()
    key = await create(a)
    await cluster.rounds()
    cluster.network.partition([a.url], [b.url, c.url])

    assert (await a.client.delete(f"/{key}")).status_code == 204
    await b.client.post(f"/{key}")
    await c.client.patch(f"/{key}", headers={"Nixie-Name": "late"})
    cluster.heal()
    await cluster.rounds(2)

    for member in (a, b, c):
        assert (await member.client.get(f"/{key}")).status_code == 404
        assert (await member.client.get("/")).text == ""


async def test_concurrent_patches_converge(cluster: Cluster) -> None:
    """Patches of one field converge to one value; patches of two fields both stay."""
    a, b, _ = await cluster.add_three()
    key = await create(a)
    await cluster.rounds()

    await a.client.patch(f"/{key}", headers={"Nixie-Name": "from-a"})
    await b.client.patch(f"/{key}", headers={"Nixie-Name": "from-b"})
    await a.client.patch(f"/{key}", headers={"Nixie-Description": "about"})
    await b.client.patch(f"/{key}", headers={"Nixie-Step": "7"})
    await cluster.rounds(2)

    seen = set()
    for member in cluster.nodes:
        headers = (await member.client.get(f"/{key}")).headers
        seen.add(
            (headers["nixie-name"], headers["nixie-description"], headers["nixie-step"])
        )
    assert len(seen) == 1
    name, description, step = seen.pop()
    assert name in ("from-a", "from-b")
    assert (description, step) == ("about", "7")


async def test_new_node_catches_up_by_repair(cluster: Cluster) -> None:
    """A node that joins late receives every counter, more than one push holds."""
    a = await cluster.add()
    keys = [a.node.create(start=i)[0] for i in range(2500)]
    a.node.delete(keys[0])

    late = await cluster.add(peers=[a.url])
    await cluster.rounds(3)

    assert cluster.converged()
    assert len(late.node) == 2500
    assert await value(late, keys[-1]) == 2499
    assert await value(late, keys[0]) is None


async def test_a_finished_repair_is_logged_once(
    cluster: Cluster, caplog: pytest.LogCaptureFixture
) -> None:
    """The operator sees when a repair ends, and no such line once in sync."""
    a = await cluster.add()
    for i in range(10):
        a.node.create(start=i)
    late = await cluster.add(peers=[a.url])
    caplog.set_level(logging.INFO, logger="nixie.gossip")

    await cluster.rounds(4)

    assert cluster.converged()
    done = [
        r.getMessage() for r in caplog.records if "repair with peer" in r.getMessage()
    ]
    assert len(done) == 1
    assert done[0].endswith("exchanged 10 counters")
    assert late.url in done[0] or a.url in done[0]


async def test_idle_rounds_cost_the_same_whatever_the_size(cluster: Cluster) -> None:
    """An idle, converged cluster sends a small, fixed number of bytes a round."""
    a = await cluster.add()
    await cluster.add()
    await cluster.rounds()
    costs = []
    for count in (10, 3000):
        for i in range(count):
            a.node.create(start=i)
        await cluster.rounds(3)
        before = cluster.network.bytes_sent
        await cluster.rounds()
        costs.append(cluster.network.bytes_sent - before)

    # Only the digits of sequence numbers and digests may differ.
    assert abs(costs[1] - costs[0]) <= 16
    assert costs[1] < 1024


async def test_peers_learn_the_whole_cluster(cluster: Cluster) -> None:
    """A node that knows one peer comes to know every node within a few rounds."""
    a = await cluster.add(peers=[])
    b = await cluster.add(peers=[a.url])
    c = await cluster.add(peers=[a.url])

    await cluster.rounds(3)

    for member in (a, b, c):
        known = set(member.gossiper.membership.peers)
        assert {a.url, b.url, c.url} - {member.url} == known


async def test_node_skips_itself_among_its_peers(cluster: Cluster) -> None:
    """A node listed among its own peers recognises itself and drops the entry."""
    a = await cluster.add(peers=[])
    alias = "http://alias.test:7312"
    cluster.network.apps[alias] = a.app
    a.gossiper.membership.learn(alias)

    await a.round()

    assert alias not in a.gossiper.membership.peers


async def test_unreachable_peer_goes_down_and_comes_back(cluster: Cluster) -> None:
    """A peer that stops answering is suspect, then down, then up once it answers."""
    b = await cluster.add()
    a = await cluster.add(peers=[b.url])
    peer = a.gossiper.membership.peers[b.url]
    cluster.network.down.add(b.url)
    statuses = []
    for _ in range(3):
        peer.retry_at = 0.0  # skip the back-off wait
        await a.round()
        statuses.append(peer.status)
    key = a.node.create(start=9)[0]
    cluster.heal()

    await a.round()

    assert [Status.SUSPECT, Status.SUSPECT, Status.DOWN] == statuses
    assert peer.status is Status.UP
    assert await value(b, key) == 9


async def test_peer_too_far_behind_is_repaired(cluster: Cluster) -> None:
    """A peer behind more deltas than the log keeps still converges, by repair."""
    a = await cluster.add(delta_capacity=10)
    b = await cluster.add()
    await cluster.rounds()
    cluster.network.down.add(b.url)
    keys = [a.node.create()[0] for _ in range(50)]
    for key in keys:
        a.node.increment(key)
    cluster.heal()

    await cluster.rounds(2)

    assert cluster.converged()
    assert await value(b, keys[0]) == 1


async def test_wiped_peer_is_repaired(cluster: Cluster, tmp_path: Path) -> None:
    """A peer that restarts with no data is brought back up to date."""
    a = await cluster.add()
    b = await cluster.add(name="b-old")
    key = a.node.create(start=40)[0]
    await cluster.rounds()
    cluster.network.apps.pop(b.url)
    cluster.nodes.remove(b)

    fresh = await cluster.add(peers=[a.url], name="b-new")
    fresh_url = fresh.url
    await cluster.rounds(2)

    assert fresh.node.replica_id != b.node.replica_id
    assert await value(fresh, key) == 40
    assert fresh_url in a.gossiper.membership.peers


async def test_flush_hands_pending_writes_to_peers(cluster: Cluster) -> None:
    """A stopping node's flush leaves its latest writes on every live peer."""
    a, b, c = await cluster.add_three()
    await cluster.rounds()
    key = a.node.create(start=1)[0]
    a.node.increment(key)

    caught_up = await a.gossiper.flush(seconds=5.0)

    assert caught_up
    assert [2, 2] == [await value(m, key) for m in (b, c)]


async def test_flush_warns_of_writes_a_down_peer_lacks(
    cluster: Cluster, caplog: pytest.LogCaptureFixture
) -> None:
    """A peer too long unreachable to wait for is named in a warning at stop."""
    a, b = await cluster.add(), await cluster.add()
    await cluster.rounds()
    cluster.network.down.add(b.url)
    for _ in range(3):
        await a.round()  # b goes down
    a.node.create()
    caplog.set_level(logging.INFO, logger="nixie.gossip")

    caught_up = await a.gossiper.flush(seconds=0.5)

    assert not caught_up
    assert f"stopping before peer {b.url} (down) has every write" in caplog.text


async def test_flush_gives_up_on_unreachable_peers(cluster: Cluster) -> None:
    """Flush ends within its time when a peer cannot be reached."""
    a, b = await cluster.add(), await cluster.add()
    await cluster.rounds()
    key = a.node.create()[0]
    cluster.network.down.add(b.url)
    started = time.monotonic()

    await a.gossiper.flush(seconds=0.5)

    assert time.monotonic() - started < 1.0
    assert b.node.state(key) is None
