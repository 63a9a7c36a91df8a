"""Run several nodes in one process, wired through an in-memory network.

Each node is a real app (`create_app`) with its lifespan entered, so it has
its store, node and gossiper, but no background task: a test calls
`run_round()` itself and so decides exactly which exchanges happen. The
network routes each request to the app whose URL it names, counts the bytes
that cross it, and drops traffic between nodes a test has partitioned.
"""

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from fastapi import FastAPI

from nixie.api import create_app
from nixie.gossip import Gossiper
from nixie.node import Node
from nixie.settings import Settings


def http_scope(
    method: str, path: str, headers: list[tuple[bytes, bytes]]
) -> dict[str, Any]:
    """Return the ASGI scope of one HTTP/1.1 request from loopback."""
    return {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": headers,
        "client": ("127.0.0.1", 40000),
        "server": ("testserver", 80),
    }


@dataclass
class Network:
    """Route requests between in-process nodes, with partitions."""

    apps: dict[str, FastAPI] = field(default_factory=dict)
    cut: set[frozenset[str]] = field(default_factory=set)
    down: set[str] = field(default_factory=set)
    bytes_sent: int = 0
    requests: int = 0
    sent: list[tuple[str, str, str]] = field(default_factory=list)  # from, to, path

    def transport_for(self, source: str) -> httpx.AsyncBaseTransport:
        """Return the transport the node at `source` sends through."""
        return _Link(self, source)

    def partition(self, *groups: list[str]) -> None:
        """Cut every link between nodes of different groups."""
        for group in groups:
            for other in groups:
                if other is not group:
                    self.cut |= {frozenset((a, b)) for a in group for b in other}

    def heal(self) -> None:
        """Restore every link."""
        self.cut.clear()
        self.down.clear()


class _Link(httpx.AsyncBaseTransport):
    def __init__(self, network: Network, source: str) -> None:
        self.network = network
        self.source = source

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        target = f"{request.url.scheme}://{request.url.netloc.decode()}"
        network = self.network
        app = network.apps.get(target)
        blocked = frozenset((self.source, target)) in network.cut
        dead = {self.source, target} & network.down
        if app is None or blocked or dead:
            raise httpx.ConnectError(f"{self.source} cannot reach {target}")

        body = await request.aread()
        network.bytes_sent += len(body)
        network.requests += 1
        network.sent.append((self.source, target, request.url.path))
        transport = httpx.ASGITransport(app=app, client=("127.0.0.1", 40000))
        response = await transport.handle_async_request(request)
        content = await response.aread()
        network.bytes_sent += len(content)
        return httpx.Response(
            response.status_code, headers=response.headers, content=content
        )


@dataclass
class InProcessNode:
    """One node of an in-process cluster."""

    url: str
    app: FastAPI
    client: httpx.AsyncClient

    @property
    def node(self) -> Node:
        """The node's replica state."""
        node: Node = self.app.state.node
        return node

    @property
    def gossiper(self) -> Gossiper:
        """The node's anti-entropy."""
        gossiper: Gossiper = self.app.state.gossiper
        return gossiper

    async def round(self) -> None:
        """Run one anti-entropy round of this node."""
        await self.gossiper.run_round()


class Cluster:
    """Start in-process nodes on one network and drive their rounds."""

    def __init__(self, root: Path, stack: contextlib.AsyncExitStack) -> None:
        self.root = root
        self.network = Network()
        self.nodes: list[InProcessNode] = []
        self._stack = stack

    async def add(
        self,
        peers: list[str] | None = None,
        name: str | None = None,
        **settings: object,
    ) -> InProcessNode:
        """Start a node; by default its peers are all nodes started so far."""
        url = f"http://node{len(self.nodes) + 1}.test:7312"
        name = name or f"node{len(self.nodes) + 1}"
        app = create_app(
            Settings(
                data_dir=self.root / name,
                advertise_url=url,
                peers=tuple(
                    peers if peers is not None else [n.url for n in self.nodes]
                ),
                **settings,  # type: ignore[arg-type]
            ),
            transport=self.network.transport_for(url),
            background=False,
        )
        await self._stack.enter_async_context(app.router.lifespan_context(app))
        client = await self._stack.enter_async_context(
            httpx.AsyncClient(
                transport=httpx.ASGITransport(app=app), base_url="http://client"
            )
        )
        self.network.apps[url] = app
        member = InProcessNode(url, app, client)
        self.nodes.append(member)
        return member

    async def add_three(self, **settings: Any) -> list[InProcessNode]:
        """Start three nodes that all know each other from the start."""
        a = await self.add(**settings)
        b = await self.add(**settings)
        c = await self.add(**settings)
        a.gossiper.membership.learn(b.url)
        a.gossiper.membership.learn(c.url)
        b.gossiper.membership.learn(c.url)
        return [a, b, c]

    async def rounds(self, count: int = 1) -> None:
        """Run `count` rounds of every node, one node after another."""
        for _ in range(count):
            for member in self.nodes:
                await member.round()

    def heal(self) -> None:
        """Restore every link, and let every node retry its peers at once."""
        self.network.heal()
        for member in self.nodes:
            for peer in member.gossiper.membership.peers.values():
                peer.retry_at = 0.0

    def converged(self) -> bool:
        """Tell whether every node holds exactly the same states."""
        digests = {m.node.digest.root for m in self.nodes}
        return len(digests) == 1


async def create(member: InProcessNode, start: int = 0, **headers: str) -> str:
    """Create a counter on `member` and return its key."""
    response = await member.client.post("/", content=str(start), headers=headers)
    assert response.status_code == 201, response.text
    return response.text


@contextlib.asynccontextmanager
async def in_process_cluster(root: Path) -> AsyncIterator[Cluster]:
    """Yield an empty cluster; every node it starts is stopped afterwards."""
    async with contextlib.AsyncExitStack() as stack:
        yield Cluster(root, stack)
