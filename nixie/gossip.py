"""Anti-entropy: the exchanges that bring every node to the same state.

Each round a node pushes to every due peer the deltas that peer has not
acknowledged (joined per key, leaving out what came from that peer), with its
root digest and the peers it knows. The peer merges them and answers with its
own root digest and whether it has deltas of its own still to send back.

When the roots differ while neither side has anything pending, or when the
peer is new, restarted, or fell out of the delta log, the node repairs: it
fetches the peer's bucket digests and exchanges the counters of the buckets
that differ, both ways, a bounded number per round. An idle cluster therefore
sends a few hundred bytes per peer per round, whatever the number of counters.

`Gossiper.run_round` is one round as a plain coroutine, so tests drive nodes
by hand; `Gossiper.run` repeats rounds in the background.

Requests that must not wait for a round use `Gossiper.sync_key`: it sends
one counter's state to as many peers as the request needs, and to more only
when one of them fails or is slow, and merges what they answer. So a node
can catch up on a counter (read-your-writes tokens, asking the writer
first), read it from a quorum, or hand a write to a quorum before
acknowledging it.
"""

import asyncio
import contextlib
import functools
import logging
import random
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx

from nixie import codec
from nixie.crdt import CounterState
from nixie.digest import BUCKETS, bucket_of
from nixie.errors import InvalidInput, NixieError, PeerError
from nixie.membership import Membership, Peer, Status, normalise_url
from nixie.node import Node
from nixie.values import check_id

logger = logging.getLogger(__name__)

PUSH_MAX_KEYS = 2_000  # counters per push; the rest follow next round
REPAIR_MAX_KEYS = 5_000  # counters per repair call, each way (roughly)
REPAIR_CALLS_PER_ROUND = 4
PEERS_MAX = 1_000  # peer URLs accepted in one message
URL_MAX_CHARS = 300
# Seconds a one-counter exchange may go unanswered before the next peer is
# asked too: a frozen peer holds the connection open without answering.
HEDGE_SECONDS = 0.05


@dataclass(frozen=True, slots=True)
class Identity:
    """Name one running node: its replica, this start of it, its address."""

    replica: str
    instance: str
    url: str

    def encode(self) -> dict[str, str]:
        """Return the JSON form."""
        return {"replica": self.replica, "instance": self.instance, "url": self.url}


class Gossiper:
    """Run anti-entropy for one node, as client and as server."""

    def __init__(
        self,
        node: Node,
        membership: Membership,
        client: httpx.AsyncClient,
        secret: str | None = None,
    ) -> None:
        self.node = node
        self.membership = membership
        self.client = client
        self._instance = secrets.token_urlsafe(8)
        self._headers = {"Authorization": f"Bearer {secret}"} if secret else {}
        self._in_flight: dict[str, asyncio.Task[None]] = {}

    @property
    def identity(self) -> Identity:
        """This node as peers see it; the replica id may change at run time."""
        return Identity(self.node.replica_id, self._instance, self.membership.own_url)

    # Rounds

    async def run_round(self) -> None:
        """Exchange with every due peer and wait until all exchanges end."""
        tasks = self.start_round()
        if tasks:
            await asyncio.wait(tasks)

    def start_round(self) -> list[asyncio.Task[None]]:
        """Start an exchange with every due peer not already in one."""
        now = time.monotonic()
        tasks = []
        for peer in self.membership.due(now):
            if peer.url in self._in_flight:
                continue
            task = asyncio.create_task(self._exchange(peer))
            self._in_flight[peer.url] = task
            task.add_done_callback(functools.partial(self._finished, peer.url))
            tasks.append(task)

        self.cluster_size()  # counts every peer in before any is forgotten
        self.membership.forget_departed(now)
        self._truncate_log()
        return tasks

    def _finished(self, url: str, _: asyncio.Task[None]) -> None:
        self._in_flight.pop(url, None)

    async def run(self, interval: float) -> None:
        """Start a round every `interval` seconds until cancelled.

        A slow or unreachable peer delays neither the next round nor the
        exchanges with other peers: each exchange runs as its own task.
        """
        try:
            while True:
                self.start_round()
                await asyncio.sleep(interval)
        finally:
            for task in list(self._in_flight.values()):
                task.cancel()

    async def flush(self, seconds: float) -> bool:
        """Push what live peers have not acknowledged yet, for up to `seconds`.

        A node that stops gracefully calls this last, so that writes it
        acknowledged a moment ago are on its peers before it goes, and even
        losing its disk afterwards loses none of them. Tell whether every
        peer, down ones too, has every write of this node; log those that
        lack some.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + seconds
        while True:
            behind = [
                peer
                for peer in self.membership.active()
                if peer.needs_repair or peer.acked < self.node.deltas.head
            ]
            left = deadline - loop.time()
            if not behind or left <= 0:
                break
            for peer in behind:
                peer.retry_at = 0.0
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.run_round(), left)
            if any(peer.status is not Status.UP for peer in behind):
                await asyncio.sleep(min(0.05, max(0.0, deadline - loop.time())))
        # Down peers were not waited for; say of every peer what it lacks.
        missing = [
            peer
            for peer in self.membership.peers.values()
            if peer.needs_repair or peer.acked < self.node.deltas.head
        ]
        for peer in missing:
            logger.warning(
                "stopping before peer %s (%s) has every write of this node: "
                "those it lacks are on this node's disk alone",
                peer.url,
                peer.status,
            )
        if not missing:
            logger.info("stopping: every peer has every write of this node")
        return not missing

    async def _exchange(self, peer: Peer) -> None:
        log = self.node.deltas
        if peer.needs_repair or not log.covers(peer.acked):
            # The digest comparison below covers everything before now.
            peer.needs_repair = True
            deltas: dict[str, CounterState] = {}
            upto = log.head
        else:
            deltas, upto = log.since(peer.acked, peer.replica, PUSH_MAX_KEYS)

        try:
            reply = await self._post(peer, "/_nixie/gossip", self._push(deltas))
            their = self._check_identity(peer, reply.get("from"))
            if their is None:
                return
            peer.acked = upto
            if reply.get("root") != self.node.digest.root and not (
                reply.get("pending") is True or log.head > upto
            ):
                peer.needs_repair = True
            if peer.needs_repair:
                await self._repair(peer)
        except NixieError as exc:
            self.membership.failed(peer, str(exc), time.monotonic())
            return
        except Exception as exc:
            # A bug must not end this peer's exchanges for good: log it with
            # its traceback, count a failure, and try again later.
            logger.exception("exchange with peer %s failed", peer.url)
            self.membership.failed(peer, f"internal error: {exc!r}", time.monotonic())
            return
        self.membership.succeeded(peer)

    def _push(self, deltas: dict[str, CounterState]) -> dict[str, Any]:
        return {
            "from": self.identity.encode(),
            "deltas": {key: codec.encode_state(s) for key, s in deltas.items()},
            "root": self.node.digest.root,
            "peers": self.membership.advertised(),
        }

    def _check_identity(self, peer: Peer, data: object) -> Identity | None:
        their = parse_identity(data)
        if (their.replica, their.instance) == (
            self.identity.replica,
            self.identity.instance,
        ):
            self.membership.mark_self(peer.url)
            return None
        if peer.instance is not None and peer.instance != their.instance:
            logger.info(
                "peer %s restarted (replica %s); repairing", peer.url, their.replica
            )
            peer.needs_repair = True
        peer.replica, peer.instance = their.replica, their.instance
        return their

    async def _repair(self, peer: Peer) -> None:
        reply = await self._post(
            peer, "/_nixie/digest", {"from": self.identity.encode()}
        )
        theirs = _integers(reply.get("buckets"), "buckets", 0, 2**64 - 1)
        their_counts = _integers(reply.get("counts"), "counts", 0, 2**63)
        if len(theirs) != BUCKETS or len(their_counts) != BUCKETS:
            raise PeerError(f"peer {peer.url}: not {BUCKETS} bucket digests")
        differing = self.node.digest.differing(theirs)
        my_counts = self.node.digest.counts()
        repaired = 0  # counters exchanged, both ways

        for _ in range(REPAIR_CALLS_PER_ROUND):
            if not differing:
                break
            # Both sides' counters of the chosen buckets travel, so both
            # counts bound the size of the request and of the answer.
            chunk: list[int] = []
            size = 0
            while differing and size < REPAIR_MAX_KEYS:
                bucket = differing.pop()
                chunk.append(bucket)
                size += max(my_counts[bucket], their_counts[bucket])
            keys = self.node.digest.keys_in(chunk)
            mine = self.node.states_of(keys)
            reply = await self._post(
                peer,
                "/_nixie/repair",
                {
                    "from": self.identity.encode(),
                    "buckets": chunk,
                    "states": {k: codec.encode_state(s) for k, s in mine.items()},
                },
            )
            received = parse_states(reply.get("states"), set(chunk))
            self.node.merge(received, peer.replica, log=False)
            repaired += len(mine) + len(received)
        if not differing:
            peer.needs_repair = False
            if repaired:
                logger.info(
                    "repair with peer %s done; its last round exchanged %d counters",
                    peer.url,
                    repaired,
                )

    async def _post(
        self, peer: Peer, path: str, body: dict[str, Any]
    ) -> dict[str, Any]:
        content = codec.dumps(body).encode()
        try:
            response = await self.client.post(
                peer.url + path, content=content, headers=self._headers
            )
        except httpx.HTTPError as exc:
            # httpx's timeouts carry no text of their own.
            timed_out = isinstance(exc, httpx.TimeoutException)
            reason = str(exc) or (f"{path}: no answer in time" if timed_out else path)
            raise PeerError(f"{type(exc).__name__}: {reason}") from exc
        if response.status_code != 200:
            raise PeerError(f"{path} answered {response.status_code}: {response.text}")
        try:
            return _object(codec.loads(response.content), path)
        except InvalidInput as exc:
            raise PeerError(f"{path}: {exc}") from exc

    def _truncate_log(self) -> None:
        # Deltas every live peer has merged are no longer needed; a peer that
        # is down catches up by repair when it returns.
        active = self.membership.active()
        log = self.node.deltas
        log.truncate(min((p.acked for p in active), default=log.head))

    # One counter, now

    def cluster_size(self) -> int:
        """Return how many nodes count for quorum and all, this one included."""
        return self.membership.cluster_size(self.node.replica_id)

    async def sync_key(
        self,
        key: str,
        wanted: int,
        within: float,
        done: Callable[[], bool] | None = None,
        prefer: Callable[[Peer], bool] | None = None,
    ) -> int:
        """Exchange counter `key` with peers; return how many answered.

        Each peer merges this node's state of the counter and answers with
        its own, which this node merges. Exchanges start with `wanted` peers
        (one when `done` is given), those that `prefer` picks first, then
        those that are up; another peer is tried whenever one fails, or when
        none has answered within HEDGE_SECONDS. Return as soon as `wanted`
        peers have answered or `done()` holds, or after `within` seconds;
        the exchanges still running then are abandoned.
        """
        if done is not None and done():
            return 0
        queue = self._sync_order(prefer)
        deadline = time.monotonic() + within
        running: set[asyncio.Task[str | None]] = set()
        # Counted by replica: one node reached under two URLs answers once.
        answered: set[str] = set()

        def start(count: int) -> None:
            for _ in range(min(count, len(queue))):
                running.add(asyncio.create_task(self._sync_with(queue.pop(), key)))

        start(1 if done is not None else wanted)
        try:
            while running and len(answered) < wanted:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                finished, _ = await asyncio.wait(
                    running,
                    timeout=min(left, HEDGE_SECONDS),
                    return_when=asyncio.FIRST_COMPLETED,
                )
                running -= finished
                replicas = [task.result() for task in finished]
                answered.update(filter(None, replicas))
                if done is not None and done():
                    break
                # A failed exchange, or a slow one, hands over to the next peer.
                start(replicas.count(None) if finished else 1)
                if not running:
                    start(wanted - len(answered))
        finally:
            for task in running:
                task.cancel()
        return len(answered)

    def _sync_order(self, prefer: Callable[[Peer], bool] | None) -> list[Peer]:
        """Return the peers in the order to try them, the first one last."""
        peers = list(self.membership.peers.values())
        random.shuffle(peers)  # spread the load among equals
        rank = {Status.UP: 0, Status.SUSPECT: 1, Status.DOWN: 2}
        peers.sort(
            key=lambda peer: (prefer is None or not prefer(peer), rank[peer.status]),
            reverse=True,
        )
        return peers

    async def _sync_with(self, peer: Peer, key: str) -> str | None:
        """Exchange one counter with a peer; return its replica id, None on failure."""
        state = self.node.state(key)
        try:
            reply = await self._post(
                peer,
                "/_nixie/sync",
                {
                    "from": self.identity.encode(),
                    "key": key,
                    "state": None if state is None else codec.encode_state(state),
                },
            )
            their = self._check_identity(peer, reply.get("from"))
            if their is None:
                return None  # this very node, under another URL
            theirs = reply.get("state")
            if theirs is not None:
                received = parse_states({key: theirs}, None)
                self.node.merge(received, their.replica)
        except (PeerError, InvalidInput) as exc:
            logger.debug("sync of %s with %s failed: %s", key, peer.url, exc)
            return None
        return their.replica

    # Serving peers

    def on_sync(self, message: object) -> dict[str, Any]:
        """Merge a peer's state of one counter; answer with this node's."""
        data = _object(message)
        sender = self._accept_sender(data.get("from"))
        key = check_id(data.get("key"), "key")
        theirs = data.get("state")
        if theirs is not None:
            self.node.merge(parse_states({key: theirs}, None), sender.replica)
        state = self.node.state(key)
        return {
            "from": self.identity.encode(),
            "state": None if state is None else codec.encode_state(state),
        }

    def on_push(self, message: object) -> dict[str, Any]:
        """Merge a peer's push; answer with this node's root and backlog."""
        data = _object(message)
        sender = self._accept_sender(data.get("from"))
        deltas = parse_states(data.get("deltas"), None)
        peers = data.get("peers", [])
        if not isinstance(peers, list) or len(peers) > PEERS_MAX:
            raise InvalidInput("peers: expected a list of URLs")

        self.node.merge(deltas, sender.replica)
        peer = self.membership.learn(sender.url)
        if peer is not None:
            self.membership.heard_from(peer)
        for url in peers:
            if isinstance(url, str) and url.isascii() and len(url) <= URL_MAX_CHARS:
                self.membership.learn(url)
        pending = (
            peer is None or peer.needs_repair or peer.acked < self.node.deltas.head
        )
        return {
            "from": self.identity.encode(),
            "root": self.node.digest.root,
            "pending": pending,
        }

    def on_digest(self, message: object) -> dict[str, Any]:
        """Answer with this node's bucket digests."""
        self._accept_sender(_object(message).get("from"))
        digest = self.node.digest
        return {
            "from": self.identity.encode(),
            "buckets": digest.buckets,
            "counts": digest.counts(),
        }

    def on_repair(self, message: object) -> dict[str, Any]:
        """Merge a peer's counters of some buckets; answer with what it lacks."""
        data = _object(message)
        sender = self._accept_sender(data.get("from"))
        buckets = set(_integers(data.get("buckets"), "buckets", 0, BUCKETS - 1))
        theirs = parse_states(data.get("states"), buckets)

        self.node.merge(theirs, sender.replica, log=False)
        mine = self.node.states_of(self.node.digest.keys_in(sorted(buckets)))
        return {
            "states": {
                key: codec.encode_state(state)
                for key, state in mine.items()
                if theirs.get(key) != state
            }
        }

    def _accept_sender(self, data: object) -> Identity:
        sender = parse_identity(data)
        if (
            sender.replica == self.identity.replica
            and sender.instance != self.identity.instance
        ):
            # Two running nodes with one replica id would each overwrite the
            # other's totals; refuse rather than lose increments.
            logger.error(
                "node at %s claims this node's replica id %s",
                sender.url,
                sender.replica,
            )
            raise InvalidInput(f"from: replica id {sender.replica} is in use here")
        return sender


def parse_identity(data: object) -> Identity:
    """Read a node's identity from a message, or raise `InvalidInput`."""
    fields = _object(data, "from")
    replica = check_id(fields.get("replica"), "from.replica")
    instance = check_id(fields.get("instance"), "from.instance")
    url = fields.get("url")
    if not isinstance(url, str) or not url.isascii() or len(url) > URL_MAX_CHARS:
        raise InvalidInput("from.url: expected an http(s) URL")
    try:
        url = normalise_url(url)
    except ValueError as exc:
        raise InvalidInput(f"from.url: {exc}") from exc
    return Identity(replica, instance, url)


def parse_states(data: object, buckets: set[int] | None) -> dict[str, CounterState]:
    """Decode a map of counter states, all or nothing.

    With `buckets` given, every key must fall in one of them.
    """
    if not isinstance(data, dict):
        raise InvalidInput("states: expected an object")
    states = {}
    for key, encoded in data.items():
        check_id(key, "states: key")
        if buckets is not None and bucket_of(key) not in buckets:
            raise InvalidInput(f"states: key {key} is outside the buckets asked for")
        try:
            states[key] = codec.decode_state(encoded)
        except InvalidInput as exc:
            raise InvalidInput(f"states[{key}]: {exc}") from exc
    return states


def _object(data: object, where: str = "message") -> dict[str, Any]:
    if not isinstance(data, dict):
        raise InvalidInput(f"{where}: expected an object")
    return data


def _integers(data: object, where: str, low: int, high: int) -> list[int]:
    if not isinstance(data, list) or len(data) > BUCKETS:
        raise InvalidInput(f"{where}: expected a list of at most {BUCKETS} integers")
    for value in data:
        if type(value) is not int or not low <= value <= high:
            raise InvalidInput(f"{where}: {value!r} is not an integer in range")
    return data
