"""Tests of the HTTP layer through the ASGI app, below what black-box tests see."""

import copy
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
import yaml
from fastapi import FastAPI
from fastapi.testclient import TestClient

from nixie.errors import StorageError
from nixie.inputs import BODY_MAX_BYTES
from nixie.values import INT64_MAX
from tests.conftest import Fetch, MakeCounter
from tests.harness import http_scope

METADATA_HEADERS = ("nixie-name", "nixie-description", "nixie-step")

CONTRACT = Path(__file__).parent.parent / "openapi.yaml"

HTTP_METHODS = {"get", "put", "post", "delete", "options", "head", "patch", "trace"}

# Paths the app serves for its operators, which the contract need not list.
INTERNAL_PREFIX = "/_nixie/"


@dataclass(frozen=True)
class Operation:
    """What the contract fixes about one operation, compared as sets."""

    parameters: frozenset[tuple[str, str]]
    statuses: frozenset[str]
    body: bool | None  # None: no request body; else whether it is required


def operations(document: dict[str, Any]) -> dict[tuple[str, str], Operation]:
    """Map each (path, method) of an OpenAPI document to its `Operation`."""
    document = resolve(document, document)
    found = {}
    for path, item in document.get("paths", {}).items():
        shared = {_parameter_id(p): p for p in item.get("parameters", [])}
        for method, operation in item.items():
            if method not in HTTP_METHODS:
                continue
            own = {_parameter_id(p): p for p in operation.get("parameters", [])}
            body = operation.get("requestBody")
            found[path, method] = Operation(
                parameters=frozenset({**shared, **own}),
                statuses=frozenset(str(status) for status in operation["responses"]),
                body=None if body is None else bool(body.get("required", False)),
            )
    return found


def mismatches(
    expected: dict[tuple[str, str], Operation],
    actual: dict[tuple[str, str], Operation],
) -> list[str]:
    """Describe every difference between two documents' operations."""
    problems = [
        f"{m.upper()} {p}: missing" for p, m in sorted(expected.keys() - actual)
    ]
    problems += [
        f"{m.upper()} {p}: not in contract" for p, m in sorted(actual.keys() - expected)
    ]
    for path, method in sorted(expected.keys() & actual.keys()):
        want, got = expected[path, method], actual[path, method]
        for field in ("parameters", "statuses", "body"):
            if getattr(want, field) != getattr(got, field):
                problems.append(
                    f"{method.upper()} {path}: {field} "
                    f"{getattr(got, field)!r}, contract says {getattr(want, field)!r}"
                )
    return problems


def resolve(node: Any, document: dict[str, Any]) -> Any:
    """Return `node` with every local `$ref` replaced by what it points at."""
    if isinstance(node, dict):
        if "$ref" in node:
            return resolve(_pointer(document, node["$ref"]), document)
        return {key: resolve(value, document) for key, value in node.items()}
    if isinstance(node, list):
        return [resolve(item, document) for item in node]
    return node


def _pointer(document: dict[str, Any], ref: str) -> Any:
    if not ref.startswith("#/"):
        raise ValueError(f"only local references are supported: {ref}")
    target: Any = document
    for part in ref.removeprefix("#/").split("/"):
        target = target[part.replace("~1", "/").replace("~0", "~")]
    return target


def _parameter_id(parameter: dict[str, Any]) -> tuple[str, str]:
    # Header names are case-insensitive in HTTP, and so in OpenAPI.
    name, where = parameter["name"], parameter["in"]
    return (name.lower() if where == "header" else name), where


def contract_operations() -> dict[tuple[str, str], Operation]:
    """Return the operations openapi.yaml describes."""
    return operations(yaml.safe_load(CONTRACT.read_text(encoding="utf-8")))


def public(
    served: dict[tuple[str, str], Operation],
    contract: dict[tuple[str, str], Operation],
) -> dict[tuple[str, str], Operation]:
    """Leave out the internal operations served on paths the contract omits."""
    listed = {path for path, _ in contract}
    return {
        (path, method): operation
        for (path, method), operation in served.items()
        if not path.startswith(INTERNAL_PREFIX) or path in listed
    }


def test_app_matches_the_contract(app: FastAPI) -> None:
    """The app has the operations, parameters, statuses and bodies of openapi.yaml."""
    contract = contract_operations()

    problems = mismatches(contract, public(operations(app.openapi()), contract))

    assert problems == []


def test_internal_paths_are_compared_only_if_listed() -> None:
    """An internal operation is ignored unless the contract lists its path."""
    internal = {("/_nixie/health", "get"): Operation(frozenset(), frozenset(), None)}
    listed = {("/_nixie/health", "post"): Operation(frozenset(), frozenset(), None)}

    ignored = mismatches({}, public(internal, {}))
    compared = mismatches(listed, public(internal, listed))

    assert ignored == []
    assert compared == [
        "POST /_nixie/health: missing",
        "GET /_nixie/health: not in contract",
    ]


def _drop_operation(document: dict[str, Any]) -> None:
    del document["paths"]["/{key}"]["delete"]


def _add_header(document: dict[str, Any]) -> None:
    document["paths"]["/{key}"]["get"].setdefault("parameters", []).append(
        {"name": "Nixie-Extra", "in": "header", "schema": {"type": "string"}}
    )


def _add_shared_parameter(document: dict[str, Any]) -> None:
    document["paths"]["/"]["parameters"] = [
        {"name": "limit", "in": "query", "schema": {"type": "string"}}
    ]


def _drop_status(document: dict[str, Any]) -> None:
    del document["paths"]["/{key}"]["post"]["responses"]["409"]


def _relax_body(document: dict[str, Any]) -> None:
    document["paths"]["/{key}"]["put"]["requestBody"]["required"] = False


def _drop_body(document: dict[str, Any]) -> None:
    del document["paths"]["/"]["post"]["requestBody"]


@pytest.mark.parametrize(
    ("alter", "named"),
    [
        pytest.param(_drop_operation, "DELETE /{key}", id="operation"),
        pytest.param(_add_header, "GET /{key}: parameters", id="header"),
        pytest.param(_add_shared_parameter, "GET /: parameters", id="path-level"),
        pytest.param(_drop_status, "POST /{key}: statuses", id="status"),
        pytest.param(_relax_body, "PUT /{key}: body", id="body-required"),
        pytest.param(_drop_body, "POST /: body", id="body"),
    ],
)
def test_contract_check_catches_a_difference(
    app: FastAPI, alter: Callable[[dict[str, Any]], None], named: str
) -> None:
    """The contract check reports a deliberately altered copy of the app's document."""
    contract = contract_operations()
    document = copy.deepcopy(app.openapi())
    alter(document)

    problems = mismatches(contract, public(operations(document), contract))

    assert any(problem.startswith(named) for problem in problems), problems


# Each write, as (method, path template, body, headers); {key} is a live counter.
WRITES = [
    pytest.param("POST", "/", b"5", {}, id="create"),
    pytest.param("POST", "/{key}", b"", {}, id="increment"),
    pytest.param("PUT", "/{key}", b"99", {}, id="set"),
    pytest.param("PATCH", "/{key}", b"", {"Nixie-Step": "7"}, id="patch"),
    pytest.param("DELETE", "/{key}", b"", {}, id="delete"),
]


def _snapshot(client: TestClient, key: str) -> tuple[str, int, str, dict[str, str]]:
    """Return the listing and everything GET shows of `key`."""
    response = client.get(f"/{key}")
    return (
        client.get("/").text,
        response.status_code,
        response.text,
        _nixie_headers(response.headers),
    )


@pytest.mark.parametrize(("method", "path", "body", "headers"), WRITES)
def test_storage_failure_answers_503_and_changes_nothing(
    app: FastAPI,
    client: TestClient,
    make_counter: MakeCounter,
    monkeypatch: pytest.MonkeyPatch,
    method: str,
    path: str,
    body: bytes,
    headers: dict[str, str],
) -> None:
    """A write the store cannot save answers 503 as text and leaves nothing behind."""
    key = make_counter(start=3, name="kept")
    before = _snapshot(client, key)

    def fail(*args: object) -> None:
        raise StorageError("cannot write data dir: disk I/O error")

    monkeypatch.setattr(app.state.node.store, "save", fail)
    response = client.request(
        method, path.format(key=key), content=body, headers=headers
    )
    after = _snapshot(client, key)
    monkeypatch.undo()
    probe = make_counter()

    assert response.status_code == 503
    assert response.headers["content-type"].startswith("text/plain")
    assert "disk I/O error" in response.text
    assert _nixie_headers(response.headers) == {}
    assert after == before
    assert client.get("/").text == f"{key}\n{probe}"


def test_utf8_metadata_round_trips_as_raw_bytes(fetch: Fetch) -> None:
    """Names and descriptions come back as the exact UTF-8 bytes that were sent."""
    name = "Zähler ✓ 計数器".encode()
    description = "naïve café — ünïcödé 🚀".encode()
    created = fetch(
        "POST", "/", headers={"Nixie-Name": name, "Nixie-Description": description}
    )
    key = created.text
    renamed = fetch("PATCH", f"/{key}", headers={"Nixie-Name": "Ω".encode()})
    read = fetch("GET", f"/{key}")

    assert created.status_code == 201
    assert _raw_header(created, b"nixie-name") == name
    assert _raw_header(created, b"nixie-description") == description
    assert renamed.status_code == 204
    assert _raw_header(read, b"nixie-name") == "Ω".encode()
    assert _raw_header(read, b"nixie-description") == description


# Failing requests about a live counter {key}, whose success would carry headers.
ERRORS = [
    pytest.param("GET", "/unknown", b"", {}, 404, id="unknown-get"),
    pytest.param("POST", "/unknown", b"", {}, 404, id="unknown-increment"),
    pytest.param("POST", "/", b"", {"Nixie-Step": "1.5"}, 400, id="create-bad-step"),
    pytest.param("POST", "/", b"x" * 2000, {}, 413, id="create-too-large"),
    pytest.param("PUT", "/{key}", b"seven", {}, 400, id="set-bad-value"),
    pytest.param("PUT", "/{key}", b"1" * 2000, {}, 413, id="set-too-large"),
    pytest.param("PATCH", "/{key}", b"", {"Nixie-Step": ""}, 400, id="patch-empty"),
    pytest.param("POST", "/{key}", b"", {}, 409, id="increment-out-of-range"),
]


@pytest.mark.parametrize(("method", "path", "body", "headers", "status"), ERRORS)
def test_error_responses_carry_no_nixie_headers(
    client: TestClient,
    make_counter: MakeCounter,
    method: str,
    path: str,
    body: bytes,
    headers: dict[str, str],
    status: int,
) -> None:
    """An error is plain text without Nixie-* headers, even about a live counter."""
    key = make_counter(start=INT64_MAX, name="full", description="at the top")

    response = client.request(
        method, path.format(key=key), content=body, headers=headers
    )

    assert response.status_code == status
    assert response.headers["content-type"].startswith("text/plain")
    assert response.text
    assert _nixie_headers(response.headers) == {}


# Requests answered without a body, as (method, path, body, status, length);
# a 204 must not declare a Content-Length at all (RFC 9110, section 8.6).
BODILESS = [
    pytest.param("HEAD", "/{key}", b"", 204, None, id="head"),
    pytest.param("HEAD", "/unknown", b"", 404, "0", id="head-unknown"),
    pytest.param("PUT", "/{key}", b"8", 204, None, id="set"),
    pytest.param("PATCH", "/{key}", b"", 204, None, id="patch"),
    pytest.param("DELETE", "/{key}", b"", 204, None, id="delete"),
]


@pytest.mark.parametrize(("method", "path", "body", "status", "length"), BODILESS)
def test_head_and_204_responses_have_empty_bodies(
    client: TestClient,
    make_counter: MakeCounter,
    method: str,
    path: str,
    body: bytes,
    status: int,
    length: str | None,
) -> None:
    """The app sends no body bytes for HEAD and 204 answers."""
    key = make_counter(name="quiet")

    response = client.request(method, path.format(key=key), content=body)

    assert response.status_code == status
    assert response.content == b""
    assert response.headers.get("content-length") == length


# A valid integer padded with whitespace to one byte more than allowed.
PADDED = b" " * (BODY_MAX_BYTES - 1) + b"12"


def _chunked(data: bytes, size: int = 100) -> Iterator[bytes]:
    # A generator makes httpx stream the body without a Content-Length.
    for start in range(0, len(data), size):
        yield data[start : start + size]


@pytest.mark.parametrize("chunked", [False, True], ids=["declared", "chunked"])
def test_oversized_create_answers_413_and_creates_nothing(
    client: TestClient, chunked: bool
) -> None:
    """A start value of more than 1024 bytes, declared or streamed, creates nothing."""
    response = client.post("/", content=_chunked(PADDED) if chunked else PADDED)

    assert response.status_code == 413
    assert client.get("/").text == ""


def test_largest_allowed_body_is_accepted(client: TestClient) -> None:
    """A start value body of exactly 1024 bytes is read in full and parsed."""
    body = b" " * (BODY_MAX_BYTES - 2) + b"12"

    response = client.post("/", content=body)
    value = client.get(f"/{response.text}").text

    assert response.status_code == 201
    assert value == "12"


def test_oversized_set_answers_413_and_keeps_the_value(
    client: TestClient, make_counter: MakeCounter
) -> None:
    """A PUT body of more than 1024 bytes is refused with 413 and the value stays."""
    key = make_counter(start=4)

    response = client.put(f"/{key}", content=_chunked(PADDED))
    value = client.get(f"/{key}").text

    assert response.status_code == 413
    assert value == "4"


def _nixie_headers(headers: httpx.Headers) -> dict[str, str]:
    return {
        name: value
        for name, value in headers.items()
        if name.lower() in METADATA_HEADERS
    }


def _raw_header(response: httpx.Response, name: bytes) -> bytes:
    values = [value for key, value in response.headers.raw if key.lower() == name]
    assert len(values) == 1, f"{name!r} appears {len(values)} times"
    return values[0]


def raw_request(
    client: TestClient, method: str, path: str, receive: Any
) -> tuple[int | None, bytes]:
    """Call the running app with an ASGI `receive` of the test's own."""
    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    headers = [(b"host", b"testserver"), (b"content-length", b"10")]
    scope = http_scope(method, path, headers)
    assert client.portal is not None
    client.portal.call(client.app, scope, receive, send)
    start = next((m for m in sent if m["type"] == "http.response.start"), {})
    body = b"".join(
        m.get("body", b"") for m in sent if m["type"] == "http.response.body"
    )
    return start.get("status"), body


def test_a_body_that_stops_arriving_is_408(
    client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A body whose sender stalls is refused once the body deadline passes."""
    monkeypatch.setattr("nixie.inputs.BODY_TIMEOUT", 0.05)
    chunks = [{"type": "http.request", "body": b"12", "more_body": True}]

    async def stalls() -> dict[str, Any]:
        if chunks:
            return chunks.pop()
        await anyio.sleep(3600)  # the rest of the body never comes
        raise AssertionError("the body deadline did not fire")

    status, body = raw_request(client, "POST", "/", stalls)

    assert 408 == status
    assert body.startswith(b"start value: body not received in full within 0.05 s")
    assert "" == client.get("/").text


def test_a_client_that_leaves_mid_body_changes_nothing(client: TestClient) -> None:
    """A disconnect before the body is in is answered to nobody, and logged calmly."""

    async def leaves() -> dict[str, Any]:
        return {"type": "http.disconnect"}

    status, body = raw_request(client, "POST", "/", leaves)

    assert 400 == status
    assert body.startswith(b"start value: the client left")
    assert "" == client.get("/").text
