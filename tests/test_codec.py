"""Encoding of counter states for storage and gossip."""

import pytest
from hypothesis import given

from nixie import codec
from nixie.crdt import CounterState
from nixie.errors import InvalidInput
from tests.test_crdt import states


@given(states)
def test_round_trip_is_exact(state: CounterState) -> None:
    """A state survives encoding to JSON text and back unchanged."""
    text = codec.dumps(codec.encode_state(state))

    assert state == codec.decode_state(codec.loads(text))


def test_large_totals_stay_exact() -> None:
    """Totals past 2**53 keep every digit through JSON."""
    state = CounterState(increments={"ra": 2**63 + 1}, decrements={"rb": 2**70 - 1})

    decoded = codec.decode_state(codec.loads(codec.dumps(codec.encode_state(state))))

    assert 2**63 + 1 - (2**70 - 1) == decoded.value


@pytest.mark.parametrize(
    "text",
    [
        "[]",
        '{"x": 1}',
        '{"p": {"ra": 1.0}}',
        '{"p": {"ra": 1e3}}',
        '{"p": {"ra": true}}',
        '{"p": {"ra": 0}}',
        '{"p": {"ra": -5}}',
        '{"p": {"ra": 1' + "0" * 60 + "}}",
        '{"p": {"": 1}}',
        '{"p": []}',
        '{"c": [1]}',
        '{"c": [-1, "ra"]}',
        '{"c": [1, 2]}',
        '{"c": [NaN, "ra"]}',
        '{"step": [1.5, 1, "ra"]}',
        '{"step": [' + str(2**63) + ', 1, "ra"]}',
        '{"name": [3, 1, "ra"]}',
        '{"name": ["' + "x" * 201 + '", 1, "ra"]}',
        '{"d": [1, "ra"], "p": {"ra": 1}}',
        "{",
        "[" * 100_000,
    ],
)
def test_refuses_impossible_or_malformed_states(text: str) -> None:
    """Floats, booleans, out-of-range numbers and malformed shapes are refused."""
    with pytest.raises(InvalidInput):
        codec.decode_state(codec.loads(text))
