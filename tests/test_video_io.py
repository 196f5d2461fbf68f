"""Video files: MP4 round trip, resize/crop, clear errors, folder listing."""

import logging
import os

import numpy as np
import pytest

from aapt_jax.io.video import (frames_to_unit, list_videos, probe_video, read_video, unit_to_frames,
                               write_mp4)

T, H, W = 9, 48, 64


def _clip():
    # Smooth content (H.264 keeps it well) with motion, so frame order matters.
    t = np.arange(T)[:, None, None]
    y = np.arange(H)[None, :, None]
    x = np.arange(W)[None, None, :]
    r = 128 + 100 * np.sin(2 * np.pi * (x + 3 * t) / W)
    g = 128 + 100 * np.cos(2 * np.pi * (y - 2 * t) / H)
    b = 40 + 20 * t
    return np.stack(np.broadcast_arrays(r, g, b), -1).astype(np.uint8)


def _psnr(a, b):
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return 10 * np.log10(255.0 ** 2 / mse)


@pytest.fixture(scope="module")
def clip_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("videos") / "clip.mp4"
    write_mp4(path, _clip(), fps=8)
    return path


def test_round_trip(clip_file):
    frames = read_video(clip_file, H, W)
    assert frames.shape == (T, H, W, 3) and frames.dtype == np.uint8
    assert _psnr(frames, _clip()) > 30
    # Frames come back in order: each matches its own source frame best.
    errors = [[np.mean(np.abs(frames[i].astype(int) - _clip()[j])) for j in range(T)] for i in range(T)]
    assert list(np.argmin(errors, axis=1)) == list(range(T))
    info = probe_video(clip_file)
    assert (info.height, info.width, info.fps) == (H, W, 8.0)
    assert not [f for f in os.listdir(clip_file.parent) if f != "clip.mp4"]  # no temp file left


def test_window_resize_and_crop(clip_file):
    part = read_video(clip_file, H, W, num_frames=4, start=3)
    assert _psnr(part, _clip()[3:7]) > 30
    # Square target from a 4:3 source: the centre 48x48 columns, halved.
    small = read_video(clip_file, 24, 24, num_frames=2)
    assert small.shape == (2, 24, 24, 3)
    expected = _clip()[:2, :, 8:56].reshape(2, 24, 2, 24, 2, 3).mean((2, 4))
    assert _psnr(small, expected.astype(np.uint8)) > 25


def test_unit_conversions():
    frames = _clip()
    unit = frames_to_unit(frames)
    assert unit.dtype == np.float32 and unit.min() >= -1 and unit.max() <= 1
    np.testing.assert_array_equal(unit_to_frames(unit), frames)
    np.testing.assert_array_equal(unit_to_frames(np.array([-2.0, 0.0, 2.0])), [0, 128, 255])
    with pytest.raises(ValueError, match="expected uint8"):
        frames_to_unit(unit)


def test_missing_and_corrupt_files(tmp_path, clip_file):
    missing = tmp_path / "nope.mp4"
    with pytest.raises(ValueError, match=f"{missing}: no such video file"):
        read_video(missing, H, W)
    corrupt = tmp_path / "corrupt.mp4"
    corrupt.write_bytes(b"this is not a video" * 100)
    with pytest.raises(ValueError, match=str(corrupt)):
        read_video(corrupt, H, W)
    truncated = tmp_path / "truncated.mp4"
    truncated.write_bytes(clip_file.read_bytes()[:600])
    with pytest.raises(ValueError, match=str(truncated)):
        read_video(truncated, H, W)
    with pytest.raises(ValueError, match=f"{clip_file}: num_frames 20 from index 0 asked, the video has only 9"):
        read_video(clip_file, H, W, num_frames=20)


def test_write_rejects_bad_frames(tmp_path):
    with pytest.raises(ValueError, match="expected uint8"):
        write_mp4(tmp_path / "a.mp4", np.zeros((2, 8, 8, 3), np.float32), fps=8)
    with pytest.raises(ValueError, match="even height and width"):
        write_mp4(tmp_path / "a.mp4", np.zeros((2, 9, 8, 3), np.uint8), fps=8)
    assert not os.listdir(tmp_path)


def test_list_videos_counts_bad_files(tmp_path, clip_file, caplog):
    (tmp_path / "sub").mkdir()
    (tmp_path / "a.mp4").write_bytes(clip_file.read_bytes())
    (tmp_path / "sub" / "b.mp4").write_bytes(clip_file.read_bytes())
    (tmp_path / "broken.mov").write_bytes(b"\x00" * 1000)
    (tmp_path / "notes.txt").write_text("not a video")
    with caplog.at_level(logging.WARNING):
        paths, skipped = list_videos(tmp_path)
    assert [os.path.relpath(p, tmp_path) for p in paths] == ["a.mp4", os.path.join("sub", "b.mp4")]
    assert skipped == 1
    assert "broken.mov" in caplog.text
    with pytest.raises(ValueError, match="no such folder"):
        list_videos(tmp_path / "absent")
