"""Run real `nixie-cli` processes for tests, and stop them whatever happens."""

import contextlib
import os
import re
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import httpx

HOST = "127.0.0.1"

# Seconds a node gets to open its port and answer GET /.
STARTUP_TIMEOUT = 15.0

# Seconds a node gets to exit after SIGTERM before it is killed.
SHUTDOWN_TIMEOUT = 10.0

# Seconds a command that should exit at once (--help, a bad option) may take.
COMMAND_TIMEOUT = 15.0

# Seconds between two readiness probes.
POLL_INTERVAL = 0.05

# The line nixie-cli logs once the node has opened its data dir.
_STARTED = re.compile(r"\bnixie \S+, replica ([A-Za-z0-9_-]+), data dir ")


@dataclass
class NodeProcess:
    """One `nixie-cli` process: where it listens and where its output goes."""

    process: subprocess.Popen[bytes]
    port: int
    log_path: Path

    @property
    def url(self) -> str:
        """Return the base URL of the node's API."""
        return f"http://{HOST}:{self.port}"

    def log(self) -> str:
        """Return everything the process wrote to stdout and stderr so far."""
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def replica_id(self) -> str:
        """Return the replica id the node announced when it started."""
        match = _STARTED.search(self.log())
        if match is None:
            raise AssertionError(f"no replica id in the log:\n{self.log()}")
        return match.group(1)


def nixie_cli() -> Path:
    """Return the `nixie-cli` script installed next to this Python."""
    return Path(sys.executable).parent / "nixie-cli"


def free_port() -> int:
    """Return a TCP port on HOST that nothing listened on a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((HOST, 0))
        port: int = probe.getsockname()[1]
    return port


def child_env(env: Mapping[str, str] | None = None) -> dict[str, str]:
    """Return this process's environment without NIXIE_* variables, plus `env`.

    Output is unbuffered, so a test can read a node's log while it runs and
    nothing is lost when a test kills it.
    """
    inherited = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith("NIXIE_")
    }
    return {**inherited, "PYTHONUNBUFFERED": "1", **(env or {})}


@contextlib.contextmanager
def run_node(
    data_dir: Path,
    port: int | None = None,
    *,
    args: Sequence[str] = (),
    env: Mapping[str, str] | None = None,
) -> Iterator[NodeProcess]:
    """Run a node on `data_dir` and `port` (a free one by default) for a block.

    Extra `args` follow the usual flags. The node's output goes to a fresh
    log file beside the data dir.
    """
    port = port or free_port()
    flags = ["--host", HOST, "--port", str(port), "--data-dir", str(data_dir)]
    with spawn([*flags, *args], port, data_dir.parent, env=env) as node:
        yield node


@contextlib.contextmanager
def spawn(
    args: Sequence[str],
    port: int,
    work_dir: Path,
    env: Mapping[str, str] | None = None,
) -> Iterator[NodeProcess]:
    """Run `nixie-cli` with exactly `args`, in `work_dir`, expecting it on `port`.

    The block starts once GET / answers; on leaving it the process is
    terminated, and killed if it will not stop.
    """
    fd, log_name = tempfile.mkstemp(prefix="nixie-", suffix=".log", dir=work_dir)
    with os.fdopen(fd, "wb") as log:
        process = subprocess.Popen(
            [str(nixie_cli()), *args],
            cwd=work_dir,
            env=child_env(env),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    node = NodeProcess(process, port, Path(log_name))
    try:
        _wait_until_ready(node)
        yield node
    finally:
        stop(process)


def run_cli(
    *args: str, work_dir: Path, env: Mapping[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run a `nixie-cli` command that should exit at once; capture its output."""
    return subprocess.run(
        [str(nixie_cli()), *args],
        cwd=work_dir,
        env=child_env(env),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=COMMAND_TIMEOUT,
        check=False,
    )


def stop(process: subprocess.Popen[bytes]) -> None:
    """Terminate `process`, killing it if it ignores SIGTERM for too long."""
    if process.poll() is not None:
        return

    process.terminate()
    try:
        process.wait(timeout=SHUTDOWN_TIMEOUT)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def _wait_until_ready(node: NodeProcess) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT
    while time.monotonic() < deadline:
        if node.process.poll() is not None:
            raise RuntimeError(
                f"nixie-cli exited with {node.process.returncode} while starting:\n"
                f"{node.log()[-4000:]}"
            )
        with contextlib.suppress(httpx.TransportError):
            if httpx.get(f"{node.url}/", timeout=1.0).status_code == 200:
                return
        time.sleep(POLL_INTERVAL)

    raise RuntimeError(
        f"nixie-cli did not answer GET {node.url}/ within {STARTUP_TIMEOUT} s:\n"
        f"{node.log()[-4000:]}"
    )
