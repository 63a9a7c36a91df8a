"""Run the k6 workload across a local 3-node cluster and on one node alone.

Run it from the repository root as ``python -m benchmark.cluster_k6``. Each
round measures one fresh Nixie node, as ``benchmark.run`` does, and a fresh
cluster of three nodes with every request of ``benchmark/script.js`` sent to
a random node, alternating the order from round to round; the table shows
the medians. Server CPU per request sums the CPU of all three nodes, gossip
included.

A read on another node than the increment's misses that increment until the
next gossip round has carried it there, so the cluster's `counter match`
misses measure replication lag; they are reported split by where the read
went, and are not an error.
"""

import argparse
import logging
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmark.local_cluster import (
    DEFAULT_NODES,
    ClusterNode,
    add_gossip_interval_option,
    running_cluster,
)
from benchmark.run import (
    BenchmarkError,
    add_output_options,
    add_rounds_option,
    aggregate,
    cell,
    cpu_seconds,
    exit_status,
    format_table,
    measure,
    run_figures,
    run_k6,
    save_report,
    start_run,
)

logger = logging.getLogger(__name__)

SINGLE = "1 node"
CLUSTER = f"{DEFAULT_NODES} nodes"
READ_PLACES = ("same", "other")  # read on the increment's node, or another


def total_cpu_seconds(nodes: list[ClusterNode]) -> float | None:
    """Return the CPU time all nodes have used, if Linux tells for each."""
    used = [cpu_seconds(node.process.pid) for node in nodes]
    return sum(u for u in used if u is not None) if None not in used else None


def measure_cluster(
    gossip_interval: float,
    extra_env: dict[str, str] | None = None,
    target: str = CLUSTER,
) -> dict[str, Any]:
    """Start a fresh cluster, run the workload across it once, and stop it.

    extra_env adds to the k6 script's environment (its NIXIE_* options);
    target names the run in errors.
    """
    with (
        tempfile.TemporaryDirectory(prefix="nixie-bench-cluster-") as tmp,
        running_cluster(Path(tmp), gossip_interval=gossip_interval) as nodes,
    ):
        before = total_cpu_seconds(nodes)
        summary = run_k6(",".join(node.url for node in nodes), Path(tmp), extra_env)
        after = total_cpu_seconds(nodes)

    cpu_used = after - before if before is not None and after is not None else None
    return run_figures(target, summary, cpu_used)


def measure_target(target: str, gossip_interval: float) -> dict[str, Any]:
    """Run the workload once against a fresh single node or cluster."""
    run = measure("nixie") if target == SINGLE else measure_cluster(gossip_interval)
    by_place = run["k6_summary"].get("counter_match_by_read_node", {})
    run["counter_match_by_read_node"] = {
        place: by_place.get(place, {"passes": 0, "fails": 0}) for place in READ_PLACES
    }
    return run


def run_rounds(rounds: int, gossip_interval: float) -> dict[str, list[dict[str, Any]]]:
    """Measure both targets once per round and return every run, by target."""
    targets = [SINGLE, CLUSTER]
    runs: dict[str, list[dict[str, Any]]] = {target: [] for target in targets}

    # Alternate the order, so a machine that drifts favours neither target.
    for round_no in range(1, rounds + 1):
        for target in targets if round_no % 2 else targets[::-1]:
            started = time.monotonic()
            run = measure_target(target, gossip_interval)
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


def aggregate_target(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Reduce a target's rounds like benchmark.run, adding matches by read node."""
    result = aggregate(runs)
    result["counter_match_by_read_node"] = {
        place: {
            outcome: sum(r["counter_match_by_read_node"][place][outcome] for r in runs)
            for outcome in ("passes", "fails")
        }
        for place in READ_PLACES
    }
    return result


def misses(counts: dict[str, int]) -> str:
    """Describe a pass and fail count as misses of tries, with the percentage."""
    tried = counts["passes"] + counts["fails"]
    if not tried:
        return "none tried"
    return f"{counts['fails']} of {tried} ({100.0 * counts['fails'] / tried:.2f} %)"


def format_report(results: dict[str, dict[str, Any]]) -> str:
    """Lay out the medians, the cluster/single ratios and the matches by read node."""
    lines = [format_table(results)]
    single, cluster = results[SINGLE], results[CLUSTER]
    ratio = []
    for figure in ("requests_per_s", "p95_ms", "server_cpu_ms_per_request"):
        numerator, denominator = cluster[figure], single[figure]
        ratio.append(numerator / denominator if numerator and denominator else None)
    lines.append(
        f"{'3n/1n':<11}{cell(ratio[0], '.2f'):>9}{cell(ratio[1], '.2f'):>9}"
        f"{cell(ratio[2], '.2f'):>12}"
    )

    lines.append("\ncounter match misses, by the node the read went to:")
    for target, agg in results.items():
        by_place = agg["counter_match_by_read_node"]
        lines.append(
            f"  {target:<8} same node: {misses(by_place['same'])}; "
            f"other node: {misses(by_place['other'])}"
        )
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Read the command line."""
    parser = argparse.ArgumentParser(
        prog="python -m benchmark.cluster_k6", description=__doc__.splitlines()[0]
    )
    add_rounds_option(parser, "target", "alternated")
    add_gossip_interval_option(parser)
    add_output_options(parser, "cluster-k6")
    args = parser.parse_args(argv)
    return args


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark, print the table, save the figures; return the exit code.

    Exit 0 when every status check passed, 1 when one failed, 2 when a server
    or k6 could not be run, 130 when interrupted.
    """
    args = parse_args(argv)
    host = start_run(args.verbose)

    try:
        runs = run_rounds(args.rounds, args.gossip_interval)
    except BenchmarkError as exc:
        logger.error("benchmark failed: %s", exc)
        return 2
    except KeyboardInterrupt:
        logger.error("interrupted; every node started was stopped")
        return 130

    results = {target: aggregate_target(rounds) for target, rounds in runs.items()}
    print(format_report(results))

    report = {
        "machine": host,
        "rounds": args.rounds,
        "gossip_interval_s": args.gossip_interval,
        "results": results,
        "runs": runs,
    }
    save_report(report, args.output, "cluster-k6")

    return exit_status(results)


if __name__ == "__main__":
    sys.exit(main())
