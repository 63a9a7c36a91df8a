"""A hybrid logical clock packed into one integer.

A timestamp is `milliseconds << 16 | logical`. Comparing two timestamps as
plain integers orders them first by wall time, then by the logical count that
separates events inside one millisecond. The clock never runs backwards: a
node whose wall clock falls behind keeps counting from the largest timestamp
it has issued or observed, so a skewed clock cannot make a later write lose
to an earlier one on the same causal path.
"""

import time
from collections.abc import Callable

LOGICAL_BITS = 16


def from_millis(millis: int) -> int:
    """Return the smallest timestamp at wall time `millis`."""
    return millis << LOGICAL_BITS


def to_millis(timestamp: int) -> int:
    """Return the wall-clock milliseconds part of `timestamp`."""
    return timestamp >> LOGICAL_BITS


def wall_millis() -> int:
    """Read the system clock in milliseconds since the epoch."""
    return time.time_ns() // 1_000_000


class HybridClock:
    """Issue strictly increasing timestamps that respect observed ones."""

    def __init__(self, wall: Callable[[], int] = wall_millis) -> None:
        self._wall = wall
        self._last = 0

    def wall(self) -> int:
        """Read the wall clock this clock follows, in milliseconds."""
        return self._wall()

    @property
    def last(self) -> int:
        """The largest timestamp issued or observed so far."""
        return self._last

    def now(self) -> int:
        """Issue a timestamp larger than every one issued or observed."""
        self._last = max(self._last + 1, from_millis(self._wall()))
        return self._last

    def observe(self, timestamp: int) -> None:
        """Move past a timestamp seen in another replica's state."""
        if timestamp > self._last:
            self._last = timestamp
