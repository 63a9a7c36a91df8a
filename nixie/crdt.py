"""The replicated state of one counter, as a join-semilattice.

A counter's state is a PN-counter (per replica, a grow-only total of
increments and one of decrements), three last-writer-wins registers for its
metadata, the stamp of its creation and, once deleted, the stamp of its
deletion. `CounterState.merge` is the join: commutative, associative and
idempotent, so replicas that exchange states in any order, any number of
times, converge.

Deletion wins over everything: a tombstone merged with any state is a
tombstone, and a tombstone forgets the counter's value and metadata, which
no replica can bring back.

Writes sent with an idempotency key leave a `Receipt` instead of (or besides)
touching the totals: the key, what the write adds to the value, and the
answer it got. Receipts are joined per key, so two attempts of one write that
ran concurrently on two replicas end as one receipt on both, chosen the same
way everywhere (the earliest stamp), and the value counts its amount once.
After a retention window the replica that made the surviving receipt folds
it: it moves the amount into its own totals and marks the receipt folded in
one delta; a folded receipt beats an unfolded one, so the amount is never
counted twice. The same delta raises the replica's fold watermark
(`folded_upto`, joined by maximum): every receipt that replica made before
it is folded, so a stale unfolded copy met later, even once the folded
receipt itself has been dropped, counts nothing. Receipts outlive a
deletion, so a retried DELETE still gets its first answer.

`versions` counts, per replica, the writes it made to the counter. A replica
whose versions are at least another's has seen every write the other had
seen, which is what read-your-writes tokens compare.

Every operation here returns a delta: the small state that, merged into a
replica, has the operation's effect. Nodes apply their own writes by merging
the delta, and later ship the same deltas to their peers.

This module does no I/O and knows nothing of keys, HTTP or storage.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Generic, NamedTuple, TypeVar

T = TypeVar("T", str, int)

DEFAULT_STEP = 1


class Stamp(NamedTuple):
    """Order events by hybrid-clock time, then by replica id."""

    time: int
    replica: str


@dataclass(frozen=True, slots=True)
class Register(Generic[T]):
    """Hold a value and the stamp of the write that set it."""

    value: T
    stamp: Stamp

    def wins_over(self, other: Register[T]) -> bool:
        """Tell whether this write beats `other` under last-writer-wins."""
        # The value only breaks ties between equal stamps, which correct
        # replicas never issue; it keeps merge deterministic regardless.
        return (self.stamp, self.value) > (other.stamp, other.value)


@dataclass(frozen=True, slots=True)
class Receipt:
    """Record one write made with an idempotency key, and its answer."""

    stamp: Stamp
    amount: int  # added to the value while the receipt is not folded
    fingerprint: str  # what the request was, to refuse a reuse of its key
    status: int
    body: str
    headers: tuple[tuple[str, str], ...] = ()
    folded: bool = False

    def beats(self, other: Receipt) -> bool:
        """Tell whether this receipt survives a join with `other`."""
        if self.folded != other.folded:
            return self.folded
        # Among attempts of one write the earliest stands; the other fields
        # only order receipts no correct replica would issue, deterministically.
        return self._order() < other._order()

    def _order(self) -> tuple[Stamp, int, str, int, str, tuple[tuple[str, str], ...]]:
        return (
            self.stamp,
            self.amount,
            self.fingerprint,
            self.status,
            self.body,
            self.headers,
        )


def _later(mine: Register[T] | None, theirs: Register[T] | None) -> Register[T] | None:
    if mine is None:
        return theirs
    if theirs is None or mine.wins_over(theirs):
        return mine
    return theirs


def _max_stamp(a: Stamp | None, b: Stamp | None) -> Stamp | None:
    if a is None:
        return b
    if b is None:
        return a
    return max(a, b)


@dataclass(slots=True)
class CounterState:
    """Hold everything a replica knows of one counter."""

    created: Stamp | None = None
    increments: dict[str, int] = field(default_factory=dict)
    decrements: dict[str, int] = field(default_factory=dict)
    name: Register[str] | None = None
    description: Register[str] | None = None
    step: Register[int] | None = None
    deleted: Stamp | None = None
    versions: dict[str, int] = field(default_factory=dict)
    receipts: dict[str, Receipt] = field(default_factory=dict)
    # Per replica, a clock time: every receipt that replica made before it is
    # folded into its totals, whichever copy of the receipt a state holds.
    folded_upto: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        # A tombstone carries its stamp and receipts, whatever it was built from.
        if self.deleted is not None:
            self._become_tombstone(self.deleted)

    @property
    def live(self) -> bool:
        """Tell whether the counter has been created here and not deleted."""
        return self.created is not None and self.deleted is None

    @property
    def value(self) -> int:
        """Return the increments minus the decrements, unfolded receipts included."""
        if self.deleted is not None:
            return 0
        total = sum(self.increments.values()) - sum(self.decrements.values())
        # `counts` inlined: a hot counter holds thousands of receipts, and
        # every read and write sums them.
        upto = self.folded_upto
        for receipt in self.receipts.values():
            if not receipt.folded and (
                not upto or receipt.stamp.time >= upto.get(receipt.stamp.replica, 0)
            ):
                total += receipt.amount
        return total

    def counts(self, receipt: Receipt) -> bool:
        """Tell whether a receipt still adds its amount, not yet folded."""
        stamp = receipt.stamp
        return not receipt.folded and stamp.time >= self.folded_upto.get(
            stamp.replica, 0
        )

    @property
    def step_value(self) -> int:
        """Return what one increment adds."""
        return DEFAULT_STEP if self.step is None else self.step.value

    @property
    def name_value(self) -> str:
        """Return the name, or an empty string when none is set."""
        return "" if self.name is None else self.name.value

    @property
    def description_value(self) -> str:
        """Return the description, or an empty string when none is set."""
        return "" if self.description is None else self.description.value

    def copy(self) -> CounterState:
        """Return an independent copy (registers are immutable and shared)."""
        # Built field by field: dataclasses.replace costs several times more,
        # and every write copies one state.
        copied = CounterState.__new__(CounterState)
        copied.created = self.created
        copied.increments = dict(self.increments)
        copied.decrements = dict(self.decrements)
        copied.name = self.name
        copied.description = self.description
        copied.step = self.step
        copied.deleted = self.deleted
        copied.versions = dict(self.versions)
        copied.receipts = dict(self.receipts)
        copied.folded_upto = dict(self.folded_upto)
        return copied

    def merge(self, other: CounterState) -> bool:
        """Join `other` into this state in place; tell whether anything changed."""
        changed = _merge_receipts(self.receipts, other.receipts)
        if self.deleted is not None or other.deleted is not None:
            deleted = _max_stamp(self.deleted, other.deleted)
            if deleted == self.deleted:
                return changed
            self._become_tombstone(deleted)
            return True

        changed = _merge_totals(self.increments, other.increments) or changed
        changed = _merge_totals(self.decrements, other.decrements) or changed
        changed = _merge_totals(self.versions, other.versions) or changed
        changed = _merge_totals(self.folded_upto, other.folded_upto) or changed

        created = _max_stamp(self.created, other.created)
        name = _later(self.name, other.name)
        description = _later(self.description, other.description)
        step = _later(self.step, other.step)
        if (created, name, description, step) != (
            self.created,
            self.name,
            self.description,
            self.step,
        ):
            self.created = created
            self.name = name
            self.description = description
            self.step = step
            changed = True
        return changed

    def _become_tombstone(self, deleted: Stamp | None) -> None:
        # Receipts stay: a retried write must still get its first answer.
        self.created = None
        self.increments = {}
        self.decrements = {}
        self.versions = {}
        self.folded_upto = {}
        self.name = self.description = self.step = None
        self.deleted = deleted


def _merge_totals(mine: dict[str, int], theirs: dict[str, int]) -> bool:
    changed = False
    for replica, total in theirs.items():
        if total > mine.get(replica, 0):
            mine[replica] = total
            changed = True
    return changed


def _merge_receipts(mine: dict[str, Receipt], theirs: dict[str, Receipt]) -> bool:
    changed = False
    for key, receipt in theirs.items():
        current = mine.get(key)
        if current is None or receipt.beats(current):
            mine[key] = receipt
            changed = True
    return changed


def merged(a: CounterState, b: CounterState) -> CounterState:
    """Return the join of two states, leaving both untouched."""
    result = a.copy()
    result.merge(b)
    return result


def latest_time(state: CounterState) -> int:
    """Return the largest clock time among a state's stamps (0 when none)."""
    stamps = [state.created, state.deleted]
    stamps += [r.stamp for r in (state.name, state.description, state.step) if r]
    stamps += [receipt.stamp for receipt in state.receipts.values()]
    times = [stamp.time for stamp in stamps if stamp is not None]
    return max([*times, *state.folded_upto.values()], default=0)


def create(
    stamp: Stamp,
    start: int = 0,
    name: str = "",
    description: str = "",
    step: int = DEFAULT_STEP,
) -> CounterState:
    """Return the delta that creates a counter: the whole initial state."""
    state = CounterState(
        created=stamp,
        name=Register(name, stamp),
        description=Register(description, stamp),
        step=Register(step, stamp),
    )
    if start > 0:
        state.increments[stamp.replica] = start
    elif start < 0:
        state.decrements[stamp.replica] = -start
    return state


def add(state: CounterState, replica: str, amount: int) -> CounterState:
    """Return the delta that adds `amount` (of either sign) as `replica`."""
    delta = CounterState()
    if amount > 0:
        delta.increments[replica] = state.increments.get(replica, 0) + amount
    elif amount < 0:
        delta.decrements[replica] = state.decrements.get(replica, 0) - amount
    return delta


def update_metadata(
    stamp: Stamp,
    name: str | None = None,
    description: str | None = None,
    step: int | None = None,
) -> CounterState:
    """Return the delta that sets the given metadata fields, and only those."""
    return CounterState(
        name=None if name is None else Register(name, stamp),
        description=None if description is None else Register(description, stamp),
        step=None if step is None else Register(step, stamp),
    )


def delete(stamp: Stamp) -> CounterState:
    """Return the delta that deletes a counter for good."""
    return CounterState(deleted=stamp)


def record(delta: CounterState, key: str, receipt: Receipt) -> CounterState:
    """Add a receipt to a write's delta, in place, and return the delta."""
    delta.receipts[key] = receipt
    return delta


def bump(state: CounterState, delta: CounterState, replica: str) -> CounterState:
    """Count one more write of `replica` in a delta, in place; return it."""
    if delta.deleted is None:
        delta.versions[replica] = state.versions.get(replica, 0) + 1
    return delta


def fold(state: CounterState, replica: str, upto: int) -> CounterState | None:
    """Return the delta that folds `replica`'s receipts made before `upto`.

    Only the replica that made a receipt folds it, so its amount moves into
    one replica's totals once. The receipts fold together, in one delta that
    adds their sum and raises `replica`'s fold watermark to `upto`: a copy of
    any of them, unfolded, that another replica holds or gets later from a
    stale node then counts no more there. None when nothing is left to fold.
    """
    folded = {
        key: dataclasses.replace(receipt, folded=True)
        for key, receipt in state.receipts.items()
        if receipt.stamp.replica == replica
        and receipt.stamp.time < upto
        and state.counts(receipt)
    }
    if not folded:
        return None
    if state.deleted is not None:
        return CounterState(deleted=state.deleted, receipts=folded)
    delta = add(state, replica, sum(receipt.amount for receipt in folded.values()))
    delta.receipts.update(folded)
    delta.folded_upto[replica] = max(upto, state.folded_upto.get(replica, 0))
    return bump(state, delta, replica)
