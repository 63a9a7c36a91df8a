"""What the API contract promises, and helpers that read it off responses."""

import re
import secrets
import string
from typing import Protocol

import httpx

KEY_PATTERN = re.compile(r"[A-Za-z0-9_-]{21}")
KEY_ALPHABET = string.ascii_letters + string.digits + "_-"

INT64_MIN = -(2**63)
INT64_MAX = 2**63 - 1

# Integers the contract refuses wherever one is expected: not ASCII decimal,
# or outside the signed 64-bit range. Each is also a valid HTTP header value.
BAD_INTEGERS = [
    "abc",
    "1.5",
    "1_000",
    "1e3",
    "0x10",
    "١٢",  # Arabic-Indic digits
    "٣",
    "²",
    "\uff11\uff12",  # fullwidth digits one and two
    "+",
    "-",
    "--1",
    "+-1",
    "1 2",
    "NaN",
    "inf",
    str(INT64_MAX + 1),
    str(INT64_MIN - 1),
    "9" * 40,
]


def utf8(value: str | bytes | int) -> bytes:
    """Return ``value`` as the raw UTF-8 bytes a header or body carries."""
    if isinstance(value, bytes):
        return value
    return str(value).encode("utf-8")


def unknown_key() -> str:
    """Return a well-formed key that no node has ever handed out."""
    return "".join(secrets.choice(KEY_ALPHABET) for _ in range(21))


def metadata_headers(
    name: str | bytes | None = None,
    description: str | bytes | None = None,
    step: str | bytes | int | None = None,
) -> dict[bytes, bytes]:
    """Build the ``Nixie-*`` request headers given, with text as raw UTF-8."""
    given = {
        b"Nixie-Name": name,
        b"Nixie-Description": description,
        b"Nixie-Step": step,
    }
    return {header: utf8(value) for header, value in given.items() if value is not None}


def nixie_headers(response: httpx.Response) -> dict[str, str]:
    """Return the response's ``Nixie-*`` headers by lower-case name, UTF-8 decoded."""
    found: dict[str, str] = {}
    for raw_name, raw_value in response.headers.raw:
        name = raw_name.decode("ascii").lower()
        # The context token describes the node's view, not the counter.
        if not name.startswith("nixie-") or name == "nixie-context":
            continue
        if name in found:
            raise AssertionError(f"{name} sent twice: {response.headers.raw!r}")
        found[name] = raw_value.decode("utf-8")
    return found


def media_type(response: httpx.Response) -> str:
    """Return the response's media type without its parameters."""
    content_type: str = response.headers.get("content-type", "")
    return content_type.partition(";")[0].strip()


def list_keys(client: httpx.Client) -> list[str]:
    """Return the node's keys in the order ``GET /`` lists them."""
    response = client.get("/")
    response.raise_for_status()
    return response.text.split("\n") if response.text else []


def read_value(client: httpx.Client, key: str) -> str:
    """Return the counter's value exactly as ``GET /{key}`` sends it."""
    response = client.get(f"/{key}")
    response.raise_for_status()
    return response.text


def read_metadata(client: httpx.Client, key: str) -> dict[str, str]:
    """Return the counter's ``Nixie-*`` headers as ``HEAD /{key}`` sends them."""
    response = client.head(f"/{key}")
    response.raise_for_status()
    return nixie_headers(response)


class MakeCounter(Protocol):
    """Create a counter on the node under test and return its key."""

    def __call__(
        self,
        start: str | bytes | int | None = None,
        name: str | bytes | None = None,
        description: str | bytes | None = None,
        step: str | bytes | int | None = None,
    ) -> str: ...
