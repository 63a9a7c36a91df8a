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
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import httpx
from fastapi import FastAPI, Request
from fastapi.responses import PlainTextResponse, Response
from starlette.exceptions import HTTPException

from nixie import __version__
from nixie.cluster_api import add_cluster_routes
from nixie.coordinator import Coordinator
from nixie.crdt import DEFAULT_STEP, CounterState
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
from nixie.inputs import (
    RequestOptions,
    read_body,
    read_metadata,
    refuse_extras,
)
from nixie.membership import Membership, watch_dns
from nixie.node import Idempotency, Node
from nixie.settings import Settings
from nixie.store import Store
from nixie.values import (
    parse_int64,
)

logger = logging.getLogger(__name__)

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
        ", ".join(gossiper.membership.peers) or "(none yet)",
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
            # Purging first leaves a receipt folded in this pass for the
            # next one to drop, so its fold has an interval to reach peers.
            purged = node.purge_receipts()
            folded = node.fold_receipts()
        except StorageError as exc:
            logger.warning("receipt upkeep failed: %s", exc)
            continue
        if folded or purged:
            logger.info("receipts: %d folded, %d purged", folded, purged)


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
        refuse_extras(request)
        options = RequestOptions(request, read=True)
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
        options = RequestOptions(request, read=False)
        if options.context is not None:
            raise InvalidInput("Nixie-Context: POST / creates a new counter")
        body = await read_body(request, "start value")
        start = parse_int64(body, "start value") if body.strip() else 0
        name, description, step = read_metadata(request)
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
            refuse_extras(request)
            options = RequestOptions(request, read=True)
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
        refuse_extras(request)
        options = RequestOptions(request, read=True)
        if not options.plain:
            await coordinator_of[0].catch_up(key, options)
        state = _node(request).get(key)
        return coordinator_of[0].respond(key, state, 200, str(state.value))

    async def prepare(request: Request) -> tuple[str, RequestOptions]:
        """Read a write's key and headers; reach the token's state first."""
        key = request.path_params["key"]
        options = RequestOptions(request, read=False)
        if not options.plain:
            await coordinator_of[0].catch_up(key, options)
        return key, options

    async def write(
        key: str,
        options: RequestOptions,
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
            refuse_extras(request)
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
        refuse_extras(request, body=True)
        value = parse_int64(await read_body(request, "value"), "value")
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
        refuse_extras(request, meta=True)
        name, description, step = read_metadata(request)
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
            refuse_extras(request)
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
