"""Grain sources and loader: determinism, exact ground truth, config checks, resumable state."""

import numpy as np
import pytest
from absl import flags
from ml_collections import ConfigDict

from aapt_jax.data import sources as S
from aapt_jax.data.world import render_path

SMALL = dict(height=32, width=48, latent_frames=2, num_examples=40, text_len=4, text_dim=8)


class _Indices:
    """A source whose item is its own index, to follow shuffling and sharding."""

    def __init__(self, n):
        self.n = n

    def __len__(self):
        return self.n

    def __getitem__(self, index):
        return {"index": np.array(int(index))}


def _equal(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


def test_world_items_are_deterministic_with_exact_cameras():
    src = S.make_source(S.data_config(**SMALL))
    item = src[3]
    assert {k: (v.shape, v.dtype) for k, v in item.items()} == {
        "video": ((9, 32, 48, 3), np.uint8), "intrinsics": ((9, 4), np.float32),
        "c2w": ((9, 4, 4), np.float32), "text": ((4, 8), np.float32)}
    assert _equal(item, S.make_source(ConfigDict(S.data_config(**SMALL)))[3])
    assert not _equal(item, src[4])
    assert not _equal(item, S.make_source(S.data_config(**SMALL, seed=1))[3])
    # The video is the true render of the returned cameras in the item's world.
    np.testing.assert_array_equal(
        render_path(src.world_of(3), item["intrinsics"], item["c2w"], (32, 48)), item["video"])
    np.testing.assert_array_equal(item["text"], 0.0)
    with pytest.raises(IndexError):
        src[40]


def test_world_items_are_kept_read_only_within_the_cache_budget():
    src = S.make_source(S.data_config(**SMALL))
    first = src[5]
    again = src[5]
    assert again["video"] is first["video"]  # served from the cache, not rendered again
    with pytest.raises(ValueError, match="read-only"):
        again["video"][0, 0, 0, 0] = 1
    again["text"][0, 0] = 7.0  # the text is each item's own copy
    assert src[5]["text"][0, 0] == 0.0
    args = dict(SMALL, source="world")
    uncached = S.WorldSource(*(args[k] for k in ("height", "width", "latent_frames", "num_examples")),
                             seed=0, text_len=4, text_dim=8, cache_bytes=first["video"].nbytes)
    assert _equal(uncached[5], first)  # the same item, rendered afresh
    assert uncached[6]["video"] is not uncached[6]["video"]  # over the budget: not kept


def test_pose_items_and_random_text():
    src = S.make_source(S.data_config(**SMALL, source="pose", text_embedding="random"))
    a, b = src[0], src[1]
    assert {k: (v.shape, v.dtype) for k, v in a.items()} == {
        "video": ((9, 32, 48, 3), np.uint8), "keypoints": ((9, 13, 2), np.float32),
        "visibility": ((9, 13), bool), "text": ((4, 8), np.float32)}
    assert _equal(a, S.make_source(S.data_config(**SMALL, source="pose", text_embedding="random"))[0])
    assert not np.array_equal(a["keypoints"], b["keypoints"])
    # One fixed embedding per source: the same for every item, new with the seed.
    np.testing.assert_array_equal(a["text"], b["text"])
    assert np.std(a["text"]) > 0.5
    other = S.make_source(S.data_config(**SMALL, source="pose", text_embedding="random", seed=9))
    assert not np.array_equal(other[0]["text"], a["text"])


@pytest.mark.parametrize("field, value", [
    ("source", "maze"), ("height", 30), ("width", 0), ("latent_frames", 0),
    ("num_examples", -1), ("seed", -2), ("text_len", 1.5), ("text_dim", True),
    ("text_embedding", "clip"),
])
def test_bad_fields_are_named(field, value):
    with pytest.raises(ValueError, match=rf"data\.{field}: expected .*{value!r}"):
        S.make_source(S.data_config(**{field: value}))


def test_unknown_field_and_missing_folder_are_named():
    with pytest.raises(ValueError, match="unknown fields \\['heigth'\\]"):
        S.make_source({**S.data_config(), "heigth": 32})
    with pytest.raises(ValueError, match="data.folder"):
        S.make_source(S.data_config(source="folder"))


def test_loader_resumes_bit_exactly_from_saved_state():
    src = S.make_source(S.data_config(**SMALL))
    loader = S.make_loader(src, batch_size=2, seed=4)
    first = [next(loader) for _ in range(5)]
    state = loader.get_state()
    after = [next(loader) for _ in range(3)]
    assert {k: v.shape for k, v in after[0].items()} == {
        "video": (2, 9, 32, 48, 3), "intrinsics": (2, 9, 4), "c2w": (2, 9, 4, 4), "text": (2, 4, 8)}

    resumed = S.make_loader(src, batch_size=2, seed=4)
    resumed.set_state(state)
    for a, b in zip(after, [next(resumed) for _ in range(3)]):
        assert _equal(a, b)
    replay = S.make_loader(src, batch_size=2, seed=4)
    assert all(_equal(a, next(replay)) for a in first)
    assert not _equal(first[0], next(S.make_loader(src, batch_size=2, seed=5)))


def test_epochs_shuffle_and_shards():
    batches = list(S.make_loader(_Indices(12), batch_size=4, seed=0, num_epochs=2))
    order = np.concatenate([b["index"] for b in batches])
    assert len(batches) == 6
    assert sorted(order[:12]) == list(range(12)) and sorted(order[12:]) == list(range(12))
    assert not np.array_equal(order[:12], order[12:]) and not np.array_equal(order[:12], np.arange(12))
    plain = S.make_loader(_Indices(12), batch_size=4, seed=0, shuffle=False, num_epochs=1)
    np.testing.assert_array_equal(np.concatenate([b["index"] for b in plain]), np.arange(12))

    shards = [np.concatenate([b["index"] for b in S.make_loader(
        _Indices(12), batch_size=3, seed=0, num_epochs=1, shard_index=i, shard_count=2)])
        for i in range(2)]
    assert sorted(np.concatenate(shards)) == list(range(12))
    with pytest.raises(ValueError, match="batch_size"):
        S.make_loader(_Indices(3), batch_size=4, seed=0)
    with pytest.raises(ValueError, match="shard_index"):
        S.make_loader(_Indices(12), batch_size=1, seed=0, shard_index=2, shard_count=2)


def test_worker_processes_give_the_same_resumable_batches():
    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()
    src = S.make_source(S.data_config(**{**SMALL, "height": 16, "width": 16, "latent_frames": 1}))
    reference = S.make_loader(src, batch_size=2, seed=1)
    expected = [next(reference) for _ in range(6)]
    loader = S.make_loader(src, batch_size=2, seed=1, worker_count=1)
    got = [next(loader) for _ in range(3)]
    state = loader.get_state()
    del loader
    resumed = S.make_loader(src, batch_size=2, seed=1, worker_count=1)
    resumed.set_state(state)
    got += [next(resumed) for _ in range(3)]
    del resumed
    assert all(_equal(a, b) for a, b in zip(expected, got))
    assert all(type(v) is np.ndarray for v in got[-1].values())
