"""Measure how soon a local 3-node cluster agrees again after a burst of writes.

Run it from the repository root as ``python -m benchmark.convergence``. It
starts three fresh nodes, creates a few counters and waits until the cluster
agrees. Then, burst after burst, a few concurrent clients send increments to
random nodes and random counters; once the burst's last write is acknowledged
a timer starts, and every node's whole-state digest is read every few
milliseconds until all are equal. Equal digests mean equal states, and since
every node holds the writes it acknowledged, equal states hold every write.

At the end every counter is read on every node and compared with the number
of increments the nodes acknowledged for it.
"""

import argparse
import collections
import datetime
import functools
import json
import logging
import os
import platform
import random
import signal
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx

from benchmark.local_cluster import add_gossip_interval_option, running_cluster
from benchmark.run import BUSY_LOAD, RESULTS_DIR, BenchmarkError, add_output_options

logger = logging.getLogger(__name__)

COUNTERS = 50
BURSTS = 100
BURST_WRITES = 200  # increments per burst
CLIENTS = 8  # concurrent writers in a burst
POLL_INTERVAL = 0.005  # seconds between two reads of the digests
CONVERGE_TIMEOUT = 10.0  # seconds a burst gets to converge
REQUEST_TIMEOUT = 5.0  # seconds for one HTTP request
TARGET_INTERVALS = 3.0  # p99 convergence time the cluster should meet
PERCENTILES = (50, 90, 99)


def fetch_digests(
    client: httpx.Client, pool: ThreadPoolExecutor, urls: list[str]
) -> list[str]:
    """Read every node's whole-state digest, concurrently."""

    def fetch(url: str) -> str:
        reply = client.get(f"{url}/_nixie/cluster")
        reply.raise_for_status()
        digest: str = reply.json()["digest"]
        return digest

    return list(pool.map(fetch, urls))


def time_to_converge(
    client: httpx.Client, pool: ThreadPoolExecutor, urls: list[str]
) -> tuple[float | None, int]:
    """Poll the digests until they agree; return the seconds taken and the polls.

    The seconds are None when the cluster did not agree within the timeout.
    """
    started = time.perf_counter()
    next_poll = started
    polls = 0
    while True:
        seen = fetch_digests(client, pool, urls)
        polls += 1
        elapsed = time.perf_counter() - started
        if len(set(seen)) == 1:
            return elapsed, polls
        if elapsed > CONVERGE_TIMEOUT:
            return None, polls

        # Polls start on a fixed beat, so a slow reply does not stretch the
        # spacing of the ones after it.
        next_poll += POLL_INTERVAL
        time.sleep(max(0.0, next_poll - time.perf_counter()))


def create_counters(client: httpx.Client, urls: list[str], count: int) -> list[str]:
    """Create counters starting at 0, spread over the nodes; return their keys."""
    keys = []
    for index in range(count):
        reply = client.post(f"{urls[index % len(urls)]}/", content=b"0")
        if reply.status_code != 201:
            raise BenchmarkError(f"POST / answered {reply.status_code}: {reply.text}")
        keys.append(reply.text.strip())
    return keys


def increment(client: httpx.Client, write: tuple[str, str]) -> str | None:
    """Send one increment; return None when acknowledged, else what went wrong."""
    url, key = write
    try:
        reply = client.post(f"{url}/{key}")
    except httpx.HTTPError as exc:
        return type(exc).__name__
    return None if reply.status_code == 200 else f"HTTP {reply.status_code}"


class Tally:
    """Count the increments the nodes acknowledged and those left in doubt."""

    def __init__(self) -> None:
        self.acked: collections.Counter[str] = collections.Counter()
        # A write that failed or timed out may still have been applied.
        self.doubtful: collections.Counter[str] = collections.Counter()
        self.errors: collections.Counter[str] = collections.Counter()

    def burst(
        self,
        client: httpx.Client,
        pool: ThreadPoolExecutor,
        writes: list[tuple[str, str]],
    ) -> None:
        """Send the writes concurrently and count them; return once all answered."""
        outcomes = pool.map(functools.partial(increment, client), writes)
        for (_, key), error in zip(writes, outcomes, strict=True):
            if error is None:
                self.acked[key] += 1
            else:
                self.doubtful[key] += 1
                self.errors[error] += 1


def verify(
    client: httpx.Client, urls: list[str], keys: list[str], tally: Tally
) -> list[str]:
    """Read every counter on every node; return a line per wrong value."""
    wrong = []
    for url in urls:
        listed = client.get(f"{url}/").text.split()
        if sorted(listed) != sorted(keys):
            wrong.append(f"{url}/ lists {len(listed)} keys, expected {len(keys)}")
        for key in keys:
            reply = client.get(f"{url}/{key}")
            low = tally.acked[key]
            high = low + tally.doubtful[key]
            if reply.status_code != 200:
                wrong.append(f"{url}/{key} answered {reply.status_code}")
            elif not low <= int(reply.text) <= high:
                expected = f"{low}" if low == high else f"{low} to {high}"
                wrong.append(f"{url}/{key} = {reply.text}, expected {expected}")
    return wrong


def measure(
    urls: list[str], args: argparse.Namespace, rng: random.Random
) -> dict[str, Any]:
    """Run the bursts against a running cluster and return every figure."""
    tally = Tally()
    bursts = []

    # Threads with blocking clients rather than coroutines: here httpx's async
    # client spends about 2.5 ms of CPU per request against 1 ms for the
    # blocking one, which would make the client, not the cluster, the limit.
    limits = httpx.Limits(max_connections=2 * (args.clients + len(urls)))
    with (
        httpx.Client(trust_env=False, timeout=REQUEST_TIMEOUT, limits=limits) as client,
        ThreadPoolExecutor(max(args.clients, len(urls))) as pool,
    ):
        keys = create_counters(client, urls, args.counters)
        initial, _ = time_to_converge(client, pool, urls)
        if initial is None:
            raise BenchmarkError(f"the {args.counters} new counters never converged")
        logger.info("%d counters created and converged", len(keys))

        for number in range(1, args.bursts + 1):
            # A random pause puts each burst's end at a random point of the
            # nodes' gossip rounds, instead of a phase fixed by the loop.
            time.sleep(rng.uniform(0.0, args.gossip_interval))
            writes = [(rng.choice(urls), rng.choice(keys)) for _ in range(args.writes)]
            started = time.perf_counter()
            tally.burst(client, pool, writes)
            written = time.perf_counter() - started
            seconds, polls = time_to_converge(client, pool, urls)
            bursts.append({"burst_s": written, "converged_s": seconds, "polls": polls})
            if seconds is None:
                logger.warning("burst %d did not converge", number)
            elif number % 10 == 0:
                logger.info(
                    "burst %d/%d: %d writes in %.0f ms, converged in %.1f ms "
                    "(%d polls)",
                    number,
                    args.bursts,
                    args.writes,
                    1000 * written,
                    1000 * seconds,
                    polls,
                )

        # A cluster that never agreed may still be catching up; give it one
        # more bounded wait so the check below reports values, not lag.
        time_to_converge(client, pool, urls)
        wrong = verify(client, urls, keys, tally)

    return {
        "nodes": len(urls),
        "bursts": bursts,
        "acknowledged": sum(tally.acked.values()),
        "doubtful": sum(tally.doubtful.values()),
        "errors": dict(tally.errors),
        "wrong_values": wrong,
    }


def percentile(values: list[float], pct: float) -> float:
    """Return the pct-th percentile, interpolating between closest ranks."""
    ordered = sorted(values)
    rank = (len(ordered) - 1) * pct / 100
    low = int(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def summarise(bursts: list[dict[str, Any]], interval: float) -> dict[str, Any]:
    """Reduce the bursts to percentiles, in ms and in gossip intervals."""
    done = [b for b in bursts if b["converged_s"] is not None]
    figures: dict[str, Any] = {
        "bursts": len(bursts),
        "timed_out": len(bursts) - len(done),
        "burst_ms_median": 1000 * statistics.median(b["burst_s"] for b in bursts),
    }
    if not done:
        return figures

    times = [b["converged_s"] for b in done]
    points = {f"p{p}": percentile(times, p) for p in PERCENTILES}
    points["max"] = max(times)
    points["mean"] = statistics.fmean(times)
    figures["ms"] = {name: 1000 * value for name, value in points.items()}
    figures["intervals"] = {name: value / interval for name, value in points.items()}

    # The first poll goes out at once, so a time is known to within one
    # spacing between polls, which the replies' latency can stretch.
    spacings = [b["converged_s"] / (b["polls"] - 1) for b in done if b["polls"] > 1]
    if spacings:
        figures["poll_spacing_ms_median"] = 1000 * statistics.median(spacings)
    return figures


def format_table(figures: dict[str, Any], interval: float) -> str:
    """Lay out the percentiles as text."""
    names = [f"p{p}" for p in PERCENTILES] + ["max", "mean"]
    header = f"{'':<16}" + "".join(f"{name:>9}" for name in names)
    lines = [header, "-" * len(header)]
    if "ms" in figures:
        lines.append(
            f"{'ms':<16}" + "".join(f"{figures['ms'][n]:>9.1f}" for n in names)
        )
        lines.append(
            f"{f'intervals ({interval:g} s)':<16}"
            + "".join(f"{figures['intervals'][n]:>9.2f}" for n in names)
        )
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Read the command line."""
    parser = argparse.ArgumentParser(
        prog="python -m benchmark.convergence", description=__doc__.splitlines()[0]
    )
    parser.add_argument(
        "--bursts", type=int, default=BURSTS, help=f"bursts (default {BURSTS})"
    )
    parser.add_argument(
        "--writes",
        type=int,
        default=BURST_WRITES,
        help=f"increments per burst (default {BURST_WRITES})",
    )
    parser.add_argument(
        "--counters",
        type=int,
        default=COUNTERS,
        help=f"counters the writes spread over (default {COUNTERS})",
    )
    parser.add_argument(
        "--clients",
        type=int,
        default=CLIENTS,
        help=f"concurrent writers in a burst (default {CLIENTS})",
    )
    add_gossip_interval_option(parser)
    parser.add_argument("--seed", type=int, help="seed of the random choices")
    add_output_options(parser, "convergence")
    args = parser.parse_args(argv)
    for name in ("bursts", "writes", "counters", "clients"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be at least 1")
    return args


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark, print the table, save the figures; return the exit code.

    Exit 0 when every value was right, 1 when a value was wrong or a burst
    never converged, 2 when the cluster could not be run, 130 when interrupted.
    """
    args = parse_args(argv)
    # `timeout` and supervisors send SIGTERM: unwind as on Ctrl-C, so the
    # nodes started here are stopped on the way out.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(message)s",
    )
    # httpx logs every request at INFO: thousands of lines per burst.
    logging.getLogger("httpx").setLevel(logging.WARNING)

    load = os.getloadavg()[0]
    if load > BUSY_LOAD:
        logger.warning("load average is %.2f: expect noisy figures", load)
    seed = args.seed if args.seed is not None else random.randrange(2**32)
    started = datetime.datetime.now(datetime.UTC)

    try:
        with (
            tempfile.TemporaryDirectory(prefix="nixie-convergence-") as tmp,
            running_cluster(Path(tmp), gossip_interval=args.gossip_interval) as nodes,
        ):
            run = measure([n.url for n in nodes], args, random.Random(seed))
    except (BenchmarkError, httpx.HTTPError) as exc:
        logger.error("benchmark failed: %s", exc)
        return 2
    except KeyboardInterrupt:
        logger.error("interrupted; every node started was stopped")
        return 130

    figures = summarise(run["bursts"], args.gossip_interval)
    print(format_table(figures, args.gossip_interval))
    print(
        f"{figures['bursts']} bursts of {args.writes} increments over "
        f"{args.counters} counters, {args.clients} writers; "
        f"{figures['timed_out']} did not converge within {CONVERGE_TIMEOUT:.0f} s"
    )
    print(
        f"median burst {figures['burst_ms_median']:.0f} ms; digests read every "
        f"{figures.get('poll_spacing_ms_median', float('nan')):.1f} ms (median)"
    )
    met = "intervals" in figures and (
        figures["timed_out"] == 0 and figures["intervals"]["p99"] <= TARGET_INTERVALS
    )
    print(
        f"target p99 <= {TARGET_INTERVALS:g} gossip intervals: "
        f"{'met' if met else 'MISSED'}"
    )
    print(
        f"values: {run['acknowledged']} increments acknowledged, "
        f"{run['doubtful']} in doubt; "
        f"{len(run['wrong_values'])} wrong values on "
        f"{run['nodes']} nodes x {args.counters} counters"
    )
    if run["errors"]:
        print(f"  failed writes: {run['errors']}")
    for line in run["wrong_values"][:20]:
        print(f"  {line}")

    report = {
        "machine": {
            "date": started.isoformat(timespec="seconds"),
            "cores": len(os.sched_getaffinity(0)),
            "platform": platform.platform(),
            "python": platform.python_version(),
            "load_average_1min_at_start": load,
        },
        "settings": {**vars(args), "output": None, "seed": seed},
        "target_intervals": TARGET_INTERVALS,
        "target_met": met,
        "convergence": figures,
        **run,
    }
    stamp = started.strftime("%Y%m%dT%H%M%SZ")
    output = args.output or RESULTS_DIR / f"convergence-{stamp}.json"
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(report, indent=2) + "\n")
    print(f"raw figures: {output}")

    if run["wrong_values"] or figures["timed_out"]:
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
