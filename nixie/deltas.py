"""A bounded, numbered log of the deltas a node still has to ship to peers.

Every change a node makes or merges is appended with the next sequence
number and the replica it came from. A peer acknowledges a push up to a
sequence number; the next push to that peer joins the deltas after it, per
key, leaving out those that came from that very peer. The log keeps at most
`capacity` entries: a peer that falls further behind than that is repaired
by digest comparison instead.
"""

from dataclasses import dataclass

from nixie.crdt import CounterState, merged


@dataclass(frozen=True, slots=True)
class Entry:
    """One delta, where it came from, and its place in the log."""

    seq: int
    key: str
    delta: CounterState
    origin: str | None


class DeltaLog:
    """Number deltas and hand out what a peer has not acknowledged."""

    def __init__(self, capacity: int = 100_000) -> None:
        self.capacity = capacity
        self.head = 0
        self._entries: list[Entry] = []
        self._start = 0  # index of the first entry still kept

    @property
    def oldest(self) -> int:
        """Return the sequence number before the first entry still kept."""
        if self._start < len(self._entries):
            return self._entries[self._start].seq - 1
        return self.head

    def __len__(self) -> int:
        return len(self._entries) - self._start

    def append(self, key: str, delta: CounterState, origin: str | None) -> None:
        """Record a delta; drop the oldest entry when the log is full."""
        self.head += 1
        self._entries.append(Entry(self.head, key, delta, origin))
        if len(self) > self.capacity:
            self._start += 1
            self._compact()

    def covers(self, acked: int) -> bool:
        """Tell whether every delta after `acked` is still in the log."""
        return acked >= self.oldest

    def since(
        self, acked: int, skip_origin: str | None, max_keys: int
    ) -> tuple[dict[str, CounterState], int]:
        """Join the deltas after `acked` per key, for a peer.

        Return the joined deltas of at most `max_keys` keys and the sequence
        number up to which they cover the log.
        """
        joined: dict[str, CounterState] = {}
        upto = acked
        first = self._start + max(0, acked - self.oldest)
        for entry in self._entries[first:]:
            if entry.origin is None or entry.origin != skip_origin:
                previous = joined.get(entry.key)
                if previous is None:
                    if len(joined) == max_keys:
                        break
                    joined[entry.key] = entry.delta
                else:
                    joined[entry.key] = merged(previous, entry.delta)
            upto = entry.seq
        return joined, upto

    def truncate(self, upto: int) -> None:
        """Forget the entries up to `upto`, acknowledged by every peer."""
        drop = min(max(0, upto - self.oldest), len(self))
        self._start += drop
        self._compact()

    def _compact(self) -> None:
        # Slicing the list is O(n); doing it only once half of it is dead
        # keeps appends and truncations O(1) on average.
        if self._start > len(self._entries) // 2:
            del self._entries[: self._start]
            self._start = 0
