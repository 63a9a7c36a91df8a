"""The delta log that feeds pushes to peers."""

from nixie import crdt
from nixie.crdt import CounterState
from nixie.deltas import DeltaLog


def inc(replica: str, total: int) -> CounterState:
    return CounterState(increments={replica: total})


def test_since_joins_deltas_per_key() -> None:
    """Deltas of one key after the acknowledged point arrive joined as one."""
    log = DeltaLog()
    log.append("k", inc("a", 1), None)
    log.append("k", inc("a", 2), None)
    log.append("j", inc("a", 5), None)

    deltas, upto = log.since(0, None, 100)

    assert {"k": inc("a", 2), "j": inc("a", 5)} == deltas
    assert upto == 3


def test_since_skips_what_came_from_the_peer() -> None:
    """A peer is not sent back the deltas it sent."""
    log = DeltaLog()
    log.append("k", inc("b", 1), "peer-b")
    log.append("j", inc("a", 1), None)

    deltas, upto = log.since(0, "peer-b", 100)

    assert {"j": inc("a", 1)} == deltas
    assert upto == 2


def test_since_stops_at_the_key_limit() -> None:
    """A push holds at most max_keys keys and says how far it got."""
    log = DeltaLog()
    for i in range(5):
        log.append(f"k{i}", inc("a", 1), None)

    first, upto = log.since(0, None, 2)
    rest, end = log.since(upto, None, 10)

    assert (list(first), upto) == (["k0", "k1"], 2)
    assert (list(rest), end) == (["k2", "k3", "k4"], 5)


def test_truncated_log_no_longer_covers_old_positions() -> None:
    """After truncation, a peer acknowledged before it needs a repair."""
    log = DeltaLog()
    for i in range(10):
        log.append(f"k{i}", inc("a", 1), None)

    log.truncate(6)

    assert not log.covers(5)
    assert log.covers(6)
    assert list(log.since(6, None, 100)[0]) == ["k6", "k7", "k8", "k9"]


def test_capacity_drops_the_oldest() -> None:
    """A full log forgets its oldest entries and says so."""
    log = DeltaLog(capacity=3)
    for i in range(10):
        log.append(f"k{i}", crdt.delete(crdt.Stamp(i, "a")), None)

    assert len(log) == 3
    assert log.oldest == 7
    assert list(log.since(7, None, 100)[0]) == ["k7", "k8", "k9"]
