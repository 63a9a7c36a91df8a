"""Talk to a Nixie cluster: spread requests over its nodes, retry, read your writes.

    from nixie.client import Client

    with Client(["http://localhost:7312", "http://localhost:7313"]) as nixie:
        visits = nixie.create(10, name="visits")
        nixie.increment(visits.key)
        print(nixie.get(visits.key).value)  # 11, whichever node answers

`AsyncClient` has the same methods as coroutines, and closes with `aclose()`
or `async with`.

Each attempt goes to a random node that has not failed in the last `cooldown`
seconds. A connection error, a timeout, a 408 or a 5xx answer puts that node
in cooldown and sends the request to another, up to `attempts` times in all;
every attempt of a write carries the same Idempotency-Key, so the cluster
applies it once. Any other 4xx answer is final (but for a refused token,
below) and raises the matching exception of `nixie.errors`. Names and
descriptions are checked against the nodes' rules before anything is sent,
and a request that httpx refuses to send raises `InvalidInput` at once.

The client keeps the newest Nixie-Context token of each counter it has used
and sends it with every later request about that counter, so the node that
answers has seen at least what this client saw. A token the cluster refuses
(after a restart with a new cluster secret, say) is dropped, and the request
is sent once more, to the same node and with the same Idempotency-Key, without
it; reading your own writes then restarts from what the answering node has.
"""

import logging
import random
import re
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Generic, Literal, NoReturn, Self, TypeVar, get_args
from urllib.parse import quote

import httpx
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    Retrying,
    retry_if_exception_type,
    stop_after_attempt,
    wait_exponential_jitter,
)

from nixie.errors import (
    BodyTooLarge,
    IdempotencyConflict,
    InvalidInput,
    NixieError,
    OutOfRange,
    PeerError,
    Unavailable,
    UnknownKey,
)
from nixie.values import (
    DESCRIPTION_MAX_CHARS,
    NAME_MAX_CHARS,
    check_idempotency_key,
    check_text,
)

__all__ = ["AsyncClient", "Client", "Consistency", "Counter"]

logger = logging.getLogger(__name__)

Consistency = Literal["local", "quorum", "all"]
CONTEXT_KEYS = 10_000  # counters whose newest Nixie-Context token is kept

_CONTEXT = "Nixie-Context"
_CONSISTENCY = "Nixie-Consistency"
_IDEMPOTENCY = "Idempotency-Key"
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
_TransportT = TypeVar("_TransportT")


@dataclass(frozen=True, slots=True)
class Counter:
    """Hold one counter as a node reported it."""

    key: str
    value: int
    name: str = ""
    description: str = ""
    step: int = 1


@dataclass(frozen=True, slots=True)
class _Call(Generic[T]):
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


class _Nodes:
    """Choose a node for each attempt, skipping those that failed lately."""

    def __init__(self, urls: list[str], cooldown: float) -> None:
        self.urls = urls
        self._cooldown = cooldown
        self._until: dict[str, float] = {}  # monotonic seconds; skipped before

    def pick(self) -> str:
        """Return a random node out of cooldown, or the one soonest out of it."""
        now = time.monotonic()
        ready = [url for url in self.urls if self._until.get(url, 0.0) <= now]
        if ready:
            return random.choice(ready)

        return min(self.urls, key=lambda url: self._until.get(url, 0.0))

    def failed(self, url: str) -> None:
        """Skip `url` for the next `cooldown` seconds."""
        self._until[url] = time.monotonic() + self._cooldown

    def answered(self, url: str) -> None:
        """Take `url` out of cooldown: it just answered."""
        self._until.pop(url, None)


class _Contexts:
    """Keep the newest Nixie-Context token of the counters used most recently."""

    def __init__(self, capacity: int = CONTEXT_KEYS) -> None:
        self._capacity = capacity
        self._tokens: OrderedDict[str, str] = OrderedDict()
        # A sync client may be shared by threads; reordering is not atomic.
        self._lock = threading.Lock()

    def get(self, key: str) -> str | None:
        """Return the token kept for `key`, if any."""
        with self._lock:
            token = self._tokens.get(key)
            if token is not None:
                self._tokens.move_to_end(key)
            return token

    def put(self, key: str, token: str) -> None:
        """Keep `token` for `key`; forget the least recently used over capacity."""
        with self._lock:
            self._tokens[key] = token
            self._tokens.move_to_end(key)
            if len(self._tokens) > self._capacity:
                self._tokens.popitem(last=False)

    def drop(self, key: str, token: str) -> None:
        """Forget the token of `key` if it is still `token`."""
        with self._lock:
            # Another thread may have kept a newer, valid token meanwhile.
            if self._tokens.get(key) == token:
                del self._tokens[key]


class _BaseClient(Generic[_TransportT]):
    """Share everything but the I/O between `Client` and `AsyncClient`."""

    def __init__(
        self,
        nodes: Sequence[str],
        *,
        timeout: float = 2.0,
        attempts: int = 5,
        cooldown: float = 5.0,
        consistency: Consistency | None = None,
        transport: _TransportT | None = None,
        backoff_initial: float = 0.05,
        backoff_max: float = 1.0,
    ) -> None:
        _require(timeout > 0, f"timeout: expected seconds > 0, got {timeout!r}")
        _require(cooldown >= 0, f"cooldown: expected seconds >= 0, got {cooldown!r}")
        _require(
            0 <= backoff_initial <= backoff_max, "backoff: expected 0 <= initial <= max"
        )
        _check_int(attempts, "attempts")
        _require(attempts >= 1, f"attempts: expected at least 1, got {attempts}")

        self._nodes = _Nodes(_base_urls(nodes), cooldown)
        self._timeout = httpx.Timeout(timeout)
        self._retry = _retry_policy(attempts, backoff_initial, backoff_max)
        self._consistency = _check_consistency(consistency)
        self._contexts = _Contexts()
        self._connect(transport)

    def _connect(self, transport: _TransportT | None) -> None:
        raise NotImplementedError

    def _read_headers(self, consistency: Consistency | None) -> dict[str, str]:
        """Return the headers of a read at `consistency` or the default one."""
        level = _check_consistency(consistency) or self._consistency
        return {} if level is None else {_CONSISTENCY: level}

    def _write_headers(
        self, idempotency_key: str | None, consistency: Consistency | None
    ) -> dict[str, str]:
        """Return a write's headers, with a fresh Idempotency-Key unless given."""
        if idempotency_key is None:
            idempotency_key = uuid.uuid4().hex
        check_idempotency_key(idempotency_key, "idempotency_key")
        return self._read_headers(consistency) | {_IDEMPOTENCY: idempotency_key}

    def _token(self, call: _Call[Any]) -> str | None:
        """Return the token kept for the counter `call` is about, if any."""
        return None if call.key is None else self._contexts.get(call.key)

    def _request(self, call: _Call[Any], node: str, token: str | None) -> httpx.Request:
        """Build the request `node` gets for `call`, carrying `token` if any."""
        headers = dict(call.headers)
        if token is not None:
            headers[_CONTEXT] = token

        return httpx.Request(
            call.method,
            node + call.path,
            # Names and descriptions travel as raw UTF-8, which httpx's own
            # encoding of str headers (ASCII) would refuse.
            headers=[
                (name.encode(), value.encode()) for name, value in headers.items()
            ],
            content=call.body or None,
            extensions={"timeout": self._timeout.as_dict()},
        )

    def _failed(self, node: str, exc: httpx.TransportError) -> NixieError:
        """Translate an error of sending to `node`; a node failure is retried."""
        if isinstance(exc, httpx.LocalProtocolError):
            # httpx refused to send what the client built: no node is at fault,
            # and another attempt would be refused the same way.
            return InvalidInput(f"request not sent: {_describe(exc)}")

        self._nodes.failed(node)
        logger.debug("node %s failed: %s", node, _describe(exc))
        return Unavailable(f"{node}: {_describe(exc)}")

    def _refused(
        self, call: _Call[Any], node: str, token: str | None, response: httpx.Response
    ) -> bool:
        """Tell whether `node` refused the token sent; if so, forget the token."""
        if token is None or call.key is None or response.status_code != 400:
            return False
        # A HEAD answer has no body to name the header it refuses; a token the
        # cluster issued is the only part of it that can become invalid later.
        if call.method != "HEAD" and not response.text.startswith(f"{_CONTEXT}:"):
            return False

        self._contexts.drop(call.key, token)
        logger.warning(
            "node %s refused the Nixie-Context token of %s; sending without it",
            node,
            call.key,
        )
        return True

    def _settle(self, call: _Call[T], node: str, response: httpx.Response) -> T:
        """Turn one node's answer into the call's result or error."""
        # A 408 says the body did not reach the node in time; nothing was
        # applied, so it is retried like a timeout of the client's own.
        if response.is_server_error or response.status_code == 408:
            self._nodes.failed(node)
            logger.debug("node %s answered %d", node, response.status_code)
            raise Unavailable(f"{node} answered {_reason(response)}")

        self._nodes.answered(node)
        if not response.is_success:
            raise _error(response, call.key)

        self._remember_context(call, response)
        if _header(response, "Nixie-Replay") == "true":
            logger.debug("%s %s replayed by %s", call.method, call.path, node)
        return call.parse(response)

    def _remember_context(self, call: _Call[Any], response: httpx.Response) -> None:
        """Keep the answer's Nixie-Context token for the counter it is about."""
        token = _header(response, _CONTEXT)
        key = response.text if call.creates else call.key
        if token and key:
            self._contexts.put(key, token)


class Client(_BaseClient[httpx.BaseTransport]):
    """Talk to a Nixie cluster, blocking until each answer.

    `nodes` are the base URLs of the cluster's nodes. `timeout` bounds each
    attempt, in seconds (default 2.0). A request is tried at most `attempts`
    times (default 5), waiting between tries an exponentially growing time
    that starts near `backoff_initial` seconds (default 0.05) and never exceeds
    `backoff_max` (default 1.0). A node that failed is skipped for `cooldown`
    seconds (default 5.0). `consistency` goes with every request about a
    counter unless a call names its own; None leaves the header out, which
    nodes read as "local". `transport` replaces httpx's network transport.
    """

    _http: httpx.Client

    def _connect(self, transport: httpx.BaseTransport | None) -> None:
        self._http = httpx.Client(transport=transport, timeout=self._timeout)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the connections to the nodes."""
        self._http.close()

    def keys(self) -> list[str]:
        """Return the keys of all counters, in creation order."""
        return self._run(_list_call())

    def create(
        self,
        start: int = 0,
        *,
        name: str | None = None,
        description: str | None = None,
        step: int | None = None,
        idempotency_key: str | None = None,
        consistency: Consistency | None = None,
    ) -> Counter:
        """Create a counter at `start` and return it."""
        headers = self._write_headers(idempotency_key, consistency)
        return self._run(_create_call(start, name, description, step, headers))

    def exists(self, key: str) -> bool:
        """Return whether `key` names a live counter."""
        try:
            self._run(_head_call(key, self._read_headers(None)))
        except UnknownKey:
            return False
        return True

    def get(self, key: str, *, consistency: Consistency | None = None) -> Counter:
        """Return the counter `key`."""
        return self._run(_get_call(key, self._read_headers(consistency)))

    def increment(
        self,
        key: str,
        *,
        idempotency_key: str | None = None,
        consistency: Consistency | None = None,
    ) -> Counter:
        """Add the counter's step to its value and return the counter."""
        headers = self._write_headers(idempotency_key, consistency)
        return self._run(_increment_call(key, headers))

    def set(
        self,
        key: str,
        value: int,
        *,
        idempotency_key: str | None = None,
        consistency: Consistency | None = None,
    ) -> None:
        """Set the counter's value."""
        headers = self._write_headers(idempotency_key, consistency)
        self._run(_set_call(key, value, headers))

    def update(
        self,
        key: str,
        *,
        name: str | None = None,
        description: str | None = None,
        step: int | None = None,
        idempotency_key: str | None = None,
        consistency: Consistency | None = None,
    ) -> None:
        """Change the metadata given; an empty name or description clears it."""
        headers = self._write_headers(idempotency_key, consistency)
        self._run(_update_call(key, name, description, step, headers))

    def delete(
        self,
        key: str,
        *,
        idempotency_key: str | None = None,
        consistency: Consistency | None = None,
    ) -> None:
        """Delete the counter for good."""
        headers = self._write_headers(idempotency_key, consistency)
        self._run(_delete_call(key, headers))

    def _run(self, call: _Call[T]) -> T:
        """Send `call` to one node after another until one answers, or give up."""
        return Retrying(**self._retry)(partial(self._attempt, call))

    def _attempt(self, call: _Call[T]) -> T:
        node, token = self._nodes.pick(), self._token(call)
        response = self._send(self._request(call, node, token), node)
        if self._refused(call, node, token, response):
            response = self._send(self._request(call, node, None), node)
        return self._settle(call, node, response)

    def _send(self, request: httpx.Request, node: str) -> httpx.Response:
        try:
            return self._http.send(request)
        except httpx.TransportError as exc:
            raise self._failed(node, exc) from exc


class AsyncClient(_BaseClient[httpx.AsyncBaseTransport]):
    """Talk to a Nixie cluster from async code; the options are `Client`'s."""

    _http: httpx.AsyncClient

    def _connect(self, transport: httpx.AsyncBaseTransport | None) -> None:
        self._http = httpx.AsyncClient(transport=transport, timeout=self._timeout)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the connections to the nodes."""
        await self._http.aclose()

    async def keys(self) -> list[str]:
        """Return the keys of all counters, in creation order."""
        return await self._run(_list_call())

    async def create(
        self,
        start: int = 0,
        *,
        name: str | None = None,
        description: str | None = None,
        step: int | None = None,
        idempotency_key: str | None = None,
        consistency: Consistency | None = None,
    ) -> Counter:
        """Create a counter at `start` and return it."""
        headers = self._write_headers(idempotency_key, consistency)
        return await self._run(_create_call(start, name, description, step, headers))

    async def exists(self, key: str) -> bool:
        """Return whether `key` names a live counter."""
        try:
            await self._run(_head_call(key, self._read_headers(None)))
        except UnknownKey:
            return False
        return True

    async def get(self, key: str, *, consistency: Consistency | None = None) -> Counter:
        """Return the counter `key`."""
        return await self._run(_get_call(key, self._read_headers(consistency)))

    async def increment(
        self,
        key: str,
        *,
        idempotency_key: str | None = None,
        consistency: Consistency | None = None,
    ) -> Counter:
        """Add the counter's step to its value and return the counter."""
        headers = self._write_headers(idempotency_key, consistency)
        return await self._run(_increment_call(key, headers))

    async def set(
        self,
        key: str,
        value: int,
        *,
        idempotency_key: str | None = None,
        consistency: Consistency | None = None,
    ) -> None:
        """Set the counter's value."""
        headers = self._write_headers(idempotency_key, consistency)
        await self._run(_set_call(key, value, headers))

    async def update(
        self,
        key: str,
        *,
        name: str | None = None,
        description: str | None = None,
        step: int | None = None,
        idempotency_key: str | None = None,
        consistency: Consistency | None = None,
    ) -> None:
        """Change the metadata given; an empty name or description clears it."""
        headers = self._write_headers(idempotency_key, consistency)
        await self._run(_update_call(key, name, description, step, headers))

    async def delete(
        self,
        key: str,
        *,
        idempotency_key: str | None = None,
        consistency: Consistency | None = None,
    ) -> None:
        """Delete the counter for good."""
        headers = self._write_headers(idempotency_key, consistency)
        await self._run(_delete_call(key, headers))

    async def _run(self, call: _Call[T]) -> T:
        """Send `call` to one node after another until one answers, or give up."""
        result: T = await AsyncRetrying(**self._retry)(self._attempt, call)
        return result

    async def _attempt(self, call: _Call[T]) -> T:
        node, token = self._nodes.pick(), self._token(call)
        response = await self._send(self._request(call, node, token), node)
        if self._refused(call, node, token, response):
            response = await self._send(self._request(call, node, None), node)
        return self._settle(call, node, response)

    async def _send(self, request: httpx.Request, node: str) -> httpx.Response:
        try:
            return await self._http.send(request)
        except httpx.TransportError as exc:
            raise self._failed(node, exc) from exc


# The requests, one builder each; they check the caller's arguments.


def _list_call() -> _Call[list[str]]:
    return _Call("GET", None, _read_keys)


def _create_call(
    start: int,
    name: str | None,
    description: str | None,
    step: int | None,
    headers: dict[str, str],
) -> _Call[Counter]:
    _check_int(start, "start")
    metadata = _metadata(name, description, step)
    parse = partial(_read_created, start)
    body = str(start).encode()
    return _Call("POST", None, parse, headers | metadata, body, creates=True)


def _head_call(key: str, headers: dict[str, str]) -> _Call[None]:
    return _about("HEAD", key, _ignore, headers)


def _get_call(key: str, headers: dict[str, str]) -> _Call[Counter]:
    return _about("GET", key, partial(_read_counter, key), headers)


def _increment_call(key: str, headers: dict[str, str]) -> _Call[Counter]:
    return _about("POST", key, partial(_read_counter, key), headers)


def _set_call(key: str, value: int, headers: dict[str, str]) -> _Call[None]:
    _check_int(value, "value")
    return _about("PUT", key, _ignore, headers, str(value).encode())


def _update_call(
    key: str,
    name: str | None,
    description: str | None,
    step: int | None,
    headers: dict[str, str],
) -> _Call[None]:
    metadata = _metadata(name, description, step)
    _require(bool(metadata), "update: give a name, a description or a step")
    return _about("PATCH", key, _ignore, headers | metadata)


def _delete_call(key: str, headers: dict[str, str]) -> _Call[None]:
    return _about("DELETE", key, _ignore, headers)


def _about(
    method: str,
    key: str,
    parse: Callable[[httpx.Response], T],
    headers: dict[str, str],
    body: bytes = b"",
) -> _Call[T]:
    """Describe a request about the counter `key`, refusing a key that is none."""
    _require(
        isinstance(key, str) and bool(key),
        f"key: expected a non-empty string, got {key!r}",
    )
    return _Call(method, key, parse, headers, body)


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
        _check_int(step, "step")
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
    step = _header(response, "Nixie-Step")
    if step is None:
        raise PeerError(f"a node answered about {key} without Nixie-Step")

    return Counter(
        key=key,
        value=value,
        name=_header(response, "Nixie-Name") or "",
        description=_header(response, "Nixie-Description") or "",
        step=_integer(step, "Nixie-Step"),
    )


def _integer(text: str, field: str) -> int:
    if _INTEGER.fullmatch(text) is None:
        raise PeerError(f"a node sent a {field} that is no integer: {text[:40]!r}")
    return int(text)


def _header(response: httpx.Response, name: str) -> str | None:
    """Return a response header read as UTF-8, the encoding Nixie sends."""
    wanted = name.lower().encode()
    for raw_name, raw_value in response.headers.raw:
        if raw_name.lower() == wanted:
            return raw_value.decode("utf-8", "replace")
    return None


def _error(response: httpx.Response, key: str | None) -> NixieError:
    """Return the exception for a 4xx answer; its message is the node's."""
    if response.status_code == 404 and key is not None:
        return UnknownKey(key)
    return _ERRORS.get(response.status_code, InvalidInput)(_reason(response))


def _reason(response: httpx.Response) -> str:
    # HEAD answers have no body to explain them.
    return response.text or f"{response.status_code} {response.reason_phrase}"


# Retrying and checking.


def _retry_policy(attempts: int, initial: float, maximum: float) -> dict[str, Any]:
    """Return tenacity's options: retry what `Unavailable` reports, then give up."""
    return {
        "stop": stop_after_attempt(attempts),
        # tenacity's default jitter, a second, would dwarf a 50 ms first wait.
        "wait": wait_exponential_jitter(
            multiplier=initial, max=maximum, jitter=initial
        ),
        "retry": retry_if_exception_type(Unavailable),
        "retry_error_callback": _give_up,
    }


def _give_up(state: RetryCallState) -> NoReturn:
    """Raise `Unavailable` after the last attempt, chained from its failure."""
    cause = state.outcome.exception() if state.outcome else None
    raise Unavailable(
        f"no node answered after {state.attempt_number} attempts; last: {cause}"
    ) from cause


def _describe(exc: Exception) -> str:
    # Some httpx errors, timeouts among them, can have an empty message.
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _base_urls(nodes: Sequence[str]) -> list[str]:
    """Return the nodes' base URLs without trailing slashes or duplicates."""
    _require(
        not isinstance(nodes, str), "nodes: expected a list of URLs, not one string"
    )
    urls = [_base_url(node) for node in nodes]
    _require(bool(urls), "nodes: expected at least one URL")
    return list(dict.fromkeys(urls))


def _base_url(node: str) -> str:
    try:
        url = httpx.URL(node)
    except (httpx.InvalidURL, TypeError) as exc:
        raise InvalidInput(f"nodes: not a URL: {node!r}") from exc
    _require(
        url.scheme in ("http", "https") and bool(url.host),
        f"nodes: expected an http(s) URL, got {node!r}",
    )
    return node.rstrip("/")


def _check_consistency(level: Consistency | None) -> Consistency | None:
    _require(
        level is None or level in get_args(Consistency),
        f"consistency: expected one of {', '.join(get_args(Consistency))}, "
        f"got {level!r}",
    )
    return level


def _check_text(text: str, field: str, max_chars: int) -> str:
    """Return `text` if a node would store it as given, else raise `InvalidInput`."""
    _require(isinstance(text, str), f"{field}: expected a str, got {text!r}")
    check_text(text, field, max_chars)
    # HTTP strips the spaces around a header value, so the node would store
    # "  padded  " as "padded"; tabs and newlines are control characters.
    _require(
        text == text.strip(" "),
        f"{field}: leading or trailing spaces are not allowed; HTTP drops them",
    )
    return text


def _check_int(value: int, field: str) -> None:
    _require(
        isinstance(value, int) and not isinstance(value, bool),
        f"{field}: expected an int, got {type(value).__name__}",
    )


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise InvalidInput(message)
