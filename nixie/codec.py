"""Encode counter states as compact JSON values, and decode them strictly.

The same encoding serves the data dir and, later, gossip between nodes, so
decoding trusts nothing: every field is checked for type and range, and a
state that could not have been produced by a correct replica is refused.
Integers stay integers end to end; a float anywhere is an error.

    {"c": [time, replica],                 creation stamp
     "p": {replica: total}, "n": {...},    increments and decrements
     "name": [value, time, replica],       one register per metadata field
     "desc": [...], "step": [...],
     "d": [time, replica]}                 deletion stamp (alone when present)
"""

import json
from typing import Any

from nixie.crdt import CounterState, Register, Stamp
from nixie.errors import InvalidInput
from nixie.values import (
    DESCRIPTION_MAX_CHARS,
    INT64_MAX,
    INT64_MIN,
    NAME_MAX_CHARS,
    check_id,
    check_text,
)

# Per-replica totals grow without bound in principle; this bound keeps a
# forged payload from making every later sum expensive. 2**126 increments of
# the largest step would take far longer than any cluster lives.
TOTAL_MAX = 2**126
TIME_MAX = 2**63 - 1


def encode_state(state: CounterState) -> dict[str, Any]:
    """Return the JSON-ready form of a state."""
    if state.deleted is not None:
        return {"d": list(state.deleted)}

    out: dict[str, Any] = {}
    if state.created is not None:
        out["c"] = list(state.created)
    if state.increments:
        out["p"] = state.increments
    if state.decrements:
        out["n"] = state.decrements
    for name, register in (
        ("name", state.name),
        ("desc", state.description),
        ("step", state.step),
    ):
        if register is not None:
            out[name] = [register.value, *register.stamp]
    return out


def decode_state(data: object) -> CounterState:
    """Build a state from its JSON form, or raise `InvalidInput`."""
    if not isinstance(data, dict):
        raise InvalidInput("state: expected an object")
    unknown = data.keys() - {"c", "p", "n", "name", "desc", "step", "d"}
    if unknown:
        raise InvalidInput(f"state: unknown fields {sorted(unknown)}")

    if "d" in data:
        if len(data) != 1:
            raise InvalidInput("state: a tombstone carries nothing else")
        return CounterState(deleted=_stamp(data["d"], "d"))

    return CounterState(
        created=_stamp(data["c"], "c") if "c" in data else None,
        increments=_totals(data.get("p", {}), "p"),
        decrements=_totals(data.get("n", {}), "n"),
        name=_text_register(data.get("name"), "name", NAME_MAX_CHARS),
        description=_text_register(data.get("desc"), "desc", DESCRIPTION_MAX_CHARS),
        step=_step_register(data.get("step")),
    )


def dumps(data: object) -> str:
    """Serialise a JSON value compactly."""
    return json.dumps(data, separators=(",", ":"), ensure_ascii=False)


def canonical(state: CounterState) -> str:
    """Return a state's one text form: equal states give equal texts."""
    return json.dumps(
        encode_state(state), separators=(",", ":"), ensure_ascii=False, sort_keys=True
    )


def loads(text: str | bytes) -> Any:
    """Parse JSON that must not contain floats or non-standard constants."""
    try:
        return json.loads(text, parse_float=_refuse_float, parse_constant=_refuse_float)
    except (ValueError, RecursionError) as exc:
        raise InvalidInput(f"not valid JSON: {exc}") from exc


def _refuse_float(text: str) -> None:
    raise ValueError(f"non-integer number {text}")


def _integer(value: object, where: str, low: int, high: int) -> int:
    # bool is a subclass of int; JSON true must not pass as 1.
    if type(value) is not int:
        raise InvalidInput(f"{where}: expected an integer")
    if not low <= value <= high:
        raise InvalidInput(f"{where}: {value} is out of range")
    return value


def _replica(value: object, where: str) -> str:
    return check_id(value, f"{where}: replica id")


def _stamp(value: object, where: str) -> Stamp:
    if not isinstance(value, list) or len(value) != 2:
        raise InvalidInput(f"{where}: expected [time, replica]")
    return Stamp(_integer(value[0], where, 0, TIME_MAX), _replica(value[1], where))


def _totals(value: object, where: str) -> dict[str, int]:
    if not isinstance(value, dict):
        raise InvalidInput(f"{where}: expected an object")
    return {
        _replica(replica, where): _integer(total, where, 1, TOTAL_MAX)
        for replica, total in value.items()
    }


def _register_parts(value: object, where: str) -> tuple[object, Stamp]:
    if not isinstance(value, list) or len(value) != 3:
        raise InvalidInput(f"{where}: expected [value, time, replica]")
    return value[0], _stamp(value[1:], where)


def _text_register(value: object, where: str, max_chars: int) -> Register[str] | None:
    if value is None:
        return None
    text, stamp = _register_parts(value, where)
    if not isinstance(text, str):
        raise InvalidInput(f"{where}: expected text")
    return Register(check_text(text, where, max_chars), stamp)


def _step_register(value: object) -> Register[int] | None:
    if value is None:
        return None
    step, stamp = _register_parts(value, "step")
    return Register(_integer(step, "step", INT64_MIN, INT64_MAX), stamp)
