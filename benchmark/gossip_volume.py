"""Measure anti-entropy traffic: bytes per round per peer, idle and busy.

Two nodes run in one process over the in-memory network of the test harness,
which counts every byte of request and response bodies (HTTP headers aside).
The first node holds COUNTERS counters; once the second has caught up, one
round of the first node is measured with nothing changed, then with 10, 100
and 1000 counters incremented since the previous round.

Run it from the repository root: `python -m benchmark.gossip_volume`.
"""

import argparse
import asyncio
import tempfile
import time
from pathlib import Path

from tests.harness import Cluster, in_process_cluster


async def measure(counters: int, changes: list[int]) -> list[tuple[str, int]]:
    """Return (scenario, bytes in one round to one peer) pairs."""
    with tempfile.TemporaryDirectory() as root:
        async with in_process_cluster(Path(root)) as cluster:
            return await _measure(cluster, counters, changes)


async def _measure(
    cluster: Cluster, counters: int, changes: list[int]
) -> list[tuple[str, int]]:
    a = await cluster.add()
    keys = [a.node.create()[0] for _ in range(counters)]
    b = await cluster.add(peers=[a.url])

    started = time.monotonic()
    rounds = 0
    while not cluster.converged():
        await cluster.rounds()
        rounds += 1
    print(
        f"catch-up of {counters} counters: {rounds} rounds, "
        f"{time.monotonic() - started:.1f} s, {cluster.network.bytes_sent} bytes"
    )
    await cluster.rounds(2)  # settle acknowledgements both ways

    results = []
    for changed in [0, *changes]:
        for key in keys[:changed]:
            a.node.increment(key)
        before = cluster.network.bytes_sent
        await a.round()
        results.append((f"{changed} changed", cluster.network.bytes_sent - before))
        await b.round()  # b's acknowledgement round, not measured
    return results


def main() -> None:
    """Print the traffic table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--counters", type=int, default=100_000)
    args = parser.parse_args()

    results = asyncio.run(measure(args.counters, [10, 100, 1000]))
    print(f"\nbytes per round per peer, {args.counters} counters")
    for scenario, size in results:
        print(f"  {scenario:>14}: {size:>9,} B")


if __name__ == "__main__":
    main()
