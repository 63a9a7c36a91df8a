"""Scenarios for refused requests: unknown keys, bad input, overflow, size."""

from typing import Any

import httpx
import pytest

from integration._contract import (
    BAD_INTEGERS,
    INT64_MAX,
    INT64_MIN,
    MakeCounter,
    list_keys,
    media_type,
    metadata_headers,
    nixie_headers,
    read_metadata,
    read_value,
    unknown_key,
)

# Bodies no value can be read from: not integers, out of range, not UTF-8.
BAD_BODIES = [value.encode() for value in BAD_INTEGERS] + [
    b"\xff",
    b"4\xff2",
    b"\x00",
]

# A value, however padded, needs far fewer bytes than this.
OVERSIZED_BODY = b"1" * 65536

BAD_NAMES = [
    pytest.param("x" * 201, id="201-ascii"),
    pytest.param("é" * 201, id="201-two-byte"),
    pytest.param("🦉" * 201, id="201-four-byte"),
    pytest.param(b"\xff\xfe", id="not-utf8"),
    pytest.param(b"caf\xe9", id="latin-1"),
    pytest.param(b"\xc3", id="truncated-utf8"),
    pytest.param(b"\xed\xa0\x80", id="utf8-surrogate"),
    pytest.param("a\tb", id="tab"),
    pytest.param("a\u0085b", id="c1-next-line"),
    pytest.param("a\u009fb", id="c1-application-command"),
]

BAD_DESCRIPTIONS = [
    pytest.param("x" * 1001, id="1001-ascii"),
    pytest.param("€" * 1001, id="1001-three-byte"),
    pytest.param(b"\xff\xfe", id="not-utf8"),
    pytest.param(b"caf\xe9", id="latin-1"),
    pytest.param("line\tbreak", id="tab"),
    pytest.param("line\u0085break", id="c1-next-line"),
]

# Control bytes the HTTP layer itself refuses before any field is read.
RAW_CONTROL_BYTES = [
    pytest.param(b"a\x01b", id="start-of-heading"),
    pytest.param(b"a\x1bb", id="escape"),
    pytest.param(b"a\x7fb", id="delete"),
]

# Requests on a key that must name it as unknown.
KEYED_REQUESTS = [
    pytest.param("GET", b"", {}, id="get"),
    pytest.param("POST", b"", {}, id="increment"),
    pytest.param("PUT", b"1", {}, id="set"),
    pytest.param("PATCH", b"", metadata_headers(name="Ghost"), id="patch"),
    pytest.param("DELETE", b"", {}, id="delete"),
]


def attempt_create(
    client: httpx.Client, **request: Any
) -> tuple[httpx.Response, list[str]]:
    """POST / and return the response with the keys that appeared meanwhile.

    Keys that appeared are deleted again so a refused create that wrongly
    succeeded leaves nothing behind on the node.
    """
    before = set(list_keys(client))
    response = client.post("/", **request)
    appeared = [key for key in list_keys(client) if key not in before]

    for key in appeared:
        client.delete(f"/{key}")
    return response, appeared


@pytest.fixture(params=["never-created", "deleted", "malformed"])
def missing_key(
    request: pytest.FixtureRequest, client: httpx.Client, make_counter: MakeCounter
) -> str:
    """Return a key that names no live counter."""
    if request.param == "deleted":
        key = make_counter()
        client.delete(f"/{key}")
        return key
    if request.param == "malformed":
        return "not-a-key"
    return unknown_key()


@pytest.mark.parametrize(("method", "body", "headers"), KEYED_REQUESTS)
def test_missing_key_is_404_naming_the_key(
    client: httpx.Client,
    missing_key: str,
    method: str,
    body: bytes,
    headers: dict[bytes, bytes],
) -> None:
    """Requests on an unknown or deleted key answer 404 'Unknown key <key>'."""
    response = client.request(method, f"/{missing_key}", content=body, headers=headers)

    assert 404 == response.status_code
    assert "text/plain" == media_type(response)
    assert f"Unknown key {missing_key}" in response.text
    assert {} == nixie_headers(response)


def test_head_on_missing_key_is_404_without_body(
    client: httpx.Client, missing_key: str
) -> None:
    """HEAD on an unknown or deleted key answers 404 with no body."""
    response = client.head(f"/{missing_key}")

    assert 404 == response.status_code
    assert b"" == response.content
    assert {} == nixie_headers(response)


@pytest.mark.parametrize("body", BAD_BODIES)
def test_create_refuses_bad_start_value(client: httpx.Client, body: bytes) -> None:
    """A create body that is no 64-bit integer answers 400 and creates nothing."""
    response, appeared = attempt_create(client, content=body)

    assert 400 == response.status_code
    assert "text/plain" == media_type(response)
    assert "start value" in response.text.lower()
    assert {} == nixie_headers(response)
    assert [] == appeared


@pytest.mark.parametrize("step", [*BAD_INTEGERS, ""])
def test_create_refuses_bad_step(client: httpx.Client, step: str) -> None:
    """A bad or empty Nixie-Step on create answers 400 and creates nothing."""
    response, appeared = attempt_create(client, headers=metadata_headers(step=step))

    assert 400 == response.status_code
    assert "Nixie-Step" in response.text
    assert {} == nixie_headers(response)
    assert [] == appeared


@pytest.mark.parametrize("name", BAD_NAMES)
def test_create_refuses_bad_name(client: httpx.Client, name: str | bytes) -> None:
    """A too long, non-UTF-8 or control-laden name answers 400, creating nothing."""
    response, appeared = attempt_create(client, headers=metadata_headers(name=name))

    assert 400 == response.status_code
    assert "Nixie-Name" in response.text
    assert {} == nixie_headers(response)
    assert [] == appeared


@pytest.mark.parametrize("description", BAD_DESCRIPTIONS)
def test_create_refuses_bad_description(
    client: httpx.Client, description: str | bytes
) -> None:
    """A bad description answers 400 naming Nixie-Description, creating nothing."""
    headers = metadata_headers(description=description)

    response, appeared = attempt_create(client, headers=headers)

    assert 400 == response.status_code
    assert "Nixie-Description" in response.text
    assert {} == nixie_headers(response)
    assert [] == appeared


@pytest.mark.parametrize("raw", RAW_CONTROL_BYTES)
def test_create_refuses_raw_control_bytes(client: httpx.Client, raw: bytes) -> None:
    """A name carrying ASCII control bytes answers 400 and creates nothing."""
    response, appeared = attempt_create(client, headers=metadata_headers(name=raw))

    assert 400 == response.status_code
    assert [] == appeared


def test_create_with_one_bad_header_creates_nothing(client: httpx.Client) -> None:
    """Good name and step do not rescue a create whose description is bad."""
    headers = metadata_headers("Fine", "x" * 1001, 3)

    response, appeared = attempt_create(client, content=b"5", headers=headers)

    assert 400 == response.status_code
    assert [] == appeared


@pytest.mark.parametrize("body", [*BAD_BODIES, b"", b" ", b"\r\n"])
def test_set_refuses_bad_value(
    client: httpx.Client, make_counter: MakeCounter, body: bytes
) -> None:
    """A PUT body that is no 64-bit integer answers 400 and changes nothing."""
    key = make_counter(start=21, name="Kept", step=2)

    response = client.put(f"/{key}", content=body)

    assert 400 == response.status_code
    assert "text/plain" == media_type(response)
    assert "value" in response.text.lower()
    assert {} == nixie_headers(response)
    assert "21" == read_value(client, key)
    assert {"nixie-name": "Kept", "nixie-step": "2"} == read_metadata(client, key)


@pytest.mark.parametrize("step", [*BAD_INTEGERS, ""])
def test_patch_refuses_bad_step(
    client: httpx.Client, make_counter: MakeCounter, step: str
) -> None:
    """A bad or empty Nixie-Step on PATCH answers 400 and keeps the old step."""
    key = make_counter(step=9)

    response = client.patch(f"/{key}", headers=metadata_headers(step=step))

    assert 400 == response.status_code
    assert "Nixie-Step" in response.text
    assert {} == nixie_headers(response)
    assert {"nixie-step": "9"} == read_metadata(client, key)


@pytest.mark.parametrize("name", BAD_NAMES)
def test_patch_refuses_bad_name(
    client: httpx.Client, make_counter: MakeCounter, name: str | bytes
) -> None:
    """A bad name on PATCH answers 400 naming Nixie-Name and keeps the old name."""
    key = make_counter(name="Old")

    response = client.patch(f"/{key}", headers=metadata_headers(name=name))

    assert 400 == response.status_code
    assert "Nixie-Name" in response.text
    assert {} == nixie_headers(response)
    assert {"nixie-name": "Old", "nixie-step": "1"} == read_metadata(client, key)


@pytest.mark.parametrize("description", BAD_DESCRIPTIONS)
def test_patch_refuses_bad_description(
    client: httpx.Client, make_counter: MakeCounter, description: str | bytes
) -> None:
    """A bad description on PATCH answers 400 and keeps the old description."""
    key = make_counter(description="Old")

    headers = metadata_headers(description=description)
    response = client.patch(f"/{key}", headers=headers)

    assert 400 == response.status_code
    assert "Nixie-Description" in response.text
    assert {} == nixie_headers(response)
    assert {"nixie-description": "Old", "nixie-step": "1"} == read_metadata(client, key)


def test_patch_with_one_bad_header_changes_nothing(
    client: httpx.Client, make_counter: MakeCounter
) -> None:
    """A PATCH whose step is bad applies neither its name nor its description."""
    key = make_counter(name="Old", description="Kept", step=2)
    headers = metadata_headers("New", "Changed", "1.5")

    response = client.patch(f"/{key}", headers=headers)

    assert 400 == response.status_code
    assert {
        "nixie-name": "Old",
        "nixie-description": "Kept",
        "nixie-step": "2",
    } == read_metadata(client, key)


@pytest.mark.parametrize(
    ("start", "step", "limit"),
    [
        pytest.param(INT64_MAX, 1, INT64_MAX, id="past-max"),
        pytest.param(INT64_MIN, -1, INT64_MIN, id="past-min"),
        pytest.param(1, INT64_MAX, INT64_MAX, id="huge-step"),
        pytest.param(-1, INT64_MIN, INT64_MIN, id="huge-negative-step"),
    ],
)
def test_increment_past_the_range_is_409(
    client: httpx.Client, make_counter: MakeCounter, start: int, step: int, limit: int
) -> None:
    """An increment leaving the 64-bit range answers 409 naming the limit."""
    key = make_counter(start=start, step=step)

    response = client.post(f"/{key}")

    assert 409 == response.status_code
    assert "text/plain" == media_type(response)
    assert str(limit) in response.text
    assert {} == nixie_headers(response)
    assert str(start) == read_value(client, key)


def test_create_refuses_oversized_body(client: httpx.Client) -> None:
    """A create body longer than any value answers 413 and creates nothing."""
    response, appeared = attempt_create(client, content=OVERSIZED_BODY)

    assert 413 == response.status_code
    assert {} == nixie_headers(response)
    assert [] == appeared


def test_set_refuses_oversized_body(
    client: httpx.Client, make_counter: MakeCounter
) -> None:
    """A PUT body longer than any value answers 413 and changes nothing."""
    key = make_counter(start=6)

    response = client.put(f"/{key}", content=OVERSIZED_BODY)

    assert 413 == response.status_code
    assert {} == nixie_headers(response)
    assert "6" == read_value(client, key)


@pytest.mark.parametrize(
    ("method", "content", "headers", "field"),
    [
        ("POST", b"100", {}, "body"),
        ("POST", b"", {"Nixie-Step": "5"}, "Nixie-Step"),
        ("PUT", b"7", {"Nixie-Name": "n"}, "Nixie-Name"),
        ("PATCH", b"7", {"Nixie-Name": "n"}, "body"),
        ("DELETE", b"x", {}, "body"),
    ],
)
def test_input_a_write_would_ignore_is_refused(
    client: httpx.Client,
    make_counter: MakeCounter,
    method: str,
    content: bytes,
    headers: dict[str, str],
    field: str,
) -> None:
    """A body or Nixie-* header that a write does not take is refused, not ignored."""
    key = make_counter(start=3, name="before", step=2)

    response = client.request(method, f"/{key}", content=content, headers=headers)

    assert 400 == response.status_code
    assert response.text.startswith(f"{field}: ")
    assert "3" == read_value(client, key)
    assert {"nixie-name": "before", "nixie-step": "2"} == read_metadata(client, key)


@pytest.mark.parametrize(
    ("method", "path", "content", "headers", "field"),
    [
        ("GET", "/{key}", b"1", {}, "body"),
        ("GET", "/{key}", b"", {"Nixie-Name": "n"}, "Nixie-Name"),
        ("GET", "/{key}", b"", {"Nixie-Step": "5"}, "Nixie-Step"),
        ("GET", "/", b"1", {}, "body"),
        ("GET", "/", b"", {"Nixie-Description": "d"}, "Nixie-Description"),
    ],
)
def test_input_a_read_would_ignore_is_refused(
    client: httpx.Client,
    make_counter: MakeCounter,
    method: str,
    path: str,
    content: bytes,
    headers: dict[str, str],
    field: str,
) -> None:
    """A body or Nixie-* header sent with a read is refused, not ignored."""
    key = make_counter(start=3, name="before", step=2)

    response = client.request(
        method, path.format(key=key), content=content, headers=headers
    )
    head = client.head(f"/{key}", headers=headers or {"Content-Length": "0"})

    assert 400 == response.status_code
    assert response.text.startswith(f"{field}: ")
    assert (400 if headers else 204) == head.status_code
    assert {"nixie-name": "before", "nixie-step": "2"} == read_metadata(client, key)


def test_a_level_given_twice_is_refused(
    client: httpx.Client, make_counter: MakeCounter
) -> None:
    """Two Nixie-Consistency headers are a 400, whichever they name."""
    key = make_counter(start=3)

    response = client.post(
        f"/{key}",
        headers=[("Nixie-Consistency", "all"), ("Nixie-Consistency", "local")],
    )

    assert 400 == response.status_code
    assert "Nixie-Consistency: given more than once" == response.text
    assert "3" == read_value(client, key)


@pytest.mark.parametrize("header", ["Nixie-Stpe", "Nixie-Replay", "Nixie-Foo"])
def test_an_unknown_nixie_header_is_refused(
    client: httpx.Client, make_counter: MakeCounter, header: str
) -> None:
    """A Nixie-* request header Nixie does not take, a typo say, is a 400."""
    key = make_counter(start=3)
    listed = client.get("/").text

    responses = [
        client.post(f"/{key}", headers={header: "5"}),
        client.get(f"/{key}", headers={header: "5"}),
        client.post("/", headers={header: "5"}),
    ]

    assert [400, 400, 400] == [r.status_code for r in responses]
    assert all(r.text.startswith(f"{header}: not a request header") for r in responses)
    assert "3" == read_value(client, key)
    assert listed == client.get("/").text


def test_an_unprintable_key_is_shown_escaped(client: httpx.Client) -> None:
    """A 404 shows control characters of the path escaped, not raw."""
    response = client.get("/a%00b%1b")

    assert 404 == response.status_code
    assert "Unknown key a\\x00b\\x1b" == response.text


def test_trailing_slash_is_not_a_counter(
    client: httpx.Client, make_counter: MakeCounter
) -> None:
    """A key followed by a slash names no counter: 404, not a redirect."""
    key = make_counter()

    response = client.get(f"/{key}/")

    assert 404 == response.status_code
