"""Read what a request carries: its body, its Nixie-* headers, its options.

Handlers read the raw ASGI headers and body through these functions rather
than through FastAPI's parameter injection, which costs more than the rest
of a read. Every malformed input is refused here with `InvalidInput` (400),
`BodyTooLarge` (413) or `BodyTimeout` (408), before anything changes.
"""

import asyncio
import hashlib

from fastapi import Request
from starlette.requests import ClientDisconnect

from nixie.errors import BodyTimeout, BodyTooLarge, InvalidInput
from nixie.node import Idempotency
from nixie.values import (
    DESCRIPTION_MAX_CHARS,
    NAME_MAX_CHARS,
    check_idempotency_key,
    decode_text,
    parse_int64,
)

# The longest valid body is a 64-bit integer with a sign and some whitespace;
# anything much longer is refused before it is read in full.
BODY_MAX_BYTES = 1024
# Seconds a client may take to send a body; uvicorn waits for ever.
BODY_TIMEOUT = 10.0

META_HEADERS = (b"nixie-name", b"nixie-description", b"nixie-step")
CONSISTENCY_LEVELS = ("local", "quorum", "all")


class RequestOptions:
    """The cross-node headers of one request, read in one pass."""

    __slots__ = ("context", "idempotency_key", "level", "read")

    def __init__(self, request: Request, *, read: bool) -> None:
        self.context: str | None = None
        self.idempotency_key: str | None = None
        self.level = "local"
        self.read = read
        level: str | None = None
        for name, value in request.scope["headers"]:
            if name == b"nixie-context":
                self.context = single(self.context, value, "Nixie-Context")
            elif name == b"idempotency-key":
                self.idempotency_key = check_idempotency_key(
                    single(self.idempotency_key, value, "Idempotency-Key"),
                    "Idempotency-Key",
                )
            elif name == b"nixie-consistency":
                level = single(level, value, "Nixie-Consistency").lower()
                if level not in CONSISTENCY_LEVELS:
                    raise InvalidInput(
                        "Nixie-Consistency: expected one of "
                        f"{', '.join(CONSISTENCY_LEVELS)}"
                    )
                self.level = level
            elif name.startswith(b"nixie-") and name not in META_HEADERS:
                # A misspelt header would otherwise be ignored without a word.
                raise InvalidInput(
                    f"{title(name)}: not a request header of Nixie; it takes "
                    "Nixie-Name, Nixie-Description, Nixie-Step, Nixie-Context "
                    "and Nixie-Consistency"
                )
        if self.idempotency_key is not None and read:
            raise InvalidInput(
                f"Idempotency-Key: not accepted by {request.method}, which "
                "changes nothing"
            )

    @property
    def plain(self) -> bool:
        """Tell whether the request needs nothing from other nodes."""
        return self.context is None and self.level == "local"

    def idempotency(self, *parts: object) -> Idempotency | None:
        """Return the write's idempotency key with the fingerprint of `parts`."""
        if self.idempotency_key is None:
            return None
        digest = hashlib.sha256(repr(parts).encode()).hexdigest()
        return Idempotency(self.idempotency_key, digest[:32])


def single(seen: str | None, value: bytes, header: str) -> str:
    """Return a header's value, refusing a second one after `seen`."""
    if seen is not None:
        raise InvalidInput(f"{header}: given more than once")
    return value.decode("latin-1").strip()


async def read_body(request: Request, field: str) -> str:
    """Read a short ASCII body within the size and time limits."""
    too_large = BodyTooLarge(f"{field}: body of more than {BODY_MAX_BYTES} bytes")
    declared = request.headers.get("content-length", "")
    if declared.isascii() and declared.isdigit() and int(declared) > BODY_MAX_BYTES:
        raise too_large

    chunks: list[bytes] = []
    size = 0
    try:
        async with asyncio.timeout(BODY_TIMEOUT):
            async for chunk in request.stream():
                size += len(chunk)
                if size > BODY_MAX_BYTES:
                    raise too_large
                chunks.append(chunk)
    except TimeoutError as exc:
        raise BodyTimeout(
            f"{field}: body not received in full within {BODY_TIMEOUT:g} s"
        ) from exc
    except ClientDisconnect as exc:
        # Nobody reads this answer; it keeps the traceback out of the log.
        raise InvalidInput(f"{field}: the client left before sending the body") from exc
    try:
        return b"".join(chunks).decode("ascii")
    except UnicodeDecodeError as exc:
        raise InvalidInput(f"{field}: not an ASCII integer") from exc


def refuse_extras(request: Request, *, body: bool = False, meta: bool = False) -> None:
    """Refuse a body or Nixie-* headers sent to a route that would ignore them."""
    for name, value in request.scope["headers"]:
        sends_body = name == b"transfer-encoding" or (
            name == b"content-length" and value.strip() not in (b"", b"0")
        )
        if sends_body and not body:
            raise InvalidInput(f"body: {request.method} takes no body")
        if name in META_HEADERS and not meta:
            raise InvalidInput(
                f"{title(name)}: not accepted by {request.method}; "
                "PATCH changes a counter's metadata"
            )


def read_metadata(request: Request) -> tuple[str | None, str | None, int | None]:
    """Read the Nixie-* headers present as raw bytes; absent ones are None."""
    raw: dict[bytes, bytes] = {}
    for name, value in request.scope["headers"]:
        if name in META_HEADERS:
            if name in raw:
                raise InvalidInput(f"{title(name)}: given more than once")
            raw[name] = value

    name = raw.get(b"nixie-name")
    description = raw.get(b"nixie-description")
    step = raw.get(b"nixie-step")
    return (
        None if name is None else decode_text(name, "Nixie-Name", NAME_MAX_CHARS),
        None
        if description is None
        else decode_text(description, "Nixie-Description", DESCRIPTION_MAX_CHARS),
        None
        if step is None
        else parse_int64(step.decode("utf-8", "replace"), "Nixie-Step"),
    )


def title(header: bytes) -> str:
    """Spell a lower-case header name as the README does: `Nixie-Name`."""
    return "-".join(part.capitalize() for part in header.decode().split("-"))
