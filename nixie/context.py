"""Read-your-writes tokens: what a node had seen of one counter, signed.

A token names, for every replica that wrote to the counter, how many of its
writes the node had merged (the state's `versions`), or that the counter was
deleted. A node whose versions are at least the token's has seen everything
the token's node had seen. Tokens are bound to their counter's key and
signed with the cluster secret, so a token for another counter, an edited
one or a made-up one is refused.

Layout, before base64url without padding:

    byte 0      format (high 7 bits) and deleted flag (low bit)
    then        per replica: 6 bytes of SHA-256 of its id, a varint count
    last 12     HMAC-SHA256(secret, key || everything before), truncated

A 3-node cluster's token is 40 to 50 bytes, about 65 characters.
"""

import base64
import binascii
import hashlib
import hmac
from dataclasses import dataclass
from functools import lru_cache

from nixie.crdt import CounterState
from nixie.errors import InvalidInput

FORMAT = 1
TAG_BYTES = 6
MAC_BYTES = 12
MAX_REPLICAS = 64  # a token naming more replicas than this is refused
TOKEN_MAX_CHARS = 1024
# Used when no cluster secret is set, where peers are on loopback only:
# tokens are then checked for shape and key, not for forgery.
LOCAL_SECRET = b"nixie-local-context"


@dataclass(frozen=True, slots=True)
class Context:
    """What a token says a node had seen of a counter."""

    deleted: bool
    versions: tuple[tuple[bytes, int], ...]  # (replica tag, writes)


@lru_cache(maxsize=4096)
def tag(replica: str) -> bytes:
    """Return the short hash that stands for a replica id in tokens."""
    return hashlib.sha256(replica.encode()).digest()[:TAG_BYTES]


class ContextCodec:
    """Issue and check the tokens of one cluster."""

    def __init__(self, secret: str | None) -> None:
        self._secret = secret.encode() if secret else LOCAL_SECRET

    def issue(self, key: str, state: CounterState) -> str:
        """Return the token for what `state` holds of counter `key`."""
        payload = bytearray([FORMAT << 1 | (state.deleted is not None)])
        for replica, writes in sorted(state.versions.items()):
            payload += tag(replica)
            payload += _varint(writes)
        payload += self._mac(key, bytes(payload))
        return base64.urlsafe_b64encode(payload).rstrip(b"=").decode()

    def parse(self, key: str, token: str) -> Context:
        """Check a token for counter `key` and return what it says."""
        if len(token) > TOKEN_MAX_CHARS or not token.isascii():
            raise InvalidInput("Nixie-Context: not a token this cluster issued")
        try:
            raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        except (binascii.Error, ValueError) as exc:
            raise InvalidInput("Nixie-Context: not a token (bad base64)") from exc
        if base64.urlsafe_b64encode(raw).rstrip(b"=").decode() != token:
            # Spare bits in the last character: one token, one spelling.
            raise InvalidInput("Nixie-Context: not a token (non-canonical base64)")
        if len(raw) < 1 + MAC_BYTES:
            raise InvalidInput("Nixie-Context: not a token (too short)")
        payload, mac = raw[:-MAC_BYTES], raw[-MAC_BYTES:]
        if not hmac.compare_digest(mac, self._mac(key, payload)):
            raise InvalidInput(
                f"Nixie-Context: not a token this cluster issued for {key}"
            )
        if payload[0] >> 1 != FORMAT:
            raise InvalidInput("Nixie-Context: unknown token format")
        return Context(bool(payload[0] & 1), _entries(payload[1:]))

    def _mac(self, key: str, payload: bytes) -> bytes:
        message = key.encode() + b"\0" + payload
        return hmac.new(self._secret, message, hashlib.sha256).digest()[:MAC_BYTES]


def satisfies(state: CounterState | None, context: Context) -> bool:
    """Tell whether `state` holds at least what the token's node had seen."""
    if state is None:
        return False
    if state.deleted is not None:
        return True  # deletion wins over anything the token could name
    if context.deleted:
        return False
    return not lacking(state, context)


def lacking(state: CounterState | None, context: Context) -> set[bytes]:
    """Return the tags of the replicas of which `state` holds fewer writes."""
    have = {} if state is None else {tag(r): w for r, w in state.versions.items()}
    return {t for t, writes in context.versions if have.get(t, 0) < writes}


def _varint(number: int) -> bytes:
    out = bytearray()
    while True:
        low, number = number & 0x7F, number >> 7
        if number:
            out.append(low | 0x80)
        else:
            out.append(low)
            return bytes(out)


def _entries(data: bytes) -> tuple[tuple[bytes, int], ...]:
    entries: list[tuple[bytes, int]] = []
    at = 0
    while at < len(data):
        if len(entries) == MAX_REPLICAS or at + TAG_BYTES >= len(data):
            raise InvalidInput("Nixie-Context: malformed token")
        replica, at = data[at : at + TAG_BYTES], at + TAG_BYTES
        writes, shift = 0, 0
        while True:
            if at == len(data) or shift > 63:
                raise InvalidInput("Nixie-Context: malformed token")
            byte = data[at]
            at += 1
            writes |= (byte & 0x7F) << shift
            shift += 7
            if not byte & 0x80:
                break
        entries.append((replica, writes))
    return tuple(entries)
