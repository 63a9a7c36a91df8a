"""The Jepsen-style checker of the fault tier judges histories correctly."""

from integration.faults.checker import FAILED, OK, UNKNOWN, History, Operation, check


def history(*outcomes: str) -> History:
    result = History()
    for outcome in outcomes:
        result.add(Operation("k", "n1", outcome, 0.01, 0.0))
    return result


def test_exact_count_passes() -> None:
    """Start plus step times the acknowledged increments is valid."""
    verdict = check(history(OK, OK, FAILED), {"k": (10, 3)}, {"n1": {"k": 16}}, 0.1)

    assert verdict.valid, verdict.report


def test_lost_increment_fails() -> None:
    """A final value missing an acknowledged increment is invalid."""
    verdict = check(history(OK, OK), {"k": (10, 3)}, {"n1": {"k": 13}}, 0.1)

    assert not verdict.valid
    assert "not 10 + 3 x n for any n in [2, 2]" in verdict.report


def test_applied_failure_fails() -> None:
    """A failed increment that shows in the value is invalid."""
    verdict = check(history(OK, FAILED), {"k": (0, 1)}, {"n1": {"k": 2}}, 0.1)

    assert not verdict.valid


def test_unknown_increments_may_count_or_not() -> None:
    """Each unknown increment may or may not be applied; nothing else may."""
    ops = history(OK, UNKNOWN)

    valid = [
        check(ops, {"k": (10, -2)}, {"n1": {"k": v}}, 0.1).valid for v in (8, 6, 4)
    ]

    assert [True, True, False] == valid


def test_disagreeing_nodes_fail() -> None:
    """Nodes serving different values are invalid whatever the history."""
    finals = {"n1": {"k": 1}, "n2": {"k": 2}}

    verdict = check(history(OK, UNKNOWN), {"k": (0, 1)}, finals, 0.1)

    assert not verdict.valid
    assert "disagree" in verdict.report


def test_exact_check_passes_when_every_increment_is_ok_and_counted() -> None:
    """In the exact check, start plus step times the ok increments is valid."""
    verdict = check(history(OK, OK), {"k": (10, -3)}, {"n1": {"k": 4}}, 0.1, exact=True)

    assert verdict.valid, verdict.report


def test_exact_check_refuses_unknown_and_failed_increments() -> None:
    """In the exact check, an increment left unknown or failed is a problem."""
    verdict = check(
        history(OK, UNKNOWN, FAILED), {"k": (0, 1)}, {"n1": {"k": 1}}, 0.1, exact=True
    )

    assert not verdict.valid
    assert "1 increments unknown" in verdict.report
    assert "1 increments failed" in verdict.report


def test_exact_check_refuses_an_unknown_increment_that_was_applied() -> None:
    """In the exact check, the value counts the ok increments, no more."""
    verdict = check(
        history(OK, UNKNOWN), {"k": (0, 1)}, {"n1": {"k": 2}}, 0.1, exact=True
    )

    assert not verdict.valid
    assert "not 0 + 1 x n for any n in [1, 1]" in verdict.report
