"""One Nixie node: every counter's state, the rules for changing it, storage.

All methods are synchronous and do their read-modify-write without yielding
to the event loop, so requests served by one node never interleave inside an
operation. Each write computes a CRDT delta, merges it into a copy of the
counter's state, stores the copy and only then installs it: a write that
cannot be stored changes nothing. Every change is folded into the node's
digest and its delta log, from which anti-entropy ships it to peers.

A write given an `Idempotency` leaves a receipt in the counter's state (see
`nixie.crdt`) holding the answer it got. `replay` finds it again, on this
node or, once gossip has carried it, on any other; the caller checks before
writing, in the same step of the event loop, so no write slips between.
Receipts older than the retention window are folded into their maker's
totals by `fold_receipts`, and dropped for good by `purge_receipts` once
twice the window has passed.
"""

import base64
import hashlib
import hmac
import logging
import secrets
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from nixie import codec, crdt, hlc
from nixie.crdt import CounterState, Receipt, Stamp
from nixie.deltas import DeltaLog
from nixie.digest import Digest
from nixie.errors import IdempotencyConflict, InvalidInput, OutOfRange, UnknownKey
from nixie.hlc import HybridClock
from nixie.store import Change, Store, new_replica_id
from nixie.values import INT64_MAX, INT64_MIN, in_int64

logger = logging.getLogger(__name__)

KEY_CHARS = 21
# How far ahead of this node's clock a peer's timestamps may be.
MAX_CLOCK_AHEAD_MS = 60 * 60 * 1000
DEFAULT_RETENTION_MS = 24 * 60 * 60 * 1000


def new_key() -> str:
    """Return a fresh counter key: 21 URL-safe characters, 126 random bits."""
    return base64.urlsafe_b64encode(secrets.token_bytes(16))[:KEY_CHARS].decode()


@dataclass(frozen=True, slots=True)
class Idempotency:
    """A client's idempotency key, and the fingerprint of its request."""

    key: str
    fingerprint: str


def counter_headers(state: CounterState) -> tuple[tuple[str, str], ...]:
    """Return the Nixie-* headers that describe a counter, sorted by name."""
    headers = []
    if state.description_value:
        headers.append(("Nixie-Description", state.description_value))
    if state.name_value:
        headers.append(("Nixie-Name", state.name_value))
    headers.append(("Nixie-Step", str(state.step_value)))
    return tuple(headers)


class Node:
    """Hold every counter of one replica and apply writes to them."""

    def __init__(
        self,
        store: Store,
        clock: HybridClock | None = None,
        delta_capacity: int = 100_000,
        *,
        retention_ms: int = DEFAULT_RETENTION_MS,
        key_secret: str | None = None,
    ) -> None:
        self.store = store
        self.replica_id = store.replica_id()
        self.clock = clock or HybridClock()
        self.digest = Digest()
        self.deltas = DeltaLog(delta_capacity)
        self.retention_ms = retention_ms
        # Keys made from idempotency keys must come out alike on every node.
        self._key_secret = (key_secret or "nixie-local-keys").encode()
        self._states: dict[str, CounterState] = {}
        self._listing: str | None = None
        self._receipt_owner: dict[str, str] = {}  # idempotency key -> counter

        for key, core, receipts in store.load():
            state = codec.decode_parts(core, receipts)
            self._states[key] = state
            self._index_receipts(key, state.receipts)
            self.digest.update(key, core, receipts)
            self.clock.observe(crdt.latest_time(state))
        logger.info(
            "replica %s loaded %d counters from %s",
            self.replica_id,
            len(self._states),
            store.data_dir,
        )

    def __len__(self) -> int:
        """Return how many keys this node holds, tombstones included."""
        return len(self._states)

    # Reads

    def get(self, key: str) -> CounterState:
        """Return a live counter's state, or raise `UnknownKey`."""
        state = self._states.get(key)
        if state is None or not state.live:
            raise UnknownKey(key)
        return state

    def state(self, key: str) -> CounterState | None:
        """Return whatever this node holds for `key`, live or not."""
        return self._states.get(key)

    def listing(self) -> str:
        """Return the live keys, one a line, in creation order then by key."""
        if self._listing is None:
            live = [
                (state.created, key)
                for key, state in self._states.items()
                if state.created is not None and state.deleted is None
            ]
            live.sort(key=lambda pair: (pair[0].time, pair[1]))
            self._listing = "\n".join(key for _, key in live)
        return self._listing

    # Writes

    # Idempotent writes

    def derived_key(self, idempotency_key: str) -> str:
        """Return the counter key a create with this idempotency key makes."""
        digest = hmac.new(
            self._key_secret, b"create\0" + idempotency_key.encode(), hashlib.sha256
        ).digest()
        return base64.urlsafe_b64encode(digest)[:KEY_CHARS].decode()

    def replay(self, idem: Idempotency, key: str) -> Receipt | None:
        """Return the receipt of an earlier attempt of this write, if any.

        Raise `IdempotencyConflict` when the idempotency key was used for a
        different request: another counter, method, body or headers.
        """
        owner = self._receipt_owner.get(idem.key)
        if owner is not None and owner != key:
            raise IdempotencyConflict(
                f"Idempotency-Key {idem.key}: already used for a request on "
                "another counter"
            )
        state = self._states.get(key)
        receipt = None if state is None else state.receipts.get(idem.key)
        if receipt is None:
            return None
        if receipt.fingerprint != idem.fingerprint:
            raise IdempotencyConflict(
                f"Idempotency-Key {idem.key}: already used for a different "
                "request (method, body or Nixie-* headers differ)"
            )
        return receipt

    # Writes

    def create(
        self,
        start: int = 0,
        name: str = "",
        description: str = "",
        step: int = crdt.DEFAULT_STEP,
        idem: Idempotency | None = None,
    ) -> tuple[str, CounterState]:
        """Create a counter and return its key and state.

        Without `idem` the key is fresh. With it, the key derives from the
        idempotency key, so attempts on several nodes create one counter,
        and the start value sits in a receipt, so it counts once.
        """
        stamp = self._stamp()
        if idem is None:
            key = new_key()
            while key in self._states:  # never reuse a key, not even a dead one
                key = new_key()
            delta = crdt.create(stamp, start, name, description, step)
            return key, self._apply(key, CounterState(), delta)

        key = self.derived_key(idem.key)
        if key in self._states:
            raise IdempotencyConflict(
                f"Idempotency-Key {idem.key}: already used, and its record has "
                "expired; use a new key"
            )
        delta = crdt.create(stamp, 0, name, description, step)
        receipt = Receipt(
            stamp, start, idem.fingerprint, 201, key, counter_headers(delta)
        )
        return key, self._apply(
            key, CounterState(), crdt.record(delta, idem.key, receipt)
        )

    def increment(self, key: str, idem: Idempotency | None = None) -> CounterState:
        """Add the counter's step to its value."""
        state = self.get(key)
        return self._add(key, state, state.step_value, idem, 200)

    def set_value(
        self, key: str, value: int, idem: Idempotency | None = None
    ) -> CounterState:
        """Set the value by recording the difference as this replica's write."""
        state = self.get(key)
        return self._add(key, state, value - state.value, idem, 204)

    def update_metadata(
        self,
        key: str,
        name: str | None = None,
        description: str | None = None,
        step: int | None = None,
        idem: Idempotency | None = None,
    ) -> CounterState:
        """Change the given metadata fields and leave the others alone."""
        state = self.get(key)
        if name is None and description is None and step is None and idem is None:
            return state
        stamp = self._stamp()
        delta = crdt.update_metadata(stamp, name, description, step)
        if idem is not None:
            after = crdt.merged(state, delta)
            receipt = Receipt(
                stamp, 0, idem.fingerprint, 204, "", counter_headers(after)
            )
            crdt.record(delta, idem.key, receipt)
        return self._apply(key, state, delta)

    def delete(self, key: str, idem: Idempotency | None = None) -> CounterState:
        """Delete a counter; its key stays dead on every replica."""
        state = self.get(key)
        stamp = self._stamp()
        delta = crdt.delete(stamp)
        if idem is not None:
            crdt.record(delta, idem.key, Receipt(stamp, 0, idem.fingerprint, 204, ""))
        return self._apply(key, state, delta)

    # Upkeep of receipts

    def fold_receipts(self) -> int:
        """Fold this replica's receipts older than the window; return how many.

        The due receipts of one counter fold in one write of it.
        """
        oldest = hlc.from_millis(self.clock.wall() - self.retention_ms)
        folded = 0
        for key, state in list(self._states.items()):
            if not state.receipts:
                continue
            delta = crdt.fold(state, self.replica_id, oldest)
            if delta is not None:
                self._apply(key, state, delta)
                folded += len(delta.receipts)
        return folded

    def purge_receipts(self) -> int:
        """Drop receipts past twice the window that no longer count; return how many.

        Folded receipts and those of deleted counters count for nothing; an
        unfolded receipt of a live counter still holds part of its value and
        stays until its maker folds it.
        """
        horizon = self._purge_horizon()
        purged = 0
        for key, state in list(self._states.items()):
            stale = _expired(state, horizon)
            if not stale:
                continue
            new = state.copy()
            for idempotency_key in stale:
                del new.receipts[idempotency_key]
            change = _change(key, state, new, (), stale)
            self.store.save(change)
            self._install(key, state, new, change)
            for idempotency_key in stale:
                # Another counter may hold a receipt of this key too, from
                # a conflicting use: its claim stays.
                if self._receipt_owner.get(idempotency_key) == key:
                    del self._receipt_owner[idempotency_key]
            purged += len(stale)
        return purged

    def merge(
        self, remotes: dict[str, CounterState], origin: str | None, log: bool = True
    ) -> dict[str, CounterState]:
        """Merge states received from another replica, stored in one transaction.

        Return the new states of the counters that changed. Deltas that
        changed something are logged for shipping to other peers, marked
        with `origin`, the replica they came from, unless `log` is false.
        """
        _refuse_far_future(remotes, self.clock.wall())
        remotes = dict(remotes)  # expired receipts are left out below
        changed: dict[str, tuple[CounterState, CounterState, Change]] = {}
        stale = False
        horizon = self._purge_horizon()
        for key, remote in remotes.items():
            state = self._states.get(key, CounterState())
            if remote.receipts:
                remote = remotes[key] = _without_expired(
                    remote, horizon, state, self.replica_id
                )
            stale = stale or _ahead_of(remote, state, self.replica_id)
            candidate = state.copy()
            if candidate.merge(remote):
                change = _change(key, state, candidate, remote.receipts)
                changed[key] = (state, candidate, change)
            self.clock.observe(crdt.latest_time(remote))
        if stale:
            self._take_fresh_replica_id()
        if not changed:
            return {}

        self.store.save_many([change for _, _, change in changed.values()])
        for key, (old, new, change) in changed.items():
            self._install(key, old, new, change)
            if log:
                self.deltas.append(key, remotes[key], origin)
        return {key: new for key, (_, new, _) in changed.items()}

    def states_of(self, keys: list[str]) -> dict[str, CounterState]:
        """Return this node's states for `keys`, skipping keys it never saw."""
        return {key: self._states[key] for key in keys if key in self._states}

    def _add(
        self,
        key: str,
        state: CounterState,
        amount: int,
        idem: Idempotency | None,
        status: int,
    ) -> CounterState:
        current = state.value
        result = current + amount
        # Concurrent writes on other replicas can carry a merged value past
        # the range; then only writes that bring it closer back are allowed.
        if not in_int64(result) and abs(result) >= abs(current):
            limit = INT64_MAX if result > 0 else INT64_MIN
            raise OutOfRange(
                f"value: {current} + {amount} would pass the limit {limit}"
            )
        if idem is None:
            return self._apply(key, state, crdt.add(state, self.replica_id, amount))
        body = str(result) if status == 200 else ""
        receipt = Receipt(
            self._stamp(),
            amount,
            idem.fingerprint,
            status,
            body,
            counter_headers(state),
        )
        return self._apply(key, state, crdt.record(CounterState(), idem.key, receipt))

    def _apply(
        self, key: str, state: CounterState, delta: CounterState
    ) -> CounterState:
        crdt.bump(state, delta, self.replica_id)
        new = crdt.merged(state, delta)
        change = _change(key, state, new, delta.receipts)
        self.store.save(change)
        self._install(key, state, new, change)
        self.deltas.append(key, delta, None)
        return new

    def _install(
        self, key: str, old: CounterState, new: CounterState, change: Change
    ) -> None:
        self._states[key] = new
        self.digest.update(key, change.state, change.receipts, change.purged)
        if old.live != new.live:
            self._listing = None
        self._index_receipts(key, change.receipts)

    def _index_receipts(self, key: str, idempotency_keys: Iterable[str]) -> None:
        for idempotency_key in idempotency_keys:
            self._receipt_owner.setdefault(idempotency_key, key)

    def _purge_horizon(self) -> int:
        return hlc.from_millis(self.clock.wall() - 2 * self.retention_ms)

    def _take_fresh_replica_id(self) -> None:
        # Only this replica writes its own totals, so a peer holding larger
        # ones proves this data dir is older than what the cluster saw of it:
        # restored from a backup, or copied. Writing on under the same id
        # would compute totals that merge below the ones peers hold, and lose
        # those increments; a fresh id keeps every later write apart.
        fresh = new_replica_id()
        logger.warning(
            "peers hold newer writes of replica %s than this data dir: it was "
            "restored or copied; taking fresh replica id %s",
            self.replica_id,
            fresh,
        )
        self.store.set_replica_id(fresh)
        self.replica_id = fresh

    def _stamp(self) -> Stamp:
        return Stamp(self.clock.now(), self.replica_id)


def _change(
    key: str,
    old: CounterState,
    new: CounterState,
    touched: Iterable[str],
    purged: Sequence[str] = (),
) -> Change:
    """Return what storing `new` in place of `old` writes.

    `touched` names the receipts the write may have added or changed (a
    delta's, or a merged remote state's); those whose value is still what
    `old` held are left out, so a merge rewrites no receipt it already had.
    """
    receipts = {}
    for idempotency_key in touched:
        receipt = new.receipts[idempotency_key]
        if receipt != old.receipts.get(idempotency_key):
            receipts[idempotency_key] = codec.canonical_receipt(receipt)
    return Change(key, codec.canonical_core(new), receipts, purged)


def _expired(
    state: CounterState,
    horizon: int,
    local: CounterState | None = None,
    replica: str | None = None,
) -> list[str]:
    """Return the receipts of `state` older than `horizon` that count no more.

    Folded receipts, those their maker's fold watermark covers, and those of
    deleted counters count no more. Given the `local` state of this node's
    `replica`, so do this replica's own receipts that `local` lacks: this
    replica never drops a receipt it made but by purging it, after folding
    it into its totals.
    """
    deleted = state.deleted is not None or (
        local is not None and local.deleted is not None
    )
    return [
        idempotency_key
        for idempotency_key, receipt in state.receipts.items()
        if receipt.stamp.time < horizon
        and (
            _counts_no_more(receipt, state, local)
            or deleted
            or (
                local is not None
                and receipt.stamp.replica == replica
                and idempotency_key not in local.receipts
            )
        )
    ]


def _counts_no_more(
    receipt: Receipt, state: CounterState, local: CounterState | None
) -> bool:
    """Tell whether a receipt of `state`, merged into `local`, adds nothing.

    A folded receipt always comes with its maker's fold watermark, which
    covers `local`'s unfolded copy too once merged, so either side's verdict
    holds for the merged state.
    """
    return not state.counts(receipt) or (
        local is not None and not local.counts(receipt)
    )


def _without_expired(
    remote: CounterState, horizon: int, local: CounterState, replica: str
) -> CounterState:
    """Return `remote` without the receipts this node has purged or would."""
    expired = _expired(remote, horizon, local, replica)
    if not expired:
        return remote
    remote = remote.copy()
    for idempotency_key in expired:
        del remote.receipts[idempotency_key]
    return remote


def _ahead_of(remote: CounterState, local: CounterState, replica: str) -> bool:
    """Tell whether `remote` holds larger totals of `replica` than `local`."""
    return remote.increments.get(replica, 0) > local.increments.get(
        replica, 0
    ) or remote.decrements.get(replica, 0) > local.decrements.get(replica, 0)


def _refuse_far_future(remotes: dict[str, CounterState], wall_millis: int) -> None:
    """Refuse states stamped further ahead of this node's clock than any skew.

    Merging such a stamp would drag this node's clock (and every later write
    of it) to that time; a stamp near the top of the range would exhaust it.
    """
    limit = hlc.from_millis(wall_millis + MAX_CLOCK_AHEAD_MS)
    for key, remote in remotes.items():
        if crdt.latest_time(remote) > limit:
            raise InvalidInput(
                f"states[{key}]: a timestamp is more than "
                f"{MAX_CLOCK_AHEAD_MS // 60_000} minutes ahead of this node's clock"
            )
