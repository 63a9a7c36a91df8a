"""The requests `nixie.client` sends, one builder each, and how it reads answers.

A builder checks the caller's arguments and returns a `Call`: what every
attempt of the request sends, and how a 2xx answer becomes the result. Any
other answer becomes the matching exception of `nixie.errors`.
"""

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Generic, Literal, TypeVar, get_args
from urllib.parse import quote

import httpx

from nixie.errors import (
    BodyTooLarge,
    IdempotencyConflict,
    InvalidInput,
    NixieError,
    OutOfRange,
    PeerError,
    UnknownKey,
)
from nixie.values import DESCRIPTION_MAX_CHARS, NAME_MAX_CHARS, check_text

Consistency = Literal["local", "quorum", "all"]

# Values may lie beyond the signed 64-bit range after concurrent writes, so an
# answer is read as any integer, not through `nixie.values.parse_int64`.
_INTEGER = re.compile(r"-?[0-9]+")
_ERRORS: dict[int, type[NixieError]] = {
    400: InvalidInput,
    409: OutOfRange,
    413: BodyTooLarge,
    422: IdempotencyConflict,
}

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Counter:
    """Hold one counter as a node reported it."""

    key: str
    value: int
    name: str = ""
    description: str = ""
    step: int = 1


@dataclass(frozen=True, slots=True)
class Call(Generic[T]):
    """Describe one API request, as every attempt sends it, and read its answer."""

    method: str
    key: str | None  # the counter it is about; None to list or create
    parse: Callable[[httpx.Response], T]
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    creates: bool = False  # the answer's body is the key of a new counter

    @property
    def path(self) -> str:
        """Return the request path, the key quoted so it stays one segment."""
        return "/" if self.key is None else "/" + quote(self.key, safe="")


# The requests, one builder each; they check the caller's arguments.


def list_call() -> Call[list[str]]:
    """Return the call that lists the keys."""
    return Call("GET", None, _read_keys)


def create_call(
    start: int,
    name: str | None,
    description: str | None,
    step: int | None,
    headers: dict[str, str],
) -> Call[Counter]:
    """Return the call that creates a counter."""
    check_int(start, "start")
    metadata = _metadata(name, description, step)
    parse = partial(_read_created, start)
    body = str(start).encode()
    return Call("POST", None, parse, headers | metadata, body, creates=True)


def head_call(key: str, headers: dict[str, str]) -> Call[None]:
    """Return the call that tells whether a counter exists."""
    return _about("HEAD", key, _ignore, headers)


def get_call(key: str, headers: dict[str, str]) -> Call[Counter]:
    """Return the call that reads a counter."""
    return _about("GET", key, partial(_read_counter, key), headers)


def increment_call(key: str, headers: dict[str, str]) -> Call[Counter]:
    """Return the call that adds a counter's step."""
    return _about("POST", key, partial(_read_counter, key), headers)


def set_call(key: str, value: int, headers: dict[str, str]) -> Call[None]:
    """Return the call that sets a counter's value."""
    check_int(value, "value")
    return _about("PUT", key, _ignore, headers, str(value).encode())


def update_call(
    key: str,
    name: str | None,
    description: str | None,
    step: int | None,
    headers: dict[str, str],
) -> Call[None]:
    """Return the call that changes a counter's metadata."""
    metadata = _metadata(name, description, step)
    require(bool(metadata), "update: give a name, a description or a step")
    return _about("PATCH", key, _ignore, headers | metadata)


def delete_call(key: str, headers: dict[str, str]) -> Call[None]:
    """Return the call that deletes a counter."""
    return _about("DELETE", key, _ignore, headers)


def _about(
    method: str,
    key: str,
    parse: Callable[[httpx.Response], T],
    headers: dict[str, str],
    body: bytes = b"",
) -> Call[T]:
    """Describe a request about the counter `key`, refusing a key that is none."""
    require(
        isinstance(key, str) and bool(key),
        f"key: expected a non-empty string, got {key!r}",
    )
    return Call(method, key, parse, headers, body)


def _metadata(
    name: str | None, description: str | None, step: int | None
) -> dict[str, str]:
    """Return the Nixie-* headers of the metadata given; None leaves one out."""
    headers = {}
    if name is not None:
        headers["Nixie-Name"] = _check_text(name, "name", NAME_MAX_CHARS)
    if description is not None:
        headers["Nixie-Description"] = _check_text(
            description, "description", DESCRIPTION_MAX_CHARS
        )
    if step is not None:
        check_int(step, "step")
        headers["Nixie-Step"] = str(step)

    return headers


# Reading answers. A 2xx answer that breaks the contract is the node's fault.


def _read_keys(response: httpx.Response) -> list[str]:
    return response.text.split("\n") if response.text else []


def _read_created(start: int, response: httpx.Response) -> Counter:
    if not response.text:
        raise PeerError("a node created a counter but sent no key")
    return _counter(response.text, start, response)


def _read_counter(key: str, response: httpx.Response) -> Counter:
    return _counter(key, _integer(response.text, "value"), response)


def _ignore(response: httpx.Response) -> None:
    return None


def _counter(key: str, value: int, response: httpx.Response) -> Counter:
    """Build a counter from its value and the metadata headers of `response`."""
    step = header(response, "Nixie-Step")
    if step is None:
        raise PeerError(f"a node answered about {key} without Nixie-Step")

    return Counter(
        key=key,
        value=value,
        name=header(response, "Nixie-Name") or "",
        description=header(response, "Nixie-Description") or "",
        step=_integer(step, "Nixie-Step"),
    )


def _integer(text: str, field: str) -> int:
    if _INTEGER.fullmatch(text) is None:
        raise PeerError(f"a node sent a {field} that is no integer: {text[:40]!r}")
    return int(text)


def header(response: httpx.Response, name: str) -> str | None:
    """Return a response header read as UTF-8, the encoding Nixie sends."""
    wanted = name.lower().encode()
    for raw_name, raw_value in response.headers.raw:
        if raw_name.lower() == wanted:
            return raw_value.decode("utf-8", "replace")
    return None


def error_of(response: httpx.Response, key: str | None) -> NixieError:
    """Return the exception for a 4xx answer; its message is the node's."""
    if response.status_code == 404 and key is not None:
        return UnknownKey(key)
    return _ERRORS.get(response.status_code, InvalidInput)(reason(response))


def reason(response: httpx.Response) -> str:
    """Describe an answer in a few words for an error message."""
    # HEAD answers have no body to explain them.
    return response.text or f"{response.status_code} {response.reason_phrase}"


def check_consistency(level: Consistency | None) -> Consistency | None:
    """Return a known consistency level, or raise `InvalidInput`."""
    require(
        level is None or level in get_args(Consistency),
        f"consistency: expected one of {', '.join(get_args(Consistency))}, "
        f"got {level!r}",
    )
    return level


def _check_text(text: str, field: str, max_chars: int) -> str:
    """Return `text` if a node would store it as given, else raise `InvalidInput`."""
    require(isinstance(text, str), f"{field}: expected a str, got {text!r}")
    check_text(text, field, max_chars)
    # HTTP strips the spaces around a header value, so the node would store
    # "  padded  " as "padded"; tabs and newlines are control characters.
    require(
        text == text.strip(" "),
        f"{field}: leading or trailing spaces are not allowed; HTTP drops them",
    )
    return text


def check_int(value: int, field: str) -> None:
    """Refuse anything but an int (a bool is none), with `InvalidInput`."""
    require(
        isinstance(value, int) and not isinstance(value, bool),
        f"{field}: expected an int, got {type(value).__name__}",
    )


def require(condition: bool, message: str) -> None:
    """Raise `InvalidInput` with `message` unless `condition` holds."""
    if not condition:
        raise InvalidInput(message)
