"""A node's local operations, its storage and its restart."""

import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from nixie import crdt
from nixie.crdt import CounterState, Stamp
from nixie.errors import OutOfRange, StorageError, UnknownKey
from nixie.node import KEY_CHARS, Node
from nixie.store import Change, Store
from nixie.values import INT64_MAX, INT64_MIN

NodeFactory = Callable[..., Node]


@pytest.fixture
def make_node(tmp_path: Path) -> Iterator[NodeFactory]:
    """Open nodes on data dirs under tmp_path; close them all afterwards."""
    stores: list[Store] = []

    def make(name: str = "a") -> Node:
        store = Store(tmp_path / name)
        stores.append(store)
        return Node(store)

    yield make
    for store in stores:
        store.close()


@pytest.fixture
def node(make_node: NodeFactory) -> Node:
    return make_node()


def reopen(node: Node) -> Node:
    node.store.close()
    return Node(Store(node.store.data_dir))


def test_keys_are_fresh_and_url_safe(node: Node) -> None:
    """Keys are 21 URL-safe characters, all different."""
    keys = {node.create()[0] for _ in range(200)}

    assert len(keys) == 200
    assert all(len(key) == KEY_CHARS for key in keys)
    assert all(c.isalnum() or c in "-_" for key in keys for c in key)


def test_counters_are_independent(node: Node) -> None:
    """Creating a counter with a start value leaves other counters alone."""
    first, _ = node.create(start=5)

    node.create(start=100)

    assert node.get(first).value == 5


def test_increment_adds_the_step(node: Node) -> None:
    """An increment adds the step, which may be negative."""
    key, _ = node.create(start=10, step=-4)

    node.increment(key)

    assert node.get(key).value == 6


def test_set_value_records_the_difference(node: Node) -> None:
    """Setting a value moves this replica's totals by the difference."""
    key, _ = node.create(start=10)

    state = node.set_value(key, 3)

    assert state.value == 3
    assert state.decrements == {node.replica_id: 7}


@pytest.mark.parametrize(
    ("start", "step"), [(INT64_MAX, 1), (INT64_MIN, -1), (INT64_MAX - 1, 5)]
)
def test_increment_past_the_range_is_refused(node: Node, start: int, step: int) -> None:
    """An increment that would leave the 64-bit range changes nothing."""
    key, _ = node.create(start=start, step=step)

    with pytest.raises(OutOfRange, match=str(INT64_MAX if step > 0 else INT64_MIN)):
        node.increment(key)

    assert node.get(key).value == start


def test_merged_value_past_the_range_may_move_back(node: Node) -> None:
    """After merges carry the value past the range, writes toward it succeed."""
    key, _ = node.create(start=INT64_MAX)
    node.merge({key: CounterState(increments={"peer": 10})}, "peer")

    node.update_metadata(key, step=-1)
    node.increment(key)

    assert node.get(key).value == INT64_MAX + 9
    node.update_metadata(key, step=1)
    with pytest.raises(OutOfRange):
        node.increment(key)


def test_patch_of_name_keeps_the_step(node: Node) -> None:
    """Changing only the name keeps the step (the prototype reset it to 1)."""
    key, _ = node.create(step=5)

    state = node.update_metadata(key, name="n")

    assert (state.name_value, state.step_value) == ("n", 5)


def test_description_equal_to_name_is_saved(node: Node) -> None:
    """A description equal to the name is stored like any other."""
    key, _ = node.create()

    state = node.update_metadata(key, name="same", description="same")

    assert (state.name_value, state.description_value) == ("same", "same")


def test_deleted_key_is_unknown_and_unlisted(node: Node) -> None:
    """A deleted counter is gone for every operation and from the listing."""
    key, _ = node.create()
    other, _ = node.create()

    node.delete(key)

    for operation in (node.get, node.increment, node.delete):
        with pytest.raises(UnknownKey, match=f"Unknown key {key}"):
            operation(key)
    assert node.listing() == other


def test_listing_follows_creation_order(node: Node) -> None:
    """Keys are listed in creation order, one a line, no trailing newline."""
    keys = [node.create()[0] for _ in range(5)]

    assert node.listing() == "\n".join(keys)


def test_merge_of_a_remote_creation_lists_it(make_node: NodeFactory) -> None:
    """A counter created on another replica appears once its state merges in."""
    a, b = make_node("a"), make_node("b")
    key, state = a.create(start=3, name="x")

    changed = b.merge({key: state}, a.replica_id)

    assert changed == {key: state}
    assert b.listing() == key
    assert b.get(key).value == 3
    assert b.merge({key: state}, a.replica_id) == {}


def test_restart_restores_everything(node: Node) -> None:
    """Values, metadata, tombstones and the replica id survive a restart."""
    key, _ = node.create(start=4, name="n", description="d", step=3)
    node.increment(key)
    dead, _ = node.create()
    node.delete(dead)

    again = reopen(node)

    assert again.replica_id == node.replica_id
    assert again.get(key) == node.get(key)
    assert again.listing() == key
    with pytest.raises(UnknownKey):
        again.get(dead)


def test_restart_keeps_the_clock_ahead(node: Node) -> None:
    """After a restart, new writes order after the stored ones."""
    key, _ = node.create()
    future = Stamp(node.clock.last + 10**9, "peer")
    node.merge({key: crdt.update_metadata(future, name="later")}, "peer")

    again = reopen(node)

    assert again.clock.now() > future.time


def test_fresh_data_dirs_get_fresh_replica_ids(make_node: NodeFactory) -> None:
    """Two nodes on two empty data dirs never share a replica id."""
    ids = {make_node(str(i)).replica_id for i in range(5)}

    assert len(ids) == 5


def test_data_dir_cannot_be_opened_twice(node: Node) -> None:
    """A second store on a data dir in use is refused."""
    with pytest.raises(StorageError, match="in use"):
        Store(node.store.data_dir)


def test_failed_write_changes_nothing(
    node: Node, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A write that cannot be stored leaves the node as it was."""
    key, _ = node.create(start=1)

    def broken(change: Change) -> None:
        raise StorageError("disk full")

    monkeypatch.setattr(node.store, "save", broken)
    with pytest.raises(StorageError):
        node.increment(key)

    assert node.get(key).value == 1


def test_stale_data_dir_takes_a_fresh_replica_id(make_node: NodeFactory) -> None:
    """A node shown newer writes of its own id than it holds stops using that id."""
    node = make_node()
    key, _ = node.create()
    old_id = node.replica_id
    node.increment(key)
    newer = CounterState(increments={old_id: 40})

    node.merge({key: newer}, "peer")
    node.increment(key)

    assert node.replica_id != old_id
    assert node.get(key).value == 41
    assert reopen(node).replica_id == node.replica_id


def test_copied_data_dir_takes_a_fresh_replica_id(tmp_path: Path) -> None:
    """A data dir copied elsewhere opens under a new replica id."""
    original = Store(tmp_path / "a")
    replica = original.replica_id()
    original.close()
    shutil.copytree(tmp_path / "a", tmp_path / "copy")

    copy, again = Store(tmp_path / "copy"), Store(tmp_path / "a")

    assert copy.replica_id() != replica
    assert again.replica_id() == replica
    copy.close()
    again.close()


def test_data_dir_restored_in_place_takes_a_fresh_replica_id(tmp_path: Path) -> None:
    """A data dir deleted and replaced by a backup opens under a new replica id."""
    store = Store(tmp_path / "a")
    replica = store.replica_id()
    store.close()
    shutil.copytree(tmp_path / "a", tmp_path / "backup")
    shutil.rmtree(tmp_path / "a")
    shutil.copytree(tmp_path / "backup", tmp_path / "a")

    restored = Store(tmp_path / "a")

    assert restored.replica_id() != replica
    restored.close()
