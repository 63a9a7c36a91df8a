"""Scenarios for ``GET /``, the list of keys."""

import httpx

from integration._contract import KEY_PATTERN, MakeCounter, list_keys, media_type


def test_listing_is_plain_text_one_key_a_line(
    client: httpx.Client, make_counter: MakeCounter
) -> None:
    """GET / answers 200 with well-formed keys, one a line, no trailing newline."""
    make_counter()

    response = client.get("/")
    lines = response.text.split("\n")

    assert 200 == response.status_code
    assert "text/plain" == media_type(response)
    assert not response.text.endswith("\n")
    assert [] == [line for line in lines if not KEY_PATTERN.fullmatch(line)]


def test_new_keys_are_listed_in_creation_order(
    client: httpx.Client, make_counter: MakeCounter
) -> None:
    """Keys of new counters appear in GET / in the order they were created."""
    created = [make_counter(start=start) for start in range(5)]

    listed = [key for key in list_keys(client) if key in created]

    assert created == listed


def test_deleted_keys_leave_the_listing(
    client: httpx.Client, make_counter: MakeCounter
) -> None:
    """A deleted counter's key disappears from GET / while its siblings stay."""
    first, doomed, last = make_counter(), make_counter(), make_counter()
    client.delete(f"/{doomed}")

    listed = [key for key in list_keys(client) if key in (first, doomed, last)]

    assert [first, last] == listed
