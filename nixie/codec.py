"""Encode counter states as compact JSON values, and decode them strictly.

The same encoding serves gossip between nodes and the data dir, so decoding
trusts nothing: every field is checked for type and range, and a
state that could not have been produced by a correct replica is refused.
Integers stay integers end to end; a float anywhere is an error.

    {"c": [time, replica],                 creation stamp
     "p": {replica: total}, "n": {...},    increments and decrements
     "name": [value, time, replica],       one register per metadata field
     "desc": [...], "step": [...],
     "v": {replica: writes},               versions
     "u": {replica: time},                 receipts folded before that time
     "r": {idempotency key: [time, replica, amount, fingerprint,
                             status, body, {header: value}, folded]},
     "d": [time, replica]}                 deletion stamp (only "r" beside it)

Gossip carries whole states. The data dir and the digest keep a state's core
(everything but "r") apart from its receipts, one text each, so a write
encodes only the receipts it changed: `canonical_core`, `canonical_receipt`.
"""

import json
from collections.abc import Mapping
from typing import Any

from nixie.crdt import CounterState, Receipt, Register, Stamp
from nixie.errors import InvalidInput
from nixie.values import (
    DESCRIPTION_MAX_CHARS,
    INT64_MAX,
    INT64_MIN,
    NAME_MAX_CHARS,
    check_id,
    check_idempotency_key,
    check_text,
)

# Per-replica totals grow without bound in principle; this bound keeps a
# forged payload from making every later sum expensive. 2**126 increments of
# the largest step would take far longer than any cluster lives.
TOTAL_MAX = 2**126
TIME_MAX = 2**63 - 1
# A receipt's amount is a step or a PUT's difference between two int64s.
AMOUNT_MAX = 2**64
RECEIPTS_MAX = 1_000_000  # per counter; a bound on what one payload can ask
RECEIPT_STATUSES = frozenset({200, 201, 204})
RECEIPT_BODY_MAX_CHARS = 64  # a key or a 64-bit value
RECEIPT_HEADERS = {
    "Nixie-Name": NAME_MAX_CHARS,
    "Nixie-Description": DESCRIPTION_MAX_CHARS,
    "Nixie-Step": 20,
}
FINGERPRINT_CHARS = 32
_HEX = frozenset("0123456789abcdef")


def encode_state(state: CounterState) -> dict[str, Any]:
    """Return the JSON-ready form of a state."""
    out = _encode_core(state)
    if state.receipts:
        out["r"] = {key: _encode_receipt(r) for key, r in state.receipts.items()}
    return out


def _encode_core(state: CounterState) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if state.deleted is not None:
        out["d"] = list(state.deleted)
        return out

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
    if state.versions:
        out["v"] = state.versions
    if state.folded_upto:
        out["u"] = state.folded_upto
    return out


def _encode_receipt(receipt: Receipt) -> list[Any]:
    return [
        *receipt.stamp,
        receipt.amount,
        receipt.fingerprint,
        receipt.status,
        receipt.body,
        dict(receipt.headers),
        int(receipt.folded),
    ]


def decode_state(data: object) -> CounterState:
    """Build a state from its JSON form, or raise `InvalidInput`."""
    if not isinstance(data, dict):
        raise InvalidInput("state: expected an object")
    unknown = data.keys() - {"c", "p", "n", "name", "desc", "step", "v", "u", "r", "d"}
    if unknown:
        raise InvalidInput(f"state: unknown fields {sorted(unknown)}")

    receipts = _receipts(data.get("r", {}))
    if "d" in data:
        if data.keys() - {"d", "r"}:
            raise InvalidInput("state: a tombstone carries only receipts")
        return CounterState(deleted=_stamp(data["d"], "d"), receipts=receipts)

    return CounterState(
        created=_stamp(data["c"], "c") if "c" in data else None,
        increments=_totals(data.get("p", {}), "p"),
        decrements=_totals(data.get("n", {}), "n"),
        name=_text_register(data.get("name"), "name", NAME_MAX_CHARS),
        description=_text_register(data.get("desc"), "desc", DESCRIPTION_MAX_CHARS),
        step=_step_register(data.get("step")),
        versions=_totals(data.get("v", {}), "v"),
        receipts=receipts,
        folded_upto=_times(data.get("u", {}), "u"),
    )


def dumps(data: object) -> str:
    """Serialise a JSON value compactly."""
    return json.dumps(data, separators=(",", ":"), ensure_ascii=False)


def canonical(state: CounterState) -> str:
    """Return a state's one text form: equal states give equal texts."""
    return _canonical(encode_state(state))


def canonical_core(state: CounterState) -> str:
    """Return the one text form of a state without its receipts."""
    return _canonical(_encode_core(state))


def canonical_receipt(receipt: Receipt) -> str:
    """Return a receipt's one text form: equal receipts give equal texts."""
    return _canonical(_encode_receipt(receipt))


def decode_parts(core: str, receipts: Mapping[str, str]) -> CounterState:
    """Build a state from its stored core and receipt texts, or raise `InvalidInput`."""
    data = loads(core)
    if isinstance(data, dict) and "r" in data:
        raise InvalidInput("state: a core state carries no receipts")
    state = decode_state(data)
    state.receipts = {
        check_idempotency_key(key, "r: key"): _receipt(loads(text))
        for key, text in receipts.items()
    }
    return state


def _canonical(data: object) -> str:
    return json.dumps(data, separators=(",", ":"), ensure_ascii=False, sort_keys=True)


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


def _times(value: object, where: str) -> dict[str, int]:
    if not isinstance(value, dict):
        raise InvalidInput(f"{where}: expected an object")
    return {
        _replica(replica, where): _integer(time, where, 1, TIME_MAX)
        for replica, time in value.items()
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


def _receipts(value: object) -> dict[str, Receipt]:
    if not isinstance(value, dict) or len(value) > RECEIPTS_MAX:
        raise InvalidInput(f"r: expected an object of at most {RECEIPTS_MAX} receipts")
    return {
        check_idempotency_key(key, "r: key"): _receipt(parts)
        for key, parts in value.items()
    }


def _receipt(value: object) -> Receipt:
    if not isinstance(value, list) or len(value) != 8:
        raise InvalidInput(
            "r: expected [time, replica, amount, fingerprint, status, body, "
            "headers, folded]"
        )
    time, replica, amount, fingerprint, status, body, headers, folded = value
    if not (
        isinstance(fingerprint, str)
        and len(fingerprint) == FINGERPRINT_CHARS
        and set(fingerprint) <= _HEX
    ):
        raise InvalidInput(f"r: fingerprint: expected {FINGERPRINT_CHARS} hex digits")
    if status not in RECEIPT_STATUSES or type(status) is not int:
        raise InvalidInput(f"r: status: expected one of {sorted(RECEIPT_STATUSES)}")
    if not isinstance(body, str):
        raise InvalidInput("r: body: expected text")
    return Receipt(
        _stamp([time, replica], "r"),
        _integer(amount, "r: amount", -AMOUNT_MAX, AMOUNT_MAX),
        fingerprint,
        status,
        check_text(body, "r: body", RECEIPT_BODY_MAX_CHARS),
        _receipt_headers(headers),
        bool(_integer(folded, "r: folded", 0, 1)),
    )


def _receipt_headers(value: object) -> tuple[tuple[str, str], ...]:
    if not isinstance(value, dict):
        raise InvalidInput("r: headers: expected an object")
    headers = []
    for name, text in value.items():
        if name not in RECEIPT_HEADERS or not isinstance(text, str):
            raise InvalidInput(f"r: headers: unexpected header {name!r}")
        headers.append((name, check_text(text, f"r: {name}", RECEIPT_HEADERS[name])))
    return tuple(sorted(headers))
