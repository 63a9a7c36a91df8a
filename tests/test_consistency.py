"""Nixie-Consistency: quorum and all, on reads and writes."""

import pytest

from tests.harness import Cluster, InProcessNode

pytestmark = pytest.mark.anyio

QUORUM = {"Nixie-Consistency": "quorum"}
ALL = {"Nixie-Consistency": "all"}


def holds(member: InProcessNode, key: str, value: int) -> bool:
    """Tell whether the node's own state has the counter at `value`, no pulls."""
    state = member.node.state(key)
    return state is not None and state.live and state.value == value


async def test_a_quorum_write_is_on_a_quorum_when_acknowledged(
    cluster: Cluster,
) -> None:
    """Without any gossip round, a quorum create and increment sit on 2 of 3."""
    nodes = await cluster.add_three(sync_timeout=0.2)
    cluster.network.partition([nodes[0].url, nodes[1].url], [nodes[2].url])

    created = await nodes[0].client.post("/", content="4", headers=QUORUM)
    key = created.text
    incremented = await nodes[0].client.post(f"/{key}", headers=QUORUM)

    assert created.status_code == 201
    assert (incremented.status_code, incremented.text) == (200, "5")
    assert [holds(m, key, 5) for m in nodes] == [True, True, False]


async def test_an_all_write_is_everywhere_when_acknowledged(cluster: Cluster) -> None:
    """`all` hands the write to every node before answering."""
    nodes = await cluster.add_three(sync_timeout=0.2)

    key = (await nodes[1].client.post("/", headers=ALL)).text
    response = await nodes[1].client.put(f"/{key}", content="9", headers=ALL)

    assert response.status_code == 204
    assert [holds(m, key, 9) for m in nodes] == [True, True, True]


async def test_a_write_short_of_its_level_is_503_and_stays_applied(
    cluster: Cluster,
) -> None:
    """With a node cut off, `all` cannot be met: 503 saying how many answered;
    the write stays where it reached, and gossip spreads it after healing."""
    nodes = await cluster.add_three(sync_timeout=0.2)
    key = (await nodes[0].client.post("/", headers=ALL)).text
    cluster.network.partition([nodes[0].url, nodes[1].url], [nodes[2].url])

    response = await nodes[0].client.post(f"/{key}", headers=ALL)

    assert response.status_code == 503
    assert response.text.startswith("Nixie-Consistency: all needs 3 of 3 nodes; 2")
    assert "stays applied" in response.text
    assert [holds(m, key, 1) for m in nodes] == [True, True, False]
    cluster.heal()
    await cluster.rounds(2)
    assert [holds(m, key, 1) for m in nodes] == [True, True, True]


async def test_a_quorum_read_sees_a_write_no_gossip_has_carried(
    cluster: Cluster,
) -> None:
    """A quorum read on one node overlaps any quorum write on another."""
    a, b, c = await cluster.add_three(sync_timeout=0.2)
    key = (await a.client.post("/", headers=ALL)).text
    cluster.network.partition([a.url, b.url], [c.url])
    assert (await a.client.post(f"/{key}", headers=QUORUM)).status_code == 200
    cluster.heal()

    local = await c.client.get(f"/{key}")
    quorum = await c.client.get(f"/{key}", headers=QUORUM)

    assert local.text == "0"  # c alone has not heard of the write
    assert (quorum.status_code, quorum.text) == (200, "1")


async def test_a_quorum_read_writes_the_merged_state_back(cluster: Cluster) -> None:
    """What a quorum read merged reaches the nodes that answered it."""
    a, b, c = await cluster.add_three(sync_timeout=0.2)
    key = (await a.client.post("/", headers=ALL)).text
    for member in (a, b):  # a write each that nobody else has yet
        cluster.network.partition(
            [member.url], [n.url for n in (a, b, c) if n != member]
        )
        assert (await member.client.post(f"/{key}")).status_code == 200
    cluster.heal()

    read = await c.client.get(f"/{key}", headers=ALL)

    assert read.text == "2"
    assert [holds(m, key, 2) for m in (a, b, c)] == [True, True, True]


async def test_a_quorum_write_asks_one_peer_when_it_answers(cluster: Cluster) -> None:
    """Of three nodes, a quorum write reaches one peer alone when that one answers."""
    a, _, _ = await cluster.add_three(sync_timeout=0.2)
    key = (await a.client.post("/", headers=ALL)).text
    cluster.network.sent.clear()

    response = await a.client.post(f"/{key}", headers=QUORUM)

    assert response.status_code == 200
    assert [path for _, _, path in cluster.network.sent] == ["/_nixie/sync"]


async def test_a_quorum_write_asks_another_peer_when_one_fails(
    cluster: Cluster,
) -> None:
    """A peer that cannot be reached hands the quorum write over to the next."""
    a, b, c = await cluster.add_three(sync_timeout=0.2)
    key = (await a.client.post("/", headers=ALL)).text
    for cut in (b, c):
        cluster.network.partition([a.url], [cut.url])

        response = await a.client.post(f"/{key}", headers=QUORUM)

        assert response.status_code == 200
        assert [holds(m, key, a.node.get(key).value) for m in (a, b, c)] == [
            True,
            cut is c,
            cut is b,
        ]
        cluster.heal()


async def test_a_quorum_read_of_one_peer_needs_no_second_exchange(
    cluster: Cluster,
) -> None:
    """A quorum read that one peer answered leaves both nodes merged already."""
    a, b, c = await cluster.add_three(sync_timeout=0.2)
    key = (await a.client.post("/", headers=ALL)).text
    cluster.network.partition([a.url], [b.url, c.url])
    assert (await a.client.post(f"/{key}")).status_code == 200
    cluster.heal()
    cluster.network.sent.clear()

    read = await b.client.get(f"/{key}", headers=QUORUM)

    assert len(cluster.network.sent) == 1
    (_, asked, _) = cluster.network.sent[0]
    peer, expected = (a, 1) if asked == a.url else (c, 0)
    assert (read.status_code, read.text) == (200, str(expected))
    assert holds(b, key, expected)
    assert holds(peer, key, expected)


async def test_forgotten_peers_still_count_for_a_quorum(cluster: Cluster) -> None:
    """A node cut off until it forgets its peers still needs 2 of 3 for quorum."""
    a, b, c = await cluster.add_three(sync_timeout=0.2)
    key = (await a.client.post("/", headers=ALL)).text
    await cluster.rounds(1)  # a learns b's and c's replica ids
    cluster.network.partition([a.url], [b.url, c.url])
    membership = a.gossiper.membership
    for peer in list(membership.peers.values()):
        for _ in range(3):
            membership.failed(peer, "cut off", now=0.0)
    membership.forget_departed(now=1e9)

    quorum = await a.client.post(f"/{key}", headers=QUORUM)
    everyone = await a.client.get(f"/{key}", headers=ALL)

    assert membership.peers == {}
    assert quorum.status_code == 503
    assert quorum.text.startswith("Nixie-Consistency: quorum needs 2 of 3 nodes; 1")
    assert everyone.status_code == 503


async def test_a_read_short_of_its_level_is_503(cluster: Cluster) -> None:
    """A node cut off from both peers cannot read at quorum."""
    a, b, c = await cluster.add_three(sync_timeout=0.2)
    key = (await a.client.post("/", headers=ALL)).text
    cluster.network.partition([a.url], [b.url, c.url])

    read = await a.client.get(f"/{key}", headers=QUORUM)
    head = await a.client.head(f"/{key}", headers=QUORUM)
    local = await a.client.get(f"/{key}", headers={"Nixie-Consistency": "local"})

    assert read.status_code == 503
    assert read.text.startswith("Nixie-Consistency: quorum needs 2 of 3 nodes; 1")
    assert head.status_code == 503
    assert (local.status_code, local.text) == (200, "0")


async def test_a_lone_node_meets_every_level(cluster: Cluster) -> None:
    """One node is a quorum and all of itself."""
    a = await cluster.add()
    key = (await a.client.post("/", headers=ALL)).text

    assert (await a.client.post(f"/{key}", headers=ALL)).text == "1"
    assert (await a.client.get(f"/{key}", headers=QUORUM)).text == "1"


@pytest.mark.parametrize("level", ["strong", "", "QUORUMS", "one"])
async def test_unknown_levels_are_400(cluster: Cluster, level: str) -> None:
    """A level Nixie does not know is refused, naming the levels it does."""
    a = await cluster.add()
    key = (await a.client.post("/")).text

    response = await a.client.post(f"/{key}", headers={"Nixie-Consistency": level})

    assert response.status_code == 400
    assert response.text == "Nixie-Consistency: expected one of local, quorum, all"
    assert (await a.client.get(f"/{key}")).text == "0"


async def test_a_replayed_write_waits_for_its_level_too(cluster: Cluster) -> None:
    """A retry after a 503 at `all` is answered once the level holds."""
    nodes = await cluster.add_three(sync_timeout=0.2)
    key = (await nodes[0].client.post("/", headers=ALL)).text
    headers = {**ALL, "Idempotency-Key": "once"}
    cluster.network.partition([nodes[0].url], [nodes[1].url, nodes[2].url])
    assert (await nodes[0].client.post(f"/{key}", headers=headers)).status_code == 503

    still = await nodes[0].client.post(f"/{key}", headers=headers)
    cluster.heal()
    retried = await nodes[0].client.post(f"/{key}", headers=headers)

    assert still.status_code == 503
    assert (retried.status_code, retried.text) == (200, "1")
    assert retried.headers["nixie-replay"] == "true"
    assert [holds(m, key, 1) for m in nodes] == [True, True, True]


async def test_a_node_reached_under_another_url_is_not_a_second_vote(
    cluster: Cluster,
) -> None:
    """A peer URL that leads back to the node itself does not count towards a
    level, and is dropped from the peers once recognised."""
    a = await cluster.add()
    alias = "http://alias.test:7312"
    cluster.network.apps[alias] = a.app
    a.gossiper.membership.learn(alias)
    key = (await a.client.post("/")).text

    first = await a.client.post(f"/{key}", headers=QUORUM)
    second = await a.client.post(f"/{key}", headers=QUORUM)

    assert first.status_code == 503
    assert "needs 2 of 2 nodes; 1 answered" in first.text
    assert alias not in a.gossiper.membership.peers
    assert (second.status_code, second.text) == (200, "2")


@pytest.mark.parametrize(
    "headers",
    [QUORUM, ALL, {"Nixie-Context": "x"}, {"Idempotency-Key": "k"}],
    ids=["quorum", "all", "context", "idempotency"],
)
async def test_the_key_list_refuses_what_it_cannot_honour(
    cluster: Cluster, headers: dict[str, str]
) -> None:
    """GET / lists this node's keys; asking it for more is a 400, not ignored."""
    a = await cluster.add()
    await a.client.post("/")

    response = await a.client.get("/", headers=headers)

    assert response.status_code == 400
    assert response.text.split(":")[0] in (
        "Nixie-Context, Nixie-Consistency",
        "Idempotency-Key",
    )
