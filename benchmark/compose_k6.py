"""Run the k6 workload against the Docker Compose cluster, two ways.

Start the cluster first (``docker compose up -d --wait``), then run
``python -m benchmark.compose_k6`` from the repository root. Each round runs
``benchmark/script.js`` twice, in alternating order:

- ``3 nodes``: every request goes to a random one of the three published node
  ports, as a client that knows the nodes would spread its load;
- ``balancer``: every request goes to the HAProxy entry point, which hands
  it to the next healthy node in turn.

The cluster is not restarted between runs, so counters pile up (500 a run).
Server CPU per request sums the CPU of the three node containers' main
processes (gossip included), read from /proc on the host; it is blank when
the container processes are not visible, as on Docker Desktop.

Across nodes a read on another node than the increment's misses that
increment until gossip has carried it there, so `counter match` misses
measure replication lag and are not an error; the balancer sends nearly
every read to another node than its increment.
"""

import argparse
import logging
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from benchmark.cluster_k6 import READ_PLACES, aggregate_target, misses
from benchmark.run import (
    ROOT,
    BenchmarkError,
    add_output_options,
    add_rounds_option,
    cell,
    cpu_seconds,
    exit_status,
    find_executable,
    format_table,
    run_figures,
    run_k6,
    save_report,
    start_run,
)

logger = logging.getLogger(__name__)

SPREAD = "3 nodes"
BALANCER = "balancer"
NODE_SERVICES = ("nixie1", "nixie2", "nixie3")
DEFAULT_NODE_URLS = "http://127.0.0.1:7312,http://127.0.0.1:7313,http://127.0.0.1:7314"
DEFAULT_BALANCER_URL = "http://127.0.0.1:7310"
HEALTH_TIMEOUT = 5.0


def check_reachable(urls: list[str]) -> None:
    """Fail with a hint unless every URL's health endpoint answers 200."""
    for url in urls:
        status: int | None = None
        try:
            response = httpx.get(f"{url}/_nixie/health", timeout=HEALTH_TIMEOUT)
        except httpx.HTTPError as exc:
            reason = f"{type(exc).__name__}: {exc}"
        else:
            status = response.status_code
            reason = f"status {status}"
        if status != 200:
            raise BenchmarkError(
                f"{url} is not healthy ({reason}); start the cluster with "
                "`docker compose up -d --wait` first"
            )


def container_pids() -> list[int] | None:
    """Return the host PIDs of the node containers, or None if unknown."""
    pids = []
    for service in NODE_SERVICES:
        try:
            found = subprocess.run(
                [find_executable("docker"), "compose", "ps", "-q", service],
                cwd=ROOT,
                capture_output=True,
                text=True,
                timeout=30,
                check=True,
            )
            container = found.stdout.strip()
            inspected = subprocess.run(
                ["docker", "inspect", "-f", "{{.State.Pid}}", container],
                capture_output=True,
                text=True,
                timeout=30,
                check=True,
            )
            pids.append(int(inspected.stdout.strip()))
        except (BenchmarkError, OSError, ValueError, subprocess.SubprocessError):
            logger.debug("no host PID for %s", service, exc_info=True)
            return None
    return pids


def total_cpu_seconds(pids: list[int] | None) -> float | None:
    """Return the CPU time the processes have used, if Linux tells for each."""
    if pids is None:
        return None
    used = [cpu_seconds(pid) for pid in pids]
    return sum(u for u in used if u is not None) if None not in used else None


def measure(target: str, node_urls: list[str], balancer_url: str) -> dict[str, Any]:
    """Run the workload once through the target and return its figures."""
    urls = node_urls if target == SPREAD else [balancer_url]
    # Setup creates its counters through the first URL; the workload starts
    # only once every node lists all of them, so no read meets a 404.
    env = {"NIXIE_AWAIT_URLS": ",".join(node_urls)}
    pids = container_pids()
    with tempfile.TemporaryDirectory(prefix="nixie-bench-compose-") as tmp:
        before = total_cpu_seconds(pids)
        summary = run_k6(",".join(urls), Path(tmp), env)
        after = total_cpu_seconds(pids)
    cpu_used = after - before if before is not None and after is not None else None
    run = run_figures(target, summary, cpu_used)
    by_place = summary.get("counter_match_by_read_node", {})
    run["counter_match_by_read_node"] = {
        place: by_place.get(place, {"passes": 0, "fails": 0}) for place in READ_PLACES
    }
    return run


def run_rounds(
    rounds: int, node_urls: list[str], balancer_url: str
) -> dict[str, list[dict[str, Any]]]:
    """Measure both ways once per round and return every run, by target."""
    targets = [SPREAD, BALANCER]
    runs: dict[str, list[dict[str, Any]]] = {target: [] for target in targets}
    for round_no in range(1, rounds + 1):
        for target in targets if round_no % 2 else targets[::-1]:
            started = time.monotonic()
            run = measure(target, node_urls, balancer_url)
            runs[target].append({"round": round_no, **run})
            logger.info(
                "round %d/%d %s: %.1f req/s, p95 %.2f ms, CPU %s ms/req (%.1f s)",
                round_no,
                rounds,
                target,
                run["requests_per_s"],
                run["p95_ms"],
                cell(run["server_cpu_ms_per_request"], ".3f"),
                time.monotonic() - started,
            )
    return runs


def format_report(results: dict[str, dict[str, Any]]) -> str:
    """Lay out the medians and the counter match misses."""
    lines = [format_table(results), "\ncounter match misses:"]
    spread = results[SPREAD]["counter_match_by_read_node"]
    lines.append(
        f"  {SPREAD:<9} read on the increment's node: {misses(spread['same'])}; "
        f"on another: {misses(spread['other'])}"
    )
    balanced = results[BALANCER]["counter_match_by_read_node"]["same"]
    lines.append(f"  {BALANCER:<9} {misses(balanced)}")
    return "\n".join(lines)


def split_urls(text: str) -> list[str]:
    """Return the non-empty comma-separated URLs, without trailing slashes."""
    return [url.strip().rstrip("/") for url in text.split(",") if url.strip()]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Read the command line."""
    parser = argparse.ArgumentParser(
        prog="python -m benchmark.compose_k6", description=__doc__.splitlines()[0]
    )
    add_rounds_option(parser, "way", "alternated")
    parser.add_argument(
        "--nodes",
        default=DEFAULT_NODE_URLS,
        help=f"comma-separated node base URLs (default {DEFAULT_NODE_URLS})",
    )
    parser.add_argument(
        "--balancer",
        default=DEFAULT_BALANCER_URL,
        help=f"the load balancer's base URL (default {DEFAULT_BALANCER_URL})",
    )
    add_output_options(parser, "compose-k6")
    args = parser.parse_args(argv)
    args.nodes = split_urls(args.nodes)
    if not args.nodes:
        parser.error("--nodes names no URL")
    args.balancer = args.balancer.strip().rstrip("/")
    return args


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark, print the table, save the figures; return the exit code.

    Exit 0 when every status check passed, 1 when one failed, 2 when the
    cluster or k6 could not be used, 130 when interrupted.
    """
    args = parse_args(argv)
    host = start_run(args.verbose)

    try:
        check_reachable([*args.nodes, args.balancer])
        runs = run_rounds(args.rounds, args.nodes, args.balancer)
    except BenchmarkError as exc:
        logger.error("benchmark failed: %s", exc)
        return 2
    except KeyboardInterrupt:
        logger.error("interrupted")
        return 130

    results = {target: aggregate_target(rounds) for target, rounds in runs.items()}
    print(format_report(results))

    report = {
        "machine": host,
        "rounds": args.rounds,
        "nodes": args.nodes,
        "balancer": args.balancer,
        "results": results,
        "runs": runs,
    }
    save_report(report, args.output, "compose-k6")

    return exit_status(results)


if __name__ == "__main__":
    sys.exit(main())
