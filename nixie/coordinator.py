"""Serve the request headers that reach other nodes: tokens, levels, replays.

A request with `Nixie-Context` waits until this node has seen the token's
state, pulling it from peers; one with `Nixie-Consistency: quorum | all`
reads from, or hands its write to, that many nodes before it is answered;
a retried write is answered from its receipt. Requests without these
headers never wait on another node.
"""

from fastapi.responses import Response

from nixie.context import ContextCodec, lacking, satisfies, tag
from nixie.crdt import CounterState, Receipt
from nixie.errors import Unavailable
from nixie.gossip import Gossiper
from nixie.inputs import RequestOptions
from nixie.node import Node
from nixie.settings import Settings


class Coordinator:
    """Serve the headers that reach other nodes: context, consistency, replays."""

    def __init__(self, node: Node, gossiper: Gossiper, settings: Settings) -> None:
        self.node = node
        self.gossiper = gossiper
        self.timeout = settings.sync_timeout
        self.contexts = ContextCodec(settings.cluster_secret)

    def respond(
        self,
        key: str,
        state: CounterState,
        status: int,
        body: str | None = None,
        *,
        describe: bool = True,
    ) -> Response:
        """Answer about a counter: its Nixie-* headers and its context token."""
        response = (
            _counter_response(state, status, body)
            if describe
            else Response(status_code=status)
        )
        response.raw_headers.append(
            (b"Nixie-Context", self.contexts.issue(key, state).encode())
        )
        return response

    def replay(self, key: str, receipt: Receipt) -> Response:
        """Answer a retried write with its first answer."""
        response = Response(
            content=receipt.body or None,
            status_code=receipt.status,
            media_type="text/plain" if receipt.body else None,
        )
        headers = response.raw_headers
        headers.extend((k.encode(), v.encode()) for k, v in receipt.headers)
        headers.append((b"Nixie-Replay", b"true"))
        state = self.node.state(key)
        if state is not None:
            headers.append((b"Nixie-Context", self.contexts.issue(key, state).encode()))
        return response

    async def catch_up(self, key: str, options: RequestOptions) -> None:
        """Before serving: reach the token's state, then the read level."""
        if options.context is not None:
            context = self.contexts.parse(key, options.context)
            if not satisfies(self.node.state(key), context):
                # Ask first the peers whose own writes this node lacks.
                writers = lacking(self.node.state(key), context)
                await self.gossiper.sync_key(
                    key,
                    self.gossiper.cluster_size(),
                    self.timeout,
                    lambda: satisfies(self.node.state(key), context),
                    lambda peer: (
                        peer.replica is not None and tag(peer.replica) in writers
                    ),
                )
                if not satisfies(self.node.state(key), context):
                    raise Unavailable(
                        f"Nixie-Context: this node has not seen the state the "
                        f"token names, and no peer supplied it within "
                        f"{self.timeout:g} s; retry, or try another node"
                    )
        if options.level != "local" and options.read:
            await self._reach(key, options.level, "read")

    async def spread(self, key: str, options: RequestOptions) -> None:
        """After a write: wait until the write level holds it."""
        if options.level != "local":
            await self._reach(key, options.level, "write")

    async def _reach(self, key: str, level: str, what: str) -> None:
        size = self.gossiper.cluster_size()
        needed = size if level == "all" else size // 2 + 1
        if needed <= 1:
            return
        answered = await self.gossiper.sync_key(key, needed - 1, self.timeout)
        if answered + 1 < needed:
            applied = (
                " The write stays applied on the nodes it reached and spreads "
                "from there; only a retry under the Idempotency-Key it was "
                "sent with is safe."
                if what == "write"
                else ""
            )
            raise Unavailable(
                f"Nixie-Consistency: {level} needs {needed} of {size} nodes; "
                f"{answered + 1} answered within {self.timeout:g} s.{applied}"
            )
        if what == "read" and answered > 1:
            # Each peer that answered holds its own state merged with this
            # node's; the others' answers may be news to it: hand the merged
            # state back.
            await self.gossiper.sync_key(key, needed - 1, self.timeout)


def _counter_response(
    state: CounterState, status: int, body: str | None = None
) -> Response:
    response = Response(
        content=body,
        status_code=status,
        media_type=None if body is None else "text/plain",
    )
    headers = response.raw_headers
    headers.append((b"Nixie-Step", str(state.step_value).encode()))
    if state.name_value:
        headers.append((b"Nixie-Name", state.name_value.encode()))
    if state.description_value:
        headers.append((b"Nixie-Description", state.description_value.encode()))
    return response
