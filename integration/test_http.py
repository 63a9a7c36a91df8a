"""Wire-level scenarios: bodiless responses keep a kept-alive connection in step."""

import re
import socket
import ssl
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import pytest

from integration._contract import MakeCounter, unknown_key

# Seconds a raw socket waits for the node before the scenario fails.
SOCKET_TIMEOUT = 10.0

# How a response begins; bytes before it are a body the last response
# should not have sent.
STATUS_LINE = re.compile(r"HTTP/1\.1 ([0-9]{3})(?: |$)")

# Requests on a live counter that the node answers 204, hence without a body.
NO_CONTENT_REQUESTS = [
    pytest.param("HEAD", b"", id="head"),
    pytest.param("PUT", b"17", id="set"),
    pytest.param("PATCH", b"", id="patch"),
    pytest.param("DELETE", b"", id="delete"),
]


@dataclass
class RawResponse:
    """One HTTP/1.1 response as it came off the wire."""

    status: int
    headers: dict[str, str]
    body: bytes


class RawConnection:
    """A single kept-alive HTTP/1.1 connection, read without any client library."""

    def __init__(self, base_url: str) -> None:
        url = httpx.URL(base_url)
        port = url.port or (443 if url.scheme == "https" else 80)
        sock = socket.create_connection((url.host, port), timeout=SOCKET_TIMEOUT)
        if url.scheme == "https":
            context = ssl.create_default_context()
            sock = context.wrap_socket(sock, server_hostname=url.host)

        self._socket = sock
        self._host = url.netloc.decode("ascii")
        self._prefix = url.path.rstrip("/")
        self._buffer = b""

    def close(self) -> None:
        """Close the connection."""
        self._socket.close()

    def send(self, method: str, path: str, body: bytes = b"") -> None:
        """Send one request, asking to keep the connection open."""
        head = (
            f"{method} {self._prefix}{path} HTTP/1.1\r\n"
            f"Host: {self._host}\r\n"
            "Connection: keep-alive\r\n"
            f"Content-Length: {len(body)}\r\n"
            "\r\n"
        )
        self._socket.sendall(head.encode("ascii") + body)

    def receive(self, *, bodiless: bool = False) -> RawResponse:
        """Read the next response; ``bodiless`` reads none, as after HEAD."""
        head = self._read_until(b"\r\n\r\n")
        status_line, *header_lines = head.decode("latin-1").split("\r\n")
        match = STATUS_LINE.match(status_line)
        if match is None:
            raise ValueError(f"not an HTTP/1.1 status line: {status_line!r}")
        status = int(match[1])
        headers: dict[str, str] = {}
        for line in header_lines:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()

        if bodiless or status in (204, 304):
            return RawResponse(status, headers, b"")
        if headers.get("transfer-encoding", "").lower() == "chunked":
            return RawResponse(status, headers, self._read_chunked())
        length = int(headers.get("content-length", "0"))
        return RawResponse(status, headers, self._read_exactly(length))

    def _read_chunked(self) -> bytes:
        """Read a chunked body up to and including its last, empty chunk."""
        body = b""
        while True:
            size = int(self._read_until(b"\r\n").split(b";")[0], 16)
            body += self._read_exactly(size)
            self._read_exactly(2)
            if size == 0:
                return body

    def _read_until(self, marker: bytes) -> bytes:
        """Return the bytes before ``marker``, consuming both."""
        while marker not in self._buffer:
            self._fill()
        found, _, self._buffer = self._buffer.partition(marker)
        return found

    def _read_exactly(self, size: int) -> bytes:
        """Return the next ``size`` bytes."""
        while len(self._buffer) < size:
            self._fill()
        found, self._buffer = self._buffer[:size], self._buffer[size:]
        return found

    def _fill(self) -> None:
        """Append whatever the node sends next, failing if it hung up."""
        chunk = self._socket.recv(65536)
        if not chunk:
            raise ConnectionError(
                f"node closed the connection; unread {self._buffer!r}"
            )
        self._buffer += chunk


@pytest.fixture
def connection(base_url: str) -> Iterator[RawConnection]:
    """Yield a raw kept-alive connection to the node under test."""
    connection = RawConnection(base_url)
    yield connection
    connection.close()


@pytest.mark.parametrize(("method", "body"), NO_CONTENT_REQUESTS)
def test_no_content_response_keeps_the_connection_in_step(
    connection: RawConnection, make_counter: MakeCounter, method: str, body: bytes
) -> None:
    """A 204 sends no body bytes, so the next response on the socket parses."""
    key = make_counter(name="Wire")
    witness = make_counter(start=42)

    connection.send(method, f"/{key}", body)
    first = connection.receive()
    connection.send("GET", f"/{witness}")
    second = connection.receive()

    assert 204 == first.status
    assert "0" == first.headers.get("content-length", "0")
    assert (200, b"42") == (second.status, second.body)


def test_head_on_missing_key_keeps_the_connection_in_step(
    connection: RawConnection, make_counter: MakeCounter
) -> None:
    """A 404 to HEAD sends no body bytes, so the next response on the socket parses."""
    witness = make_counter(start=-8)

    connection.send("HEAD", f"/{unknown_key()}")
    first = connection.receive(bodiless=True)
    connection.send("GET", f"/{witness}")
    second = connection.receive()

    assert 404 == first.status
    assert (200, b"-8") == (second.status, second.body)


def test_many_requests_share_one_connection(
    connection: RawConnection, make_counter: MakeCounter
) -> None:
    """Alternating bodiless and bodied responses all arrive on one connection."""
    key = make_counter(step=3)
    expected = [
        answer
        for value in (3, 6, 9, 12, 15)
        for answer in ((204, b""), (200, str(value).encode()))
    ]

    answers: list[tuple[int, bytes]] = []
    for _ in range(5):
        connection.send("HEAD", f"/{key}")
        head = connection.receive(bodiless=True)
        connection.send("POST", f"/{key}")
        post = connection.receive()
        answers += [(head.status, head.body), (post.status, post.body)]

    assert expected == answers
