"""Strict parsing of the integers and texts that clients send.

One rule for every integer: optional surrounding ASCII whitespace, an optional
sign, ASCII digits, and a result inside the signed 64-bit range. Python's own
`int()` is more generous (underscores, non-ASCII digits), so it only ever sees
strings that the pattern below has already accepted.
"""

import re

from nixie.errors import InvalidInput

INT64_MIN = -(2**63)
INT64_MAX = 2**63 - 1

# Characters counted, not bytes; both limits are documented in openapi.yaml.
NAME_MAX_CHARS = 200
DESCRIPTION_MAX_CHARS = 1000

_INTEGER = re.compile(r"[+-]?[0-9]+")
_ASCII_SPACE = " \t\r\n\x0b\x0c"
# C0 controls, DEL and the C1 controls: HTTP cannot carry most of them, and
# none belongs in a name. Tabs too, so that what is stored is what is shown.
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
# Keys and replica ids: URL-safe, and safe in a path, a header and a log line.
_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")
# Idempotency keys: whatever a client picks that a header carries unchanged.
IDEMPOTENCY_KEY_MAX_CHARS = 128
_IDEMPOTENCY_KEY = re.compile(r"[\x21-\x7e]{1,128}")  # IDEMPOTENCY_KEY_MAX_CHARS


def parse_int64(text: str, field: str) -> int:
    """Parse `text` as a signed 64-bit integer or raise `InvalidInput`."""
    stripped = text.strip(_ASCII_SPACE)
    if not stripped:
        raise InvalidInput(f"{field}: empty, expected an integer")
    if _INTEGER.fullmatch(stripped) is None:
        raise InvalidInput(f"{field}: not an integer: {_shorten(stripped)!r}")

    # Leading zeros aside, more than 19 digits is out of range; checking first
    # also keeps int() away from inputs longer than it agrees to convert.
    digits = stripped.lstrip("+-").lstrip("0") or "0"
    magnitude = int(digits) if len(digits) <= 19 else INT64_MAX + 2
    value = -magnitude if stripped.startswith("-") else magnitude
    if not INT64_MIN <= value <= INT64_MAX:
        raise InvalidInput(
            f"{field}: {_shorten(stripped)} is outside the signed 64-bit range "
            f"[{INT64_MIN}, {INT64_MAX}]"
        )
    return value


def decode_text(raw: bytes, field: str, max_chars: int) -> str:
    """Decode a header's raw bytes as UTF-8 text of at most `max_chars`."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidInput(f"{field}: not valid UTF-8") from exc
    return check_text(text, field, max_chars)


def check_text(text: str, field: str, max_chars: int) -> str:
    """Return `text` if it is a valid name or description, else raise."""
    if _CONTROL.search(text):
        raise InvalidInput(f"{field}: control characters are not allowed")
    if len(text) > max_chars:
        raise InvalidInput(
            f"{field}: {len(text)} characters, at most {max_chars} allowed"
        )
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:  # lone surrogates, from JSON escapes
        raise InvalidInput(f"{field}: not valid Unicode text") from exc
    return text


def check_id(value: object, field: str) -> str:
    """Return `value` if it is a key or replica id, else raise `InvalidInput`."""
    if not isinstance(value, str) or _ID.fullmatch(value) is None:
        raise InvalidInput(f"{field}: expected 1 to 64 characters of A-Z a-z 0-9 _ -")
    return value


def check_idempotency_key(value: object, field: str) -> str:
    """Return `value` if it is a valid idempotency key, else raise."""
    if not isinstance(value, str) or _IDEMPOTENCY_KEY.fullmatch(value) is None:
        raise InvalidInput(
            f"{field}: expected 1 to {IDEMPOTENCY_KEY_MAX_CHARS} printable ASCII "
            "characters without spaces"
        )
    return value


def in_int64(value: int) -> bool:
    """Tell whether `value` lies in the signed 64-bit range."""
    return INT64_MIN <= value <= INT64_MAX


def _shorten(text: str, limit: int = 40) -> str:
    return text if len(text) <= limit else text[:limit] + "..."
