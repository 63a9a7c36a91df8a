"""The hybrid logical clock."""

from nixie.hlc import HybridClock, from_millis, to_millis


def test_timestamps_increase_within_one_millisecond() -> None:
    """A frozen wall clock still yields strictly increasing timestamps."""
    clock = HybridClock(wall=lambda: 1000)

    stamps = [clock.now() for _ in range(5)]

    assert stamps == sorted(set(stamps))
    assert to_millis(stamps[-1]) == 1000


def test_timestamps_follow_the_wall_clock() -> None:
    """When the wall clock moves on, so does the timestamp."""
    now = [1000]
    clock = HybridClock(wall=lambda: now[0])
    first = clock.now()

    now[0] = 2000
    second = clock.now()

    assert second == from_millis(2000)
    assert second > first


def test_clock_never_runs_backwards() -> None:
    """A wall clock that jumps back does not make timestamps go back."""
    now = [5000]
    clock = HybridClock(wall=lambda: now[0])
    before = clock.now()

    now[0] = 1000
    after = clock.now()

    assert after > before


def test_observed_timestamp_is_passed() -> None:
    """After seeing a timestamp from a fast peer, local writes order after it."""
    clock = HybridClock(wall=lambda: 1000)
    remote = from_millis(9000) + 3

    clock.observe(remote)

    assert clock.now() > remote
