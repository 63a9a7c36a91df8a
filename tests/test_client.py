"""The client against an in-memory fake cluster, for both `Client` and `AsyncClient`."""

import contextlib
import inspect
from collections import deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import httpx
import pytest
from fastapi import FastAPI

from nixie.api import create_app
from nixie.client import AsyncClient, Client, Counter, _Contexts
from nixie.errors import (
    BodyTooLarge,
    IdempotencyConflict,
    InvalidInput,
    NixieError,
    OutOfRange,
    PeerError,
    Unavailable,
    UnknownKey,
)
from nixie.settings import Settings

pytestmark = pytest.mark.anyio

NODES = ["http://n1:7312", "http://n2:7312", "http://n3:7312"]
INT64_MAX = 2**63 - 1

# What a fake node does instead of answering: refuse the connection, time out
# before doing anything, do the work and then lose the reply, fail as httpx does
# when it refuses to send a request, answer with a bare status, or give this
# response.
Fault = str | int | httpx.Response


@dataclass
class FakeCounter:
    """One counter of the fake cluster."""

    value: int
    name: str = ""
    description: str = ""
    step: int = 1
    version: int = 1  # what its Nixie-Context tokens count


@dataclass
class FakeCluster:
    """Nodes that share one state at once, record requests and fail on demand."""

    counters: dict[str, FakeCounter] = field(default_factory=dict)
    sent: list[httpx.Request] = field(default_factory=list)
    faults: deque[Fault] = field(default_factory=deque)  # for the next requests
    down: set[str] = field(default_factory=set)  # nodes that refuse connections
    replies: dict[str, tuple[tuple[Any, ...], httpx.Response]] = field(
        default_factory=dict
    )

    def nodes(self) -> list[str]:
        """Return the node each request went to, in order."""
        return [f"{r.url.scheme}://{r.url.host}:{r.url.port}" for r in self.sent]

    def handle(self, request: httpx.Request) -> httpx.Response:
        """Answer `request` as the node it was sent to."""
        self.sent.append(request)
        fault = self.faults.popleft() if self.faults else None
        if fault == "connect" or self.nodes()[-1] in self.down:
            raise httpx.ConnectError("connection refused", request=request)
        if fault == "timeout":
            raise httpx.ReadTimeout("timed out", request=request)
        if fault == "local":
            raise httpx.LocalProtocolError("Illegal header value", request=request)
        if isinstance(fault, int):
            return httpx.Response(fault, text=f"fault {fault}")
        if isinstance(fault, httpx.Response):
            return fault

        response = self._once(request)
        if fault == "lost":
            raise httpx.ReadTimeout("reply lost", request=request)
        return response

    def _once(self, request: httpx.Request) -> httpx.Response:
        """Apply a write at most once per Idempotency-Key, as Nixie nodes do."""
        key = request.headers.get("Idempotency-Key")
        if key is None:
            return self._serve(request)

        fingerprint = (request.method, request.url.path, request.content)
        if key in self.replies:
            seen, response = self.replies[key]
            if seen != fingerprint:
                return httpx.Response(422, text="Idempotency-Key reused")
            return httpx.Response(
                response.status_code,
                headers=[*response.headers.raw, (b"Nixie-Replay", b"true")],
                content=response.content,
            )

        response = self._serve(request)
        self.replies[key] = (fingerprint, response)
        return response

    def _serve(self, request: httpx.Request) -> httpx.Response:
        key = request.url.path.lstrip("/")
        if not key:
            return self._root(request)
        if len(request.content) > 1024:
            return httpx.Response(413, text="body too large")
        counter = self.counters.get(key)
        if counter is None:
            return httpx.Response(404, text=f"Unknown key {key}")

        if request.method == "POST":
            if counter.value + counter.step > INT64_MAX:
                return httpx.Response(409, text="value would exceed 2**63-1")
            counter.value += counter.step
        elif request.method == "PUT":
            counter.value = int(request.content)
        elif request.method == "PATCH":
            self._patch(counter, request)
        elif request.method == "DELETE":
            del self.counters[key]
        status = {"GET": 200, "POST": 200}.get(request.method, 204)
        counter.version += request.method not in ("GET", "HEAD")
        return self._about(key, counter, status, str(counter.value))

    def _root(self, request: httpx.Request) -> httpx.Response:
        if request.method == "GET":
            return httpx.Response(200, text="\n".join(self.counters))

        key = f"k{len(self.counters) + 1}"
        counter = FakeCounter(int(request.content or 0))
        self._patch(counter, request)
        self.counters[key] = counter
        return self._about(key, counter, 201, key)

    @staticmethod
    def _patch(counter: FakeCounter, request: httpx.Request) -> None:
        raw = {name.lower(): value for name, value in request.headers.raw}
        if b"nixie-name" in raw:
            counter.name = raw[b"nixie-name"].decode()
        if b"nixie-description" in raw:
            counter.description = raw[b"nixie-description"].decode()
        if b"nixie-step" in raw:
            counter.step = int(raw[b"nixie-step"])

    @staticmethod
    def _about(
        key: str, counter: FakeCounter, status: int, body: str
    ) -> httpx.Response:
        headers = [
            (b"Nixie-Step", str(counter.step).encode()),
            (b"Nixie-Context", f"{key}@{counter.version}".encode()),
        ]
        if counter.name:
            headers.append((b"Nixie-Name", counter.name.encode()))
        if counter.description:
            headers.append((b"Nixie-Description", counter.description.encode()))
        return httpx.Response(status, headers=headers, text=body)


class Driver:
    """Drive a `Client` or an `AsyncClient` alike: await every method."""

    def __init__(self, client: Client | AsyncClient) -> None:
        self.client = client

    def __getattr__(self, name: str) -> Callable[..., Any]:
        method = getattr(self.client, name)

        async def call(*args: Any, **kwargs: Any) -> Any:
            result = method(*args, **kwargs)
            return await result if inspect.isawaitable(result) else result

        return call

    async def close(self) -> None:
        """Close the client the way its kind closes."""
        if isinstance(self.client, AsyncClient):
            await self.client.aclose()
        else:
            self.client.close()


class MakeClient(Protocol):
    """Build a client of the fake cluster; options go to its constructor."""

    def __call__(self, nodes: list[str] = ..., **options: Any) -> Driver: ...


@pytest.fixture
def fake() -> FakeCluster:
    """Return an empty fake cluster."""
    return FakeCluster()


@pytest.fixture(params=[Client, AsyncClient], ids=["sync", "async"])
async def make_client(
    request: pytest.FixtureRequest, fake: FakeCluster
) -> AsyncIterator[MakeClient]:
    """Yield a factory of clients of `fake`, of each kind, that never wait."""
    opened: list[Driver] = []

    def make(nodes: list[str] = NODES, **options: Any) -> Driver:
        options = {"backoff_initial": 0.0, "backoff_max": 0.0, **options}
        client = request.param(
            nodes, transport=httpx.MockTransport(fake.handle), **options
        )
        opened.append(Driver(client))
        return opened[-1]

    yield make
    for driver in opened:
        await driver.close()


@pytest.fixture
def nixie(make_client: MakeClient) -> Driver:
    """Return a client of the fake cluster with the default options."""
    return make_client()


@pytest.fixture
def first_choice(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make every random node choice take the first node offered."""
    monkeypatch.setattr("nixie.client.random.choice", lambda nodes: nodes[0])


# Results


async def test_create_returns_the_counter(nixie: Driver) -> None:
    """A created counter carries its start value and metadata, UTF-8 included."""
    created = await nixie.create(10, name="visits", description="café ☕", step=-2)

    assert Counter("k1", 10, "visits", "café ☕", -2) == created
    assert created == await nixie.get("k1")


async def test_writes_return_what_the_cluster_holds(nixie: Driver) -> None:
    """Increment returns the new counter; set and update return None and apply."""
    key = (await nixie.create(step=5)).key

    incremented = await nixie.increment(key)
    assert await nixie.set(key, 40) is None
    assert await nixie.update(key, name="n", step=2) is None

    assert Counter(key, 5, step=5) == incremented
    assert Counter(key, 40, name="n", step=2) == await nixie.get(key)


async def test_keys_and_exists_follow_creates_and_deletes(nixie: Driver) -> None:
    """Keys come back in creation order; a deleted key is gone."""
    empty = await nixie.keys()
    first, second = (await nixie.create()).key, (await nixie.create()).key
    await nixie.delete(first)

    assert [] == empty
    assert [second] == await nixie.keys()
    assert (False, True) == (await nixie.exists(first), await nixie.exists(second))


async def test_values_beyond_64_bits_are_read_exactly(
    nixie: Driver, fake: FakeCluster
) -> None:
    """A value merged past the signed 64-bit range is served, so it is read."""
    key = (await nixie.create()).key
    fake.counters[key].value = 2**64

    assert 2**64 == (await nixie.get(key)).value


# Errors


@pytest.mark.parametrize(
    ("status", "error"),
    [
        (400, InvalidInput),
        (409, OutOfRange),
        (413, BodyTooLarge),
        (422, IdempotencyConflict),
        (429, InvalidInput),
    ],
)
async def test_4xx_maps_to_its_error_and_is_not_retried(
    nixie: Driver, fake: FakeCluster, status: int, error: type[NixieError]
) -> None:
    """Each 4xx raises its own error with the node's message, after one request."""
    fake.faults.append(status)

    with pytest.raises(error, match=f"^fault {status}$"):
        await nixie.increment("k1")

    assert 1 == len(fake.sent)


async def test_unknown_key_names_the_key(nixie: Driver) -> None:
    """A 404 raises UnknownKey for the key asked about."""
    with pytest.raises(UnknownKey) as caught:
        await nixie.get("nope")

    assert "nope" == caught.value.key


async def test_the_clusters_own_refusals_arrive_as_errors(nixie: Driver) -> None:
    """Overflow, a reused Idempotency-Key and a huge body come back as errors."""
    key = (await nixie.create(INT64_MAX)).key
    with pytest.raises(OutOfRange):
        await nixie.increment(key)

    await nixie.set(key, 1, idempotency_key="once")
    with pytest.raises(IdempotencyConflict):
        await nixie.set(key, 2, idempotency_key="once")
    with pytest.raises(BodyTooLarge):
        await nixie.set(key, 10**2000)


@pytest.mark.parametrize(
    ("call", "args", "kwargs"),
    [
        ("get", ("",), {}),
        ("get", (7,), {}),
        ("set", ("k1", True), {}),
        ("set", ("k1", 1.5), {}),
        ("create", (0,), {"step": "2"}),
        ("create", (0,), {"name": 3}),
        ("update", ("k1",), {}),
        ("delete", ("k1",), {"idempotency_key": ""}),
        ("delete", ("k1",), {"idempotency_key": "has space"}),
        ("delete", ("k1",), {"idempotency_key": "x" * 129}),
        ("get", ("k1",), {"consistency": "most"}),
    ],
)
async def test_bad_arguments_are_refused_before_sending(
    nixie: Driver, fake: FakeCluster, call: str, args: tuple[Any, ...], kwargs: Any
) -> None:
    """Arguments of the wrong type or shape raise InvalidInput; nothing is sent."""
    with pytest.raises(InvalidInput):
        await getattr(nixie, call)(*args, **kwargs)

    assert [] == fake.sent


@pytest.mark.parametrize(
    ("nodes", "options"),
    [
        ([], {}),
        ("http://n1", {}),
        (["n1:7312"], {}),
        (["ftp://n1"], {}),
        (NODES, {"attempts": 0}),
        (NODES, {"timeout": 0}),
        (NODES, {"cooldown": -1}),
        (NODES, {"consistency": "some"}),
    ],
)
async def test_bad_options_are_refused(
    make_client: MakeClient, nodes: Any, options: dict[str, Any]
) -> None:
    """A client needs http(s) nodes and sensible numbers."""
    with pytest.raises(InvalidInput):
        make_client(nodes, **options)


@pytest.mark.parametrize("call", ["create", "update"])
@pytest.mark.parametrize(
    ("field", "text", "problem"),
    [
        ("name", "a\nb", "control characters"),
        ("name", "a\x01b", "control characters"),
        ("description", "tab\there", "control characters"),
        ("name", "  sp  ", "leading or trailing spaces"),
        ("name", " lead", "leading or trailing spaces"),
        ("description", "trail ", "leading or trailing spaces"),
        ("name", "x" * 201, "201 characters, at most 200"),
        ("description", "x" * 1001, "1001 characters, at most 1000"),
        ("name", "\ud800", "not valid Unicode"),
    ],
)
async def test_texts_a_node_would_refuse_or_alter_are_refused_before_sending(
    nixie: Driver, fake: FakeCluster, call: str, field: str, text: str, problem: str
) -> None:
    """A bad name or description raises InvalidInput naming it; nothing is sent."""
    args = () if call == "create" else ("k1",)

    with pytest.raises(InvalidInput, match=f"^{field}: {problem}"):
        await getattr(nixie, call)(*args, **{field: text})

    assert [] == fake.sent


async def test_texts_at_the_limits_are_sent_as_given(nixie: Driver) -> None:
    """The longest name and description, with inner spaces and Unicode, are kept."""
    name, description = "a b" + "x" * 197, "☕ " + "d" * 998

    created = await nixie.create(name=name, description=description)

    assert (name, description) == (created.name, created.description)


async def test_a_request_httpx_will_not_send_is_invalid_input(
    nixie: Driver, fake: FakeCluster, first_choice: None
) -> None:
    """A request httpx refuses raises InvalidInput at once; no node cools down."""
    fake.faults.append("local")

    with pytest.raises(InvalidInput, match="LocalProtocolError") as caught:
        await nixie.keys()
    await nixie.keys()

    assert isinstance(caught.value.__cause__, httpx.LocalProtocolError)
    assert [NODES[0], NODES[0]] == fake.nodes()


async def test_a_malformed_answer_is_the_nodes_fault(
    nixie: Driver, fake: FakeCluster
) -> None:
    """A 200 whose value is no integer raises PeerError, not ValueError."""
    fake.faults.append(httpx.Response(200, headers={"Nixie-Step": "1"}, text="many"))

    with pytest.raises(PeerError, match="many"):
        await nixie.get("k1")


# Retries and node choice


@pytest.mark.parametrize("fault", ["connect", "timeout", 408, 503])
async def test_a_failed_write_is_retried_elsewhere_with_its_key(
    nixie: Driver, fake: FakeCluster, fault: Fault
) -> None:
    """After a node fails, the write goes to another node, same Idempotency-Key."""
    key = (await nixie.create()).key
    fake.sent.clear()
    fake.faults.append(fault)

    counter = await nixie.increment(key)

    first, second = fake.nodes()
    keys = {request.headers["Idempotency-Key"] for request in fake.sent}
    assert 1 == counter.value
    assert first != second
    assert 1 == len(keys)


async def test_a_write_whose_reply_was_lost_applies_once(
    nixie: Driver, fake: FakeCluster
) -> None:
    """A retry after a lost reply gets the replayed answer, not a second write."""
    key = (await nixie.create()).key
    fake.faults.append("lost")

    assert 1 == (await nixie.increment(key)).value
    assert 1 == fake.counters[key].value


async def test_each_write_gets_its_own_key_unless_given(
    nixie: Driver, fake: FakeCluster
) -> None:
    """Generated keys differ between writes; a caller's key is sent as given."""
    await nixie.create()
    await nixie.create()
    await nixie.increment("k1", idempotency_key="mine-1")

    sent = [request.headers["Idempotency-Key"] for request in fake.sent]
    assert sent[0] != sent[1]
    assert "mine-1" == sent[2]


async def test_a_node_in_cooldown_is_skipped(
    make_client: MakeClient, fake: FakeCluster, first_choice: None
) -> None:
    """Once the first node fails, requests go to others though it is chosen first."""
    nixie = make_client()
    fake.down.add(NODES[0])

    for _ in range(3):
        await nixie.keys()

    assert [NODES[0], NODES[1], NODES[1], NODES[1]] == fake.nodes()


async def test_when_all_cool_down_the_soonest_back_is_tried(
    make_client: MakeClient, fake: FakeCluster, first_choice: None
) -> None:
    """With every node in cooldown, the one that failed first is tried again."""
    nixie = make_client(NODES[:2], attempts=3)
    fake.down.update(NODES)

    with pytest.raises(Unavailable):
        await nixie.keys()

    assert [NODES[0], NODES[1], NODES[0]] == fake.nodes()


async def test_giving_up_raises_unavailable_from_the_last_failure(
    make_client: MakeClient, fake: FakeCluster
) -> None:
    """After the last attempt, Unavailable says how many and chains the cause."""
    nixie = make_client(attempts=4)
    fake.faults.extend(["connect", "timeout", "connect", 503])

    with pytest.raises(Unavailable, match=r"after 4 attempts; last: .* fault 503"):
        await nixie.keys()

    assert 4 == len(fake.sent)


async def test_a_transport_failure_is_kept_as_the_cause(
    make_client: MakeClient, fake: FakeCluster
) -> None:
    """The httpx error that ended the last attempt is reachable from Unavailable."""
    nixie = make_client(attempts=1)
    fake.faults.append("timeout")

    with pytest.raises(Unavailable) as caught:
        await nixie.keys()

    assert isinstance(caught.value.__cause__, Unavailable)
    assert isinstance(caught.value.__cause__.__cause__, httpx.ReadTimeout)


async def test_requests_go_to_the_base_url_with_the_attempt_timeout(
    make_client: MakeClient, fake: FakeCluster
) -> None:
    """A node's trailing slash is dropped, and each attempt has the timeout."""
    nixie = make_client(["http://n1:7312/"], timeout=0.5)

    await nixie.keys()

    (request,) = fake.sent
    assert "http://n1:7312/" == str(request.url)
    assert 0.5 == request.extensions["timeout"]["read"]


# Context tokens and consistency


async def test_the_newest_token_of_a_key_goes_with_its_requests(
    nixie: Driver, fake: FakeCluster
) -> None:
    """Each request about a counter carries its newest token; others carry none."""
    first, second = (await nixie.create()).key, (await nixie.create()).key
    await nixie.increment(first)
    fake.sent.clear()

    await nixie.get(first)
    await nixie.exists(second)
    await nixie.keys()
    await nixie.exists("unseen")

    tokens = [request.headers.get("Nixie-Context") for request in fake.sent]
    assert [f"{first}@2", f"{second}@1", None, None] == tokens


async def test_a_deletes_token_is_kept(nixie: Driver, fake: FakeCluster) -> None:
    """After a delete, requests about the key carry the delete's token."""
    key = (await nixie.create()).key
    await nixie.delete(key)

    assert not await nixie.exists(key)
    assert f"{key}@2" == fake.sent[-1].headers["Nixie-Context"]


async def test_tokens_of_failed_answers_are_ignored(
    nixie: Driver, fake: FakeCluster
) -> None:
    """A token on a 4xx or 5xx answer does not replace the kept one."""
    key = (await nixie.create()).key
    for status in (404, 503):
        bad = httpx.Response(status, headers={"Nixie-Context": "bad"}, text="no")
        fake.faults.append(bad)

    with pytest.raises(UnknownKey):
        await nixie.get(key)
    await nixie.get(key)

    assert f"{key}@1" == fake.sent[-1].headers["Nixie-Context"]


async def test_consistency_goes_with_requests_about_counters(
    make_client: MakeClient, fake: FakeCluster
) -> None:
    """The client's level goes with each counter request; a call's own wins."""
    nixie = make_client(consistency="quorum")

    key = (await nixie.create()).key
    await nixie.get(key, consistency="all")
    await nixie.increment(key)
    await nixie.keys()

    levels = [request.headers.get("Nixie-Consistency") for request in fake.sent]
    assert ["quorum", "all", "quorum", None] == levels


async def test_no_consistency_header_by_default(
    nixie: Driver, fake: FakeCluster
) -> None:
    """Without a level the header is left out, and nodes answer locally."""
    await nixie.create()
    await nixie.get("k1")

    assert all("Nixie-Consistency" not in request.headers for request in fake.sent)


def refusal(key: str) -> httpx.Response:
    """Return a node's answer to a token signed with another cluster secret."""
    text = f"Nixie-Context: not a token this cluster issued for {key}"
    return httpx.Response(400, text=text)


def tokens(fake: FakeCluster) -> list[str | None]:
    """Return the Nixie-Context token of each request sent, None if it had none."""
    return [request.headers.get("Nixie-Context") for request in fake.sent]


async def test_a_refused_token_is_dropped_and_the_read_sent_again(
    nixie: Driver, fake: FakeCluster
) -> None:
    """A node that refuses the kept token gets the read once more, without it."""
    key = (await nixie.create(5)).key
    fake.sent.clear()
    fake.faults.append(refusal(key))

    counter = await nixie.get(key)

    first, second = fake.nodes()
    assert 5 == counter.value
    assert [f"{key}@1", None] == tokens(fake)
    assert first == second


async def test_a_forgotten_token_is_not_sent_again(
    nixie: Driver, fake: FakeCluster
) -> None:
    """After `forget`, requests about the counter carry no token until answered."""
    key = (await nixie.create(5)).key
    await nixie.forget(key)
    fake.sent.clear()

    await nixie.get(key)
    await nixie.get(key)

    assert [None, f"{key}@1"] == tokens(fake)


async def test_a_write_sent_again_without_its_token_keeps_its_key(
    nixie: Driver, fake: FakeCluster
) -> None:
    """A write whose token was refused goes again with its Idempotency-Key."""
    key = (await nixie.create()).key
    fake.sent.clear()
    fake.faults.append(refusal(key))

    counter = await nixie.increment(key)

    first, second = fake.sent
    assert 1 == counter.value == fake.counters[key].value
    assert [f"{key}@1", None] == tokens(fake)
    assert first.headers["Idempotency-Key"] == second.headers["Idempotency-Key"]


async def test_after_a_refused_token_the_fresh_one_is_kept(
    nixie: Driver, fake: FakeCluster, first_choice: None
) -> None:
    """The answer sent without a token gives the next one; no node cools down."""
    key = (await nixie.create()).key
    fake.counters[key].version = 7
    fake.faults.append(refusal(key))

    await nixie.get(key)
    await nixie.get(key)

    assert f"{key}@7" == tokens(fake)[-1]
    assert [NODES[0]] * 4 == fake.nodes()


async def test_a_refusal_without_a_token_is_raised(
    nixie: Driver, fake: FakeCluster
) -> None:
    """When the request sent without a token is refused too, that error is raised."""
    key = (await nixie.create()).key
    fake.sent.clear()
    fake.faults.extend([refusal(key), refusal(key)])

    with pytest.raises(InvalidInput, match=r"^Nixie-Context: not a token"):
        await nixie.get(key)

    assert [f"{key}@1", None] == tokens(fake)


async def test_a_refused_head_is_sent_again_without_its_token(
    nixie: Driver, fake: FakeCluster
) -> None:
    """A 400 to a HEAD carrying a token, bodiless as HEAD answers are, drops it."""
    key = (await nixie.create()).key
    fake.sent.clear()
    fake.faults.append(httpx.Response(400))

    exists = await nixie.exists(key)

    assert exists
    assert [f"{key}@1", None] == tokens(fake)


async def test_other_refusals_keep_the_token(nixie: Driver, fake: FakeCluster) -> None:
    """A 400 about another header, or about a request without a token, is final."""
    key = (await nixie.create()).key
    fake.sent.clear()
    fake.faults.extend(
        [
            httpx.Response(400, text="Nixie-Step: not an integer"),
            httpx.Response(400, text="Nixie-Context: POST / creates a new counter"),
        ]
    )

    with pytest.raises(InvalidInput, match=r"^Nixie-Step"):
        await nixie.update(key, step=2)
    with pytest.raises(InvalidInput, match=r"^Nixie-Context"):
        await nixie.create()
    await nixie.get(key)

    assert [f"{key}@1", None, f"{key}@1"] == tokens(fake)


class Restartable(httpx.AsyncBaseTransport):
    """Send every request to the app now serving, which a test may replace."""

    app: FastAPI

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        return await httpx.ASGITransport(app=self.app).handle_async_request(request)


@contextlib.asynccontextmanager
async def serving(
    transport: Restartable, data_dir: Path, secret: str
) -> AsyncIterator[None]:
    """Run a node on `data_dir` with `secret`, reached through `transport`."""
    transport.app = create_app(
        Settings(data_dir=data_dir, cluster_secret=secret), background=False
    )
    async with transport.app.router.lifespan_context(transport.app):
        yield


async def test_a_restart_with_a_new_secret_blocks_no_counter(tmp_path: Path) -> None:
    """After a node restarts with another cluster secret, old tokens are dropped."""
    transport = Restartable()
    async with AsyncClient(["http://node.test:7312"], transport=transport) as nixie:
        async with serving(transport, tmp_path, "old secret"):
            first, second = (await nixie.create(1)).key, (await nixie.create(5)).key
        async with serving(transport, tmp_path, "new secret"):
            incremented = await nixie.increment(first)
            exists = await nixie.exists(second)
            again = await nixie.get(second)

    assert 2 == incremented.value
    assert exists
    assert 5 == again.value


def test_contexts_forget_the_least_recently_used() -> None:
    """Over capacity, the key used longest ago loses its token."""
    contexts = _Contexts(capacity=2)
    contexts.put("a", "a@1")
    contexts.put("b", "b@1")
    contexts.get("a")
    contexts.put("c", "c@1")

    assert ("a@1", None, "c@1") == tuple(map(contexts.get, "abc"))


def test_contexts_drop_only_the_token_refused() -> None:
    """Dropping a token that was replaced meanwhile keeps the newer one."""
    contexts = _Contexts()
    contexts.put("a", "a@1")
    contexts.put("b", "b@1")
    contexts.put("b", "b@2")
    contexts.drop("a", "a@1")
    contexts.drop("b", "b@1")

    assert (None, "b@2") == (contexts.get("a"), contexts.get("b"))


# Lifecycle


class ClosingTransport(httpx.MockTransport):
    """Answer 200 to everything and note when the client closes it."""

    def __init__(self) -> None:
        super().__init__(lambda request: httpx.Response(200))
        self.closed = False

    def close(self) -> None:
        self.closed = True

    async def aclose(self) -> None:
        self.closed = True


def test_with_closes_the_client() -> None:
    """Leaving a `with` block closes the client's connections."""
    transport = ClosingTransport()
    with Client(NODES, transport=transport) as nixie:
        keys = nixie.keys()

    assert [] == keys
    assert transport.closed


async def test_async_with_closes_the_client() -> None:
    """Leaving an `async with` block closes the client's connections."""
    transport = ClosingTransport()
    async with AsyncClient(NODES, transport=transport) as nixie:
        keys = await nixie.keys()

    assert [] == keys
    assert transport.closed
