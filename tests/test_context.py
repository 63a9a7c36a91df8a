"""Nixie-Context tokens: read your writes on any node, or get a 503."""

import base64

import pytest
from hypothesis import given
from hypothesis import strategies as st

from nixie.context import ContextCodec, satisfies
from nixie.crdt import CounterState, Stamp
from nixie.errors import InvalidInput
from tests.harness import Cluster

CODEC = ContextCodec("secret")
KEY = "AAAAAAAAAAAAAAAAAAAAA"
REPLICAS = ["r" + "x" * 21, "s" + "y" * 21, "t" + "z" * 21]

versions = st.dictionaries(st.sampled_from(REPLICAS), st.integers(1, 2**40))


@given(versions)
def test_a_state_satisfies_its_own_token(seen: dict[str, int]) -> None:
    """The token of a state is satisfied by it, and by nothing it lacks."""
    state = CounterState(created=Stamp(1, "r"), versions=seen)
    context = CODEC.parse(KEY, CODEC.issue(KEY, state))

    assert satisfies(state, context)
    for replica, writes in seen.items():
        behind = CounterState(versions={**seen, replica: writes - 1})
        assert not satisfies(behind, context)


@given(versions, versions)
def test_satisfied_exactly_when_every_version_is_reached(
    have: dict[str, int], token: dict[str, int]
) -> None:
    """A node satisfies a token when its writes per replica reach the token's."""
    context = CODEC.parse(KEY, CODEC.issue(KEY, CounterState(versions=token)))
    expected = all(have.get(r, 0) >= n for r, n in token.items())

    assert satisfies(CounterState(versions=have), context) == expected


def test_a_tombstone_satisfies_every_token() -> None:
    """A deleted counter has seen all there is to see; a live one has not
    seen a deletion."""
    live = CounterState(created=Stamp(1, "r"), versions={REPLICAS[0]: 9})
    dead = CounterState(deleted=Stamp(2, "r"))
    dead_token = CODEC.parse(KEY, CODEC.issue(KEY, dead))

    assert satisfies(dead, CODEC.parse(KEY, CODEC.issue(KEY, live)))
    assert not satisfies(live, dead_token)
    assert not satisfies(None, dead_token)


def test_tokens_are_small_for_three_replicas() -> None:
    """A 3-node cluster's token, even after billions of writes, stays compact."""
    state = CounterState(versions={r: 2**40 for r in REPLICAS})

    assert len(CODEC.issue(KEY, state)) < 100


@pytest.mark.parametrize(
    "mangle",
    [
        lambda t: t[:-2],
        lambda t: t[:-1] + ("A" if t[-1] != "A" else "B"),
        lambda t: "Q" + t[1:] if t[0] != "Q" else "R" + t[1:],
        lambda t: "!!!",
        lambda t: "",
        lambda t: "\u00e9" * 10,
        lambda t: "A" * 2000,
    ],
    ids=["cut", "edited-mac", "edited-payload", "not-base64", "empty", "text", "long"],
)
def test_mangled_tokens_are_refused(mangle: object) -> None:
    """Anything but a token this cluster issued for this key is InvalidInput."""
    token = CODEC.issue(KEY, CounterState(versions={REPLICAS[0]: 3}))

    with pytest.raises(InvalidInput, match="Nixie-Context"):
        CODEC.parse(KEY, mangle(token))  # type: ignore[operator]


def test_tokens_are_bound_to_their_key_and_secret() -> None:
    """A token for another counter, or from another cluster, is refused."""
    token = CODEC.issue(KEY, CounterState(versions={REPLICAS[0]: 3}))

    with pytest.raises(InvalidInput, match="not a token this cluster issued"):
        CODEC.parse("B" * 21, token)
    with pytest.raises(InvalidInput, match="not a token this cluster issued"):
        ContextCodec("other").parse(KEY, token)


def test_a_forged_token_with_a_valid_shape_is_refused() -> None:
    """Raising a count in a token breaks its signature."""
    token = CODEC.issue(KEY, CounterState(versions={REPLICAS[0]: 3}))
    raw = bytearray(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
    raw[7] = 100  # the count follows the format byte and a 6-byte tag
    forged = base64.urlsafe_b64encode(bytes(raw)).rstrip(b"=").decode()

    with pytest.raises(InvalidInput):
        CODEC.parse(KEY, forged)


# Across in-process nodes


@pytest.mark.anyio
async def test_a_token_makes_another_node_serve_the_write_at_once(
    cluster: Cluster,
) -> None:
    """No gossip round has run, yet the node given the token answers the write."""
    a, b, c = await cluster.add_three()
    created = await a.client.post("/", content="5")
    key = created.text

    without = await b.client.get(f"/{key}")
    with_token = await b.client.get(
        f"/{key}", headers={"Nixie-Context": created.headers["nixie-context"]}
    )
    incremented = await b.client.post(
        f"/{key}", headers={"Nixie-Context": with_token.headers["nixie-context"]}
    )
    read = await c.client.get(
        f"/{key}", headers={"Nixie-Context": incremented.headers["nixie-context"]}
    )

    assert without.status_code == 404  # gossip has not carried it
    assert (with_token.status_code, with_token.text) == (200, "5")
    assert (incremented.status_code, incremented.text) == (200, "6")
    assert (read.status_code, read.text) == (200, "6")


@pytest.mark.anyio
async def test_a_token_is_pulled_from_the_node_that_wrote_it(cluster: Cluster) -> None:
    """A node catching up on a token asks the writer first, and only the writer."""
    a, b, c = await cluster.add_three()
    await cluster.rounds(1)  # the nodes learn each other's replica ids
    for writer, reader in [(a, c), (c, b), (b, a)]:
        created = await writer.client.post("/")
        token = {"Nixie-Context": created.headers["nixie-context"]}
        cluster.network.sent.clear()

        read = await reader.client.get(f"/{created.text}", headers=token)

        assert (read.status_code, read.text) == (200, "0")
        assert cluster.network.sent == [(reader.url, writer.url, "/_nixie/sync")]


@pytest.mark.anyio
async def test_a_token_is_pulled_from_another_node_when_the_writer_is_cut_off(
    cluster: Cluster,
) -> None:
    """With the writer out of reach, a node that has the write supplies it."""
    a, b, c = await cluster.add_three()
    await cluster.rounds(1)
    created = await a.client.post("/", content="3")
    token = {"Nixie-Context": created.headers["nixie-context"]}
    cluster.network.partition([a.url, b.url], [c.url])
    await a.round()  # b merges the counter, c does not
    cluster.network.heal()
    cluster.network.partition([a.url], [b.url, c.url])
    cluster.network.sent.clear()

    read = await c.client.get(f"/{created.text}", headers=token)

    assert (read.status_code, read.text) == (200, "3")
    assert cluster.network.sent == [(c.url, b.url, "/_nixie/sync")]


@pytest.mark.anyio
async def test_a_partitioned_node_answers_503_never_a_stale_value(
    cluster: Cluster,
) -> None:
    """Cut off from the only node holding the write, the node refuses; once
    the partition heals, the same request answers the written value."""
    a, b, c = await cluster.add_three(sync_timeout=0.2)
    key = (await a.client.post("/", content="1")).text
    await cluster.rounds()
    written = await a.client.post(f"/{key}")
    token = {"Nixie-Context": written.headers["nixie-context"]}
    cluster.network.partition([a.url], [b.url, c.url])

    refused = await b.client.get(f"/{key}", headers=token)
    write_refused = await b.client.post(f"/{key}", headers=token)
    head = await b.client.head(f"/{key}", headers=token)
    cluster.heal()
    served = await b.client.get(f"/{key}", headers=token)

    assert refused.status_code == 503
    assert refused.text.startswith("Nixie-Context:")
    assert "nixie-step" not in refused.headers
    assert write_refused.status_code == 503
    assert (head.status_code, head.content) == (503, b"")
    assert (await a.client.get(f"/{key}")).text == "2"  # the refused write did not land
    assert (served.status_code, served.text) == (200, "2")


@pytest.mark.anyio
async def test_a_deletion_token_makes_other_nodes_answer_404(
    cluster: Cluster,
) -> None:
    """After a delete, the delete's token makes any node see the deletion."""
    a, b, _ = await cluster.add_three()
    key = (await a.client.post("/")).text
    await cluster.rounds()

    deleted = await a.client.delete(f"/{key}")
    read = await b.client.get(
        f"/{key}", headers={"Nixie-Context": deleted.headers["nixie-context"]}
    )

    assert deleted.status_code == 204
    assert read.status_code == 404


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("token", "message"),
    [
        ("garbage", "Nixie-Context: not a token"),
        ("A" * 30, "Nixie-Context: not a token this cluster issued"),
    ],
)
async def test_bad_tokens_are_400(cluster: Cluster, token: str, message: str) -> None:
    """A malformed or forged token is the client's mistake, said plainly."""
    a = await cluster.add()
    key = (await a.client.post("/")).text

    response = await a.client.get(f"/{key}", headers={"Nixie-Context": token})
    head = await a.client.head(f"/{key}", headers={"Nixie-Context": token})

    assert response.status_code == 400
    assert response.text.startswith(message)
    assert head.status_code == 400


@pytest.mark.anyio
async def test_a_token_for_another_counter_is_refused(cluster: Cluster) -> None:
    """Tokens name their counter: one counter's token says nothing of another."""
    a = await cluster.add()
    first = await a.client.post("/")
    other = (await a.client.post("/")).text

    response = await a.client.post(
        f"/{other}", headers={"Nixie-Context": first.headers["nixie-context"]}
    )

    assert response.status_code == 400
    assert (await a.client.get(f"/{other}")).text == "0"


@pytest.mark.anyio
async def test_every_answer_about_a_counter_carries_a_token(
    cluster: Cluster,
) -> None:
    """Create, check, read, increment, set, patch and delete all hand one out."""
    a = await cluster.add()
    created = await a.client.post("/")
    key = created.text
    answers = [
        created,
        await a.client.head(f"/{key}"),
        await a.client.get(f"/{key}"),
        await a.client.post(f"/{key}"),
        await a.client.put(f"/{key}", content="3"),
        await a.client.patch(f"/{key}", headers={"Nixie-Name": "n"}),
        await a.client.delete(f"/{key}"),
    ]

    assert all("nixie-context" in r.headers for r in answers)
    assert len({r.headers["nixie-context"] for r in answers}) == 5  # 5 writes
    assert "nixie-context" not in (await a.client.get(f"/{key}")).headers  # 404
