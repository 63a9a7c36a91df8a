"""The one settings object of a node; the CLI maps every flag onto it."""

import socket
from dataclasses import dataclass
from pathlib import Path

from nixie.membership import normalise_url

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 7312
DEFAULT_DATA_DIR = Path("nixie-data")
WILDCARD_HOSTS = ("", "0.0.0.0", "::")


@dataclass(frozen=True, slots=True)
class Settings:
    """Describe how one node runs; durations are in seconds.

    host, port: where the HTTP API listens.
    data_dir: the folder holding the node's SQLite database and replica id;
        two running nodes never share one.
    debug: log at DEBUG level instead of INFO.
    peers: base URLs of other nodes to gossip with.
    peers_dns: `NAME:PORT`; every address NAME resolves to is a peer,
        looked up again every `dns_interval`.
    advertise_url: the URL other nodes reach this one at; by default built
        from host and port, or from the machine's hostname when host is a
        wildcard address.
    cluster_secret: shared by all nodes; required on every peer request.
        Without one, a node accepts peer requests from loopback only.
    gossip_interval: time between two anti-entropy rounds.
    peer_timeout: how long one exchange with a peer may take. Exchanges run
        concurrently, so a slow peer delays nothing else; it should still
        exceed `gossip_interval`, or a peer farther away than one round never
        answers in time.
    delta_capacity: deltas kept for peers that have not acknowledged them; a
        peer further behind is repaired by digest comparison instead.
    forget_after: a peer learned from gossip or DNS, never configured, is
        forgotten after being down this long.
    sync_timeout: how long a request may wait for other nodes: to catch up
        with a Nixie-Context token, or to reach a Nixie-Consistency level.
    idempotency_retention: how long a write's Idempotency-Key is
        remembered; replays within it get the first answer.
    """

    host: str = DEFAULT_HOST
    port: int = DEFAULT_PORT
    data_dir: Path = DEFAULT_DATA_DIR
    debug: bool = False
    peers: tuple[str, ...] = ()
    peers_dns: str | None = None
    advertise_url: str | None = None
    cluster_secret: str | None = None
    gossip_interval: float = 0.25
    peer_timeout: float = 2.0
    dns_interval: float = 5.0
    delta_capacity: int = 100_000
    forget_after: float = 300.0
    sync_timeout: float = 1.0
    idempotency_retention: float = 86_400.0

    def __post_init__(self) -> None:
        if not 0 < self.gossip_interval <= 3600:
            raise ValueError("gossip interval must be in (0, 3600] seconds")
        if self.peer_timeout <= self.gossip_interval:
            raise ValueError("peer timeout must exceed the gossip interval")
        if not 0 < self.sync_timeout <= 3600:
            raise ValueError("sync timeout must be in (0, 3600] seconds")
        if not 1 <= self.idempotency_retention <= 365 * 86_400:
            raise ValueError("idempotency retention must be 1 s to 365 days")
        if self.delta_capacity < 1:
            raise ValueError("delta capacity must be at least 1")
        if self.peers_dns is not None:
            self.dns_target()
        for url in (*self.peers, *filter(None, [self.advertise_url])):
            normalise_url(url)  # raises ValueError naming the bad URL

    def own_url(self) -> str:
        """Return the URL peers reach this node at."""
        if self.advertise_url:
            return self.advertise_url
        host = socket.gethostname() if self.host in WILDCARD_HOSTS else self.host
        if ":" in host:
            host = f"[{host}]"
        return f"http://{host}:{self.port}"

    def dns_target(self) -> tuple[str, int]:
        """Split `peers_dns` into a name and a port, or raise ValueError."""
        name, _, port = (self.peers_dns or "").rpartition(":")
        if not name or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"--peers-dns wants NAME:PORT, not {self.peers_dns!r}")
        return name, int(port)
