"""Run a local cluster: several node processes on consecutive ports.

Each node is a `nixie-cli` child process with its own data dir under one
folder, every other node as a peer, and one shared secret, passed through
the environment so that it does not show in the process list. Every line a
node prints is prefixed with its name. Ctrl-C stops all nodes cleanly; a
node that dies (or is killed on purpose, to test) is reported and the others
keep running.
"""

import contextlib
import ctypes
import ctypes.util
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
PR_SET_PDEATHSIG = 1  # from <sys/prctl.h>


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
            "--peer-timeout", str(max(2.0, 4 * gossip_interval)),
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
            preexec_fn=_die_with_parent,
        )
        children[name] = child
    # Relay threads start once every child is spawned: preexec_fn is unsafe
    # while other threads run.
    for name, child in children.items():
        assert child.stdout is not None
        threading.Thread(
            target=_relay, args=(name, child.stdout, output_lock), daemon=True
        ).start()

    # A terminal's Ctrl-C sends SIGINT; a supervisor or `timeout` sends
    # SIGTERM. Both stop the nodes before this process goes. SIGINT is set
    # explicitly: a shell starting this in the background ignores it.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGHUP, _interrupt)
    status = 0
    try:
        status = _wait_for_all(children)
    except KeyboardInterrupt:
        _say("stopping all nodes")
    finally:
        _stop_all(children)
    return status


def _interrupt(signum: int, _: object) -> None:
    raise KeyboardInterrupt


def _die_with_parent() -> None:
    # Linux only: the kernel sends SIGTERM to a node whose launcher dies,
    # even by SIGKILL, so no orphan keeps the ports and data dirs locked.
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def _relay(name: str, stream: IO[bytes], lock: threading.Lock) -> None:
    width = len("node16")
    for raw in stream:
        line = raw.decode("utf-8", errors="replace").rstrip()
        if not line:
            continue
        with lock:
            sys.stdout.write(f"{name:<{width}} | {line}\n")
            sys.stdout.flush()


def _wait_for_all(children: dict[str, subprocess.Popen[bytes]]) -> int:
    """Wait while nodes run; return a failed node's status, which ends them all.

    A node killed by a signal (a test of the cluster, say) is reported and
    the others go on; a node that exits with an error, such as a port in use
    or a bad option, ends the cluster rather than leave it half started.
    """
    running = dict(children)
    while running:
        for name, child in list(running.items()):
            status = child.poll()
            if status is None:
                continue
            _say(f"{name} exited with status {status}")
            del running[name]
            if status > 0:
                _say("stopping all nodes")
                return status
        time.sleep(0.2)
    return 0


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
