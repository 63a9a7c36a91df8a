"""The peer table: learning peers and judging their health."""

import pytest

from nixie.membership import Membership, Status, normalise_url


def table(*peers: str) -> Membership:
    return Membership(
        "http://me:7312",
        list(peers),
        backoff_initial=0.5,
        backoff_max=10.0,
        forget_after=60.0,
    )


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("http://Node1:7312/", "http://node1:7312"),
        (" https://n ", "https://n"),
        ("http://[::1]:7312", "http://[::1]:7312"),
    ],
)
def test_urls_are_normalised(url: str, expected: str) -> None:
    """Peer URLs compare equal whatever their case or trailing slash."""
    assert expected == normalise_url(url)


@pytest.mark.parametrize(
    "url", ["node1:7312", "ftp://n", "http://n/path", "http://n:99999", "http://"]
)
def test_bad_urls_are_refused(url: str) -> None:
    """Anything but a plain http(s) base URL is refused."""
    with pytest.raises(ValueError, match="URL"):
        normalise_url(url)


def test_own_url_is_never_a_peer() -> None:
    """A node does not list itself among its peers."""
    members = table("http://me:7312/", "http://other:7312")

    assert ["http://other:7312"] == list(members.peers)


def test_failures_make_a_peer_suspect_then_down_with_growing_backoff() -> None:
    """Failures in a row move a peer to suspect, then down, waiting longer each time."""
    members = table("http://b:7312")
    peer = members.peers["http://b:7312"]
    statuses, waits = [], []

    for _ in range(5):
        members.failed(peer, "refused", now=100.0)
        statuses.append(peer.status)
        waits.append(peer.retry_at - 100.0)

    assert [Status.SUSPECT] * 2 + [Status.DOWN] * 3 == statuses
    assert waits[-1] > waits[0]
    assert all(0 < wait <= 10.0 for wait in waits)
    assert members.due(100.0) == []


def test_success_brings_a_peer_back_up() -> None:
    """One success makes a down peer up and due again."""
    members = table("http://b:7312")
    peer = members.peers["http://b:7312"]
    for _ in range(4):
        members.failed(peer, "refused", now=0.0)

    members.succeeded(peer)

    assert peer.status is Status.UP
    assert [peer] == members.due(0.0)


def test_learned_peers_are_forgotten_when_long_down() -> None:
    """A peer learned from gossip goes after forget_after; a configured one stays."""
    members = table("http://configured:7312")
    learned = members.learn("http://learned:7312")
    assert learned is not None
    for peer in list(members.peers.values()):
        for _ in range(3):
            members.failed(peer, "gone", now=0.0)

    members.forget_departed(now=61.0)

    assert ["http://configured:7312"] == list(members.peers)
