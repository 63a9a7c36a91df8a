"""Run the Docker Compose cluster for the fault tests, and act on it.

The images must exist already (`make test-cluster` builds them offline with
cluster/build-image.sh); Compose is told not to build. Host ports are moved
off the defaults so a local cluster on 7312-7314 does not get in the way, and
the whole project (containers, networks, volumes) is removed at the end,
whether the tests passed or not.
"""

import contextlib
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

ROOT = Path(__file__).resolve().parents[2]
PROJECT = "nixie-faults"
NODES = ("nixie1", "nixie2", "nixie3")
PORTS = {"nixie1": 17312, "nixie2": 17313, "nixie3": 17314}
LB_PORT = 17310
CONVERGE_TIMEOUT = 60.0  # seconds for the nodes to agree after faults heal
COMMAND_TIMEOUT = 120.0  # seconds for one docker command

os.environ.update(
    {f"{name.upper()}_PORT": str(port) for name, port in PORTS.items()}
    | {"NIXIE_LB_PORT": str(LB_PORT)}
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark every test of this tier as needing Docker."""
    here = Path(__file__).parent
    for item in items:
        if item.path.is_relative_to(here):
            item.add_marker(pytest.mark.docker)


@pytest.fixture(scope="session")
def docker_compose_file() -> str:
    return str(ROOT / "docker-compose.yml")


@pytest.fixture(scope="session")
def docker_compose_project_name() -> str:
    return PROJECT


@pytest.fixture(scope="session")
def docker_setup() -> list[str]:
    return ["up --detach --wait --no-build"]


@pytest.fixture(scope="session")
def docker_cleanup() -> list[str]:
    return ["down --volumes --remove-orphans --timeout 5"]


class ComposeCluster:
    """The running Compose cluster, seen from the host."""

    def __init__(self) -> None:
        self.urls = {name: f"http://127.0.0.1:{port}" for name, port in PORTS.items()}
        self.lb_url = f"http://127.0.0.1:{LB_PORT}"

    def compose(self, *args: str) -> str:
        """Run a `docker compose` command on the project."""
        return _run(
            "docker", "compose", "-p", PROJECT, "-f", str(ROOT / "docker-compose.yml"),
            *args,
        )  # fmt: skip

    def container(self, name: str) -> str:
        """Return the container name of a node."""
        return f"{PROJECT}-{name}-1"

    def disconnect(self, name: str) -> None:
        """Cut a node off the gossip network; clients still reach it."""
        _run(
            "docker", "network", "disconnect", f"{PROJECT}_gossip", self.container(name)
        )

    def connect(self, name: str) -> None:
        """Put a node back on the gossip network under its peer name."""
        _run(
            "docker", "network", "connect", "--alias", f"{name}.gossip",
            f"{PROJECT}_gossip", self.container(name),
        )  # fmt: skip

    def docker(self, *args: str) -> str:
        """Run a plain `docker` command."""
        return _run("docker", *args)

    def wait_serving(self, names: tuple[str, ...] = NODES, timeout: float = 60) -> None:
        """Wait until the given nodes answer their health check."""
        _wait(
            lambda: all(_status(f"{self.urls[n]}/_nixie/health") == 200 for n in names),
            timeout,
            f"{names} serving",
        )

    def create_counters(self, steps: list[int]) -> dict[str, tuple[int, int]]:
        """Create one counter per step, each with its own start, on every node."""
        counters = {}
        for index, step in enumerate(steps):
            start = 1000 * (index + 1)
            response = httpx.post(
                f"{self.urls['nixie1']}/",
                content=str(start),
                headers={"Nixie-Step": str(step)},
                timeout=5,
            )
            assert response.status_code == 201, response.text
            counters[response.text] = (start, step)
        last = list(counters)[-1]
        _wait(
            lambda: all(_status(f"{url}/{last}") == 200 for url in self.urls.values()),
            30,
            "new counters reaching every node",
        )
        return counters

    def values(self, keys: list[str]) -> dict[str, dict[str, int | None]]:
        """Return what each node serves for each key."""
        finals: dict[str, dict[str, int | None]] = {}
        for url in self.urls.values():
            finals[url] = {}
            for key in keys:
                response = httpx.get(f"{url}/{key}", timeout=5)
                finals[url][key] = (
                    int(response.text) if response.status_code == 200 else None
                )
        return finals

    def converge(self, keys: list[str]) -> float:
        """Wait until all nodes hold the same state; return how long it took."""
        started = time.monotonic()

        def agreed() -> bool:
            digests = {
                httpx.get(f"{url}/_nixie/cluster", timeout=5).json()["digest"]
                for url in self.urls.values()
            }
            values = self.values(keys)
            return (
                len(digests) == 1
                and len({tuple(v.items()) for v in values.values()}) == 1
            )

        _wait(agreed, CONVERGE_TIMEOUT, "the nodes agreeing")
        return time.monotonic() - started

    def replica_id(self, name: str) -> str:
        """Return a node's replica id."""
        replica: str = httpx.get(f"{self.urls[name]}/_nixie/cluster", timeout=5).json()[
            "replica"
        ]
        return replica

    def heal(self) -> None:
        """Undo every fault a test may have left: pauses, stops, partitions."""
        for name in NODES:
            container = self.container(name)
            state = self.docker("inspect", "-f", "{{.State.Status}}", container).strip()
            if state == "paused":
                self.docker("unpause", container)
            elif state != "running":
                self.docker("start", container)
            networks = self.docker(
                "inspect", "-f", "{{json .NetworkSettings.Networks}}", container
            )
            if f"{PROJECT}_gossip" not in networks:
                self.connect(name)
        self.wait_serving()


@pytest.fixture
def cluster(docker_services: object) -> Iterator[ComposeCluster]:
    """Yield the running cluster, healed again after the test."""
    compose = ComposeCluster()
    compose.wait_serving()
    yield compose
    compose.heal()


def _run(*command: str) -> str:
    result = subprocess.run(
        command, capture_output=True, text=True, timeout=COMMAND_TIMEOUT, check=False
    )
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed: {result.stderr.strip()}")
    return result.stdout


def _status(url: str) -> int:
    try:
        return httpx.get(url, timeout=2).status_code
    except httpx.TransportError:
        return 0


def _wait(predicate: object, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(httpx.TransportError, KeyError, ValueError):
            if predicate():  # type: ignore[operator]
                return
        time.sleep(0.1)
    raise AssertionError(f"{what}: not within {timeout} s")
