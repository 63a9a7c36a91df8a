"""Fixtures that build a node's ASGI app on a fresh data dir and talk to it."""

import functools
import warnings
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any, Protocol

import httpx
import pytest
from fastapi import FastAPI
from starlette.exceptions import StarletteDeprecationWarning

from nixie.api import create_app
from nixie.settings import Settings
from tests.harness import Cluster, in_process_cluster

with warnings.catch_warnings():
    # Starlette 1.x warns on import that its TestClient would rather run on
    # httpx2; the project depends on httpx, which the TestClient still accepts.
    warnings.simplefilter("ignore", StarletteDeprecationWarning)
    from fastapi.testclient import TestClient

MakeApp = Callable[..., FastAPI]


class MakeCounter(Protocol):
    """Create a counter through the client and return its key."""

    def __call__(
        self,
        start: int | None = None,
        name: str | None = None,
        description: str | None = None,
        step: int | None = None,
    ) -> str: ...


class Fetch(Protocol):
    """Send one request to the app and return the response, headers as sent."""

    def __call__(self, method: str, url: str, **kwargs: Any) -> httpx.Response: ...


@pytest.fixture
def make_app(tmp_path: Path) -> MakeApp:
    """Return a factory of apps; each opens `data_dir`, by default one per test."""

    def make(data_dir: Path | None = None) -> FastAPI:
        return create_app(Settings(data_dir=data_dir or tmp_path / "data"))

    return make


@pytest.fixture
def app(make_app: MakeApp) -> FastAPI:
    """Return the app of a node on a fresh data dir."""
    return make_app()


@pytest.fixture
def client(app: FastAPI) -> Iterator[TestClient]:
    """Yield a client of `app` whose lifespan, and so whose node, is running."""
    with TestClient(app) as client:
        yield client


@pytest.fixture
def make_counter(client: TestClient) -> MakeCounter:
    """Return a factory of counters created through `client`.

    The TestClient cannot read non-ASCII response headers, so names and
    descriptions given here must be ASCII; `fetch` carries any bytes.
    """

    def make(
        start: int | None = None,
        name: str | None = None,
        description: str | None = None,
        step: int | None = None,
    ) -> str:
        given = {
            "Nixie-Name": name,
            "Nixie-Description": description,
            "Nixie-Step": step,
        }
        headers = {
            header: str(value) for header, value in given.items() if value is not None
        }
        body = b"" if start is None else str(start).encode()
        response = client.post("/", content=body, headers=headers)
        assert response.status_code == 201, response.text
        return response.text

    return make


@pytest.fixture
def fetch(client: TestClient) -> Fetch:
    """Return a request function that keeps response headers as raw bytes.

    Starlette's TestClient decodes response headers as UTF-8 and re-encodes
    them as ASCII, so it fails on the UTF-8 names Nixie sends back; httpx's
    own ASGI transport passes them through. Requests run on the client's
    event loop, against the node its lifespan opened.
    """
    portal = client.portal
    assert portal is not None, "the client's lifespan is not running"
    transport = httpx.ASGITransport(app=client.app)

    async def send(method: str, url: str, kwargs: dict[str, Any]) -> httpx.Response:
        async with httpx.AsyncClient(
            transport=transport, base_url="http://testserver"
        ) as http:
            return await http.request(method, url, **kwargs)

    def fetch(method: str, url: str, **kwargs: Any) -> httpx.Response:
        return portal.call(functools.partial(send, method, url, kwargs))

    return fetch


@pytest.fixture
def anyio_backend() -> str:
    """Run async tests on asyncio, the loop Nixie runs on."""
    return "asyncio"


@pytest.fixture
async def cluster(tmp_path: Path) -> AsyncIterator[Cluster]:
    """Yield an in-process cluster with no nodes yet; add them with `add()`."""
    async with in_process_cluster(tmp_path) as cluster:
        yield cluster
