"""The counter API over HTTP, as described by `openapi.yaml`.

Handlers are coroutines that read the raw ASGI headers and body themselves:
the node's operations never block on I/O other than one SQLite commit, so
running them on the event loop avoids a thread-pool hop per request, and
skipping FastAPI's parameter injection keeps the hot path short. The routes
still declare their parameters and responses so that the app's own OpenAPI
document matches the contract.

Three request headers reach beyond this node; requests without them never
wait on another node:

- `Idempotency-Key` on a write: an attempt already made under that key, here
  or on any node gossip has reached, is answered from its receipt, marked
  `Nixie-Replay: true`, and not applied again (see `nixie.node`).
- `Nixie-Context`: the token of an earlier answer; the node pulls what it
  lacks of the counter from its peers before answering, or answers 503.
- `Nixie-Consistency: quorum | all`: a read merges the counter from that many
  nodes first; a write is acknowledged once that many nodes merged it.
"""

import asyncio
import hashlib
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import httpx
from fastapi import FastAPI, Request
from fastapi.responses import PlainTextResponse, Response
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect

from nixie import __version__
from nixie.cluster_api import add_cluster_routes
from nixie.context import ContextCodec, lacking, satisfies, tag
from nixie.crdt import DEFAULT_STEP, CounterState, Receipt
from nixie.errors import (
    BodyTimeout,
    BodyTooLarge,
    IdempotencyConflict,
    InvalidInput,
    NixieError,
    OutOfRange,
    StorageError,
    Unauthorized,
    Unavailable,
    UnknownKey,
)
from nixie.gossip import Gossiper
from nixie.membership import Membership, watch_dns
from nixie.node import Idempotency, Node
from nixie.settings import Settings
from nixie.store import Store
from nixie.values import (
    DESCRIPTION_MAX_CHARS,
    NAME_MAX_CHARS,
    check_idempotency_key,
    decode_text,
    parse_int64,
)

logger = logging.getLogger(__name__)

# The longest valid body is a 64-bit integer with a sign and some whitespace;
# anything much longer is refused before it is read in full.
BODY_MAX_BYTES = 1024
# Seconds a client may take to send a body; uvicorn waits for ever.
BODY_TIMEOUT = 10.0

_STATUS = {
    InvalidInput: 400,
    Unauthorized: 401,
    UnknownKey: 404,
    OutOfRange: 409,
    BodyTimeout: 408,
    BodyTooLarge: 413,
    IdempotencyConflict: 422,
    StorageError: 503,
    Unavailable: 503,
}

_META_HEADERS = (b"nixie-name", b"nixie-description", b"nixie-step")
_CONSISTENCY_LEVELS = ("local", "quorum", "all")
# Receipts older than the window are folded at most this often.
MAINTENANCE_MAX_INTERVAL = 60.0


def open_node(settings: Settings) -> Node:
    """Open the data dir of `settings` as a node, with its delta and receipt limits."""
    return Node(
        Store(settings.data_dir),
        delta_capacity=settings.delta_capacity,
        retention_ms=round(settings.idempotency_retention * 1000),
        key_secret=settings.cluster_secret,
    )


def create_app(
    settings: Settings,
    node: Node | None = None,
    *,
    transport: httpx.AsyncBaseTransport | None = None,
    background: bool = True,
) -> FastAPI:
    """Build the ASGI app of one node.

    The app opens the data dir on start-up unless given `node`, and closes
    the node's store when it stops. With `background`, it runs anti-entropy
    rounds (and DNS peer discovery) while it serves; tests leave it off and
    call `app.state.gossiper.run_round()` themselves. `transport` replaces
    the network between nodes, for tests.
    """

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # The node loads its whole state before the first request is served,
        # so no write is ever applied on top of a partly loaded replica.
        app.state.node = open_node(settings) if node is None else node
        app.state.node_holder[:] = [app.state.node]
        async with httpx.AsyncClient(
            timeout=settings.peer_timeout, transport=transport
        ) as client:
            gossiper = Gossiper(
                app.state.node,
                Membership(
                    settings.own_url(),
                    list(settings.peers),
                    backoff_initial=settings.gossip_interval,
                    backoff_max=max(10.0, settings.gossip_interval),
                    forget_after=settings.forget_after,
                ),
                client,
                settings.cluster_secret,
            )
            app.state.gossiper = gossiper
            app.state.coordinator[:] = [Coordinator(app.state.node, gossiper, settings)]
            tasks = _start_background(settings, gossiper) if background else []
            try:
                yield
            finally:
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
                if background:
                    await gossiper.flush(settings.peer_timeout)
                app.state.node.store.close()

    app = FastAPI(
        title="Nixie",
        version=__version__,
        lifespan=lifespan,
        openapi_url="/_nixie/openapi.json",
        docs_url="/_nixie/docs",
        redoc_url=None,
        # `/{key}/` is no counter route: answer 404 rather than redirect.
        redirect_slashes=False,
    )
    app.add_exception_handler(NixieError, _error_response)  # type: ignore[arg-type]
    app.add_exception_handler(HTTPException, _routing_error)  # type: ignore[arg-type]
    _add_counter_routes(app)
    add_cluster_routes(app, settings)
    # Routes match in order: counter requests are nearly all the traffic, so
    # their routes go first, ahead of the documentation FastAPI adds itself.
    app.router.routes.sort(
        key=lambda route: getattr(route, "path", "").startswith("/_nixie")
    )
    return app


def _start_background(
    settings: Settings, gossiper: Gossiper
) -> list[asyncio.Task[None]]:
    if not settings.cluster_secret:
        logger.warning(
            "no cluster secret set: accepting peer requests from loopback only"
        )
    logger.info(
        "gossiping every %.3g s as %s with peers %s",
        settings.gossip_interval,
        gossiper.identity.url,
        ", ".join(settings.peers) or "(none yet)",
    )
    tasks = [
        asyncio.create_task(gossiper.run(settings.gossip_interval)),
        asyncio.create_task(
            _maintain(
                gossiper.node,
                min(MAINTENANCE_MAX_INTERVAL, settings.idempotency_retention / 4),
            )
        ),
    ]
    if settings.peers_dns:
        name, port = settings.dns_target()
        tasks.append(
            asyncio.create_task(
                watch_dns(gossiper.membership, name, port, settings.dns_interval)
            )
        )
    return tasks


async def _maintain(node: Node, interval: float) -> None:
    """Fold and purge expired receipts every `interval` seconds."""
    while True:
        await asyncio.sleep(interval)
        try:
            folded, purged = node.fold_receipts(), node.purge_receipts()
        except StorageError as exc:
            logger.warning("receipt upkeep failed: %s", exc)
            continue
        if folded or purged:
            logger.info("receipts: %d folded, %d purged", folded, purged)


class Coordinator:
    """Serve the headers that reach other nodes: context, consistency, replays."""

    def __init__(self, node: Node, gossiper: Gossiper, settings: Settings) -> None:
        self.node = node
        self.gossiper = gossiper
        self.timeout = settings.sync_timeout
        self.contexts = ContextCodec(settings.cluster_secret)

    def respond(
        self,
        key: str,
        state: CounterState,
        status: int,
        body: str | None = None,
        *,
        describe: bool = True,
    ) -> Response:
        """Answer about a counter: its Nixie-* headers and its context token."""
        response = (
            _counter_response(state, status, body)
            if describe
            else Response(status_code=status)
        )
        response.raw_headers.append(
            (b"Nixie-Context", self.contexts.issue(key, state).encode())
        )
        return response

    def replay(self, key: str, receipt: Receipt) -> Response:
        """Answer a retried write with its first answer."""
        response = Response(
            content=receipt.body or None,
            status_code=receipt.status,
            media_type="text/plain" if receipt.body else None,
        )
        headers = response.raw_headers
        headers.extend((k.encode(), v.encode()) for k, v in receipt.headers)
        headers.append((b"Nixie-Replay", b"true"))
        state = self.node.state(key)
        if state is not None:
            headers.append((b"Nixie-Context", self.contexts.issue(key, state).encode()))
        return response

    async def catch_up(self, key: str, options: "_Options") -> None:
        """Before serving: reach the token's state, then the read level."""
        if options.context is not None:
            context = self.contexts.parse(key, options.context)
            if not satisfies(self.node.state(key), context):
                # Ask first the peers whose own writes this node lacks.
                writers = lacking(self.node.state(key), context)
                await self.gossiper.sync_key(
                    key,
                    self.gossiper.cluster_size,
                    self.timeout,
                    lambda: satisfies(self.node.state(key), context),
                    lambda peer: (
                        peer.replica is not None and tag(peer.replica) in writers
                    ),
                )
                if not satisfies(self.node.state(key), context):
                    raise Unavailable(
                        f"Nixie-Context: this node has not seen the state the "
                        f"token names, and no peer supplied it within "
                        f"{self.timeout:g} s; retry, or try another node"
                    )
        if options.level != "local" and options.read:
            await self._reach(key, options.level, "read")

    async def spread(self, key: str, options: "_Options") -> None:
        """After a write: wait until the write level holds it."""
        if options.level != "local":
            await self._reach(key, options.level, "write")

    async def _reach(self, key: str, level: str, what: str) -> None:
        size = self.gossiper.cluster_size
        needed = size if level == "all" else size // 2 + 1
        if needed <= 1:
            return
        answered = await self.gossiper.sync_key(key, needed - 1, self.timeout)
        if answered + 1 < needed:
            applied = (
                " The write stays applied on the nodes it reached and spreads "
                "from there; retry with the same Idempotency-Key."
                if what == "write"
                else ""
            )
            raise Unavailable(
                f"Nixie-Consistency: {level} needs {needed} of {size} nodes; "
                f"{answered + 1} answered within {self.timeout:g} s.{applied}"
            )
        if what == "read" and answered > 1:
            # Each peer that answered holds its own state merged with this
            # node's; the others' answers may be news to it: hand the merged
            # state back.
            await self.gossiper.sync_key(key, needed - 1, self.timeout)


class _Options:
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
                self.context = _single(self.context, value, "Nixie-Context")
            elif name == b"idempotency-key":
                self.idempotency_key = check_idempotency_key(
                    _single(self.idempotency_key, value, "Idempotency-Key"),
                    "Idempotency-Key",
                )
            elif name == b"nixie-consistency":
                level = _single(level, value, "Nixie-Consistency").lower()
                if level not in _CONSISTENCY_LEVELS:
                    raise InvalidInput(
                        "Nixie-Consistency: expected one of "
                        f"{', '.join(_CONSISTENCY_LEVELS)}"
                    )
                self.level = level
            elif name.startswith(b"nixie-") and name not in _META_HEADERS:
                # A misspelt header would otherwise be ignored without a word.
                raise InvalidInput(
                    f"{_title(name)}: not a request header of Nixie; it takes "
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


def _single(seen: str | None, value: bytes, header: str) -> str:
    if seen is not None:
        raise InvalidInput(f"{header}: given more than once")
    return value.decode("latin-1").strip()


def _add_counter_routes(app: FastAPI) -> None:
    # Handlers reach the node through this closure: looking it up on
    # `request.app.state` costs more than the rest of a read.
    def _node(_: Request) -> Node:
        return node_of[0]

    node_of: list[Node] = []
    app.state.node_holder = node_of
    coordinator_of: list[Coordinator] = []
    app.state.coordinator = coordinator_of

    @app.get("/", responses={**_text(200, "The keys, one a line."), **_errors(400)})
    async def list_keys(request: Request) -> Response:
        _refuse_extras(request)
        options = _Options(request, read=True)
        if not options.plain:
            raise InvalidInput(
                "Nixie-Context, Nixie-Consistency: GET / lists the keys this "
                "node holds; read a counter to wait for others"
            )
        return PlainTextResponse(_node(request).listing())

    @app.post(
        "/",
        status_code=201,
        responses={**_text(201, "The new key."), **_errors(400, 408, 413, 422, 503)},
        openapi_extra=_extra(meta=True, body="optional", write=True, context=False),
    )
    async def create_counter(request: Request) -> Response:
        options = _Options(request, read=False)
        if options.context is not None:
            raise InvalidInput("Nixie-Context: POST / creates a new counter")
        body = await _read_body(request, "start value")
        start = parse_int64(body, "start value") if body.strip() else 0
        name, description, step = _metadata(request)
        node, coordinator = _node(request), coordinator_of[0]
        idem = options.idempotency("POST /", start, name, description, step)
        if idem is not None:
            key = node.derived_key(idem.key)
            receipt = node.replay(idem, key)
            if receipt is not None:
                await coordinator.spread(key, options)
                return coordinator.replay(key, receipt)
        key, state = node.create(
            start=start,
            name=name or "",
            description=description or "",
            step=DEFAULT_STEP if step is None else step,
            idem=idem,
        )
        await coordinator.spread(key, options)
        return coordinator.respond(key, state, 201, key)

    @app.head(
        "/{key}",
        status_code=204,
        responses=_errors(400, 404, 503),
        openapi_extra=_extra(meta=False, body=None, read=True),
    )
    async def check_counter(request: Request) -> Response:
        key = request.path_params["key"]
        try:
            _refuse_extras(request)
            options = _Options(request, read=True)
            if not options.plain:
                await coordinator_of[0].catch_up(key, options)
            state = _node(request).get(key)
        except UnknownKey:
            return Response(status_code=404)
        except NixieError as exc:
            return Response(status_code=_STATUS.get(type(exc), 400))
        return coordinator_of[0].respond(key, state, 204)

    @app.get(
        "/{key}",
        responses={**_text(200, "The value."), **_errors(400, 404, 503)},
        openapi_extra=_extra(meta=False, body=None, read=True),
    )
    async def read_counter(request: Request) -> Response:
        key = request.path_params["key"]
        _refuse_extras(request)
        options = _Options(request, read=True)
        if not options.plain:
            await coordinator_of[0].catch_up(key, options)
        state = _node(request).get(key)
        return coordinator_of[0].respond(key, state, 200, str(state.value))

    async def prepare(request: Request) -> tuple[str, _Options]:
        """Read a write's key and headers; reach the token's state first."""
        key = request.path_params["key"]
        options = _Options(request, read=False)
        if not options.plain:
            await coordinator_of[0].catch_up(key, options)
        return key, options

    async def write(
        key: str,
        options: _Options,
        idem: Idempotency | None,
        apply: Callable[[], CounterState],
        answer: Callable[[CounterState], Response],
    ) -> Response:
        """Apply a write once: replay an earlier attempt, or apply and answer."""
        coordinator = coordinator_of[0]
        receipt = None if idem is None else node_of[0].replay(idem, key)
        state = apply() if receipt is None else None
        await coordinator.spread(key, options)
        if receipt is not None:
            return coordinator.replay(key, receipt)
        assert state is not None
        return answer(state)

    @app.post(
        "/{key}",
        responses={**_text(200, "The value."), **_errors(400, 404, 409, 422, 503)},
        openapi_extra=_extra(meta=False, body=None, write=True),
    )
    async def increment_counter(request: Request) -> Response:
        node, coordinator = _node(request), coordinator_of[0]
        key, options = await prepare(request)
        idem = options.idempotency("POST", key)

        def apply() -> CounterState:
            node.get(key)
            _refuse_extras(request)
            return node.increment(key, idem)

        return await write(
            key,
            options,
            idem,
            apply,
            lambda state: coordinator.respond(key, state, 200, str(state.value)),
        )

    @app.put(
        "/{key}",
        status_code=204,
        responses=_errors(400, 404, 408, 413, 422, 503),
        openapi_extra=_extra(meta=False, body="required", write=True),
    )
    async def set_counter(request: Request) -> Response:
        node, coordinator = _node(request), coordinator_of[0]
        key, options = await prepare(request)
        if options.idempotency_key is None:
            node.get(key)  # an unknown key is reported before a bad body
        _refuse_extras(request, body=True)
        value = parse_int64(await _read_body(request, "value"), "value")
        idem = options.idempotency("PUT", key, value)
        return await write(
            key,
            options,
            idem,
            lambda: node.set_value(key, value, idem),
            lambda state: coordinator.respond(key, state, 204),
        )

    @app.patch(
        "/{key}",
        status_code=204,
        responses=_errors(400, 404, 422, 503),
        openapi_extra=_extra(meta=True, body=None, write=True),
    )
    async def update_metadata(request: Request) -> Response:
        node, coordinator = _node(request), coordinator_of[0]
        key, options = await prepare(request)
        if options.idempotency_key is None:
            node.get(key)
        _refuse_extras(request, meta=True)
        name, description, step = _metadata(request)
        idem = options.idempotency("PATCH", key, name, description, step)
        return await write(
            key,
            options,
            idem,
            lambda: node.update_metadata(key, name, description, step, idem),
            lambda state: coordinator.respond(key, state, 204),
        )

    @app.delete(
        "/{key}",
        status_code=204,
        responses=_errors(400, 404, 422, 503),
        openapi_extra=_extra(meta=False, body=None, write=True),
    )
    async def delete_counter(request: Request) -> Response:
        node, coordinator = _node(request), coordinator_of[0]
        key, options = await prepare(request)
        idem = options.idempotency("DELETE", key)

        def apply() -> CounterState:
            node.get(key)
            _refuse_extras(request)
            return node.delete(key, idem)

        return await write(
            key,
            options,
            idem,
            apply,
            lambda state: coordinator.respond(key, state, 204, describe=False),
        )

    for route in app.routes:
        # Every counter route takes the key from the path; the handlers read
        # it from the request, so the parameter is declared here for the docs.
        if getattr(route, "path", "") == "/{key}":
            extra = route.openapi_extra or {}  # type: ignore[attr-defined]
            extra["parameters"] = [_KEY_PARAMETER, *extra.get("parameters", [])]
            route.openapi_extra = extra  # type: ignore[attr-defined]


async def _read_body(request: Request, field: str) -> str:
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


def _refuse_extras(request: Request, *, body: bool = False, meta: bool = False) -> None:
    """Refuse a body or Nixie-* headers sent to a route that would ignore them."""
    for name, value in request.scope["headers"]:
        sends_body = name == b"transfer-encoding" or (
            name == b"content-length" and value.strip() not in (b"", b"0")
        )
        if sends_body and not body:
            raise InvalidInput(f"body: {request.method} takes no body")
        if name in _META_HEADERS and not meta:
            raise InvalidInput(
                f"{_title(name)}: not accepted by {request.method}; "
                "PATCH changes a counter's metadata"
            )


def _metadata(request: Request) -> tuple[str | None, str | None, int | None]:
    """Read the Nixie-* headers present as raw bytes; absent ones are None."""
    raw: dict[bytes, bytes] = {}
    for name, value in request.scope["headers"]:
        if name in _META_HEADERS:
            if name in raw:
                raise InvalidInput(f"{_title(name)}: given more than once")
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


def _counter_response(
    state: CounterState, status: int, body: str | None = None
) -> Response:
    response = Response(
        content=body,
        status_code=status,
        media_type=None if body is None else "text/plain",
    )
    headers = response.raw_headers
    headers.append((b"Nixie-Step", str(state.step_value).encode()))
    if state.name_value:
        headers.append((b"Nixie-Name", state.name_value.encode()))
    if state.description_value:
        headers.append((b"Nixie-Description", state.description_value.encode()))
    return response


async def _error_response(request: Request, exc: NixieError) -> Response:
    status = _STATUS.get(type(exc), 400)
    if status >= 500:
        logger.warning("%s %s: %s", request.method, request.url.path, exc)
    else:
        logger.debug("%s %s: %d %s", request.method, request.url.path, status, exc)
    return PlainTextResponse(str(exc), status_code=status)


async def _routing_error(request: Request, exc: HTTPException) -> Response:
    # Starlette answers unknown paths and methods in JSON; Nixie speaks text.
    return PlainTextResponse(str(exc.detail), exc.status_code, headers=exc.headers)


def _title(header: bytes) -> str:
    return "-".join(part.capitalize() for part in header.decode().split("-"))


# OpenAPI declarations for parameters the handlers read by hand.

_KEY_PARAMETER = {
    "name": "key",
    "in": "path",
    "required": True,
    "schema": {"type": "string"},
}


def _extra(
    *,
    meta: bool,
    body: str | None,
    read: bool = False,
    write: bool = False,
    context: bool = True,
) -> dict[str, Any]:
    extra: dict[str, Any] = {}
    headers = []
    if meta:
        headers += ["Nixie-Name", "Nixie-Description", "Nixie-Step"]
    if write:
        headers.append("Idempotency-Key")
    if (read or write) and context:
        headers.append("Nixie-Context")
    if read or write:
        headers.append("Nixie-Consistency")
    if headers:
        extra["parameters"] = [
            {
                "name": header,
                "in": "header",
                "required": False,
                "schema": {"type": "string"},
            }
            for header in headers
        ]
    if body is not None:
        extra["requestBody"] = {
            "required": body == "required",
            "content": {"text/plain": {"schema": {"type": "string"}}},
        }
    return extra


def _text(status: int, description: str) -> dict[int | str, dict[str, Any]]:
    return {
        status: {
            "description": description,
            "content": {"text/plain": {"schema": {"type": "string"}}},
        }
    }


def _errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    return {status: {"description": "Error, as text."} for status in statuses}
