"""Fixtures that point the scenarios at a node: ``NIXIE_URL`` or a fresh one."""

import os
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from integration._contract import MakeCounter, metadata_headers, utf8
from tests.nodeproc import run_node

HERE = Path(__file__).parent

# Seconds any single request may take before the scenario fails.
REQUEST_TIMEOUT = 10.0


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark these scenarios as starting a process unless NIXIE_URL names a node."""
    if os.environ.get("NIXIE_URL"):
        return

    for item in items:
        if item.path.is_relative_to(HERE):
            item.add_marker(pytest.mark.process)


@pytest.fixture(scope="session")
def base_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Yield the base URL of the node under test, starting one if none is given."""
    configured = os.environ.get("NIXIE_URL", "")
    if configured:
        yield configured.rstrip("/")
        return

    data_dir = tmp_path_factory.mktemp("nixie") / "data"
    with run_node(data_dir) as node:
        yield node.url


@pytest.fixture(scope="session")
def client(base_url: str) -> Iterator[httpx.Client]:
    """Yield an HTTP client bound to the node under test."""
    with httpx.Client(base_url=base_url, timeout=REQUEST_TIMEOUT) as client:
        yield client


@pytest.fixture
def make_counter(client: httpx.Client) -> Iterator[MakeCounter]:
    """Yield a factory of fresh counters, deleting them after the test."""
    created: list[str] = []

    def make(
        start: str | bytes | int | None = None,
        name: str | bytes | None = None,
        description: str | bytes | None = None,
        step: str | bytes | int | None = None,
    ) -> str:
        body = b"" if start is None else utf8(start)
        response = client.post(
            "/",
            content=body,
            headers=metadata_headers(name, description, step),
        )
        if response.status_code != 201:
            raise AssertionError(
                f"creating a counter answered {response.status_code}: {response.text}"
            )
        created.append(response.text)
        return response.text

    yield make

    # Leave a shared deployment as we found it; keys a test deleted answer 404.
    for key in created:
        client.delete(f"/{key}")
