"""The counter API over HTTP, as described by `openapi.yaml`.

Handlers are coroutines that read the raw ASGI headers and body themselves:
the node's operations never block on I/O other than one SQLite commit, so
running them on the event loop avoids a thread-pool hop per request, and
skipping FastAPI's parameter injection keeps the hot path short. The routes
still declare their parameters and responses so that the app's own OpenAPI
document matches the contract.
"""

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
from fastapi import FastAPI, Request
from fastapi.responses import PlainTextResponse, Response
from starlette.exceptions import HTTPException

from nixie import __version__
from nixie.cluster_api import add_cluster_routes
from nixie.crdt import DEFAULT_STEP, CounterState
from nixie.errors import (
    BodyTooLarge,
    InvalidInput,
    NixieError,
    OutOfRange,
    StorageError,
    Unauthorized,
    UnknownKey,
)
from nixie.gossip import Gossiper
from nixie.membership import Membership, watch_dns
from nixie.node import Node
from nixie.settings import Settings
from nixie.store import Store
from nixie.values import (
    DESCRIPTION_MAX_CHARS,
    NAME_MAX_CHARS,
    decode_text,
    parse_int64,
)

logger = logging.getLogger(__name__)

# The longest valid body is a 64-bit integer with a sign and some whitespace;
# anything much longer is refused before it is read in full.
BODY_MAX_BYTES = 1024

_STATUS = {
    InvalidInput: 400,
    Unauthorized: 401,
    UnknownKey: 404,
    OutOfRange: 409,
    BodyTooLarge: 413,
    StorageError: 503,
}

_META_HEADERS = (b"nixie-name", b"nixie-description", b"nixie-step")


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
        if node is None:
            app.state.node = Node(
                Store(settings.data_dir), delta_capacity=settings.delta_capacity
            )
        else:
            app.state.node = node
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
    tasks = [asyncio.create_task(gossiper.run(settings.gossip_interval))]
    if settings.peers_dns:
        name, port = settings.dns_target()
        tasks.append(
            asyncio.create_task(
                watch_dns(gossiper.membership, name, port, settings.dns_interval)
            )
        )
    return tasks


def _add_counter_routes(app: FastAPI) -> None:
    # Handlers reach the node through this closure: looking it up on
    # `request.app.state` costs more than the rest of a read.
    def _node(_: Request) -> Node:
        return node_of[0]

    node_of: list[Node] = []
    app.state.node_holder = node_of

    @app.get("/", responses=_text(200, "The keys, one a line."))
    async def list_keys(request: Request) -> Response:
        return PlainTextResponse(_node(request).listing())

    @app.post(
        "/",
        status_code=201,
        responses={**_text(201, "The new key."), **_errors(400, 413, 503)},
        openapi_extra=_extra(meta=True, body="optional"),
    )
    async def create_counter(request: Request) -> Response:
        body = await _read_body(request, "start value")
        start = parse_int64(body, "start value") if body.strip() else 0
        name, description, step = _metadata(request)
        key, state = _node(request).create(
            start=start,
            name=name or "",
            description=description or "",
            step=DEFAULT_STEP if step is None else step,
        )
        return _counter_response(state, 201, key)

    @app.head("/{key}", status_code=204, responses={404: {"description": "Unknown"}})
    async def check_counter(request: Request) -> Response:
        try:
            state = _node(request).get(request.path_params["key"])
        except UnknownKey:
            return Response(status_code=404)
        return _counter_response(state, 204)

    @app.get("/{key}", responses={**_text(200, "The value."), **_errors(404)})
    async def read_counter(request: Request) -> Response:
        state = _node(request).get(request.path_params["key"])
        return _counter_response(state, 200, str(state.value))

    @app.post(
        "/{key}", responses={**_text(200, "The value."), **_errors(404, 409, 503)}
    )
    async def increment_counter(request: Request) -> Response:
        node = _node(request)
        key = request.path_params["key"]
        node.get(key)
        _refuse_extras(request)
        state = node.increment(key)
        return _counter_response(state, 200, str(state.value))

    @app.put(
        "/{key}",
        status_code=204,
        responses=_errors(400, 404, 413, 503),
        openapi_extra=_extra(meta=False, body="required"),
    )
    async def set_counter(request: Request) -> Response:
        node = _node(request)
        key = request.path_params["key"]
        node.get(key)  # an unknown key is reported before a bad body
        _refuse_extras(request, body=True)
        value = parse_int64(await _read_body(request, "value"), "value")
        return _counter_response(node.set_value(key, value), 204)

    @app.patch(
        "/{key}",
        status_code=204,
        responses=_errors(400, 404, 503),
        openapi_extra=_extra(meta=True, body=None),
    )
    async def update_metadata(request: Request) -> Response:
        node = _node(request)
        key = request.path_params["key"]
        node.get(key)
        _refuse_extras(request, meta=True)
        name, description, step = _metadata(request)
        state = node.update_metadata(key, name, description, step)
        return _counter_response(state, 204)

    @app.delete("/{key}", status_code=204, responses=_errors(404, 503))
    async def delete_counter(request: Request) -> Response:
        node = _node(request)
        key = request.path_params["key"]
        node.get(key)
        _refuse_extras(request)
        node.delete(key)
        return Response(status_code=204)

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
    async for chunk in request.stream():
        size += len(chunk)
        if size > BODY_MAX_BYTES:
            raise too_large
        chunks.append(chunk)
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


def _extra(*, meta: bool, body: str | None) -> dict[str, Any]:
    extra: dict[str, Any] = {}
    if meta:
        extra["parameters"] = [
            {
                "name": header,
                "in": "header",
                "required": False,
                "schema": {"type": "string"},
            }
            for header in ("Nixie-Name", "Nixie-Description", "Nixie-Step")
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
