"""Bucket digests of a node's state."""

from nixie.digest import BUCKETS, Digest, bucket_of


def test_equal_states_give_equal_digests_in_any_order() -> None:
    """Digests depend on the states held, not on the order they were learned."""
    entries = [(f"key{i}", f'{{"p":{{"a":{i}}}}}') for i in range(100)]
    forward, backward = Digest(), Digest()

    for key, text in entries:
        forward.update(key, "{}")
        forward.update(key, text)
    for key, text in reversed(entries):
        backward.update(key, text)

    assert forward.root == backward.root
    assert forward.buckets == backward.buckets


def test_a_changed_counter_shows_in_its_bucket_only() -> None:
    """Changing one counter changes the root and exactly one bucket."""
    mine, theirs = Digest(), Digest()
    for digest in (mine, theirs):
        for i in range(50):
            digest.update(f"key{i}", "{}")

    theirs.update("key7", '{"p":{"a":1}}')

    assert mine.root != theirs.root
    assert [bucket_of("key7")] == mine.differing(theirs.buckets)
    assert "key7" in mine.keys_in([bucket_of("key7")])


def test_buckets_cover_the_range() -> None:
    """Keys spread over the buckets, all within range."""
    buckets = {bucket_of(f"key{i}") for i in range(5000)}

    assert buckets <= set(range(BUCKETS))
    assert len(buckets) > BUCKETS * 0.9
