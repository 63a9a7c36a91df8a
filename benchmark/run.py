"""Run the k6 workload against a Nixie node and against the bare app, and compare.

Run it from the repository root as ``python -m benchmark.run``. Each round
starts a fresh server on a free loopback port, runs ``benchmark/script.js``
against it with k6 and stops it; the table shows the median over the rounds.
"""

import argparse
import contextlib
import datetime
import json
import logging
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx

logger = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "benchmark" / "script.js"
RESULTS_DIR = ROOT / "benchmark" / "results"
BIN_DIR = Path(sys.executable).parent

HOST = "127.0.0.1"
TARGETS = ("nixie", "bare")
MATCH_CHECK = "counter match"

STARTUP_TIMEOUT = 30.0  # seconds a server gets to answer GET /
STOP_TIMEOUT = 10.0  # seconds between SIGTERM and SIGKILL
K6_TIMEOUT = 300.0  # seconds for one k6 run, setup included
LOG_TAIL = 20  # lines of a log shown when something fails
BUSY_LOAD = 1.0  # 1-minute load average (half of 2 cores) that makes figures suspect


class BenchmarkError(Exception):
    """Report that a server or k6 could not be run to the end."""


def find_executable(name: str) -> str:
    """Return the path of a console script, preferring this interpreter's own."""
    beside = BIN_DIR / name
    if beside.exists():
        return str(beside)

    found = shutil.which(name)
    if found is None:
        raise BenchmarkError(f"{name} is not installed next to {sys.executable}")
    return found


def free_port() -> int:
    """Return a loopback TCP port that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
    return port


def log_tail(path: Path) -> str:
    """Return the last lines of a log file, for an error message."""
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return ""
    return "\n".join(lines[-LOG_TAIL:])


def server_command(target: str, port: int, data_dir: Path) -> list[str]:
    """Return the command line that serves a target on a port."""
    if target == "nixie":
        return [
            find_executable("nixie-cli"),
            "--host",
            HOST,
            "--port",
            str(port),
            "--data-dir",
            str(data_dir),
        ]

    # The flags spell out uvicorn's defaults, which are what nixie-cli runs
    # with: auto loop (uvloop), auto HTTP (httptools), one worker, and the
    # access log on at INFO, so both servers do the same logging work.
    return [
        sys.executable,
        "-m",
        "uvicorn",
        "benchmark.bare_app:app",
        "--host",
        HOST,
        "--port",
        str(port),
        "--loop",
        "auto",
        "--http",
        "auto",
        "--log-level",
        "info",
        "--access-log",
    ]


def wait_until_ready(proc: subprocess.Popen[bytes], url: str, log: Path) -> None:
    """Poll GET / until the server answers 200, giving up after a bounded wait."""
    deadline = time.monotonic() + STARTUP_TIMEOUT
    with httpx.Client(trust_env=False, timeout=1.0) as client:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise BenchmarkError(
                    f"server exited with {proc.returncode} before answering:\n"
                    f"{log_tail(log)}"
                )
            with contextlib.suppress(httpx.TransportError):
                if client.get(f"{url}/").status_code == 200:
                    return
            time.sleep(0.1)

    waited = f"server did not answer GET / within {STARTUP_TIMEOUT:.0f} s"
    raise BenchmarkError(f"{waited}:\n{log_tail(log)}")


def stop(proc: subprocess.Popen[bytes]) -> None:
    """Stop a child and its process group: SIGTERM first, SIGKILL if it lingers."""
    # The child leads its own process group (start_new_session), so signalling
    # the group also reaches anything it spawned, such as a wrapper's server.
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(STOP_TIMEOUT)
    except subprocess.TimeoutExpired:
        logger.warning("pid %d ignored SIGTERM, killing its group", proc.pid)

    # Even once the leader has gone, a member that ignored SIGTERM may linger.
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(STOP_TIMEOUT)


@contextlib.contextmanager
def running_server(
    target: str, workdir: Path
) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """Serve a target on a free port for the duration of the block.

    Yield the server's base URL and its process.
    """
    port = free_port()
    url = f"http://{HOST}:{port}"
    data_dir = workdir / "data"
    data_dir.mkdir()
    log = workdir / "server.log"
    command = server_command(target, port, data_dir)

    # nixie-cli reads NIXIE_* variables (peers, secret, data dir); the node
    # under test must run alone and with nothing but the flags given here.
    env = {k: v for k, v in os.environ.items() if not k.startswith("NIXIE_")}

    # Both servers write their log, access lines included, to a file, so the
    # logging costs the same for each; the file also explains a failed start.
    with log.open("wb") as out:
        proc = subprocess.Popen(
            command,
            cwd=ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=out,
            start_new_session=True,
        )
        try:
            wait_until_ready(proc, url, log)
            logger.debug("%s serving on %s (pid %d)", target, url, proc.pid)
            yield url, proc
        finally:
            stop(proc)


def cpu_seconds(pid: int) -> float | None:
    """Return the user plus system CPU time a process has used, if Linux tells."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None

    # The command name in parentheses may hold spaces; utime and stime are the
    # 12th and 13th fields after it, in clock ticks.
    fields = stat.rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run_k6(
    url: str, workdir: Path, extra_env: dict[str, str] | None = None
) -> dict[str, Any]:
    """Run the k6 script against base URLs and return its JSON summary.

    url is one base URL or several, comma-separated; extra_env adds to the
    script's environment.
    """
    summary_path = workdir / "summary.json"
    log = workdir / "k6.log"
    env = {
        **os.environ,
        **(extra_env or {}),
        "NIXIE_URLS": url,
        "NIXIE_SUMMARY": str(summary_path),
    }
    command = [find_executable("k6"), "run", "--quiet", "--no-usage-report"]

    with log.open("wb") as out:
        try:
            proc = subprocess.run(
                [*command, str(SCRIPT)],
                cwd=ROOT,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=out,
                timeout=K6_TIMEOUT,
                check=False,
            )
        except subprocess.TimeoutExpired as exc:
            raise BenchmarkError(f"k6 ran over {K6_TIMEOUT:.0f} s") from exc

    if proc.returncode != 0:
        raise BenchmarkError(f"k6 exited with {proc.returncode}:\n{log_tail(log)}")
    try:
        summary: dict[str, Any] = json.loads(summary_path.read_text())
    except (OSError, ValueError) as exc:
        raise BenchmarkError(f"k6 wrote no readable summary:\n{log_tail(log)}") from exc
    return summary


def measure(target: str) -> dict[str, Any]:
    """Start a fresh server for a target, run the workload once, and stop it."""
    with tempfile.TemporaryDirectory(prefix=f"nixie-bench-{target}-") as tmp:
        workdir = Path(tmp)
        with running_server(target, workdir) as (url, proc):
            cpu_before = cpu_seconds(proc.pid)
            summary = run_k6(url, workdir)
            cpu_after = cpu_seconds(proc.pid)

    cpu_used = None
    if cpu_before is not None and cpu_after is not None:
        cpu_used = cpu_after - cpu_before
    return run_figures(target, summary, cpu_used)


def run_figures(
    target: str, summary: dict[str, Any], cpu_used: float | None
) -> dict[str, Any]:
    """Return one run's figures from k6's summary and the server CPU seconds."""
    workload = summary["workload"]
    rate = workload["requests_per_s"]
    p95 = workload["http_req_duration_ms"].get("p(95)")
    if rate is None or p95 is None:
        raise BenchmarkError(f"k6 summary for {target} lacks req/s or p95")

    # Server CPU per request holds steadier than req/s when k6 and other
    # processes compete for the two cores; it covers setup's requests too.
    requests = summary["whole_run"]["http_reqs"]["count"]
    cpu_ms = None
    if cpu_used is not None and requests:
        cpu_ms = 1000.0 * cpu_used / requests

    return {
        "requests_per_s": rate,
        "p95_ms": p95,
        "server_cpu_ms_per_request": cpu_ms,
        "checks": summary["checks"],
        "k6_summary": summary,
    }


def median_or_none(values: list[float | None]) -> float | None:
    """Return the median, or None when any value is missing."""
    if not values or any(v is None for v in values):
        return None
    return statistics.median(v for v in values if v is not None)


def aggregate(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Reduce a target's rounds to medians and summed check counts."""
    checks: dict[str, dict[str, int]] = {}
    for run in runs:
        for name, counts in run["checks"].items():
            total = checks.setdefault(name, {"passes": 0, "fails": 0})
            total["passes"] += counts["passes"]
            total["fails"] += counts["fails"]

    match = checks.get(MATCH_CHECK, {"passes": 0, "fails": 0})
    tried = match["passes"] + match["fails"]

    return {
        "rounds": len(runs),
        "requests_per_s": statistics.median(r["requests_per_s"] for r in runs),
        "p95_ms": statistics.median(r["p95_ms"] for r in runs),
        "server_cpu_ms_per_request": median_or_none(
            [r["server_cpu_ms_per_request"] for r in runs]
        ),
        "checks_passed": sum(c["passes"] for c in checks.values()),
        "checks_failed": sum(c["fails"] for c in checks.values()),
        "counter_match_miss_pct": 100.0 * match["fails"] / tried if tried else None,
        "checks": checks,
    }


def ratios(results: dict[str, dict[str, Any]]) -> dict[str, float | None]:
    """Return Nixie's medians divided by the bare app's."""
    nixie, bare = results["nixie"], results["bare"]
    ratio: dict[str, float | None] = {}
    for figure in ("requests_per_s", "p95_ms", "server_cpu_ms_per_request"):
        numerator, denominator = nixie[figure], bare[figure]
        ratio[figure] = numerator / denominator if numerator and denominator else None
    return ratio


def cell(value: float | None, spec: str, suffix: str = "") -> str:
    """Format a table figure, showing a dash for a missing one."""
    return "-" if value is None else f"{value:{spec}}{suffix}"


def format_table(results: dict[str, dict[str, Any]]) -> str:
    """Lay out the per-target medians and the nixie/bare ratios as text."""
    header = (
        f"{'target':<11}{'req/s':>9}{'p95 ms':>9}{'CPU ms/req':>12}"
        f"{'checks ok':>11}{'failed':>8}{'match miss':>12}"
    )
    lines = [header, "-" * len(header)]
    for target, agg in results.items():
        lines.append(
            f"{target:<11}{agg['requests_per_s']:>9.1f}{agg['p95_ms']:>9.2f}"
            f"{cell(agg['server_cpu_ms_per_request'], '.3f'):>12}"
            f"{agg['checks_passed']:>11}{agg['checks_failed']:>8}"
            f"{cell(agg['counter_match_miss_pct'], '.2f', ' %'):>12}"
        )

    if "nixie" in results and "bare" in results:
        ratio = ratios(results)
        lines.append(
            f"{'nixie/bare':<11}{cell(ratio['requests_per_s'], '.2f'):>9}"
            f"{cell(ratio['p95_ms'], '.2f'):>9}"
            f"{cell(ratio['server_cpu_ms_per_request'], '.2f'):>12}"
        )
    return "\n".join(lines)


def k6_version() -> str:
    """Return the first line of ``k6 version``."""
    out = subprocess.run(
        [find_executable("k6"), "version"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    return out.stdout.strip().splitlines()[0] if out.stdout.strip() else "unknown"


def machine() -> dict[str, Any]:
    """Describe where the figures were measured."""
    return {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "cores": len(os.sched_getaffinity(0)),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "k6": k6_version(),
        "load_average_1min_at_start": os.getloadavg()[0],
    }


def add_rounds_option(parser: argparse.ArgumentParser, each: str, order: str) -> None:
    """Add --rounds: how many runs of each `each`, made in `order`."""
    parser.add_argument(
        "--rounds",
        type=_at_least_one,
        default=3,
        help=f"runs per {each}, {order}; the table shows medians (default 3)",
    )


def _at_least_one(text: str) -> int:
    count = int(text)
    if count < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return count


def add_output_options(parser: argparse.ArgumentParser, prefix: str) -> None:
    """Add --output (the raw figures' file, see `save_report`) and --verbose."""
    parser.add_argument(
        "--output",
        type=Path,
        help="JSON file for the raw figures "
        f"(default benchmark/results/{prefix}-<UTC time>.json)",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug lines")


def start_run(verbose: bool) -> dict[str, Any]:
    """Set up signals and logging for a benchmark run; return `machine()`.

    Warn when the machine is already busy, since its figures would be noisy.
    """
    # `timeout` and supervisors send SIGTERM: unwind as on Ctrl-C, so the
    # servers a run started are stopped on the way out.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(message)s",
    )
    # httpx logs every request at INFO; those lines drown the rounds.
    logging.getLogger("httpx").setLevel(logging.WARNING)

    host = machine()
    if host["load_average_1min_at_start"] > BUSY_LOAD:
        logger.warning(
            "load average is %.2f on %d cores: expect noisy figures",
            host["load_average_1min_at_start"],
            host["cores"],
        )
    return host


def save_report(report: dict[str, Any], output: Path | None, prefix: str) -> None:
    """Write the raw figures to `output`, or to a time-stamped file of RESULTS_DIR."""
    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y%m%dT%H%M%SZ")
    output = output or RESULTS_DIR / f"{prefix}-{stamp}.json"
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(report, indent=2) + "\n")
    print(f"raw figures: {output}")


def exit_status(results: dict[str, dict[str, Any]]) -> int:
    """Return 1 and log the failed checks when a status check failed, else 0."""
    broken = failed_status_checks(results)
    if broken:
        logger.error("checks failed: %s", broken)
        return 1
    return 0


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Read the command line."""
    parser = argparse.ArgumentParser(
        prog="python -m benchmark.run", description=__doc__.splitlines()[0]
    )
    add_rounds_option(parser, "target", "alternated")
    parser.add_argument(
        "--target",
        choices=(*TARGETS, "both"),
        default="both",
        help="which servers to measure (default both)",
    )
    add_output_options(parser, "bench")
    args = parser.parse_args(argv)
    return args


def run_rounds(targets: list[str], rounds: int) -> dict[str, list[dict[str, Any]]]:
    """Measure each target once per round and return every run, by target."""
    runs: dict[str, list[dict[str, Any]]] = {target: [] for target in targets}

    # Alternate the order from round to round, so a machine that slows down
    # or speeds up over the run does not favour whichever target goes first.
    for round_no in range(1, rounds + 1):
        order = targets if round_no % 2 else targets[::-1]
        for target in order:
            started = time.monotonic()
            run = measure(target)
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


def failed_status_checks(results: dict[str, dict[str, Any]]) -> dict[str, int]:
    """Return the failure count of every failed check except counter match."""
    # A failed status check means the server broke; a counter mismatch only
    # means another virtual user incremented the same key in between.
    return {
        f"{target}: {name}": counts["fails"]
        for target, agg in results.items()
        for name, counts in agg["checks"].items()
        if name != MATCH_CHECK and counts["fails"]
    }


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark, print the table, save the figures; return the exit code."""
    args = parse_args(argv)
    host = start_run(args.verbose)

    targets = list(TARGETS) if args.target == "both" else [args.target]
    try:
        runs = run_rounds(targets, args.rounds)
    except BenchmarkError as exc:
        logger.error("benchmark failed: %s", exc)
        return 2

    results = {target: aggregate(target_runs) for target, target_runs in runs.items()}
    print(format_table(results))

    report = {
        "machine": host,
        "rounds": args.rounds,
        "results": results,
        "ratio_nixie_over_bare": ratios(results) if len(results) == 2 else None,
        "runs": runs,
    }
    save_report(report, args.output, "bench")

    return exit_status(results)


if __name__ == "__main__":
    sys.exit(main())
