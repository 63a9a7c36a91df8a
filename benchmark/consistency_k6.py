"""Measure read-your-writes and consistency levels across a local 3-node cluster.

Run it from the repository root as ``python -m benchmark.consistency_k6``.
Every run starts a fresh local cluster and runs ``benchmark/script.js`` once,
with every read sent to another node than its increment, in one scenario:

- ``plain``: nothing more. The read misses the increment until gossip has
  carried it over, so exact `counter match` misses measure replication lag.
- ``context``: the read carries the increment's ``Nixie-Context`` token, so
  the node it reaches must first catch up with the increment.
- ``idempotent``: as ``context``, and every increment carries a fresh
  ``Idempotency-Key``, so it leaves a receipt in the counter's state.
- ``quorum`` and ``all``: ``Nixie-Consistency`` at that level on both the
  increment and the read, no token. A quorum write and a quorum read share a
  node, so the read sees the increment.

In the last four each virtual user increments counters of its own
(``NIXIE_OWN_KEYS``), so no other user's increment comes in between, and the
read must see the increment: no read may fall behind its increment's answer
(`read >= increment`). With a token every request of a counter, increments
included, carries the token of the last answer about it, so the node taking
an increment has first seen the previous one, and every read must equal its
increment's answer exactly (`counter match`). At the quorum and all levels
the node taking an increment may not have merged the previous one yet (the
quorum that holds it may not include that node), and answers the value it
sees; the read that follows then is ahead of that answer. A miss of a
promised check fails the run. In ``plain`` the users share the counters, as
in the single-node workload.

Rounds rotate the order of the scenarios, and the table shows medians. CPU
per request sums the three nodes, gossip included.
"""

import argparse
import logging
import os
import sys
import time
from dataclasses import dataclass
from typing import Any

from benchmark.cluster_k6 import measure_cluster
from benchmark.local_cluster import add_gossip_interval_option
from benchmark.run import (
    MATCH_CHECK,
    BenchmarkError,
    add_output_options,
    add_rounds_option,
    aggregate,
    cell,
    exit_status,
    median_or_none,
    save_report,
    start_run,
)

logger = logging.getLogger(__name__)

COVERS_CHECK = "read >= increment"  # made by script.js when the read must see it
READ_PLACES = ("equal", "ahead", "behind")


@dataclass(frozen=True, slots=True)
class Scenario:
    """One way of running the workload: its name and the script's options."""

    name: str
    env: dict[str, str]
    reads_own_writes: bool  # whether every read must see its increment
    exact: bool = False  # whether every read must equal its increment's answer


ELSEWHERE = {"NIXIE_READ_ELSEWHERE": "1"}
OWN = {**ELSEWHERE, "NIXIE_OWN_KEYS": "1"}
CONTEXT = {**OWN, "NIXIE_CARRY_CONTEXT": "1"}
SCENARIOS = (
    Scenario("plain", ELSEWHERE, reads_own_writes=False),
    Scenario("context", CONTEXT, reads_own_writes=True, exact=True),
    Scenario("idempotent", {**CONTEXT, "NIXIE_IDEMPOTENT": "1"}, True, True),
    Scenario("quorum", {**OWN, "NIXIE_CONSISTENCY": "quorum"}, True),
    Scenario("all", {**OWN, "NIXIE_CONSISTENCY": "all"}, True),
)
BY_NAME = {scenario.name: scenario for scenario in SCENARIOS}


def measure_scenario(scenario: Scenario, gossip_interval: float) -> dict[str, Any]:
    """Run the workload once in a scenario, on a fresh cluster."""
    run = measure_cluster(gossip_interval, scenario.env, scenario.name)
    summary = run["k6_summary"]
    run["read_vs_increment"] = {
        place: summary.get("read_vs_increment", {}).get(place, 0)
        for place in READ_PLACES
    }
    by_op = summary["workload"].get("http_req_duration_ms_by_op", {})
    run["p95_ms_by_op"] = {op: trend.get("p(95)") for op, trend in by_op.items()}
    return run


def run_rounds(
    scenarios: list[Scenario], rounds: int, gossip_interval: float
) -> dict[str, list[dict[str, Any]]]:
    """Measure every scenario once per round and return every run, by name."""
    runs: dict[str, list[dict[str, Any]]] = {s.name: [] for s in scenarios}

    # Rotate the order, so each scenario takes each place in turn and a
    # machine that drifts favours none.
    for round_no in range(1, rounds + 1):
        shift = (round_no - 1) % len(scenarios)
        for scenario in scenarios[shift:] + scenarios[:shift]:
            started = time.monotonic()
            run = measure_scenario(scenario, gossip_interval)
            runs[scenario.name].append({"round": round_no, **run})
            logger.info(
                "round %d/%d %s: %.1f req/s, p95 %.2f ms, CPU %s ms/req, "
                "read vs increment %s (%.1f s)",
                round_no,
                rounds,
                scenario.name,
                run["requests_per_s"],
                run["p95_ms"],
                cell(run["server_cpu_ms_per_request"], ".3f"),
                run["read_vs_increment"],
                time.monotonic() - started,
            )

    return runs


def aggregate_scenario(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Reduce a scenario's rounds to medians and summed counts."""
    result = aggregate(runs)
    result["read_vs_increment"] = {
        place: sum(r["read_vs_increment"][place] for r in runs) for place in READ_PLACES
    }
    result["p95_ms_by_op"] = {
        op: median_or_none([r["p95_ms_by_op"].get(op) for r in runs])
        for op in ("increment", "read")
    }
    return result


def status_counts(checks: dict[str, dict[str, int]]) -> str:
    """Sum the status checks (every check but the two value comparisons)."""
    status = [
        c for name, c in checks.items() if name not in (MATCH_CHECK, COVERS_CHECK)
    ]
    passed = sum(c["passes"] for c in status)
    failed = sum(c["fails"] for c in status)
    return f"{passed} ok, {failed} failed"


def fails_of(counts: dict[str, int] | None) -> str:
    """Describe a check's failures out of its tries, or say it was not made."""
    if counts is None:
        return "not promised"
    tried = counts["passes"] + counts["fails"]
    return f"{counts['fails']} of {tried} failed"


def format_report(results: dict[str, dict[str, Any]]) -> str:
    """Lay out the medians and the exact check counts, one line a scenario."""
    header = (
        f"{'scenario':<11}{'req/s':>8}{'p95 ms':>8}{'inc p95':>9}{'read p95':>9}"
        f"{'CPU ms/req':>11}  {'status checks':<22}{'counter match':<22}"
        f"{'read >= increment':<20}{'behind/ahead':>12}"
    )
    lines = [header, "-" * len(header)]
    for name, agg in results.items():
        by_op = agg["p95_ms_by_op"]
        versus = agg["read_vs_increment"]
        lines.append(
            f"{name:<11}{agg['requests_per_s']:>8.1f}{agg['p95_ms']:>8.2f}"
            f"{cell(by_op['increment'], '.2f'):>9}{cell(by_op['read'], '.2f'):>9}"
            f"{cell(agg['server_cpu_ms_per_request'], '.3f'):>11}  "
            f"{status_counts(agg['checks']):<22}"
            f"{fails_of(agg['checks'].get(MATCH_CHECK)):<22}"
            f"{fails_of(agg['checks'].get(COVERS_CHECK)):<20}"
            f"{versus['behind']:>6}/{versus['ahead']:<5}"
        )
    lines.append(
        "\nbehind: reads that missed their increment; ahead: reads that also saw "
        "another\nvirtual user's increment of the same key, made in between"
    )
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Read the command line."""
    parser = argparse.ArgumentParser(
        prog="python -m benchmark.consistency_k6", description=__doc__.splitlines()[0]
    )
    add_rounds_option(parser, "scenario", "in rotating order")
    parser.add_argument(
        "--scenario",
        action="append",
        choices=list(BY_NAME),
        help="run only this scenario; repeat for several (default: all)",
    )
    add_gossip_interval_option(parser)
    add_output_options(parser, "consistency-k6")
    args = parser.parse_args(argv)
    return args


def main(argv: list[str] | None = None) -> int:
    """Run the scenarios, print the table, save the figures; return the exit code.

    Exit 0 when every status check passed and every read that had to see its
    increment did, 1 otherwise, 2 when a node or k6 could not be run, 130
    when interrupted.
    """
    args = parse_args(argv)
    host = start_run(args.verbose)

    scenarios = [BY_NAME[name] for name in args.scenario or BY_NAME]
    try:
        runs = run_rounds(scenarios, args.rounds, args.gossip_interval)
    except BenchmarkError as exc:
        logger.error("benchmark failed: %s", exc)
        return 2
    except KeyboardInterrupt:
        logger.error("interrupted; every node started was stopped")
        return 130

    results = {name: aggregate_scenario(rounds) for name, rounds in runs.items()}
    print(format_report(results))

    host["load_average_1min_at_end"] = os.getloadavg()[0]
    report = {
        "machine": host,
        "rounds": args.rounds,
        "gossip_interval_s": args.gossip_interval,
        "scenarios": {
            s.name: {
                "env": s.env,
                "reads_own_writes": s.reads_own_writes,
                "exact": s.exact,
            }
            for s in scenarios
        },
        "results": results,
        "runs": runs,
    }
    save_report(report, args.output, "consistency-k6")

    # Where a scenario promised that reads see their writes, a missed
    # `counter match` is as much a failure as a bad status.
    missed = {
        name: results[name]["checks"][MATCH_CHECK]["fails"]
        for name in results
        if BY_NAME[name].exact
        and results[name]["checks"].get(MATCH_CHECK, {}).get("fails")
    }
    if missed:
        logger.error("reads that did not match their increment: %s", missed)
        return 1
    return exit_status(results)


if __name__ == "__main__":
    sys.exit(main())
