"""One Nixie node: every counter's state, the rules for changing it, storage.

All methods are synchronous and do their read-modify-write without yielding
to the event loop, so requests served by one node never interleave inside an
operation. Each write computes a CRDT delta, merges it into a copy of the
counter's state, stores the copy and only then installs it: a write that
cannot be stored changes nothing.
"""

import base64
import logging
import secrets
from collections.abc import Callable

from nixie import crdt
from nixie.crdt import CounterState, Stamp
from nixie.errors import OutOfRange, UnknownKey
from nixie.hlc import HybridClock
from nixie.store import Store
from nixie.values import INT64_MAX, INT64_MIN, in_int64

logger = logging.getLogger(__name__)

KEY_CHARS = 21

# Called with (key, delta) after every change this node makes or merges.
DeltaListener = Callable[[str, CounterState], None]


def new_key() -> str:
    """Return a fresh counter key: 21 URL-safe characters, 126 random bits."""
    return base64.urlsafe_b64encode(secrets.token_bytes(16))[:KEY_CHARS].decode()


class Node:
    """Hold every counter of one replica and apply writes to them."""

    def __init__(self, store: Store, clock: HybridClock | None = None) -> None:
        self.store = store
        self.replica_id = store.replica_id()
        self.clock = clock or HybridClock()
        self.listeners: list[DeltaListener] = []
        self._states: dict[str, CounterState] = {}
        self._listing: str | None = None

        for key, state in store.load():
            self._states[key] = state
            self.clock.observe(crdt.latest_time(state))
        logger.info(
            "replica %s loaded %d counters from %s",
            self.replica_id,
            len(self._states),
            store.data_dir,
        )

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

    def merge(self, key: str, remote: CounterState) -> bool:
        """Merge state received from another replica; tell whether it changed."""
        state = self._states.get(key, CounterState())
        self.clock.observe(crdt.latest_time(remote))
        if merged_state := _merged_if_changed(state, remote):
            self._install(key, state, merged_state, remote)
            return True
        return False

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
        new_state = crdt.merged(state, delta)
        self._install(key, state, new_state, delta)
        return new_state

    def _install(
        self,
        key: str,
        old: CounterState,
        new: CounterState,
        delta: CounterState,
    ) -> None:
        self.store.save(key, new)
        self._states[key] = new
        if old.live != new.live:
            self._listing = None
        for listener in self.listeners:
            listener(key, delta)

    def _stamp(self) -> Stamp:
        return Stamp(self.clock.now(), self.replica_id)


def _merged_if_changed(
    state: CounterState, remote: CounterState
) -> CounterState | None:
    candidate = state.copy()
    return candidate if candidate.merge(remote) else None
