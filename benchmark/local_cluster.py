"""Run a local cluster of Nixie nodes for the length of a benchmark.

Each node is a `nixie-cli` process on its own free loopback port, with its own
data dir, every other node as a peer and one shared secret. The cluster is
handed over only once every node answers and sees all its peers up, and every
node is stopped on the way out, whatever happened.
"""

import argparse
import contextlib
import logging
import os
import secrets
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx

from benchmark.run import (
    HOST,
    ROOT,
    STARTUP_TIMEOUT,
    BenchmarkError,
    find_executable,
    free_port,
    log_tail,
    stop,
    wait_until_ready,
)

logger = logging.getLogger(__name__)

DEFAULT_NODES = 3
DEFAULT_GOSSIP_INTERVAL = 0.25  # seconds; nixie-cli's own default


def add_gossip_interval_option(parser: argparse.ArgumentParser) -> None:
    """Add --gossip-interval, in seconds, for the clusters a benchmark starts."""
    parser.add_argument(
        "--gossip-interval",
        type=_positive_seconds,
        default=DEFAULT_GOSSIP_INTERVAL,
        help=f"seconds between the cluster's gossip rounds "
        f"(default {DEFAULT_GOSSIP_INTERVAL})",
    )


def _positive_seconds(text: str) -> float:
    seconds = float(text)
    if not seconds > 0:
        raise argparse.ArgumentTypeError("must be positive")
    return seconds


POLL_INTERVAL = 0.05  # seconds between two looks at a starting cluster


@dataclass(frozen=True, slots=True)
class ClusterNode:
    """One running node: its base URL, its process and its log file."""

    url: str
    process: subprocess.Popen[bytes]
    log: Path


def distinct_free_ports(count: int) -> list[int]:
    """Return `count` different loopback ports that nothing listens on."""
    ports: list[int] = []
    while len(ports) < count:
        port = free_port()
        if port not in ports:
            ports.append(port)
    return ports


def node_command(
    port: int, data_dir: Path, peers: list[str], gossip_interval: float
) -> list[str]:
    """Return the command line of one node of the cluster."""
    return [
        find_executable("nixie-cli"),
        "--host", HOST,
        "--port", str(port),
        "--data-dir", str(data_dir),
        "--peers", ",".join(peers),
        "--gossip-interval", str(gossip_interval),
    ]  # fmt: skip


def wait_until_peers_up(nodes: list[ClusterNode]) -> None:
    """Poll every node's cluster status until it sees all its peers up."""
    deadline = time.monotonic() + STARTUP_TIMEOUT
    with httpx.Client(trust_env=False, timeout=1.0) as client:
        for node in nodes:
            while True:
                with contextlib.suppress(httpx.TransportError, ValueError):
                    peers = client.get(f"{node.url}/_nixie/cluster").json()["peers"]
                    if len(peers) == len(nodes) - 1 and all(
                        peer["status"] == "up" for peer in peers
                    ):
                        break
                if time.monotonic() > deadline:
                    raise BenchmarkError(
                        f"{node.url} did not see its peers up within "
                        f"{STARTUP_TIMEOUT:.0f} s:\n{log_tail(node.log)}"
                    )
                time.sleep(POLL_INTERVAL)


@contextlib.contextmanager
def running_cluster(
    workdir: Path,
    nodes: int = DEFAULT_NODES,
    gossip_interval: float = DEFAULT_GOSSIP_INTERVAL,
) -> Iterator[list[ClusterNode]]:
    """Run a cluster of fresh nodes under `workdir` for the duration of the block."""
    ports = distinct_free_ports(nodes)
    urls = [f"http://{HOST}:{port}" for port in ports]

    # nixie-cli reads NIXIE_* variables; the nodes must run with nothing but
    # the flags given here, and the secret, which an environment variable
    # keeps out of the process list as the cluster launcher does.
    env = {k: v for k, v in os.environ.items() if not k.startswith("NIXIE_")}
    env["NIXIE_CLUSTER_SECRET"] = secrets.token_urlsafe(24)

    with contextlib.ExitStack() as stack:
        started: list[ClusterNode] = []
        for index, (port, url) in enumerate(zip(ports, urls, strict=True)):
            name = f"node{index + 1}"
            log = workdir / f"{name}.log"
            peers = [other for other in urls if other != url]
            command = node_command(port, workdir / name, peers, gossip_interval)
            with log.open("wb") as out:
                # Each node leads its own process group, so that stop() can
                # signal it without reaching this process.
                proc = subprocess.Popen(
                    command,
                    cwd=ROOT,
                    env=env,
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=out,
                    start_new_session=True,
                )
            stack.callback(stop, proc)
            started.append(ClusterNode(url, proc, log))

        for node in started:
            wait_until_ready(node.process, node.url, node.log)
        wait_until_peers_up(started)
        logger.debug("cluster up: %s", ", ".join(urls))
        yield started
