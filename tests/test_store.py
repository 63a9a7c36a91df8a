"""The data dir's SQLite store: counters and their receipts, one row each."""

from pathlib import Path

from nixie import codec
from nixie.hlc import HybridClock
from nixie.node import Idempotency, Node
from nixie.store import Change, Store, Stored

RETENTION_MS = 1000


class Wall:
    """A wall clock in milliseconds that moves only when told to."""

    def __init__(self) -> None:
        self.millis = 1_000_000_000_000

    def __call__(self) -> int:
        return self.millis


def test_receipts_added_changed_and_purged_survive_a_reopen(tmp_path: Path) -> None:
    """Each write keeps the receipts it leaves alone, and a reopen finds them."""
    store = Store(tmp_path)
    store.save(Change("c1", "{}", {"k1": "[1]", "k2": "[2]", "k3": "[3]"}, ()))
    store.save(Change("c1", '{"p":{}}', {"k2": "[22]", "k4": "[4]"}, ["k3"]))
    store.save_many(
        [Change("c2", "{}", {"k1": "[5]"}, ()), Change("c1", "{}", {}, ["k1"])]
    )
    store.close()

    reopened = Store(tmp_path)
    stored = sorted(reopened.load())
    reopened.close()

    assert [
        Stored("c1", "{}", {"k2": "[22]", "k4": "[4]"}),
        Stored("c2", "{}", {"k1": "[5]"}),
    ] == stored


def test_schema_creation_is_idempotent(tmp_path: Path) -> None:
    """Opening a data dir again keeps what it holds."""
    Store(tmp_path).close()
    store = Store(tmp_path)
    store.save(Change("c1", "{}", {"k1": "[1]"}, ()))
    store.close()

    reopened = Store(tmp_path)
    stored = list(reopened.load())
    reopened.close()

    assert [Stored("c1", "{}", {"k1": "[1]"})] == stored


def test_a_node_restores_receipts_after_folding_and_purging(tmp_path: Path) -> None:
    """Receipts made, folded and purged come back from disk as they were."""
    wall = Wall()
    node = Node(Store(tmp_path), HybridClock(wall), retention_ms=RETENTION_MS)
    key, _ = node.create(start=2)
    for i in range(3):
        node.increment(key, Idempotency(f"old-{i}", "0" * 32))
    wall.millis += RETENTION_MS + 1
    node.increment(key, Idempotency("new", "0" * 32))
    node.fold_receipts()
    wall.millis += RETENTION_MS + 1
    node.purge_receipts()
    node.increment(key, Idempotency("newest", "0" * 32))
    before = node.states_of([key])
    root = node.digest.root
    node.store.close()

    reopened = Node(Store(tmp_path), HybridClock(wall), retention_ms=RETENTION_MS)
    after = reopened.states_of([key])
    reopened.store.close()

    assert {"new", "newest"} == set(before[key].receipts)
    assert before == after
    assert 7 == after[key].value
    assert root == reopened.digest.root
    assert codec.canonical(before[key]) == codec.canonical(after[key])
