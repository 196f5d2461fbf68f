"""A truncated video is listed with the frames that really decode, and a clip that fails at
run time is skipped and counted, never the end of a run."""

import os

import av
import numpy as np
import pytest

from aapt_jax.data.sources import data_config, make_source

FRAMES = 80


def _write_faststart_mp4(path, seed):
    """An mp4 whose header (moov) comes first, so truncating it keeps the promised count."""
    rng = np.random.default_rng(seed)
    with av.open(str(path), mode="w", format="mp4", options={"movflags": "faststart"}) as c:
        s = c.add_stream("libx264", rate=24)
        s.height, s.width, s.pix_fmt = 32, 32, "yuv420p"
        for _ in range(FRAMES):
            frame = rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)
            for p in s.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                c.mux(p)
        for p in s.encode(None):
            c.mux(p)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("videos")
    for i, name in enumerate(("a.mp4", "b.mp4")):
        _write_faststart_mp4(root / name, i)
    os.truncate(root / "b.mp4", int(os.path.getsize(root / "b.mp4") * 0.8))
    assert av.open(str(root / "b.mp4")).streams.video[0].frames == FRAMES  # the header still promises 80
    return root


def _source(folder):
    return make_source(data_config(source="folder", folder=str(folder), height=32, width=32, latent_frames=4))


def test_truncated_video_is_listed_with_its_decodable_frames(folder):
    source = _source(folder)
    counts = {os.path.basename(e.path): e.num_frames for e in source.videos.entries}
    assert counts["a.mp4"] == FRAMES and 17 <= counts["b.mp4"] < FRAMES
    for i in range(24):  # every start drawn is readable: no item fails
        assert source[i]["video"].shape == (17, 32, 32, 3)
    assert source.skipped_clips == 0


def test_clip_damaged_after_listing_is_skipped_and_counted(folder, tmp_path):
    import shutil

    copy = tmp_path / "v"
    shutil.copytree(folder, copy)
    source = _source(copy)
    os.truncate(copy / "a.mp4", 2000)  # damaged while the run goes on
    items = [source[i]["video"] for i in range(6)]
    assert all(v.shape == (17, 32, 32, 3) for v in items)
    assert source.skipped_clips >= 3  # the even items were a.mp4's
    np.testing.assert_array_equal(source[0]["video"], items[0])  # the same index, the same substitute
