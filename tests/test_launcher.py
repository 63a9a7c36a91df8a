"""`nixie-cli cluster`: the local cluster of the quick start."""

import contextlib
import signal
import socket
import subprocess
import time
from pathlib import Path

import httpx
import pytest

from tests.nodeproc import child_env, nixie_cli

pytestmark = pytest.mark.process

DEADLINE = 20.0  # seconds for the cluster to start, converge or stop


def free_run_of_ports(count: int) -> int:
    """Return the first of `count` consecutive free loopback ports."""
    for _ in range(50):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            base = probe.getsockname()[1]
        if base + count > 65535:
            continue
        try:
            with contextlib.ExitStack() as stack:
                for port in range(base, base + count):
                    sock = stack.enter_context(socket.socket())
                    sock.bind(("127.0.0.1", port))
            return base
        except OSError:
            continue
    raise RuntimeError("no run of free ports")


def wait_for(check: object, what: str) -> None:
    deadline = time.monotonic() + DEADLINE
    while time.monotonic() < deadline:
        with contextlib.suppress(httpx.TransportError, AssertionError):
            if check():  # type: ignore[operator]
                return
        time.sleep(0.05)
    raise AssertionError(f"{what} did not happen within {DEADLINE} s")


def test_local_cluster_serves_converges_and_stops(tmp_path: Path) -> None:
    """Three nodes start on consecutive ports, agree, and all stop on Ctrl-C."""
    base = free_run_of_ports(3)
    urls = [f"http://127.0.0.1:{base + i}" for i in range(3)]
    log = tmp_path / "cluster.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [str(nixie_cli()), "cluster", "--nodes", "3", "--base-port", str(base),
             "--data-dir", str(tmp_path / "data")],
            stdout=out, stderr=subprocess.STDOUT, env=child_env(), cwd=tmp_path,
        )  # fmt: skip
    try:
        wait_for(
            lambda: all(
                httpx.get(f"{u}/_nixie/health").status_code == 200 for u in urls
            ),
            "all nodes answering",
        )
        key = httpx.post(f"{urls[0]}/", content="7").text
        wait_for(
            lambda: all(httpx.get(f"{u}/{key}").text == "7" for u in urls),
            "the counter reaching every node",
        )
        process.send_signal(signal.SIGINT)
        status = process.wait(timeout=DEADLINE)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()

    output = log.read_text()
    assert status == 0
    assert {"node1", "node2", "node3"} <= {
        line.split(" |")[0].strip() for line in output.splitlines() if " | " in line
    }
    assert output.count("Finished server process") == 3
    for url in urls:
        with pytest.raises(httpx.TransportError):
            httpx.get(f"{url}/_nixie/health", timeout=1.0)


def test_a_node_that_cannot_start_stops_the_cluster(tmp_path: Path) -> None:
    """When one node cannot bind its port, the launcher stops all and fails."""
    base = free_run_of_ports(3)
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", base + 2))
        squatter.listen()
        result = subprocess.run(
            [str(nixie_cli()), "cluster", "--base-port", str(base),
             "--data-dir", str(tmp_path / "data")],
            capture_output=True, text=True, env=child_env(), cwd=tmp_path,
            timeout=DEADLINE, check=False,
        )  # fmt: skip

    assert result.returncode != 0
    assert "node3 exited with status" in result.stdout
    assert "stopping all nodes" in result.stdout


def test_nodes_die_with_a_killed_launcher(tmp_path: Path) -> None:
    """SIGKILL of the launcher leaves no node running."""
    base = free_run_of_ports(3)
    urls = [f"http://127.0.0.1:{base + i}" for i in range(3)]
    process = subprocess.Popen(
        [str(nixie_cli()), "cluster", "--base-port", str(base),
         "--data-dir", str(tmp_path / "data")],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=child_env(),
    )  # fmt: skip
    try:
        wait_for(
            lambda: all(
                httpx.get(f"{u}/_nixie/health").status_code == 200 for u in urls
            ),
            "all nodes answering",
        )
    finally:
        process.kill()
        process.wait()

    def all_gone() -> bool:
        for url in urls:
            with contextlib.suppress(httpx.TransportError):
                httpx.get(f"{url}/_nixie/health", timeout=0.5)
                return False
        return True

    wait_for(all_gone, "every node stopping")
