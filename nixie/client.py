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
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Sequence
from functools import partial
from typing import Any, Generic, NoReturn, Self, TypeVar

import httpx
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    Retrying,
    retry_if_exception_type,
    stop_after_attempt,
    wait_exponential_jitter,
)

from nixie.calls import (
    Call,
    Consistency,
    Counter,
    check_consistency,
    check_int,
    create_call,
    delete_call,
    error_of,
    get_call,
    head_call,
    header,
    increment_call,
    list_call,
    reason,
    require,
    set_call,
    update_call,
)
from nixie.errors import (
    InvalidInput,
    NixieError,
    Unavailable,
    UnknownKey,
)
from nixie.values import check_idempotency_key

__all__ = ["AsyncClient", "Client", "Consistency", "Counter"]

logger = logging.getLogger(__name__)

CONTEXT_KEYS = 10_000  # counters whose newest Nixie-Context token is kept

_CONTEXT = "Nixie-Context"
_CONSISTENCY = "Nixie-Consistency"
_IDEMPOTENCY = "Idempotency-Key"

T = TypeVar("T")
_TransportT = TypeVar("_TransportT")


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

    def discard(self, key: str) -> None:
        """Forget the token of `key`, whatever it is."""
        with self._lock:
            self._tokens.pop(key, None)

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
        require(timeout > 0, f"timeout: expected seconds > 0, got {timeout!r}")
        require(cooldown >= 0, f"cooldown: expected seconds >= 0, got {cooldown!r}")
        require(
            0 <= backoff_initial <= backoff_max, "backoff: expected 0 <= initial <= max"
        )
        check_int(attempts, "attempts")
        require(attempts >= 1, f"attempts: expected at least 1, got {attempts}")

        self._nodes = _Nodes(_base_urls(nodes), cooldown)
        self._timeout = httpx.Timeout(timeout)
        self._retry = _retry_policy(attempts, backoff_initial, backoff_max)
        self._consistency = check_consistency(consistency)
        self._contexts = _Contexts()
        self._connect(transport)

    def forget(self, key: str) -> None:
        """Stop carrying the counter's Nixie-Context token to later requests.

        A token can name a state no node can supply any more (the only node
        that held a write lost its data dir): every request about the
        counter is then `Unavailable`. Forgetting the token accepts what the
        nodes have, and reading your own writes starts again from there.
        """
        self._contexts.discard(key)

    def _connect(self, transport: _TransportT | None) -> None:
        raise NotImplementedError

    def _read_headers(self, consistency: Consistency | None) -> dict[str, str]:
        """Return the headers of a read at `consistency` or the default one."""
        level = check_consistency(consistency) or self._consistency
        return {} if level is None else {_CONSISTENCY: level}

    def _write_headers(
        self, idempotency_key: str | None, consistency: Consistency | None
    ) -> dict[str, str]:
        """Return a write's headers, with a fresh Idempotency-Key unless given."""
        if idempotency_key is None:
            idempotency_key = uuid.uuid4().hex
        check_idempotency_key(idempotency_key, "idempotency_key")
        return self._read_headers(consistency) | {_IDEMPOTENCY: idempotency_key}

    def _token(self, call: Call[Any]) -> str | None:
        """Return the token kept for the counter `call` is about, if any."""
        return None if call.key is None else self._contexts.get(call.key)

    def _request(self, call: Call[Any], node: str, token: str | None) -> httpx.Request:
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
        self, call: Call[Any], node: str, token: str | None, response: httpx.Response
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

    def _settle(self, call: Call[T], node: str, response: httpx.Response) -> T:
        """Turn one node's answer into the call's result or error."""
        # A 408 says the body did not reach the node in time; nothing was
        # applied, so it is retried like a timeout of the client's own.
        if response.is_server_error or response.status_code == 408:
            self._nodes.failed(node)
            logger.debug("node %s answered %d", node, response.status_code)
            raise Unavailable(f"{node} answered {reason(response)}")

        self._nodes.answered(node)
        if not response.is_success:
            raise error_of(response, call.key)

        self._remember_context(call, response)
        if header(response, "Nixie-Replay") == "true":
            logger.debug("%s %s replayed by %s", call.method, call.path, node)
        return call.parse(response)

    def _remember_context(self, call: Call[Any], response: httpx.Response) -> None:
        """Keep the answer's Nixie-Context token for the counter it is about."""
        token = header(response, _CONTEXT)
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
        return self._run(list_call())

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
        return self._run(create_call(start, name, description, step, headers))

    def exists(self, key: str) -> bool:
        """Return whether `key` names a live counter."""
        try:
            self._run(head_call(key, self._read_headers(None)))
        except UnknownKey:
            return False
        return True

    def get(self, key: str, *, consistency: Consistency | None = None) -> Counter:
        """Return the counter `key`."""
        return self._run(get_call(key, self._read_headers(consistency)))

    def increment(
        self,
        key: str,
        *,
        idempotency_key: str | None = None,
        consistency: Consistency | None = None,
    ) -> Counter:
        """Add the counter's step to its value and return the counter."""
        headers = self._write_headers(idempotency_key, consistency)
        return self._run(increment_call(key, headers))

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
        self._run(set_call(key, value, headers))

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
        self._run(update_call(key, name, description, step, headers))

    def delete(
        self,
        key: str,
        *,
        idempotency_key: str | None = None,
        consistency: Consistency | None = None,
    ) -> None:
        """Delete the counter for good."""
        headers = self._write_headers(idempotency_key, consistency)
        self._run(delete_call(key, headers))

    def _run(self, call: Call[T]) -> T:
        """Send `call` to one node after another until one answers, or give up."""
        return Retrying(**self._retry)(partial(self._attempt, call))

    def _attempt(self, call: Call[T]) -> T:
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
        return await self._run(list_call())

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
        return await self._run(create_call(start, name, description, step, headers))

    async def exists(self, key: str) -> bool:
        """Return whether `key` names a live counter."""
        try:
            await self._run(head_call(key, self._read_headers(None)))
        except UnknownKey:
            return False
        return True

    async def get(self, key: str, *, consistency: Consistency | None = None) -> Counter:
        """Return the counter `key`."""
        return await self._run(get_call(key, self._read_headers(consistency)))

    async def increment(
        self,
        key: str,
        *,
        idempotency_key: str | None = None,
        consistency: Consistency | None = None,
    ) -> Counter:
        """Add the counter's step to its value and return the counter."""
        headers = self._write_headers(idempotency_key, consistency)
        return await self._run(increment_call(key, headers))

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
        await self._run(set_call(key, value, headers))

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
        await self._run(update_call(key, name, description, step, headers))

    async def delete(
        self,
        key: str,
        *,
        idempotency_key: str | None = None,
        consistency: Consistency | None = None,
    ) -> None:
        """Delete the counter for good."""
        headers = self._write_headers(idempotency_key, consistency)
        await self._run(delete_call(key, headers))

    async def _run(self, call: Call[T]) -> T:
        """Send `call` to one node after another until one answers, or give up."""
        result: T = await AsyncRetrying(**self._retry)(self._attempt, call)
        return result

    async def _attempt(self, call: Call[T]) -> T:
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
    require(
        not isinstance(nodes, str), "nodes: expected a list of URLs, not one string"
    )
    urls = [_base_url(node) for node in nodes]
    require(bool(urls), "nodes: expected at least one URL")
    return list(dict.fromkeys(urls))


def _base_url(node: str) -> str:
    try:
        url = httpx.URL(node)
    except (httpx.InvalidURL, TypeError) as exc:
        raise InvalidInput(f"nodes: not a URL: {node!r}") from exc
    require(
        url.scheme in ("http", "https") and bool(url.host),
        f"nodes: expected an http(s) URL, got {node!r}",
    )
    return node.rstrip("/")
