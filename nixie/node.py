"""One Nixie node: every counter's state, the rules for changing it, storage.

All methods are synchronous and do their read-modify-write without yielding
to the event loop, so requests served by one node never interleave inside an
operation. Each write computes a CRDT delta, merges it into a copy of the
counter's state, stores the copy and only then installs it: a write that
cannot be stored changes nothing. Every change is folded into the node's
digest and its delta log, from which anti-entropy ships it to peers.
"""

import base64
import logging
import secrets

from nixie import codec, crdt, hlc
from nixie.crdt import CounterState, Stamp
from nixie.deltas import DeltaLog
from nixie.digest import Digest
from nixie.errors import InvalidInput, OutOfRange, UnknownKey
from nixie.hlc import HybridClock
from nixie.store import Store, new_replica_id
from nixie.values import INT64_MAX, INT64_MIN, in_int64

logger = logging.getLogger(__name__)

KEY_CHARS = 21
# How far ahead of this node's clock a peer's timestamps may be.
MAX_CLOCK_AHEAD_MS = 60 * 60 * 1000


def new_key() -> str:
    """Return a fresh counter key: 21 URL-safe characters, 126 random bits."""
    return base64.urlsafe_b64encode(secrets.token_bytes(16))[:KEY_CHARS].decode()


class Node:
    """Hold every counter of one replica and apply writes to them."""

    def __init__(
        self,
        store: Store,
        clock: HybridClock | None = None,
        delta_capacity: int = 100_000,
    ) -> None:
        self.store = store
        self.replica_id = store.replica_id()
        self.clock = clock or HybridClock()
        self.digest = Digest()
        self.deltas = DeltaLog(delta_capacity)
        self._states: dict[str, CounterState] = {}
        self._listing: str | None = None

        for key, text in store.load():
            state = codec.decode_state(codec.loads(text))
            self._states[key] = state
            self.digest.update(key, text)
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

    def create(
        self,
        start: int = 0,
        name: str = "",
        description: str = "",
        step: int = crdt.DEFAULT_STEP,
    ) -> tuple[str, CounterState]:
        """Create a counter under a fresh key; return the key and its state."""
        key = new_key()
        while key in self._states:  # never reuse a key, not even a dead one
            key = new_key()
        delta = crdt.create(self._stamp(), start, name, description, step)
        return key, self._apply(key, CounterState(), delta)

    def increment(self, key: str) -> CounterState:
        """Add the counter's step to its value."""
        state = self.get(key)
        return self._add(key, state, state.step_value)

    def set_value(self, key: str, value: int) -> CounterState:
        """Set the value by recording the difference as this replica's write."""
        state = self.get(key)
        return self._add(key, state, value - state.value)

    def update_metadata(
        self,
        key: str,
        name: str | None = None,
        description: str | None = None,
        step: int | None = None,
    ) -> CounterState:
        """Change the given metadata fields and leave the others alone."""
        state = self.get(key)
        if name is None and description is None and step is None:
            return state
        delta = crdt.update_metadata(self._stamp(), name, description, step)
        return self._apply(key, state, delta)

    def delete(self, key: str) -> None:
        """Delete a counter; its key stays dead on every replica."""
        state = self.get(key)
        self._apply(key, state, crdt.delete(self._stamp()))

    def merge(
        self, remotes: dict[str, CounterState], origin: str | None, log: bool = True
    ) -> dict[str, CounterState]:
        """Merge states received from another replica, stored in one transaction.

        Return the new states of the counters that changed. Deltas that
        changed something are logged for shipping to other peers, marked
        with `origin`, the replica they came from, unless `log` is false.
        """
        _refuse_far_future(remotes, self.clock.wall())
        changed: dict[str, tuple[CounterState, CounterState, str]] = {}
        stale = False
        for key, remote in remotes.items():
            state = self._states.get(key, CounterState())
            stale = stale or _ahead_of(remote, state, self.replica_id)
            candidate = state.copy()
            if candidate.merge(remote):
                changed[key] = (state, candidate, codec.canonical(candidate))
            self.clock.observe(crdt.latest_time(remote))
        if stale:
            self._take_fresh_replica_id()
        if not changed:
            return {}

        self.store.save_many([(key, text) for key, (_, _, text) in changed.items()])
        for key, (old, new, text) in changed.items():
            self._install(key, old, new, text)
            if log:
                self.deltas.append(key, remotes[key], origin)
        return {key: new for key, (_, new, _) in changed.items()}

    def states_of(self, keys: list[str]) -> dict[str, CounterState]:
        """Return this node's states for `keys`, skipping keys it never saw."""
        return {key: self._states[key] for key in keys if key in self._states}

    def _add(self, key: str, state: CounterState, amount: int) -> CounterState:
        current = state.value
        result = current + amount
        # Concurrent writes on other replicas can carry a merged value past
        # the range; then only writes that bring it closer back are allowed.
        if not in_int64(result) and abs(result) >= abs(current):
            limit = INT64_MAX if result > 0 else INT64_MIN
            raise OutOfRange(
                f"value: {current} + {amount} would pass the limit {limit}"
            )
        return self._apply(key, state, crdt.add(state, self.replica_id, amount))

    def _apply(
        self, key: str, state: CounterState, delta: CounterState
    ) -> CounterState:
        new = crdt.merged(state, delta)
        text = codec.canonical(new)
        self.store.save(key, text)
        self._install(key, state, new, text)
        self.deltas.append(key, delta, None)
        return new

    def _install(
        self, key: str, old: CounterState, new: CounterState, text: str
    ) -> None:
        self._states[key] = new
        self.digest.update(key, text)
        if old.live != new.live:
            self._listing = None

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
