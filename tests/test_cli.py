"""Tests of `nixie-cli` as real processes: durability, restarts, flags, logs."""

import re
import signal
import socket
from pathlib import Path

import httpx
import pytest

from nixie import __version__
from tests.nodeproc import free_port, run_cli, run_node, spawn

pytestmark = pytest.mark.process

# Seconds any single request to a node may take.
REQUEST_TIMEOUT = 10.0

ENV_VARS = ["NIXIE_PORT", "NIXIE_HOST", "NIXIE_DATA_DIR", "NIXIE_DEBUG"]


def _create(http: httpx.Client, start: int = 0, **headers: str) -> str:
    response = http.post("/", content=str(start), headers=headers)
    assert response.status_code == 201, response.text
    return response.text


def _metadata(response: httpx.Response) -> dict[str, str]:
    return {
        name.lower(): value
        for name, value in response.headers.items()
        if name.lower() in ("nixie-name", "nixie-description", "nixie-step")
    }


def test_acknowledged_increments_survive_sigkill(tmp_path: Path) -> None:
    """Every increment answered 200 is still there after the node is killed with -9."""
    data_dir = tmp_path / "data"
    increments = 200

    with run_node(data_dir) as node:
        with httpx.Client(base_url=node.url, timeout=REQUEST_TIMEOUT) as http:
            key = _create(http, start=5)
            answers = [http.post(f"/{key}").status_code for _ in range(increments)]
        node.process.kill()
        killed = node.process.wait(timeout=REQUEST_TIMEOUT)

    with run_node(data_dir) as node:
        read = httpx.get(f"{node.url}/{key}", timeout=REQUEST_TIMEOUT)

    assert answers == [200] * increments
    assert killed == -signal.SIGKILL
    assert read.status_code == 200
    assert read.text == str(5 + increments)


def test_acknowledged_keyed_increments_survive_sigkill(tmp_path: Path) -> None:
    """Every keyed increment answered 200 counts once after a kill -9, and replays."""
    data_dir = tmp_path / "data"
    increments = 100

    with run_node(data_dir) as node:
        with httpx.Client(base_url=node.url, timeout=REQUEST_TIMEOUT) as http:
            key = _create(http, start=5)
            answers = [
                http.post(f"/{key}", headers={"Idempotency-Key": f"k-{i}"})
                for i in range(increments)
            ]
        node.process.kill()
        killed = node.process.wait(timeout=REQUEST_TIMEOUT)

    with (
        run_node(data_dir) as node,
        httpx.Client(base_url=node.url, timeout=REQUEST_TIMEOUT) as http,
    ):
        retry = http.post(f"/{key}", headers={"Idempotency-Key": "k-0"})
        read = http.get(f"/{key}")

    assert [200] * increments == [answer.status_code for answer in answers]
    assert killed == -signal.SIGKILL
    assert (200, "6") == (retry.status_code, retry.text)
    assert (200, str(5 + increments)) == (read.status_code, read.text)


def test_restart_restores_counters_metadata_and_tombstones(tmp_path: Path) -> None:
    """A restarted node serves the same counters, metadata, deletions and replica id."""
    data_dir = tmp_path / "data"

    with run_node(data_dir) as node:
        with httpx.Client(base_url=node.url, timeout=REQUEST_TIMEOUT) as http:
            plain = _create(http)
            named = _create(http, 10, **{"Nixie-Name": "visits", "Nixie-Step": "-3"})
            http.post(f"/{named}")
            described = _create(http, 1, **{"Nixie-Description": "kept as is"})
            http.patch(f"/{described}", headers={"Nixie-Name": "renamed"})
            http.put(f"/{described}", content="-40")
            deleted = _create(http, 7, **{"Nixie-Name": "gone"})
            http.delete(f"/{deleted}")
            live = [plain, named, described]
            before = [http.get(f"/{key}") for key in live]
            listing = http.get("/").text
        replica = node.replica_id()

    with run_node(data_dir) as node:
        with httpx.Client(base_url=node.url, timeout=REQUEST_TIMEOUT) as http:
            after = [http.get(f"/{key}") for key in live]
            relisted = http.get("/").text
            gone = [
                http.get(f"/{deleted}").status_code,
                http.head(f"/{deleted}").status_code,
            ]
        restarted_replica = node.replica_id()

    assert listing == "\n".join(live)
    assert relisted == listing
    assert [r.text for r in after] == [r.text for r in before] == ["0", "7", "-40"]
    assert [_metadata(r) for r in after] == [_metadata(r) for r in before]
    assert _metadata(after[1]) == {"nixie-name": "visits", "nixie-step": "-3"}
    assert _metadata(after[2]) == {
        "nixie-name": "renamed",
        "nixie-description": "kept as is",
        "nixie-step": "1",
    }
    assert gone == [404, 404]
    assert restarted_replica == replica


def test_fresh_data_dirs_get_fresh_replica_ids(tmp_path: Path) -> None:
    """Nodes started on two empty data dirs announce two different replica ids."""
    with run_node(tmp_path / "one") as first, run_node(tmp_path / "two") as second:
        ids = [first.replica_id(), second.replica_id()]

    assert ids[0] != ids[1]


def test_second_node_on_a_data_dir_is_refused(tmp_path: Path) -> None:
    """A second node on a busy data dir exits with one line; the first serves on."""
    data_dir = tmp_path / "data"
    second_port = str(free_port())

    with (
        run_node(data_dir) as node,
        httpx.Client(base_url=node.url, timeout=REQUEST_TIMEOUT) as http,
    ):
        key = _create(http, start=1)
        second = run_cli(
            "--port", second_port, "--data-dir", str(data_dir), work_dir=tmp_path
        )
        incremented = http.post(f"/{key}")

    assert second.returncode != 0
    assert second.stdout == ""
    assert len(second.stderr.splitlines()) == 1
    assert "in use" in second.stderr
    assert incremented.status_code == 200
    assert incremented.text == "2"


def test_version_prints_the_version(tmp_path: Path) -> None:
    """`--version` prints the package version and exits 0."""
    result = run_cli("--version", work_dir=tmp_path)

    assert result.returncode == 0
    assert __version__ in result.stdout


@pytest.mark.parametrize("flag", ["-h", "--help"])
def test_help_names_every_environment_variable(tmp_path: Path, flag: str) -> None:
    """Both help flags list every NIXIE_* variable the CLI reads."""
    result = run_cli(flag, work_dir=tmp_path)

    assert result.returncode == 0
    assert [name for name in ENV_VARS if name not in result.stdout] == []


@pytest.mark.parametrize(
    "args",
    [
        ["--bogus"],
        ["-p", "abc"],
        ["-p", "70000"],
        ["-p", "0"],
        ["--port"],
        ["--peers", "localhost:7313"],
        ["--peers", "ftp://x"],
        ["--peers-dns", "nocolon"],
        ["--gossip-interval", "3"],
    ],
    ids=[
        "unknown",
        "not-a-number",
        "out-of-range",
        "port-zero",
        "missing-value",
        "peer-without-scheme",
        "peer-not-http",
        "dns-without-port",
        "timeout-below-interval",
    ],
)
def test_bad_option_is_one_line_and_status_2(tmp_path: Path, args: list[str]) -> None:
    """A usage error prints exactly one line on stderr and exits with status 2."""
    result = run_cli("--data-dir", str(tmp_path / "data"), *args, work_dir=tmp_path)

    assert result.returncode == 2
    assert len(result.stderr.splitlines()) == 1, result.stderr
    assert result.stdout == ""
    assert not (tmp_path / "data").exists()


@pytest.mark.parametrize(
    ("host", "reason"),
    [("127.0.0.1", "Address already in use"), ("999.1.1.1", "not known")],
    ids=["port-in-use", "unknown-host"],
)
def test_an_address_it_cannot_listen_on_is_one_line(
    tmp_path: Path, host: str, reason: str
) -> None:
    """A port in use or a bad host stops the node before it opens its data dir."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run_cli(
            "--data-dir",
            str(tmp_path / "data"),
            "--host",
            host,
            "-p",
            str(port),
            work_dir=tmp_path,
        )

    assert 1 == result.returncode
    assert [f"cannot listen on {host}:{port}"] == [
        line.partition(": [")[0].removeprefix("nixie-cli: error: ")
        for line in result.stderr.splitlines()
    ]
    assert reason in result.stderr
    assert not (tmp_path / "data").exists()


def test_environment_variables_configure_the_node(tmp_path: Path) -> None:
    """NIXIE_HOST, NIXIE_PORT and NIXIE_DATA_DIR alone say where a node serves."""
    port = free_port()
    data_dir = tmp_path / "from-env"
    env = {
        "NIXIE_HOST": "127.0.0.1",
        "NIXIE_PORT": str(port),
        "NIXIE_DATA_DIR": str(data_dir),
    }

    with spawn([], port, tmp_path, env=env) as node:
        created = httpx.post(f"{node.url}/", timeout=REQUEST_TIMEOUT)

    assert created.status_code == 201
    assert (data_dir / "nixie.sqlite3").exists()
    assert not (tmp_path / "nixie-data").exists()


@pytest.mark.parametrize(
    ("args", "env", "debug"),
    [
        pytest.param([], {}, False, id="default"),
        pytest.param(["-d"], {}, True, id="short-flag"),
        pytest.param(["--debug"], {}, True, id="long-flag"),
        pytest.param([], {"NIXIE_DEBUG": "1"}, True, id="env"),
    ],
)
def test_debug_flag_turns_on_debug_logging(
    tmp_path: Path, args: list[str], env: dict[str, str], debug: bool
) -> None:
    """Debug lines, such as the one for a 404, appear exactly when debug is on."""
    with run_node(tmp_path / "data", args=args, env=env) as node:
        missing = httpx.get(f"{node.url}/unknown", timeout=REQUEST_TIMEOUT)
    debug_lines = [line for line in node.log().splitlines() if "DEBUG" in line]

    assert missing.status_code == 404
    assert any("GET /unknown: 404" in line for line in debug_lines) is debug
    assert bool(debug_lines) is debug


def test_access_log_has_one_line_per_request(tmp_path: Path) -> None:
    """The access log shows each request line with its status code and phrase."""
    with (
        run_node(tmp_path / "data") as node,
        httpx.Client(base_url=node.url, timeout=REQUEST_TIMEOUT) as http,
    ):
        key = _create(http)
        http.get("/unknown")
        http.delete(f"/{key}")
        http.get("/_nixie/health")
    log = node.log()

    assert "/_nixie/health" not in log  # health checks would drown the rest
    assert re.search(r'"POST / HTTP/1\.1" 201 Created$', log, re.MULTILINE)
    assert re.search(r'"GET /unknown HTTP/1\.1" 404 Not Found$', log, re.MULTILINE)
    assert re.search(rf'"DELETE /{key} HTTP/1\.1" 204 No Content$', log, re.MULTILINE)
