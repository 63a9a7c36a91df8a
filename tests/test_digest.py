"""Bucket digests of a node's state."""

import tempfile
from pathlib import Path
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from nixie import codec
from nixie.crdt import CounterState
from nixie.digest import BUCKETS, Digest, bucket_of, entry_hash, receipt_hash
from nixie.hlc import HybridClock
from nixie.node import Idempotency, Node
from nixie.store import Store


def test_equal_states_give_equal_digests_in_any_order() -> None:
    """Digests depend on the states held, not on the order they were learned."""
    entries = [(f"key{i}", f'{{"p":{{"a":{i}}}}}') for i in range(100)]
    forward, backward = Digest(), Digest()

    for key, text in entries:
        forward.update(key, "{}")
        forward.update(key, text)
    for key, text in reversed(entries):
        backward.update(key, text)

    assert forward.root == backward.root
    assert forward.buckets == backward.buckets


def test_a_changed_counter_shows_in_its_bucket_only() -> None:
    """Changing one counter changes the root and exactly one bucket."""
    mine, theirs = Digest(), Digest()
    for digest in (mine, theirs):
        for i in range(50):
            digest.update(f"key{i}", "{}")

    theirs.update("key7", '{"p":{"a":1}}')

    assert mine.root != theirs.root
    assert [bucket_of("key7")] == mine.differing(theirs.buckets)
    assert "key7" in mine.keys_in([bucket_of("key7")])


def test_buckets_cover_the_range() -> None:
    """Keys spread over the buckets, all within range."""
    buckets = {bucket_of(f"key{i}") for i in range(5000)}

    assert buckets <= set(range(BUCKETS))
    assert len(buckets) > BUCKETS * 0.9


# A node's digest, kept up to date write by write

RETENTION_MS = 1000
OWNERS = ["a", "b"]

writes = st.sampled_from(["create", "keyed create", "add", "keyed add", "delete"])
operations = st.lists(
    st.tuples(st.sampled_from(OWNERS), writes, st.integers(0, 9))
    | st.tuples(st.sampled_from(OWNERS), st.sampled_from(["sync", "fold", "purge"]))
    | st.just(("later",)),
    max_size=40,
)


class Wall:
    """A wall clock in milliseconds that moves only when told to."""

    def __init__(self) -> None:
        self.millis = 1_000_000_000_000

    def __call__(self) -> int:
        return self.millis


def from_scratch(node: Node) -> int:
    """Return the root of a node's digest computed anew from its states."""
    root = 0
    for key, state in node.states_of(node.digest.keys_in(list(range(BUCKETS)))).items():
        root ^= entry_hash(key, codec.canonical_core(state))
        for idempotency_key, receipt in state.receipts.items():
            root ^= receipt_hash(key, idempotency_key, codec.canonical_receipt(receipt))
    return root


def everything(node: Node) -> dict[str, CounterState]:
    """Return every state a node holds, tombstones included."""
    return node.states_of(node.digest.keys_in(list(range(BUCKETS))))


def run(nodes: dict[str, Node], wall: Wall, operation: tuple[Any, ...]) -> None:
    """Apply one generated operation to one of the nodes."""
    if operation == ("later",):
        wall.millis += RETENTION_MS + 1
        return
    owner, kind, *pick = operation
    node = nodes[owner]
    idem = Idempotency(f"k{len(node) + wall.millis}-{owner}-{pick}", "0" * 32)
    live = [key for key, state in everything(node).items() if state.live]
    target = live[pick[0] % len(live)] if pick and live else None
    if kind == "sync":
        other = nodes["b" if owner == "a" else "a"]
        other.merge(everything(node), node.replica_id)
    elif kind == "fold":
        node.fold_receipts()
    elif kind == "purge":
        node.purge_receipts()
    elif kind in ("create", "keyed create") or target is None:
        node.create(
            start=pick[0] if pick else 0, idem=idem if "keyed" in kind else None
        )
    elif kind == "delete":
        node.delete(target, idem if pick[0] % 2 else None)
    else:
        node.increment(target, idem if kind == "keyed add" else None)


@settings(max_examples=60, deadline=None)
@given(operations)
def test_incremental_digest_matches_one_computed_anew(
    steps: list[tuple[Any, ...]],
) -> None:
    """After any writes, merges, folds and purges, and a restart, each node's
    digest is the one its states give, and two nodes' digests are equal exactly
    when their states are."""
    wall = Wall()
    with tempfile.TemporaryDirectory() as root:
        nodes = {
            owner: Node(
                Store(Path(root) / owner), HybridClock(wall), retention_ms=RETENTION_MS
            )
            for owner in OWNERS
        }
        for step in steps:
            run(nodes, wall, step)
        after_steps = {owner: node.digest.root for owner, node in nodes.items()}
        scratch = {owner: from_scratch(node) for owner, node in nodes.items()}
        a, b = nodes["a"], nodes["b"]
        b.merge(everything(a), a.replica_id)
        a.merge(everything(b), b.replica_id)
        # Receipts past twice the window may be left out on one side only.
        equal = [everything(a) == everything(b), a.digest.root == b.digest.root]
        reopened = {}
        for owner, node in nodes.items():
            node.store.close()
            again = Node(Store(node.store.data_dir), HybridClock(wall))
            reopened[owner] = (again.digest.root, again.digest.buckets)
            again.store.close()

    assert scratch == after_steps
    assert equal[0] == equal[1]
    assert (a.digest.root, a.digest.buckets) == reopened["a"]
    assert (b.digest.root, b.digest.buckets) == reopened["b"]
