"""Compact digests of a node's whole state, for anti-entropy repair.

Every key hashes to one of `BUCKETS` buckets. A counter's entry is a 64-bit
hash of its key and canonical core state (everything but its receipts),
XORed with one hash per receipt, of the counter's key, the receipt's
idempotency key and its canonical text. A bucket's digest is the XOR of its
counters' entries, and the root is the XOR of all buckets.

XOR lets a change be folded in with a few operations, whatever the number of
counters or of receipts in one counter: a write rehashes the core and the
receipts it changed, never the others. And two nodes holding the same states
compute the same digests whatever order they learned them in, since each
receipt's hash depends on its own content only.

Two nodes compare roots first (8 bytes), then bucket digests only when the
roots differ, then exchange only the counters of the buckets that differ.
"""

import hashlib
from collections.abc import Iterable, Mapping

BUCKETS = 1024

# Keep a core text and a receipt text from ever hashing alike.
_CORE = b"nixie-core"
_RECEIPT = b"nixie-receipt"


def bucket_of(key: str) -> int:
    """Return the bucket a key belongs to."""
    digest = hashlib.blake2b(key.encode(), digest_size=4).digest()
    return int.from_bytes(digest, "big") % BUCKETS


def entry_hash(key: str, encoded_core: str) -> int:
    """Return the 64-bit hash of one counter's key and canonical core state."""
    digest = hashlib.blake2b(
        encoded_core.encode(), digest_size=8, key=key.encode()[:64], person=_CORE
    ).digest()
    return int.from_bytes(digest, "big")


def receipt_hash(key: str, idempotency_key: str, encoded_receipt: str) -> int:
    """Return the 64-bit hash of one receipt of a counter."""
    # The length prefix keeps the idempotency key and the text apart.
    name = idempotency_key.encode()
    digest = hashlib.blake2b(
        len(name).to_bytes(4, "big") + name + encoded_receipt.encode(),
        digest_size=8,
        key=key.encode()[:64],
        person=_RECEIPT,
    ).digest()
    return int.from_bytes(digest, "big")


class _Entry:
    """Hold what one counter adds to its bucket, and how it is made up."""

    __slots__ = ("bucket", "core", "receipts", "value")

    def __init__(self, bucket: int) -> None:
        self.bucket = bucket
        self.core = 0
        self.receipts: dict[str, int] = {}  # idempotency key -> receipt hash
        self.value = 0


class Digest:
    """Keep bucket digests up to date as counters change."""

    def __init__(self) -> None:
        self.buckets = [0] * BUCKETS
        self.root = 0
        self._entries: dict[str, _Entry] = {}
        self._keys: list[set[str]] = [set() for _ in range(BUCKETS)]

    def update(
        self,
        key: str,
        encoded_core: str,
        receipts: Mapping[str, str] | None = None,
        purged: Iterable[str] = (),
    ) -> None:
        """Fold a counter's new core state and changed receipts into the digests.

        `receipts` maps the idempotency keys of the receipts added or changed
        to their canonical texts; `purged` names those dropped. The counter's
        other receipts stay as they were.
        """
        entry = self._entries.get(key)
        if entry is None:
            entry = self._entries[key] = _Entry(bucket_of(key))
            self._keys[entry.bucket].add(key)
        old = entry.value

        new = old ^ entry.core
        entry.core = entry_hash(key, encoded_core)
        new ^= entry.core
        for idempotency_key in purged:
            new ^= entry.receipts.pop(idempotency_key, 0)
        for idempotency_key, text in (receipts or {}).items():
            fresh = receipt_hash(key, idempotency_key, text)
            new ^= entry.receipts.get(idempotency_key, 0) ^ fresh
            entry.receipts[idempotency_key] = fresh

        entry.value = new
        self.buckets[entry.bucket] ^= old ^ new
        self.root ^= old ^ new

    def counts(self) -> list[int]:
        """Return how many keys each bucket holds."""
        return [len(keys) for keys in self._keys]

    def keys_in(self, buckets: list[int]) -> list[str]:
        """Return the keys that fall in the given buckets."""
        return [key for bucket in buckets for key in self._keys[bucket]]

    def differing(self, theirs: list[int]) -> list[int]:
        """Return the buckets whose digest differs from another node's."""
        return [
            b
            for b, (mine, other) in enumerate(zip(self.buckets, theirs, strict=True))
            if mine != other
        ]
