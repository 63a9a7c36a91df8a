"""Compact digests of a node's whole state, for anti-entropy repair.

Every key hashes to one of `BUCKETS` buckets. A bucket's digest is the XOR of
a 64-bit hash of each of its counters (key and canonical state together),
and the root is the XOR of all buckets. XOR lets a change be folded in with
two operations, whatever the number of counters, and two nodes holding the
same states compute the same digests whatever order they learned them in.

Two nodes compare roots first (8 bytes), then bucket digests only when the
roots differ, then exchange only the counters of the buckets that differ.
"""

import hashlib

BUCKETS = 1024


def bucket_of(key: str) -> int:
    """Return the bucket a key belongs to."""
    digest = hashlib.blake2b(key.encode(), digest_size=4).digest()
    return int.from_bytes(digest, "big") % BUCKETS


def entry_hash(key: str, encoded_state: str) -> int:
    """Return the 64-bit hash of one counter's key and canonical state."""
    digest = hashlib.blake2b(
        encoded_state.encode(), digest_size=8, key=key.encode()[:64]
    ).digest()
    return int.from_bytes(digest, "big")


class Digest:
    """Keep bucket digests up to date as counters change."""

    def __init__(self) -> None:
        self.buckets = [0] * BUCKETS
        self.root = 0
        self._entries: dict[str, tuple[int, int]] = {}
        self._keys: list[set[str]] = [set() for _ in range(BUCKETS)]

    def update(self, key: str, encoded_state: str) -> None:
        """Fold a counter's new state into the digests."""
        new = entry_hash(key, encoded_state)
        previous = self._entries.get(key)
        if previous is None:
            bucket, old = bucket_of(key), 0
            self._keys[bucket].add(key)
        else:
            bucket, old = previous
        self._entries[key] = (bucket, new)
        self.buckets[bucket] ^= old ^ new
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
