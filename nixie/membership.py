"""Who a node's peers are, and how each of them is doing.

Peers come from three places: the `--peers` list, the addresses behind the
`--peers-dns` name, and the peer lists other nodes send with every exchange.
A peer's status follows the outcome of recent exchanges: `up` after a
success, `suspect` after one or two failures in a row, `down` after more.
A peer that failed waits before the next attempt, longer after each failure
(exponential back-off with jitter, computed by tenacity); it rejoins by itself
on its first success. A peer that was only learned, never configured, is
forgotten once it has been down for `forget_after` seconds.
"""

import asyncio
import enum
import logging
import socket
import time
from dataclasses import dataclass
from urllib.parse import urlsplit

from tenacity import RetryCallState, wait_exponential_jitter

logger = logging.getLogger(__name__)

SUSPECT_AFTER = 1  # failures in a row
DOWN_AFTER = 3


class Status(enum.StrEnum):
    """How a peer has been answering lately."""

    UP = "up"
    SUSPECT = "suspect"
    DOWN = "down"


@dataclass(slots=True)
class Peer:
    """What a node knows about one other node."""

    url: str
    configured: bool = False
    replica: str | None = None
    instance: str | None = None
    status: Status = Status.SUSPECT
    failures: int = 0
    last_ok: float | None = None  # wall-clock seconds of the last success
    down_since: float | None = None  # monotonic seconds
    retry_at: float = 0.0  # monotonic seconds; not contacted before
    acked: int = 0  # our delta log position this peer has merged
    needs_repair: bool = True  # compare digests at the next exchange
    last_error: str = ""


def normalise_url(url: str) -> str:
    """Return a peer URL in one canonical form, or raise ValueError."""
    url = url.strip().rstrip("/")
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"not an http(s) URL: {url!r}")
    if parts.path or parts.query or parts.fragment:
        raise ValueError(f"a peer URL has no path: {url!r}")
    try:
        parts.port  # noqa: B018  (urlsplit checks the port only when asked)
    except ValueError as exc:
        raise ValueError(f"bad port in URL {url!r}: {exc}") from None
    return f"{parts.scheme}://{parts.netloc.lower()}"


class Membership:
    """Keep the peer table of one node."""

    def __init__(
        self,
        own_url: str,
        configured: list[str],
        backoff_initial: float,
        backoff_max: float,
        forget_after: float,
    ) -> None:
        self.own_url = normalise_url(own_url)
        self.peers: dict[str, Peer] = {}
        self._self_urls = {self.own_url}
        self._backoff = wait_exponential_jitter(
            multiplier=backoff_initial, max=backoff_max, jitter=backoff_initial
        )
        self._forget_after = forget_after
        self._most_nodes = 1  # the most distinct nodes known at once, this one too
        for url in configured:
            self.learn(url, configured=True)

    def learn(self, url: str, configured: bool = False) -> Peer | None:
        """Add a peer by URL unless it is this node or already known."""
        try:
            url = normalise_url(url)
        except ValueError:
            logger.debug("ignoring peer URL %r", url)
            return None
        if url in self._self_urls:
            return None

        peer = self.peers.get(url)
        if peer is None:
            peer = self.peers[url] = Peer(url, configured=configured)
            logger.info("peer %s added", url)
        peer.configured = peer.configured or configured
        return peer

    def mark_self(self, url: str) -> None:
        """Record that `url` reaches this very node, and stop gossiping to it."""
        self._self_urls.add(url)
        if self.peers.pop(url, None) is not None:
            logger.info("peer %s is this node; skipping it", url)

    def due(self, now: float) -> list[Peer]:
        """Return the peers whose next exchange may happen at `now`."""
        return [peer for peer in self.peers.values() if peer.retry_at <= now]

    def active(self) -> list[Peer]:
        """Return the peers that are not down."""
        return [p for p in self.peers.values() if p.status is not Status.DOWN]

    def advertised(self) -> list[str]:
        """Return the URLs worth telling other nodes about: this one and live peers."""
        return [
            self.own_url,
            *(p.url for p in self.peers.values() if p.status is Status.UP),
        ]

    def succeeded(self, peer: Peer) -> None:
        """Record a successful exchange."""
        if peer.status is not Status.UP:
            logger.info("peer %s is up", peer.url)
        peer.status = Status.UP
        peer.failures = 0
        peer.last_ok = time.time()
        peer.down_since = None
        peer.retry_at = 0.0
        peer.last_error = ""

    def heard_from(self, peer: Peer) -> None:
        """Note that a peer reached this node: whatever its status, try it now."""
        if peer.status is not Status.UP:
            peer.retry_at = 0.0

    def failed(self, peer: Peer, error: str, now: float) -> None:
        """Record a failed exchange and schedule the next attempt."""
        peer.failures += 1
        peer.last_error = error
        status = Status.DOWN if peer.failures >= DOWN_AFTER else Status.SUSPECT
        if status is not peer.status:
            log = logger.warning if status is Status.DOWN else logger.info
            log("peer %s is %s: %s", peer.url, status, error)
        if status is Status.DOWN and peer.down_since is None:
            peer.down_since = now
        peer.status = status

        # tenacity computes the back-off from the attempt number alone.
        attempt = RetryCallState(retry_object=None, fn=None, args=(), kwargs={})  # type: ignore[arg-type]
        attempt.attempt_number = peer.failures
        peer.retry_at = now + self._backoff(attempt)

    def cluster_size(self, own_replica: str) -> int:
        """Return how many nodes count for quorum and all, this one included.

        That is every peer known now, and never fewer than the most distinct
        nodes (by replica id) this node has known at once since it started:
        forgetting peers that went away must not let a node cut off from
        them make a quorum on its own.
        """
        replicas = {peer.replica for peer in self.peers.values() if peer.replica}
        self._most_nodes = max(self._most_nodes, 1 + len(replicas - {own_replica}))
        return max(1 + len(self.peers), self._most_nodes)

    def forget_departed(self, now: float) -> None:
        """Drop learned peers that have been down for too long."""
        for peer in list(self.peers.values()):
            gone = (
                peer.down_since is not None
                and now - peer.down_since > self._forget_after
            )
            if gone and not peer.configured:
                del self.peers[peer.url]
                logger.info(
                    "peer %s forgotten after %.0f s down",
                    peer.url,
                    now - (peer.down_since or now),
                )


async def watch_dns(
    membership: Membership, name: str, port: int, interval: float
) -> None:
    """Resolve `name` every `interval` seconds and learn each address as a peer.

    Compose service replicas and Kubernetes headless services publish one
    address per node under one name; this node's own address is among them
    and is recognised by the first exchange with it.
    """
    loop = asyncio.get_running_loop()
    while True:
        try:
            infos = await loop.getaddrinfo(name, port, type=socket.SOCK_STREAM)
        except OSError as exc:
            logger.warning("cannot resolve peers name %s: %s", name, exc)
        else:
            for family, _, _, _, address in infos:
                host = str(address[0])
                host = f"[{host}]" if family == socket.AF_INET6 else host
                membership.learn(f"http://{host}:{port}")
        await asyncio.sleep(interval)
