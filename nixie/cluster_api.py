"""The `/_nixie/` endpoints: health, cluster status, and the gossip protocol.

Keys are 21 characters without a slash, so no counter route can reach a path
under `/_nixie/`. The peer endpoints (`gossip`, `digest`, `repair`, `sync`) require
the cluster secret as a bearer token; a node started without a secret
accepts them from loopback addresses only.
"""

import hmac
import ipaddress
import time
from datetime import UTC, datetime
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import PlainTextResponse, Response
from starlette.requests import ClientDisconnect

from nixie import codec
from nixie.errors import BodyTooLarge, InvalidInput, Unauthorized
from nixie.gossip import Gossiper
from nixie.settings import Settings

# A repair message carries a few thousand counters; 16 MiB leaves room for
# the largest legal ones.
PAYLOAD_MAX_BYTES = 16 * 1024 * 1024


def add_cluster_routes(app: FastAPI, settings: Settings) -> None:
    """Register the `/_nixie/` routes on a node's app."""
    expected = f"Bearer {settings.cluster_secret}" if settings.cluster_secret else ""

    def authorise(request: Request) -> None:
        if expected:
            given = request.headers.get("authorization", "")
            if not hmac.compare_digest(given.encode(), expected.encode()):
                raise Unauthorized("cluster secret missing or wrong")
        elif not _is_loopback(request):
            raise Unauthorized("no cluster secret set: peers must be on loopback")

    async def peer_call(request: Request, handler: Any) -> Response:
        authorise(request)
        message = codec.loads(await _read_payload(request))
        return _json(handler(message))

    @app.get("/_nixie/health", response_class=PlainTextResponse)
    async def health() -> str:
        return "ok"

    @app.head("/_nixie/health", response_class=PlainTextResponse)
    async def health_head() -> str:
        return "ok"

    @app.get("/_nixie/cluster")
    async def cluster(request: Request) -> Response:
        return _json(_status(_gossiper(request)))

    @app.post("/_nixie/gossip", include_in_schema=False)
    async def gossip(request: Request) -> Response:
        return await peer_call(request, _gossiper(request).on_push)

    @app.post("/_nixie/digest", include_in_schema=False)
    async def digest(request: Request) -> Response:
        return await peer_call(request, _gossiper(request).on_digest)

    @app.post("/_nixie/repair", include_in_schema=False)
    async def repair(request: Request) -> Response:
        return await peer_call(request, _gossiper(request).on_repair)

    @app.post("/_nixie/sync", include_in_schema=False)
    async def sync(request: Request) -> Response:
        return await peer_call(request, _gossiper(request).on_sync)


def _gossiper(request: Request) -> Gossiper:
    gossiper: Gossiper = request.app.state.gossiper
    return gossiper


def _is_loopback(request: Request) -> bool:
    if request.client is None:
        return False
    try:
        return ipaddress.ip_address(request.client.host).is_loopback
    except ValueError:
        return False


async def _read_payload(request: Request) -> bytes:
    chunks, size = [], 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > PAYLOAD_MAX_BYTES:
                raise BodyTooLarge(f"payload: more than {PAYLOAD_MAX_BYTES} bytes")
            chunks.append(chunk)
    except ClientDisconnect as exc:
        # A peer that gave up on the exchange (its timeout, a partition)
        # reads no answer; this keeps the traceback out of the log.
        raise InvalidInput("payload: the peer left before sending it all") from exc
    return b"".join(chunks)


def _json(data: object) -> Response:
    return Response(codec.dumps(data), media_type="application/json")


def _status(gossiper: Gossiper) -> dict[str, Any]:
    node, log = gossiper.node, gossiper.node.deltas
    now_wall, now = time.time(), time.monotonic()
    return {
        "replica": gossiper.identity.replica,
        "instance": gossiper.identity.instance,
        "url": gossiper.identity.url,
        # Equal digests mean equal states: nodes agree on every counter.
        "digest": f"{node.digest.root:016x}",
        "delta_log": {"head": log.head, "oldest": log.oldest, "size": len(log)},
        "peers": [
            {
                "url": peer.url,
                "replica": peer.replica,
                "status": str(peer.status),
                "last_ok": None
                if peer.last_ok is None
                else datetime.fromtimestamp(peer.last_ok, UTC).isoformat(),
                "seconds_since_ok": None
                if peer.last_ok is None
                else round(now_wall - peer.last_ok, 3),
                "behind": log.head - peer.acked,
                "repairing": peer.needs_repair,
                "next_attempt_in": round(max(0.0, peer.retry_at - now), 3),
                "last_error": peer.last_error,
            }
            for peer in gossiper.membership.peers.values()
        ],
        "keys": len(node),
    }
