"""Idempotency-Key: a write retried on any node takes effect once."""

from pathlib import Path

import httpx
import pytest

from nixie import crdt
from nixie.hlc import HybridClock
from nixie.node import Idempotency, Node
from nixie.store import Store
from tests.harness import Cluster, InProcessNode, create

pytestmark = pytest.mark.anyio

KEY = {"Idempotency-Key": "retry-me-1"}


async def values(nodes: list[InProcessNode], key: str) -> list[str]:
    return [(await m.client.get(f"/{key}")).text for m in nodes]


def answer(response: httpx.Response) -> tuple[int, str, dict[str, str]]:
    """Status, body and the headers a replay must repeat."""
    kept = ("nixie-name", "nixie-description", "nixie-step")
    return (
        response.status_code,
        response.text,
        {k: v for k, v in response.headers.items() if k in kept},
    )


async def test_retry_on_the_same_node_replays_the_first_answer(
    cluster: Cluster,
) -> None:
    """The second attempt gets the first answer, marked, and changes nothing."""
    a = await cluster.add()
    key = await create(a, 10, **{"Nixie-Step": "5", "Nixie-Name": "n"})

    first = await a.client.post(f"/{key}", headers=KEY)
    second = await a.client.post(f"/{key}", headers=KEY)

    assert answer(first) == (200, "15", {"nixie-step": "5", "nixie-name": "n"})
    assert answer(second) == answer(first)
    assert "nixie-replay" not in first.headers
    assert second.headers["nixie-replay"] == "true"
    assert await values([a], key) == ["15"]


async def test_retry_on_another_node_after_gossip_is_a_replay(
    cluster: Cluster,
) -> None:
    """A retry that reaches a node gossip has updated is answered from there."""
    a, b, c = await cluster.add_three()
    key = await create(a)
    await cluster.rounds()

    first = await a.client.post(f"/{key}", headers=KEY)
    await cluster.rounds()
    second = await b.client.post(f"/{key}", headers=KEY)

    assert answer(second) == answer(first) == (200, "1", {"nixie-step": "1"})
    assert second.headers["nixie-replay"] == "true"
    assert await values([a, b, c], key) == ["1", "1", "1"]


@pytest.mark.parametrize("attempts", [2, 3])
async def test_concurrent_attempts_on_several_nodes_count_once(
    cluster: Cluster, attempts: int
) -> None:
    """Attempts that each node applied before hearing of the others merge
    into one: after gossip the counter moved by one step everywhere."""
    nodes = await cluster.add_three()
    key = await create(nodes[0], 100, **{"Nixie-Step": "7"})
    await cluster.rounds()

    answers = [await m.client.post(f"/{key}", headers=KEY) for m in nodes[:attempts]]
    assert [r.text for r in answers] == ["107"] * attempts  # each applied alone
    await cluster.rounds(2)

    assert cluster.converged()
    assert await values(nodes, key) == ["107"] * 3
    replay = await nodes[2].client.post(f"/{key}", headers=KEY)
    assert (replay.status_code, replay.text) == (200, "107")
    assert replay.headers["nixie-replay"] == "true"


async def test_concurrent_creates_make_one_counter_with_one_start(
    cluster: Cluster,
) -> None:
    """Two attempts of one create on two nodes make one counter, start counted once."""
    a, b, _ = await cluster.add_three()
    headers = {**KEY, "Nixie-Name": "visits"}

    first = await a.client.post("/", content="40", headers=headers)
    second = await b.client.post("/", content="40", headers=headers)
    await cluster.rounds(2)

    assert first.status_code == second.status_code == 201
    assert first.text == second.text
    key = first.text
    assert await values(cluster.nodes, key) == ["40"] * 3
    assert [(await m.client.get("/")).text for m in cluster.nodes] == [key] * 3
    replay = await a.client.post("/", content="40", headers=headers)
    assert (replay.status_code, replay.text) == (201, key)
    assert replay.headers["nixie-replay"] == "true"


async def test_concurrent_puts_apply_one_difference(cluster: Cluster) -> None:
    """Two attempts of one PUT add its difference once, not twice."""
    a, b, c = await cluster.add_three()
    key = await create(a, 10)
    await cluster.rounds()

    for member in (a, b):
        response = await member.client.put(f"/{key}", content="25", headers=KEY)
        assert response.status_code == 204
    await cluster.rounds(2)

    assert await values([a, b, c], key) == ["25"] * 3


async def test_replayed_patch_does_not_undo_a_later_one(cluster: Cluster) -> None:
    """A late retry of a PATCH repeats its answer and leaves newer metadata."""
    a = await cluster.add()
    key = await create(a)
    patch = {**KEY, "Nixie-Name": "first"}

    assert (await a.client.patch(f"/{key}", headers=patch)).status_code == 204
    newer = await a.client.patch(f"/{key}", headers={"Nixie-Name": "second"})
    assert newer.status_code == 204
    replay = await a.client.patch(f"/{key}", headers=patch)

    assert replay.status_code == 204
    assert replay.headers["nixie-name"] == "first"  # the first answer
    assert replay.headers["nixie-replay"] == "true"
    assert (await a.client.get(f"/{key}")).headers["nixie-name"] == "second"


async def test_retried_delete_gets_its_answer_not_a_404(cluster: Cluster) -> None:
    """A DELETE retried after it succeeded answers 204 again, on any node."""
    a, b, _ = await cluster.add_three()
    key = await create(a)
    await cluster.rounds()

    first = await a.client.delete(f"/{key}", headers=KEY)
    await cluster.rounds()
    again = await b.client.delete(f"/{key}", headers=KEY)
    plain = await b.client.delete(f"/{key}")

    assert first.status_code == again.status_code == 204
    assert again.headers["nixie-replay"] == "true"
    assert plain.status_code == 404


@pytest.mark.parametrize(
    ("method", "path", "content", "headers"),
    [
        ("POST", "other", None, {}),  # another counter
        ("PUT", "same", "5", {}),  # another method
        ("PATCH", "same", None, {"Nixie-Name": "x"}),
        ("DELETE", "same", None, {}),
    ],
)
async def test_a_key_reused_for_another_request_is_refused(
    cluster: Cluster,
    method: str,
    path: str,
    content: str | None,
    headers: dict[str, str],
) -> None:
    """The same Idempotency-Key with a different request is a 422; nothing changes."""
    a = await cluster.add()
    key, other = await create(a), await create(a)
    assert (await a.client.post(f"/{key}", headers=KEY)).status_code == 200
    target = key if path == "same" else other

    response = await a.client.request(
        method, f"/{target}", content=content, headers={**KEY, **headers}
    )

    assert response.status_code == 422
    assert "Idempotency-Key retry-me-1: already used" in response.text
    assert await values([a], key) == ["1"]
    assert await values([a], other) == ["0"]
    assert "nixie-name" not in (await a.client.get(f"/{key}")).headers


async def test_a_different_body_under_one_key_is_refused(cluster: Cluster) -> None:
    """A PUT retried with another value is not the same write."""
    a = await cluster.add()
    key = await create(a)
    assert (await a.client.put(f"/{key}", content="5", headers=KEY)).status_code == 204

    response = await a.client.put(f"/{key}", content="6", headers=KEY)

    assert response.status_code == 422
    assert await values([a], key) == ["5"]


@pytest.mark.parametrize(
    "bad",
    ["", "has space", "x" * 129, "caf\u00e9"],
    ids=["empty", "space", "too-long", "non-ascii"],
)
async def test_malformed_idempotency_keys_are_refused(
    cluster: Cluster, bad: str
) -> None:
    """A key HTTP cannot carry unchanged, or too long, is a 400 naming the header."""
    a = await cluster.add()
    key = await create(a)

    response = await a.client.post(
        f"/{key}", headers=[(b"Idempotency-Key", bad.encode())]
    )

    assert response.status_code == 400
    assert response.text.startswith("Idempotency-Key:")
    assert await values([a], key) == ["0"]


async def test_reads_refuse_an_idempotency_key(cluster: Cluster) -> None:
    """A GET changes nothing, so a key there is a mistake worth reporting."""
    a = await cluster.add()
    key = await create(a)

    response = await a.client.get(f"/{key}", headers=KEY)

    assert response.status_code == 400
    assert "Idempotency-Key" in response.text


# The node: restarts, folding and purging


class Wall:
    """A wall clock the test moves by hand."""

    def __init__(self) -> None:
        self.millis = 1_000_000_000_000

    def __call__(self) -> int:
        return self.millis


DAY_MS = 24 * 60 * 60 * 1000
IDEM = Idempotency("k-1", "a" * 32)


def open_node(path: Path, wall: Wall) -> Node:
    return Node(Store(path), HybridClock(wall), retention_ms=DAY_MS)


def share_a_receipt(tmp_path: Path, wall: Wall) -> tuple[Node, Node, str]:
    """Open a maker and another node; the other holds the maker's keyed write."""
    maker = open_node(tmp_path / "maker", wall)
    other = open_node(tmp_path / "other", wall)
    key, _ = maker.create()
    maker.increment(key, IDEM)
    made = maker.state(key)
    assert made is not None
    other.merge({key: made}, None)
    return maker, other, key


def test_receipts_survive_a_restart(tmp_path: Path) -> None:
    """A retry after the node restarted still finds the first answer."""
    wall = Wall()
    node = open_node(tmp_path, wall)
    key, _ = node.create(start=3)
    node.increment(key, IDEM)
    node.store.close()

    reopened = open_node(tmp_path, wall)

    receipt = reopened.replay(IDEM, key)
    assert receipt is not None
    assert (receipt.status, receipt.body) == (200, "4")
    assert reopened.get(key).value == 4


def test_folding_and_purging_keep_the_value(tmp_path: Path) -> None:
    """After the window the receipt moves into the totals; after twice the
    window it is gone, and a peer's stale copy does not bring it back."""
    wall = Wall()
    node = open_node(tmp_path, wall)
    key, _ = node.create(start=3)
    node.increment(key, IDEM)
    stale = node.state(key)
    assert stale is not None

    assert node.fold_receipts() == 0  # not yet due
    wall.millis += DAY_MS + 1
    assert node.fold_receipts() == 1
    assert node.get(key).receipts["k-1"].folded
    assert node.get(key).value == 4

    wall.millis += DAY_MS
    assert node.purge_receipts() == 1
    assert node.get(key).receipts == {}
    assert node.get(key).value == 4
    assert node.replay(IDEM, key) is None

    folded_elsewhere = crdt.merged(stale, node.get(key))
    node.merge({key: folded_elsewhere}, None)
    assert node.get(key).receipts == {}
    assert node.get(key).value == 4


def test_a_fold_that_comes_after_twice_the_window_still_cancels_the_receipt(
    tmp_path: Path,
) -> None:
    """A peer holding the receipt unfolded takes the maker's fold however late,
    so the write counts once (the maker was down past twice the window)."""
    wall = Wall()
    maker, peer, key = share_a_receipt(tmp_path, wall)
    wall.millis += 3 * DAY_MS
    assert maker.fold_receipts() == 1
    fold = maker.state(key)  # what the fold's delta carries
    assert fold is not None
    assert maker.purge_receipts() == 1

    peer.merge({key: fold}, None)

    held = peer.get(key)
    assert 1 == held.value == maker.get(key).value
    assert not held.counts(held.receipts["k-1"])
    assert peer.purge_receipts() == 1
    assert peer.digest.root == maker.digest.root


def test_a_stale_copy_of_a_dropped_receipt_counts_no_more(tmp_path: Path) -> None:
    """A node that missed both the fold and the drop brings its unfolded copy
    back in vain: the maker's fold watermark says the receipt was folded."""
    wall = Wall()
    maker, stale, key = share_a_receipt(tmp_path, wall)
    wall.millis += 3 * DAY_MS
    maker.fold_receipts()
    maker.purge_receipts()
    assert maker.get(key).receipts == {}

    old = stale.state(key)
    assert old is not None
    maker.merge({key: old}, None)  # the stale copy reaches the maker
    caught_up = maker.state(key)
    assert caught_up is not None
    stale.merge({key: caught_up}, None)  # the stale node repairs from it

    assert 1 == maker.get(key).value == stale.get(key).value
    assert stale.purge_receipts() == 1
    assert stale.digest.root == maker.digest.root


def test_only_the_maker_folds_a_receipt(tmp_path: Path) -> None:
    """A receipt made by another replica stays unfolded here, and counted."""
    wall = Wall()
    maker, other, key = share_a_receipt(tmp_path, wall)

    wall.millis += 3 * DAY_MS

    assert other.fold_receipts() == 0
    assert other.purge_receipts() == 0
    assert other.get(key).value == 1
    assert maker.fold_receipts() == 1


def test_a_create_key_whose_record_expired_is_not_reused(tmp_path: Path) -> None:
    """Once its record is purged, an idempotency key cannot create again."""
    wall = Wall()
    node = open_node(tmp_path, wall)
    key, _ = node.create(start=1, idem=IDEM)
    assert key == node.derived_key(IDEM.key)
    wall.millis += 3 * DAY_MS
    node.fold_receipts()
    wall.millis += 3 * DAY_MS
    node.purge_receipts()

    with pytest.raises(Exception, match="record has expired"):
        node.create(start=1, idem=IDEM)
    assert node.get(key).value == 1
