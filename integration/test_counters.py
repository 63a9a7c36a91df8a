"""Scenarios for each operation on a single counter, as the contract describes."""

import httpx
import pytest

from integration._contract import (
    INT64_MAX,
    INT64_MIN,
    KEY_PATTERN,
    MakeCounter,
    media_type,
    metadata_headers,
    nixie_headers,
    read_metadata,
    read_value,
)

# Requests about an existing counter, each answered with its metadata headers.
COUNTER_REQUESTS = [
    pytest.param("HEAD", b"", id="head"),
    pytest.param("GET", b"", id="get"),
    pytest.param("POST", b"", id="increment"),
    pytest.param("PUT", b"5", id="set"),
    pytest.param("PATCH", b"", id="patch"),
]

# Integers written in every form the contract accepts, with their value.
GOOD_INTEGERS = [
    pytest.param("42", "42", id="plain"),
    pytest.param("-17", "-17", id="negative"),
    pytest.param("+8", "8", id="plus"),
    pytest.param("007", "7", id="leading-zeros"),
    pytest.param("-0", "0", id="minus-zero"),
    pytest.param(" \t42\r\n", "42", id="whitespace"),
    pytest.param(str(INT64_MAX), str(INT64_MAX), id="max"),
    pytest.param(str(INT64_MIN), str(INT64_MIN), id="min"),
]

# Header values cannot carry surrounding whitespace, so steps skip that form.
GOOD_STEPS = [param for param in GOOD_INTEGERS if param.id != "whitespace"]


def test_create_answers_a_fresh_key(client: httpx.Client) -> None:
    """POST / answers 201 with a new 21-character key as plain text."""
    first = client.post("/")
    second = client.post("/")
    for response in (first, second):
        client.delete(f"/{response.text}")

    assert 201 == first.status_code
    assert 201 == second.status_code
    assert "text/plain" == media_type(first)
    assert KEY_PATTERN.fullmatch(first.text)
    assert KEY_PATTERN.fullmatch(second.text)
    assert first.text != second.text


def test_create_without_body_starts_at_zero(
    client: httpx.Client, make_counter: MakeCounter
) -> None:
    """A counter created without a body has the value 0."""
    key = make_counter()

    assert "0" == read_value(client, key)


@pytest.mark.parametrize(("start", "expected"), GOOD_INTEGERS)
def test_create_with_start_value(
    client: httpx.Client, make_counter: MakeCounter, start: str, expected: str
) -> None:
    """The create body sets the start value, in any accepted integer form."""
    key = make_counter(start=start)

    assert expected == read_value(client, key)


def test_create_defaults_to_step_one_and_no_metadata(client: httpx.Client) -> None:
    """A counter created without headers has step 1 and no name or description."""
    response = client.post("/")
    client.delete(f"/{response.text}")

    assert {"nixie-step": "1"} == nixie_headers(response)


def test_create_answers_with_the_metadata_given(client: httpx.Client) -> None:
    """The 201 response carries the name, description and step just set."""
    headers = metadata_headers("Eggs", "Laid today", -2)

    response = client.post("/", content=b"12", headers=headers)
    client.delete(f"/{response.text}")

    assert 201 == response.status_code
    assert {
        "nixie-name": "Eggs",
        "nixie-description": "Laid today",
        "nixie-step": "-2",
    } == nixie_headers(response)


@pytest.mark.parametrize(("step", "expected"), GOOD_STEPS)
def test_step_accepts_every_integer_form(
    client: httpx.Client, make_counter: MakeCounter, step: str, expected: str
) -> None:
    """Nixie-Step is read like any integer and sent back in plain decimal."""
    key = make_counter(step=step)

    assert {"nixie-step": expected} == read_metadata(client, key)


def test_empty_name_and_description_on_create_stay_unset(
    client: httpx.Client, make_counter: MakeCounter
) -> None:
    """An empty Nixie-Name or Nixie-Description creates a counter without them."""
    key = make_counter(name="", description="")

    assert {"nixie-step": "1"} == read_metadata(client, key)


@pytest.mark.parametrize(
    ("name", "description"),
    [
        pytest.param("Café ☕ 数え", "Zählt Eulen 🦉 und Tassen", id="unicode"),
        pytest.param("é" * 200, "€" * 1000, id="longest-two-and-three-bytes"),
        pytest.param("🦉" * 200, "🦉" * 1000, id="longest-four-bytes"),
        pytest.param("x", "x", id="shortest"),
    ],
)
def test_metadata_round_trips_as_utf8(
    client: httpx.Client, make_counter: MakeCounter, name: str, description: str
) -> None:
    """Names and descriptions come back as the same raw UTF-8 text they went in."""
    key = make_counter(name=name, description=description)

    assert {
        "nixie-name": name,
        "nixie-description": description,
        "nixie-step": "1",
    } == read_metadata(client, key)


@pytest.mark.parametrize(("method", "body"), COUNTER_REQUESTS)
def test_counter_responses_carry_its_metadata(
    client: httpx.Client, make_counter: MakeCounter, method: str, body: bytes
) -> None:
    """Every response about a counter carries its name, description and step."""
    key = make_counter(name="Ducks", description="On the pond", step=3)

    response = client.request(method, f"/{key}", content=body)

    assert response.is_success
    assert {
        "nixie-name": "Ducks",
        "nixie-description": "On the pond",
        "nixie-step": "3",
    } == nixie_headers(response)


@pytest.mark.parametrize(("method", "body"), COUNTER_REQUESTS)
def test_counter_responses_omit_unset_metadata(
    client: httpx.Client, make_counter: MakeCounter, method: str, body: bytes
) -> None:
    """A counter without name or description is answered with Nixie-Step alone."""
    key = make_counter()

    response = client.request(method, f"/{key}", content=body)

    assert response.is_success
    assert {"nixie-step": "1"} == nixie_headers(response)


def test_head_answers_204_without_body(
    client: httpx.Client, make_counter: MakeCounter
) -> None:
    """HEAD on an existing counter answers 204 and sends no body."""
    key = make_counter(start=9)

    response = client.head(f"/{key}")

    assert 204 == response.status_code
    assert b"" == response.content


def test_read_answers_the_value_as_plain_text(
    client: httpx.Client, make_counter: MakeCounter
) -> None:
    """GET on a counter answers 200 with its value as plain text."""
    key = make_counter(start=-31)

    response = client.get(f"/{key}")

    assert 200 == response.status_code
    assert "text/plain" == media_type(response)
    assert "-31" == response.text


def test_increment_adds_the_step_and_answers_the_new_value(
    client: httpx.Client, make_counter: MakeCounter
) -> None:
    """Each POST on a counter adds its step and answers the new value."""
    key = make_counter(start=10, step=5)

    answers = [client.post(f"/{key}") for _ in range(3)]

    assert [200, 200, 200] == [response.status_code for response in answers]
    assert ["15", "20", "25"] == [response.text for response in answers]
    assert "text/plain" == media_type(answers[0])
    assert "25" == read_value(client, key)


def test_increment_with_negative_step_counts_down(
    client: httpx.Client, make_counter: MakeCounter
) -> None:
    """A negative step makes POST subtract, below zero if need be."""
    key = make_counter(start=4, step=-3)

    answers = [client.post(f"/{key}").text for _ in range(3)]

    assert ["1", "-2", "-5"] == answers


def test_increment_up_to_the_limits_is_allowed(
    client: httpx.Client, make_counter: MakeCounter
) -> None:
    """An increment that lands exactly on a 64-bit limit succeeds."""
    rising = make_counter(start=INT64_MAX - 1)
    falling = make_counter(start=INT64_MIN + 1, step=-1)

    up = client.post(f"/{rising}")
    down = client.post(f"/{falling}")

    assert (200, str(INT64_MAX)) == (up.status_code, up.text)
    assert (200, str(INT64_MIN)) == (down.status_code, down.text)


@pytest.mark.parametrize(("body", "expected"), GOOD_INTEGERS)
def test_set_replaces_the_value(
    client: httpx.Client, make_counter: MakeCounter, body: str, expected: str
) -> None:
    """PUT answers 204 without body and the counter then holds the new value."""
    key = make_counter(start=3)

    response = client.put(f"/{key}", content=body.encode())

    assert 204 == response.status_code
    assert b"" == response.content
    assert expected == read_value(client, key)


def test_set_swings_between_the_limits(
    client: httpx.Client, make_counter: MakeCounter
) -> None:
    """A counter can be set from one 64-bit limit to the other and back."""
    key = make_counter(start=INT64_MIN)

    to_max = client.put(f"/{key}", content=str(INT64_MAX).encode())
    at_max = read_value(client, key)
    to_min = client.put(f"/{key}", content=str(INT64_MIN).encode())
    at_min = read_value(client, key)

    assert (204, str(INT64_MAX)) == (to_max.status_code, at_max)
    assert (204, str(INT64_MIN)) == (to_min.status_code, at_min)


def test_increment_continues_from_a_set_value(
    client: httpx.Client, make_counter: MakeCounter
) -> None:
    """After PUT, increments start from the value that was set."""
    key = make_counter(start=1, step=2)
    client.put(f"/{key}", content=b"100")

    response = client.post(f"/{key}")

    assert "102" == response.text


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        pytest.param(
            metadata_headers(name="Geese"),
            {"nixie-name": "Geese", "nixie-description": "Birds", "nixie-step": "4"},
            id="name",
        ),
        pytest.param(
            metadata_headers(description="Loud birds"),
            {
                "nixie-name": "Ducks",
                "nixie-description": "Loud birds",
                "nixie-step": "4",
            },
            id="description",
        ),
        pytest.param(
            metadata_headers(step=-6),
            {"nixie-name": "Ducks", "nixie-description": "Birds", "nixie-step": "-6"},
            id="step",
        ),
        pytest.param(
            {},
            {"nixie-name": "Ducks", "nixie-description": "Birds", "nixie-step": "4"},
            id="nothing",
        ),
    ],
)
def test_patch_changes_only_the_headers_present(
    client: httpx.Client,
    make_counter: MakeCounter,
    change: dict[bytes, bytes],
    expected: dict[str, str],
) -> None:
    """PATCH answers 204 and changes the metadata it names, nothing else."""
    key = make_counter(start=8, name="Ducks", description="Birds", step=4)

    response = client.patch(f"/{key}", headers=change)

    assert 204 == response.status_code
    assert b"" == response.content
    assert expected == nixie_headers(response)
    assert expected == read_metadata(client, key)
    assert "8" == read_value(client, key)


def test_patch_with_only_a_name_keeps_the_step(
    client: httpx.Client, make_counter: MakeCounter
) -> None:
    """Renaming a counter leaves its step, so increments add what they did before."""
    key = make_counter(step=7)

    client.patch(f"/{key}", headers=metadata_headers(name="Renamed"))
    response = client.post(f"/{key}")

    assert "7" == response.text
    assert {"nixie-name": "Renamed", "nixie-step": "7"} == nixie_headers(response)


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        pytest.param(
            metadata_headers(name=""),
            {"nixie-description": "Birds", "nixie-step": "1"},
            id="name",
        ),
        pytest.param(
            metadata_headers(description=""),
            {"nixie-name": "Ducks", "nixie-step": "1"},
            id="description",
        ),
    ],
)
def test_patch_with_empty_header_clears_the_field(
    client: httpx.Client,
    make_counter: MakeCounter,
    change: dict[bytes, bytes],
    expected: dict[str, str],
) -> None:
    """An empty Nixie-Name or Nixie-Description removes that field."""
    key = make_counter(name="Ducks", description="Birds")

    response = client.patch(f"/{key}", headers=change)

    assert 204 == response.status_code
    assert expected == read_metadata(client, key)


def test_patched_step_drives_the_next_increment(
    client: httpx.Client, make_counter: MakeCounter
) -> None:
    """After PATCH of Nixie-Step, POST adds the new step."""
    key = make_counter(start=50)
    client.patch(f"/{key}", headers=metadata_headers(step=-20))

    response = client.post(f"/{key}")

    assert "30" == response.text


def test_description_equal_to_name_is_saved_on_create(
    client: httpx.Client, make_counter: MakeCounter
) -> None:
    """A description identical to the name is kept, not dropped as a duplicate."""
    key = make_counter(name="Same", description="Same")

    assert {
        "nixie-name": "Same",
        "nixie-description": "Same",
        "nixie-step": "1",
    } == read_metadata(client, key)


def test_description_equal_to_name_is_saved_on_patch(
    client: httpx.Client, make_counter: MakeCounter
) -> None:
    """A PATCH setting the description to the name keeps both."""
    key = make_counter(name="Same", description="Different")

    client.patch(f"/{key}", headers=metadata_headers(description="Same"))

    assert {
        "nixie-name": "Same",
        "nixie-description": "Same",
        "nixie-step": "1",
    } == read_metadata(client, key)


def test_creating_with_a_start_value_leaves_other_counters_alone(
    client: httpx.Client, make_counter: MakeCounter
) -> None:
    """A new counter's start value never leaks into any existing counter."""
    untouched = make_counter()
    started = make_counter(start=5)
    counted = make_counter(start=-2)
    client.post(f"/{counted}")

    for start in (100, -50, INT64_MAX, 0):
        make_counter(start=start)

    values = [read_value(client, key) for key in (untouched, started, counted)]

    assert ["0", "5", "-1"] == values


def test_delete_answers_204_without_body_or_metadata(
    client: httpx.Client, make_counter: MakeCounter
) -> None:
    """DELETE answers 204 with no body and no Nixie-* headers."""
    key = make_counter(name="Gone", description="Soon", step=2)

    response = client.delete(f"/{key}")

    assert 204 == response.status_code
    assert b"" == response.content
    assert {} == nixie_headers(response)


def test_deleted_counter_is_gone(
    client: httpx.Client, make_counter: MakeCounter
) -> None:
    """After DELETE, HEAD and GET on the key answer 404."""
    key = make_counter(start=3)
    client.delete(f"/{key}")

    head = client.head(f"/{key}")
    get = client.get(f"/{key}")

    assert 404 == head.status_code
    assert 404 == get.status_code
