"""The `/_nixie/` endpoints: status, and refusal of bad peer requests."""

import json

import httpx
import pytest

from nixie import codec, crdt
from nixie.crdt import Stamp
from nixie.digest import BUCKETS, bucket_of
from tests.harness import Cluster, InProcessNode, http_scope

pytestmark = pytest.mark.anyio

SECRET = "s3cret"


@pytest.fixture
async def guarded(cluster: Cluster) -> InProcessNode:
    """A node that requires the cluster secret, holding one counter."""
    member = await cluster.add(cluster_secret=SECRET)
    member.node.create(start=7)
    return member


def sender(replica: str = "peer-replica") -> dict[str, str]:
    return {"replica": replica, "instance": "i1", "url": "http://peer.test:7312"}


def push(**deltas: object) -> dict[str, object]:
    return {"from": sender(), "deltas": deltas, "root": 0, "peers": []}


def good_state() -> dict[str, object]:
    return codec.encode_state(crdt.create(Stamp(1, "peer-replica"), start=3))


async def post(
    member: InProcessNode,
    path: str,
    body: object,
    secret: str | None = SECRET,
    client: tuple[str, int] = ("127.0.0.1", 1),
) -> httpx.Response:
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    headers = {"Authorization": f"Bearer {secret}"} if secret else {}
    transport = httpx.ASGITransport(app=member.app, client=client)
    async with httpx.AsyncClient(transport=transport, base_url="http://n") as http:
        return await http.post(path, content=content, headers=headers)


async def test_health_answers_ok(guarded: InProcessNode) -> None:
    """The health endpoint answers 200 while the node serves."""
    response = await guarded.client.get("/_nixie/health")

    assert (200, "ok") == (response.status_code, response.text)


async def test_cluster_status_describes_node_and_peers(cluster: Cluster) -> None:
    """The status document names the node and each peer's state."""
    a = await cluster.add()
    b = await cluster.add()
    await cluster.rounds()

    status = (await b.client.get("/_nixie/cluster")).json()

    assert status["replica"] == b.node.replica_id
    assert status["url"] == b.url
    [peer] = status["peers"]
    assert (peer["url"], peer["replica"], peer["status"]) == (
        a.url,
        a.node.replica_id,
        "up",
    )
    assert (peer["behind"], peer["repairing"]) == (0, False)
    assert peer["last_ok"] is not None


@pytest.mark.parametrize("secret", [None, "wrong", SECRET + "x", ""])
async def test_gossip_without_the_secret_is_refused(
    guarded: InProcessNode, secret: str | None
) -> None:
    """A push without the right secret gets 401 and changes nothing."""
    before = guarded.node.digest.root

    response = await post(guarded, "/_nixie/gossip", push(k1=good_state()), secret)

    assert response.status_code == 401
    assert before == guarded.node.digest.root


@pytest.mark.parametrize("path", ["/_nixie/gossip", "/_nixie/digest", "/_nixie/repair"])
async def test_every_peer_endpoint_wants_the_secret(
    guarded: InProcessNode, path: str
) -> None:
    """Each peer endpoint refuses a request without the secret."""
    response = await post(guarded, path, {"from": sender()}, secret=None)

    assert response.status_code == 401


async def test_gossip_with_the_secret_is_merged(guarded: InProcessNode) -> None:
    """A well-formed, authenticated push is merged and answered."""
    response = await post(guarded, "/_nixie/gossip", push(k1=good_state()))

    assert response.status_code == 200
    assert guarded.node.get("k1").value == 3
    assert response.json()["root"] == guarded.node.digest.root


async def test_without_a_secret_only_loopback_peers_are_accepted(
    cluster: Cluster,
) -> None:
    """A node without a secret refuses peer requests from other addresses."""
    open_node = await cluster.add()

    remote = await post(
        open_node, "/_nixie/gossip", push(k1=good_state()), None, ("192.0.2.7", 1)
    )
    local = await post(
        open_node, "/_nixie/gossip", push(k2=good_state()), None, ("::1", 1)
    )

    assert (remote.status_code, local.status_code) == (401, 200)
    assert open_node.node.state("k1") is None


@pytest.mark.parametrize(
    "body",
    [
        b"not json",
        b"[]",
        b'{"from": {"replica": "r"}}',
        json.dumps({**push(), "from": {**sender(), "url": "ftp://x"}}).encode(),
        json.dumps(push(k1={"p": {"r": 1.5}})).encode(),
        json.dumps(push(k1={"p": {"r": 2**200}})).encode(),
        json.dumps(push(k1={"p": {"r": -1}})).encode(),
        json.dumps(push(k1={"step": [2**64, 1, "r"], "c": [1, "r"]})).encode(),
        json.dumps(push(k1={"d": [1, "r"], "c": [1, "r"]})).encode(),
        json.dumps(push(**{"k" * 65: good_state()})).encode(),
        json.dumps({**push(k1=good_state()), "peers": "x"}).encode(),
        # A valid counter next to a broken one: nothing of the message applies.
        json.dumps(push(k1=good_state(), k2={"p": {"r": True}})).encode(),
    ],
)
async def test_malformed_push_is_refused_and_changes_nothing(
    guarded: InProcessNode, body: bytes
) -> None:
    """Malformed, out-of-range or impossible states get 400 and change nothing."""
    before = guarded.node.digest.root

    response = await post(guarded, "/_nixie/gossip", body)

    assert response.status_code == 400, response.text
    assert before == guarded.node.digest.root
    assert guarded.node.state("k1") is None


async def test_oversized_payload_is_refused(guarded: InProcessNode) -> None:
    """A payload over the size limit gets 413."""
    response = await post(guarded, "/_nixie/gossip", b" " * (16 * 1024 * 1024 + 1))

    assert response.status_code == 413


@pytest.mark.parametrize("path", ["/_nixie/gossip", "/_nixie/sync"])
async def test_a_peer_leaving_mid_payload_changes_nothing(
    guarded: InProcessNode, path: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A peer that disconnects before its payload is in gets no traceback logged."""
    sent: list[dict[str, object]] = []

    async def leaves() -> dict[str, object]:
        return {"type": "http.disconnect"}

    async def send(message: dict[str, object]) -> None:
        sent.append(message)

    scope = http_scope("POST", path, [(b"authorization", f"Bearer {SECRET}".encode())])
    digest = guarded.node.digest.root

    await guarded.app(scope, leaves, send)

    assert 400 == sent[0]["status"]
    assert "Traceback" not in caplog.text
    assert digest == guarded.node.digest.root


async def test_repair_refuses_keys_outside_its_buckets(guarded: InProcessNode) -> None:
    """A repair carrying a key of a bucket it did not name is refused."""
    other_bucket = (bucket_of("k1") + 1) % BUCKETS
    body = {"from": sender(), "buckets": [other_bucket], "states": {"k1": good_state()}}

    response = await post(guarded, "/_nixie/repair", body)

    assert response.status_code == 400
    assert guarded.node.state("k1") is None


async def test_repair_refuses_buckets_out_of_range(guarded: InProcessNode) -> None:
    """Bucket numbers outside the digest's range are refused."""
    body = {"from": sender(), "buckets": [BUCKETS], "states": {}}

    response = await post(guarded, "/_nixie/repair", body)

    assert response.status_code == 400


async def test_a_clone_of_this_replica_is_refused(guarded: InProcessNode) -> None:
    """A peer claiming this node's replica id from another instance is refused."""
    body = push(k1=good_state())
    body["from"] = sender(replica=guarded.node.replica_id)

    response = await post(guarded, "/_nixie/gossip", body)

    assert response.status_code == 400
    assert "in use here" in response.text


@pytest.mark.parametrize(
    "deltas",
    [
        {"k1": {**good_state(), "c": [2**63 - 1, "peer-replica"]}},
        {"k1": {**good_state(), "name": ["x\r\nSet-Cookie: a=b", 1, "r"]}},
        {"k1": {**good_state(), "name": ["a\x00b", 1, "r"]}},
        {"k1": {**good_state(), "desc": ["\ud800", 1, "r"]}},
        {"line1\nline2": good_state()},
        {"a/b": good_state()},
        {"ctl\x01": good_state()},
        {"\ud800": good_state()},
        {"k1": {"p": {"bad id": 1}, "c": [1, "r"]}},
    ],
)
async def test_poisonous_states_are_refused(
    guarded: InProcessNode, deltas: dict[str, object]
) -> None:
    """States a client could never have made are refused, not replicated."""
    before = guarded.node.digest.root

    response = await post(guarded, "/_nixie/gossip", push(**deltas))

    assert response.status_code == 400, response.text
    assert before == guarded.node.digest.root
    assert guarded.node.create()[1].live


async def test_future_stamp_does_not_move_the_clock(guarded: InProcessNode) -> None:
    """A stamp far in the future is refused and leaves the node's clock alone."""
    clock_before = guarded.node.clock.last
    future = {**good_state(), "c": [guarded.node.clock.last * 2, "peer-replica"]}

    response = await post(guarded, "/_nixie/gossip", push(k1=future))

    assert response.status_code == 400
    assert "ahead of this node's clock" in response.text
    assert guarded.node.clock.now() < clock_before * 2
