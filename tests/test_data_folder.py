"""A folder of user videos as a source: good files read, bad ones counted, texts loaded."""

import logging
import os

import numpy as np
import pytest

from aapt_jax.data import sources as S
from aapt_jax.data.video_folder import VideoFolder
from aapt_jax.io.video import read_video, write_mp4

T_FRAMES = 9  # latent_frames = 2


def _moving_pattern(num_frames, height, width, phase):
    t = np.arange(num_frames)[:, None, None]
    y = np.arange(height)[None, :, None]
    x = np.arange(width)[None, None, :]
    r = 128 + 100 * np.sin(2 * np.pi * (x + 3 * t + phase) / width)
    g = 128 + 100 * np.cos(2 * np.pi * (y - 2 * t) / height)
    b = 40 + 8 * t + 0 * x
    return np.stack(np.broadcast_arrays(r, g, b), -1).astype(np.uint8)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("user_videos")
    write_mp4(root / "a.mp4", _moving_pattern(20, 48, 64, 0), fps=8)
    os.makedirs(root / "more")
    write_mp4(root / "more" / "b.mp4", _moving_pattern(14, 40, 40, 17), fps=8)
    write_mp4(root / "short.mp4", _moving_pattern(5, 32, 32, 3), fps=8)  # < 9 frames
    (root / "broken.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + os.urandom(500))
    np.save(root / "a.npy", np.arange(12, dtype=np.float32).reshape(3, 4))
    return root


def _cfg(folder, **kw):
    return S.data_config(source="folder", folder=str(folder), height=32, width=32, latent_frames=2,
                         num_examples=10, text_len=3, text_dim=4, **kw)


def test_reads_good_videos_and_counts_bad_ones(folder, caplog):
    with caplog.at_level(logging.WARNING):
        src = S.make_source(_cfg(folder))
    names = [os.path.basename(e.path) for e in src.videos.entries]
    assert names == ["a.mp4", "b.mp4"]
    assert src.videos.skipped == 2  # broken and too short
    warned = " ".join(r.getMessage() for r in caplog.records)
    assert "broken.mp4" in warned and "short.mp4" in warned
    assert [e.num_frames for e in src.videos.entries] == [20, 14]


def test_items_are_clips_of_the_files_with_their_texts(folder):
    src = S.make_source(_cfg(folder))
    for index in range(4):
        item = src[index]
        assert item["video"].shape == (T_FRAMES, 32, 32, 3) and item["video"].dtype == np.uint8
        entry = src.videos.entries[index % 2]
        whole = read_video(entry.path, 32, 32)
        starts = [s for s in range(len(whole) - T_FRAMES + 1)
                  if np.array_equal(whole[s:s + T_FRAMES], item["video"])]
        assert starts, f"item {index} is no clip of {entry.path}"
        if entry.path.endswith("a.mp4"):
            np.testing.assert_array_equal(item["text"], np.arange(12, dtype=np.float32).reshape(3, 4))
        else:
            np.testing.assert_array_equal(item["text"], np.zeros((3, 4), np.float32))
        assert all(np.array_equal(item[k], src[index][k]) for k in item)
    assert len({src[i]["video"].tobytes() for i in range(0, 10, 2)}) > 1  # random starts


def test_empty_or_unusable_folder_raises_naming_it(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match=str(empty)):
        S.make_source(_cfg(empty))
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "x.mp4").write_bytes(b"not a video")
    with pytest.raises(ValueError, match=rf"{bad}: no readable video.*1 video files skipped"):
        VideoFolder(bad, 32, 32, T_FRAMES, 3, 4)
    with pytest.raises(ValueError, match="no such folder"):
        S.make_source(_cfg(tmp_path / "missing"))


def test_text_file_of_the_wrong_shape_is_named(tmp_path):
    write_mp4(tmp_path / "c.mp4", _moving_pattern(10, 32, 32, 0), fps=8)
    np.save(tmp_path / "c.npy", np.zeros((3, 5), np.float32))
    with pytest.raises(ValueError, match=r"c\.npy: expected .*\(3, 4\).*\(3, 5\)"):
        S.make_source(_cfg(tmp_path))
