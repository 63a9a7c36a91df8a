"""Run a local cluster: several node processes on consecutive ports.

Each node is a `nixie-cli` child process with its own data dir under one
folder, every other node as a peer, and one shared secret, passed through
the environment so that it does not show in the process list. Every line a
node prints is prefixed with its name. Ctrl-C stops all nodes cleanly; a
node that dies (or is killed on purpose, to test) is reported and the others
keep running.
"""

import os
import secrets
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import IO

STOP_TIMEOUT = 10.0  # seconds a node gets to stop before it is killed


def run_local_cluster(
    nodes: int,
    base_port: int,
    data_root: Path,
    gossip_interval: float,
    secret: str | None,
    debug: bool,
) -> int:
    """Start the nodes, relay their output, and stop them all on Ctrl-C."""
    urls = [f"http://127.0.0.1:{base_port + i}" for i in range(nodes)]
    env = {**os.environ, "NIXIE_CLUSTER_SECRET": secret or secrets.token_urlsafe(24)}
    output_lock = threading.Lock()
    children: dict[str, subprocess.Popen[bytes]] = {}

    _say(f"starting {nodes} nodes: {', '.join(urls)}; data under {data_root}/")
    for index, url in enumerate(urls):
        name = f"node{index + 1}"
        command = [
            sys.executable, "-m", "nixie",
            "--host", "127.0.0.1",
            "--port", str(base_port + index),
            "--data-dir", str(data_root / name),
            "--peers", ",".join(u for u in urls if u != url),
            "--gossip-interval", str(gossip_interval),
        ]  # fmt: skip
        if debug:
            command.append("--debug")
        child = subprocess.Popen(
            command,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            # Ctrl-C reaches only this process, which then stops the nodes in
            # order instead of racing them.
            start_new_session=True,
        )
        children[name] = child
        assert child.stdout is not None
        threading.Thread(
            target=_relay, args=(name, child.stdout, output_lock), daemon=True
        ).start()

    # A terminal's Ctrl-C sends SIGINT; a supervisor or `timeout` sends
    # SIGTERM. Both stop the nodes before this process goes.
    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGHUP, _interrupt)
    try:
        _wait_for_all(children)
    except KeyboardInterrupt:
        _say("stopping all nodes")
    finally:
        _stop_all(children)
    return 0


def _interrupt(signum: int, _: object) -> None:
    raise KeyboardInterrupt


def _relay(name: str, stream: IO[bytes], lock: threading.Lock) -> None:
    width = len("node16")
    for raw in stream:
        line = raw.decode("utf-8", errors="replace").rstrip("\n")
        with lock:
            sys.stdout.write(f"{name:<{width}} | {line}\n")
            sys.stdout.flush()


def _wait_for_all(children: dict[str, subprocess.Popen[bytes]]) -> None:
    running = dict(children)
    while running:
        for name, child in list(running.items()):
            status = child.poll()
            if status is not None:
                _say(f"{name} exited with status {status}")
                del running[name]
        time.sleep(0.2)


def _stop_all(children: dict[str, subprocess.Popen[bytes]]) -> None:
    for child in children.values():
        if child.poll() is None:
            child.send_signal(signal.SIGINT)
    deadline = time.monotonic() + STOP_TIMEOUT
    for child in children.values():
        try:
            child.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()


def _say(message: str) -> None:
    print(f"cluster | {message}", flush=True)
