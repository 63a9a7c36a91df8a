"""A sweep of odd inputs over every method: none may make the node fail."""

import httpx
import pytest

from integration._contract import BAD_INTEGERS, KEY_PATTERN, MakeCounter, unknown_key

METHODS = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"]

ODD_BODIES = [
    *(value.encode() for value in BAD_INTEGERS),
    b"",
    b" ",
    b"\r\n",
    b"\x00",
    b"\xff\xfe",
    b"\xef\xbb\xbf1",  # a byte order mark before the digit
    b"1\x00",
    b'{"value": 1}',
    b"1" * 4096,
    b" " * 4096 + b"1",
]

# Header values at the edges of a text field: empty, not UTF-8, a C1 control
# character, far too long.
ODD_TEXT = [b"", b"\xff\xfe", b"\xc3", "a\u0085b".encode(), "é".encode() * 5000]
ODD_STEPS = [*(value.encode() for value in BAD_INTEGERS), *ODD_TEXT]

# Each input is a request body with the headers sent along with it.
ODD_INPUTS = [
    *(pytest.param(body, [], id=f"body-{i}") for i, body in enumerate(ODD_BODIES)),
    *(
        pytest.param(b"", [(b"Nixie-Step", step)], id=f"step-{i}")
        for i, step in enumerate(ODD_STEPS)
    ),
    *(
        pytest.param(b"", [(header, text)], id=f"{header.decode()}-{i}")
        for header in (b"Nixie-Name", b"Nixie-Description")
        for i, text in enumerate(ODD_TEXT)
    ),
    pytest.param(b"", [(b"Nixie-Step", b"1"), (b"Nixie-Step", b"2")], id="two-steps"),
    pytest.param(b"", [(b"Nixie-Name", b"a"), (b"Nixie-Name", b"b")], id="two-names"),
    pytest.param(b"5", [(b"Content-Type", b"application/json")], id="json-type"),
    pytest.param(b"5", [(b"Content-Encoding", b"gzip")], id="gzip-claimed"),
]

ODD_PATHS = [
    "/%FF",
    "/%00",
    "/%20",
    "/" + "a" * 4000,
    "/ключ",
    "/{key}/extra",
    "/{key}%2Fextra",
    "/{key}%20",
    "/{key}?start=1",
    "//{key}",
    "/..",
]


@pytest.fixture(params=["root", "counter", "unknown"])
def target(request: pytest.FixtureRequest, make_counter: MakeCounter) -> str:
    """Return the path of the collection, of a live counter or of a key never issued."""
    if request.param == "counter":
        return f"/{make_counter(name='Odd', step=2)}"
    if request.param == "unknown":
        return f"/{unknown_key()}"
    return "/"


@pytest.mark.parametrize(("body", "headers"), ODD_INPUTS)
@pytest.mark.parametrize("method", METHODS)
def test_odd_input_never_fails_the_node(
    client: httpx.Client,
    target: str,
    method: str,
    body: bytes,
    headers: list[tuple[bytes, bytes]],
) -> None:
    """No body or Nixie-* header, on any method and target, answers 5xx."""
    response = client.request(method, target, content=body, headers=headers)
    _delete_if_created(client, response)

    assert response.status_code < 500, response.text


@pytest.mark.parametrize("path", ODD_PATHS)
@pytest.mark.parametrize("method", METHODS)
def test_odd_path_never_fails_the_node(
    client: httpx.Client, make_counter: MakeCounter, method: str, path: str
) -> None:
    """No odd path, on any method, answers 5xx."""
    key = make_counter()

    response = client.request(method, path.format(key=key), content=b"1")
    _delete_if_created(client, response)

    assert response.status_code < 500, response.text


def _delete_if_created(client: httpx.Client, response: httpx.Response) -> None:
    """Delete the counter a sweep request created, keeping the node tidy."""
    if response.status_code == 201 and KEY_PATTERN.fullmatch(response.text):
        client.delete(f"/{response.text}")
