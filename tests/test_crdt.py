"""Laws and semantics of the counter CRDT."""

import functools
import random
from typing import TypeVar

from hypothesis import assume, given
from hypothesis import strategies as st

from nixie import crdt
from nixie.crdt import CounterState, Receipt, Register, Stamp, merged

T = TypeVar("T", str, int)

replicas = st.sampled_from(["ra", "rb", "rc"])
stamps = st.builds(Stamp, st.integers(0, 50), replicas)
totals = st.dictionaries(replicas, st.integers(1, 2**70), max_size=3)


def registers(values: st.SearchStrategy[T]) -> st.SearchStrategy[Register[T]]:
    return st.builds(Register, values, stamps)


receipt_parts = st.builds(
    Receipt,
    stamps,
    st.integers(-5, 5),
    st.sampled_from(["0" * 32, "f" * 32]),
    st.sampled_from([200, 204]),
    st.sampled_from(["", "1"]),
    st.just(()),
    st.booleans(),
)
receipt_maps = st.dictionaries(st.sampled_from(["k1", "k2", "k3"]), receipt_parts)

WATERMARK_MAX = 50  # the largest fold watermark the strategies make
FOLD_ALL = 10**6  # a fold watermark above every stamp the tests make

live_states = st.builds(
    CounterState,
    created=st.none() | stamps,
    increments=totals,
    decrements=totals,
    name=st.none() | registers(st.sampled_from(["", "x", "y"])),
    description=st.none() | registers(st.sampled_from(["", "d", "e"])),
    step=st.none() | registers(st.integers(-3, 3)),
    versions=st.dictionaries(replicas, st.integers(1, 9), max_size=3),
    receipts=receipt_maps,
    folded_upto=st.dictionaries(replicas, st.integers(1, WATERMARK_MAX), max_size=3),
)
tombstones = st.builds(CounterState, deleted=stamps, receipts=receipt_maps)
states = live_states | tombstones


@given(states, states)
def test_merge_is_commutative(a: CounterState, b: CounterState) -> None:
    """Merging a into b gives what merging b into a gives."""
    assert merged(a, b) == merged(b, a)


@given(states, states, states)
def test_merge_is_associative(
    a: CounterState, b: CounterState, c: CounterState
) -> None:
    """The grouping of merges does not matter."""
    assert merged(merged(a, b), c) == merged(a, merged(b, c))


@given(states, states)
def test_merge_is_idempotent(a: CounterState, b: CounterState) -> None:
    """Merging the same state again changes nothing."""
    once = merged(a, b)

    assert merged(a, a) == a
    assert merged(once, b) == once


@given(states, states)
def test_merge_reports_change_exactly(a: CounterState, b: CounterState) -> None:
    """merge() says it changed the state exactly when the state differs."""
    target = a.copy()

    changed = target.merge(b)

    assert changed == (target != a)


@given(states, states)
def test_merge_leaves_inputs_untouched(a: CounterState, b: CounterState) -> None:
    """merged() builds a new state and mutates neither argument."""
    a_before, b_before = a.copy(), b.copy()

    merged(a, b)

    assert (a, b) == (a_before, b_before)


@given(st.lists(states, min_size=1, max_size=6), st.randoms())
def test_value_is_independent_of_merge_order(
    parts: list[CounterState], rng: random.Random
) -> None:
    """Replicas that merge the same states in any order agree on everything."""
    shuffled = list(parts)
    rng.shuffle(shuffled)

    forward = functools.reduce(merged, parts, CounterState())
    other = functools.reduce(merged, shuffled, CounterState())

    assert forward == other
    assert forward.value == other.value


@given(live_states, st.integers(-(2**64), 2**64), replicas, totals)
def test_add_delta_carries_the_operation(
    state: CounterState, amount: int, replica: str, others: dict[str, int]
) -> None:
    """An add delta moves the value by its amount on any replica that has seen
    the state it was made from, whatever other replicas wrote meanwhile."""
    delta = crdt.add(state, replica, amount)
    elsewhere = merged(
        state,
        CounterState(increments={r: t for r, t in others.items() if r != replica}),
    )

    assert merged(state, delta).value == state.value + amount
    assert merged(elsewhere, delta).value == elsewhere.value + amount


@given(live_states, st.integers(-(2**64), 2**64), replicas)
def test_add_delta_is_small(state: CounterState, amount: int, replica: str) -> None:
    """An add delta holds a single total of its own replica, or nothing."""
    delta = crdt.add(state, replica, amount)

    entries = {**delta.increments, **delta.decrements}
    assert set(entries) <= {replica}
    assert len(entries) == (amount != 0)
    assert (delta.created, delta.name, delta.step) == (None, None, None)


@given(stamps, st.integers(-(2**63), 2**63 - 1), st.text(max_size=5), st.integers())
def test_create_delta_is_the_complete_counter(
    stamp: Stamp, start: int, name: str, step: int
) -> None:
    """A created counter, merged into an empty replica, is complete there."""
    received = merged(CounterState(), crdt.create(stamp, start, name, "about", step))

    assert received.live
    assert (received.value, received.name_value) == (start, name)
    assert (received.description_value, received.step_value) == ("about", step)
    assert received.created == stamp


@given(live_states, states, stamps)
def test_delete_wins_over_any_state(
    state: CounterState, other: CounterState, stamp: Stamp
) -> None:
    """A deleted counter stays deleted whatever it is merged with, in any order."""
    deleted = merged(state, crdt.delete(stamp))

    assert not deleted.live
    assert not merged(deleted, other).live
    assert not merged(other, deleted).live
    assert merged(deleted, other).value == 0


@given(live_states, stamps, st.sampled_from(["name", "description", "step"]))
def test_metadata_update_changes_only_its_field(
    state: CounterState, stamp: Stamp, field: str
) -> None:
    """A metadata delta newer than the state sets its one field, keeping others."""
    newer = Stamp(100, stamp.replica)
    value: str | int = 7 if field == "step" else "new"
    delta = crdt.update_metadata(newer, **{field: value})

    result = merged(state, delta)

    expected = {
        "name": state.name_value,
        "description": state.description_value,
        "step": state.step_value,
    }
    expected[field] = value
    actual = {
        "name": result.name_value,
        "description": result.description_value,
        "step": result.step_value,
    }
    assert expected == actual
    assert result.value == state.value


@given(st.text(max_size=3), st.text(max_size=3), stamps, stamps)
def test_last_writer_wins_by_stamp(
    first: str, second: str, early: Stamp, late: Stamp
) -> None:
    """The register with the larger stamp wins, whichever side it merges from."""
    assume(early != late)
    early, late = sorted([early, late])
    older = crdt.update_metadata(early, name=first)
    newer = crdt.update_metadata(late, name=second)

    assert merged(older, newer).name_value == second
    assert merged(newer, older).name_value == second


def test_concurrent_increments_on_two_replicas_add_up() -> None:
    """Two replicas that each add 1 from the same state converge to 2."""
    base = crdt.create(Stamp(1, "ra"))
    on_a = merged(base, crdt.add(base, "ra", 1))
    on_b = merged(base, crdt.add(base, "rb", 1))

    assert merged(on_a, on_b).value == 2
    assert merged(on_b, on_a).value == 2


def test_concurrent_sets_add_their_differences() -> None:
    """PUT 10 on one replica and PUT 3 on another, both from 0, merge to 13."""
    base = crdt.create(Stamp(1, "ra"))
    on_a = merged(base, crdt.add(base, "ra", 10 - base.value))
    on_b = merged(base, crdt.add(base, "rb", 3 - base.value))

    assert merged(on_a, on_b).value == 13


# Idempotent writes: receipts


def attempt(state: CounterState, replica: str, time: int, amount: int) -> CounterState:
    """Return the delta one attempt of the write "k" makes on a replica.

    Its stamp lies above any fold watermark the strategies make (at most 50):
    a replica never stamps a write below its own watermark.
    """
    stamp = Stamp(WATERMARK_MAX + time, replica)
    receipt = Receipt(stamp, amount, "a" * 32, 200, str(amount))
    return crdt.bump(state, crdt.record(CounterState(), "k", receipt), replica)


@given(
    live_states,
    st.lists(st.tuples(replicas, st.integers(0, 50)), min_size=1, max_size=4),
    st.integers(-5, 5),
    st.randoms(),
)
def test_concurrent_attempts_count_once(
    base: CounterState,
    attempts: list[tuple[str, int]],
    amount: int,
    rng: random.Random,
) -> None:
    """Attempts of one write made on several replicas, in any order and any
    number of times, move the value by one amount once they have all met."""
    base.receipts.pop("k", None)
    deltas = [attempt(base, r, t, amount) for r, t in attempts]
    deltas += rng.choices(deltas, k=2)  # duplicates arrive too
    rng.shuffle(deltas)

    result = functools.reduce(merged, deltas, base.copy())

    assert result.value == base.value + amount
    earliest = min(Stamp(WATERMARK_MAX + t, r) for r, t in attempts)
    assert result.receipts["k"].stamp == earliest


@given(
    live_states,
    st.tuples(replicas, st.integers(0, 50)),
    st.tuples(replicas, st.integers(0, 50)),
    st.integers(-5, 5),
    st.randoms(),
)
def test_folding_never_counts_twice(
    base: CounterState,
    first: tuple[str, int],
    second: tuple[str, int],
    amount: int,
    rng: random.Random,
) -> None:
    """Folding the surviving receipt into its replica's totals keeps the
    value, whether the fold meets the other attempt before or after it."""
    base.receipts.pop("k", None)
    one, two = attempt(base, *first, amount), attempt(base, *second, amount)
    joined = merged(merged(base, one), two)
    owner = joined.receipts["k"].stamp.replica

    fold = crdt.fold(joined, owner, FOLD_ALL)
    assert fold is not None
    # A replica that never saw the other attempt, or only saw it later.
    pieces = [one, two, fold]
    rng.shuffle(pieces)
    result = functools.reduce(merged, pieces, base.copy())

    assert result.value == base.value + amount
    assert result.receipts["k"].folded
    assert crdt.fold(result, owner, FOLD_ALL) is None  # folds once


@given(
    live_states,
    replicas,
    st.lists(st.integers(-5, 5), min_size=1, max_size=5),
    st.randoms(),
)
def test_receipts_folded_together_keep_the_value(
    base: CounterState, owner: str, amounts: list[int], rng: random.Random
) -> None:
    """One fold of several receipts, of either sign, moves their sum into the
    owner's totals, whatever order it meets the writes that made them in."""
    keys = [f"k{i}" for i in range(len(amounts))]
    for key in keys:
        base.receipts.pop(key, None)
    writes = []
    state = base.copy()
    for time, (key, amount) in enumerate(zip(keys, amounts, strict=True)):
        receipt = Receipt(Stamp(1000 + time, owner), amount, "a" * 32, 200, "")
        write = crdt.bump(state, crdt.record(CounterState(), key, receipt), owner)
        writes.append(write)
        state = merged(state, write)

    fold = crdt.fold(state, owner, FOLD_ALL)
    assert fold is not None
    pieces = [*writes, fold]
    rng.shuffle(pieces)
    result = functools.reduce(merged, pieces, base.copy())

    assert result.value == base.value + sum(amounts)
    assert all(result.receipts[key].folded for key in keys)
    assert crdt.fold(result, owner, FOLD_ALL) is None  # folds once


@given(live_states, replicas, st.integers(-5, 5), st.randoms())
def test_a_fold_watermark_outlives_the_dropped_receipt(
    base: CounterState, owner: str, amount: int, rng: random.Random
) -> None:
    """Once the maker folded a receipt under its watermark and dropped it, a
    stale unfolded copy, met in any order, adds nothing more."""
    base.receipts.pop("k", None)
    made = attempt(base, owner, 7, amount)
    stale = merged(base, made)
    fold = crdt.fold(stale, owner, WATERMARK_MAX + 8)
    assert fold is not None
    dropped = merged(stale, fold)
    del dropped.receipts["k"]  # the maker purged it after twice the window

    pieces = [stale, made, fold, dropped]
    rng.shuffle(pieces)
    result = functools.reduce(merged, pieces, base.copy())

    assert result.value == base.value + amount


@given(live_states, replicas)
def test_only_the_maker_folds(state: CounterState, replica: str) -> None:
    """A replica folds no receipt another replica made."""
    delta = crdt.fold(state, replica, FOLD_ALL)

    folded = {} if delta is None else delta.receipts
    assert all(receipt.stamp.replica == replica for receipt in folded.values())


@given(live_states, stamps)
def test_receipts_outlive_deletion(state: CounterState, stamp: Stamp) -> None:
    """A tombstone keeps the receipts, so a retried write gets its answer."""
    result = merged(state, crdt.delete(stamp))

    assert not result.live
    assert set(result.receipts) == set(state.receipts)


@given(live_states, replicas)
def test_versions_count_each_write(state: CounterState, replica: str) -> None:
    """Each write of a replica raises its version by one, and merges keep
    the largest version seen."""
    delta = crdt.bump(state, crdt.add(state, replica, 1), replica)

    after = merged(state, delta)

    assert after.versions[replica] == state.versions.get(replica, 0) + 1
    assert merged(after, state).versions == after.versions
