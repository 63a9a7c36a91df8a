"""Measure what idempotency receipts cost: storage, gossip, CPU per write, upkeep.

A write sent with an `Idempotency-Key` leaves a receipt inside its counter's
state (`nixie.crdt.Receipt`); the data dir keeps each receipt in a row of its
own, and a write stores only the receipts it changed, but gossip carries
whole states. Everything here runs in this process, on
`nixie.node.Node` objects with their own SQLite stores in a temporary folder,
and for gossip on two nodes of the tests' in-memory cluster:

1. storage: the counter rows and the SQLite file after N increments with
   keys, against N plain ones, on one counter and spread over N counters;
   then after folding (the clock moved past the retention window) and
   purging (past twice the window);
2. gossip: the bytes of one round carrying K increments with keys against K
   plain ones, and the bytes and time of one quorum read of a counter
   holding R receipts;
3. CPU per write: a plain and a keyed increment, a read and the merge of a
   peer's delta, on counters that already hold R receipts;
4. upkeep: the CPU time and bytes written of `Node.fold_receipts` for R
   receipts on one counter and spread over R counters.

Run it from the repository root: `python -m benchmark.idempotency_cost`.
"""

import argparse
import asyncio
import datetime
import hashlib
import json
import os
import platform
import sqlite3
import statistics
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import closing, contextmanager
from functools import partial
from pathlib import Path
from typing import Any

from benchmark.run import RESULTS_DIR, ROOT
from nixie import codec
from nixie.crdt import CounterState, Receipt, Stamp
from nixie.hlc import HybridClock
from nixie.node import Idempotency, Node
from nixie.store import DB_NAME, Store, new_replica_id
from tests.harness import Cluster, in_process_cluster

RETENTION_MS = 60_000  # the window; the tests' clock is moved past it by hand
START_MS = 1_800_000_000_000  # the fake wall clock's start, in ms since the epoch
STEP_HEADERS = (("Nixie-Step", "1"),)  # what an increment's receipt keeps


class FakeWall:
    """A wall clock in milliseconds that moves only when told to."""

    def __init__(self) -> None:
        self.millis = START_MS

    def __call__(self) -> int:
        return self.millis


@contextmanager
def opened(data_dir: Path, wall: FakeWall) -> Iterator[Node]:
    """Open a node on a data dir for the block, then close its store."""
    node = Node(Store(data_dir), HybridClock(wall), retention_ms=RETENTION_MS)
    try:
        yield node
    finally:
        node.store.close()


def idempotency(key: str) -> Idempotency:
    """Return a fresh idempotency key with the fingerprint of an increment."""
    # The fingerprint as nixie.api makes it for `POST /{key}`.
    digest = hashlib.sha256(repr(("POST", key)).encode()).hexdigest()
    return Idempotency(str(uuid.uuid4()), digest[:32])


def fill(node: Node, key: str, count: int, replica: str) -> None:
    """Merge `count` receipts of increments by `replica` into a counter at once.

    They are what `Node.increment` records for a step of 1, UUID keys
    included, without paying for `count` writes that each store them all.
    """
    value = node.get(key).value
    fingerprint = idempotency(key).fingerprint
    receipts = {
        str(uuid.uuid4()): Receipt(
            Stamp(node.clock.now(), replica),
            1,
            fingerprint,
            200,
            str(value + i + 1),
            STEP_HEADERS,
        )
        for i in range(count)
    }
    node.merge({key: CounterState(receipts=receipts)}, replica)


def cpu_ms(action: Callable[[], object]) -> float:
    """Run an action once and return the CPU time it took, in milliseconds."""
    started = time.process_time_ns()
    action()
    return (time.process_time_ns() - started) / 1e6


# 1. Storage


def storage(data_dir: Path) -> dict[str, int]:
    """Describe a closed node's SQLite file: row bytes, file size, free pages."""
    path = data_dir / DB_NAME
    with closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as db:
        (rows,) = db.execute("SELECT sum(length(CAST(state AS BLOB))) FROM counters")
        # Receipts have rows of their own, keyed by counter and idempotency key.
        (receipts,) = db.execute(
            "SELECT coalesce(sum(length(CAST(idempotency_key AS BLOB)) "
            "+ length(CAST(receipt AS BLOB))), 0) FROM receipts"
        )
        (free,) = db.execute("PRAGMA freelist_count")
    return {
        "row_bytes": rows[0] + receipts[0],
        "file_bytes": path.stat().st_size,
        "free_pages": free[0],
    }


def wal_bytes(data_dir: Path) -> int:
    """Return the size of a running node's write-ahead log."""
    wal = data_dir / f"{DB_NAME}-wal"
    return wal.stat().st_size if wal.exists() else 0


def write_all(node: Node, keys: list[str], count: int, keyed: bool) -> None:
    """Make `count` increments, round robin over `keys`, with keys or without."""
    for i in range(count):
        key = keys[i % len(keys)]
        node.increment(key, idempotency(key) if keyed else None)


def storage_run(root: Path, counters: int, writes: int) -> dict[str, Any]:
    """Compare plain writes, keyed ones, and the keyed ones folded and purged."""
    stages: dict[str, Any] = {}
    wall = FakeWall()
    for keyed in (False, True):
        with opened(root / ("keyed" if keyed else "plain"), wall) as node:
            keys = [node.create()[0] for _ in range(counters)]
            write_all(node, keys, writes, keyed)
            wal = wal_bytes(node.store.data_dir)
        stages["idempotent" if keyed else "plain"] = {
            **storage(node.store.data_dir),
            "wal_bytes_while_open": wal,
        }

    # Fold the keyed writes once the window has passed, purge them once
    # twice the window has.
    data_dir = root / "keyed"
    for stage, upkeep in (
        ("folded", Node.fold_receipts),
        ("purged", Node.purge_receipts),
    ):
        wall.millis += RETENTION_MS + 1
        with opened(data_dir, wall) as node:
            seconds = -time.process_time()
            handled = upkeep(node)
            seconds += time.process_time()
        stages[stage] = {**storage(data_dir), "receipts": handled, "cpu_s": seconds}

    plain = stages["plain"]["row_bytes"]
    for figures in stages.values():
        figures["row_bytes_over_plain_per_write"] = (
            figures["row_bytes"] - plain
        ) / writes
    return stages


# 2. Gossip


async def gossip_run(increments: int, receipt_counts: list[int]) -> dict[str, Any]:
    """Count the bytes of rounds carrying increments, and of quorum reads."""
    with tempfile.TemporaryDirectory() as root:
        async with in_process_cluster(Path(root)) as cluster:
            a = await cluster.add()
            await cluster.add(peers=[a.url])
            return {
                "round_bytes": await round_bytes(cluster, increments),
                "quorum_reads": await quorum_reads(cluster, receipt_counts),
            }


async def round_bytes(cluster: Cluster, increments: int) -> dict[str, int]:
    """Return the bytes of one round of the first node after K increments."""
    a, b = cluster.nodes
    keys = [a.node.create()[0] for _ in range(increments)]
    await converge(cluster)

    sizes: dict[str, int] = {}
    for keyed in (False, True):
        for layout, targets in (("spread", keys), ("one counter", keys[:1])):
            for i in range(increments):
                key = targets[i % len(targets)]
                headers = {"Idempotency-Key": str(uuid.uuid4())} if keyed else {}
                response = await a.client.post(f"/{key}", headers=headers)
                expect(response, 200)

            before = cluster.network.bytes_sent
            await a.round()
            sizes[f"{'idempotent' if keyed else 'plain'}, {layout}"] = (
                cluster.network.bytes_sent - before
            )
            await b.round()  # b's acknowledgement, not measured
    return sizes


async def quorum_reads(cluster: Cluster, receipt_counts: list[int]) -> dict[int, Any]:
    """Return the bytes and time of one quorum read, by receipts in its counter."""
    a = cluster.nodes[0]
    peer = new_replica_id()
    reads = {}
    for count in receipt_counts:
        key = a.node.create()[0]
        fill(a.node, key, count, peer)
        await converge(cluster)

        before = cluster.network.bytes_sent
        started = time.perf_counter()
        response = await a.client.get(
            f"/{key}", headers={"Nixie-Consistency": "quorum"}
        )
        elapsed_ms = 1000 * (time.perf_counter() - started)
        expect(response, 200)
        reads[count] = {
            "bytes": cluster.network.bytes_sent - before,
            "wall_ms": elapsed_ms,
        }
    return reads


async def converge(cluster: Any) -> None:
    """Run rounds until the nodes agree, then two more to settle acknowledgements."""
    while not cluster.converged():
        await cluster.rounds()
    await cluster.rounds(2)


def expect(response: Any, status: int) -> None:
    """Fail the benchmark unless an answer has the status it should."""
    if response.status_code != status:
        raise RuntimeError(
            f"expected {status}, got {response.status_code}: {response.text}"
        )


# 3. CPU per write


def write_costs(root: Path, receipts: int, counters: int) -> dict[str, Any]:
    """Time one write of each kind, a read and a merge on counters with receipts.

    Each of `counters` counters holds `receipts` receipts made on a peer and
    takes one plain and one keyed increment, in alternating order, so every
    figure is taken at the same number of receipts.
    """
    peer = new_replica_id()
    samples: dict[str, list[float]] = {
        "plain": [],
        "idempotent": [],
        "read": [],
        "merge": [],
    }
    with opened(root / f"writes-{receipts}", FakeWall()) as node:
        keys = [node.create()[0] for _ in range(counters)]
        for key in keys:
            fill(node, key, receipts, peer)
        state_bytes = len(codec.canonical(node.get(keys[0])).encode())

        for i, key in enumerate(keys):
            plain = ("plain", partial(node.increment, key))
            keyed = ("idempotent", partial(node.increment, key, idempotency(key)))
            for kind, write in (plain, keyed) if i % 2 else (keyed, plain):
                samples[kind].append(cpu_ms(write))
            samples["read"].append(cpu_ms(partial(read_value, node, key)))

            # A peer's keyed increment, as gossip delivers it.
            receipt = Receipt(
                Stamp(node.clock.now(), peer), 1, "0" * 32, 200, "1", STEP_HEADERS
            )
            delta = CounterState(receipts={str(uuid.uuid4()): receipt})
            samples["merge"].append(cpu_ms(partial(node.merge, {key: delta}, peer)))

    return {
        "receipts": receipts,
        "state_bytes": state_bytes,
        "median_cpu_ms": {k: statistics.median(v) for k, v in samples.items()},
        "samples": counters,
    }


def read_value(node: Node, key: str) -> int:
    """Read a counter's value, as a GET does."""
    return node.get(key).value


# 4. Upkeep


def fold_cost(root: Path, receipts: int, spread: bool) -> dict[str, float]:
    """Fold this node's own expired receipts; return CPU seconds and bytes written."""
    wall = FakeWall()
    with opened(root / f"fold-{receipts}-{spread}", wall) as node:
        if spread:
            for _ in range(receipts):
                fill(node, node.create()[0], 1, node.replica_id)
        else:
            fill(node, node.create()[0], receipts, node.replica_id)
        wall.millis += RETENTION_MS + 1

        written = -bytes_written()
        seconds = -time.process_time()
        folded = node.fold_receipts()
        seconds += time.process_time()
        written += bytes_written()
    if folded != receipts:
        raise RuntimeError(f"folded {folded} receipts of {receipts}")
    return {"cpu_s": seconds, "bytes_written": written}


def bytes_written() -> int:
    """Return the bytes this process has passed to write() so far (Linux)."""
    for line in Path("/proc/self/io").read_text().splitlines():
        name, _, value = line.partition(":")
        if name == "wchar":
            return int(value)
    return 0


# Report


def storage_table(results: dict[str, Any], writes: int) -> list[str]:
    """Lay out the storage figures, one line a stage."""
    lines = [
        f"storage after {writes} increments (rows: the counters' and receipts' JSON; "
        "file: after close)",
        f"{'layout':<13}{'stage':<12}{'row bytes':>11}{'+B/write':>10}"
        f"{'file bytes':>12}{'free pages':>12}{'WAL open':>10}{'CPU s':>8}",
    ]
    for layout, stages in results.items():
        for stage, figures in stages.items():
            wal = figures.get("wal_bytes_while_open")
            cpu = figures.get("cpu_s")
            lines.append(
                f"{layout:<13}{stage:<12}{figures['row_bytes']:>11,}"
                f"{figures['row_bytes_over_plain_per_write']:>10.1f}"
                f"{figures['file_bytes']:>12,}{figures['free_pages']:>12,}"
                f"{'' if wal is None else f'{wal:,}':>10}"
                f"{'' if cpu is None else f'{cpu:.3f}':>8}"
            )
            layout = ""
    return lines


def gossip_table(results: dict[str, Any], increments: int) -> list[str]:
    """Lay out the bytes of gossip rounds and of quorum reads."""
    lines = [f"one gossip round to one peer after {increments} increments"]
    for name, size in results["round_bytes"].items():
        lines.append(f"  {name:<24}{size:>10,} B{size / increments:>8.1f} B/increment")
    lines.append("one quorum read (2 nodes), by receipts in the counter")
    for count, read in results["quorum_reads"].items():
        lines.append(
            f"  {count:>6} receipts{read['bytes']:>16,} B{read['wall_ms']:>10.1f} ms"
        )
    return lines


def write_table(results: list[dict[str, Any]]) -> list[str]:
    """Lay out the CPU medians per write, by receipts already held."""
    lines = [
        "CPU ms per operation on a counter holding R receipts (medians)",
        f"{'R':>7}{'state bytes':>13}{'plain inc':>11}{'keyed inc':>11}"
        f"{'keyed/plain':>13}{'read':>9}{'merge':>9}",
    ]
    for row in results:
        cpu = row["median_cpu_ms"]
        lines.append(
            f"{row['receipts']:>7,}{row['state_bytes']:>13,}{cpu['plain']:>11.3f}"
            f"{cpu['idempotent']:>11.3f}{cpu['idempotent'] / cpu['plain']:>13.2f}"
            f"{cpu['read']:>9.3f}{cpu['merge']:>9.3f}"
        )
    return lines


def fold_table(results: dict[int, dict[str, dict[str, float]]]) -> list[str]:
    """Lay out the CPU seconds and bytes written of folding, by receipts."""
    lines = [
        "Node.fold_receipts: CPU s and MB written",
        f"{'R':>7}{'one counter':>13}{'MB':>10}{'spread':>10}{'MB':>8}",
    ]
    for count, layouts in results.items():
        one, spread = layouts["one counter"], layouts["spread"]
        lines.append(
            f"{count:>7,}{one['cpu_s']:>13.3f}{one['bytes_written'] / 1e6:>10.1f}"
            f"{spread['cpu_s']:>10.3f}{spread['bytes_written'] / 1e6:>8.1f}"
        )
    return lines


def machine() -> dict[str, Any]:
    """Describe where and on what the figures were measured."""
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()
    return {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "commit": commit or None,
        "cores": len(os.sched_getaffinity(0)),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "load_average_1min_at_start": os.getloadavg()[0],
    }


def counts(text: str) -> list[int]:
    """Parse a comma-separated list of counts, for the command line."""
    values = [int(part) for part in text.split(",") if part.strip()]
    if not values or min(values) < 0:
        raise argparse.ArgumentTypeError(f"expected counts like 0,100,1000: {text}")
    return values


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Read the command line."""
    parser = argparse.ArgumentParser(
        prog="python -m benchmark.idempotency_cost",
        description=__doc__.splitlines()[0],
    )
    parser.add_argument(
        "--writes",
        type=int,
        default=1000,
        help="increments for the storage figures (default 1000)",
    )
    parser.add_argument(
        "--increments",
        type=int,
        default=100,
        help="increments carried by the measured gossip round (default 100)",
    )
    parser.add_argument(
        "--receipts",
        type=counts,
        default=[0, 100, 1000, 10_000],
        help="receipts already held, for CPU per write and quorum reads "
        "(default 0,100,1000,10000)",
    )
    parser.add_argument(
        "--samples",
        type=int,
        default=20,
        help="counters per receipt count, one write of each kind each (default 20)",
    )
    parser.add_argument(
        "--fold",
        type=counts,
        default=[100, 1000, 10_000],
        help="receipts to fold, on one counter and spread over as many "
        "(default 100,1000,10000)",
    )
    parser.add_argument(
        "--output",
        type=Path,
        help="JSON file for the figures "
        "(default benchmark/results/idempotency-cost-<UTC time>.json)",
    )
    args = parser.parse_args(argv)
    if min(args.writes, args.increments, args.samples) < 1:
        parser.error("--writes, --increments and --samples must be at least 1")
    return args


def main(argv: list[str] | None = None) -> None:
    """Measure everything, print the tables and save the figures."""
    args = parse_args(argv)
    host = machine()
    report: dict[str, Any] = {"machine": host, "retention_ms": RETENTION_MS}

    with tempfile.TemporaryDirectory(prefix="nixie-idempotency-") as tmp:
        root = Path(tmp)
        report["storage"] = {
            "one counter": storage_run(root / "one", 1, args.writes),
            "spread": storage_run(root / "spread", args.writes, args.writes),
        }
        print("\n".join(storage_table(report["storage"], args.writes)), "\n")

        report["gossip"] = asyncio.run(gossip_run(args.increments, args.receipts))
        print("\n".join(gossip_table(report["gossip"], args.increments)), "\n")

        report["writes"] = [
            write_costs(root, count, args.samples) for count in args.receipts
        ]
        print("\n".join(write_table(report["writes"])), "\n")

        report["fold"] = {
            count: {
                "one counter": fold_cost(root, count, spread=False),
                "spread": fold_cost(root, count, spread=True),
            }
            for count in args.fold
        }
        print("\n".join(fold_table(report["fold"])), "\n")

    host["load_average_1min_at_end"] = os.getloadavg()[0]
    print(
        f"load average {host['load_average_1min_at_start']:.2f} at the start, "
        f"{host['load_average_1min_at_end']:.2f} at the end, on {host['cores']} cores"
    )
    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y%m%dT%H%M%SZ")
    output = args.output or RESULTS_DIR / f"idempotency-cost-{stamp}.json"
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(report, indent=2) + "\n")
    print(f"raw figures: {output}")


if __name__ == "__main__":
    main()
