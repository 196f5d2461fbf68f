"""Crops of training clips keep their controls exact; control maps follow the VAE's cell size;
a branched walk leaves the same first frame; the held-out figures' statistics."""

import numpy as np
import pytest

from aapt_jax.data.crop import CroppedSource
from aapt_jax.data.sources import make_source, validate_data_config
from aapt_jax.data.world import render_path
from aapt_jax.data.world_camera import random_walk
from aapt_jax.eval import world_figures
from aapt_jax.model.camera import camera_control
from aapt_jax.model.controls import ControlConfig, control_channels, control_maps

HW = (64, 64)


@pytest.fixture(scope="module")
def world_source():
    return make_source({"source": "world", "height": 64, "width": 64, "latent_frames": 1, "num_examples": 8,
                        "seed": 3, "text_len": 2, "text_dim": 4})


def test_crop_cuts_video_and_moves_the_principal_point(world_source):
    cropped = CroppedSource(world_source, 32, seed=3)
    for i in range(4):
        whole, part = world_source[i], cropped[i]
        y0, x0 = cropped.corner(i)
        assert part["video"].shape == (5, 32, 32, 3)
        np.testing.assert_array_equal(part["video"], whole["video"][:, y0:y0 + 32, x0:x0 + 32])
        np.testing.assert_allclose(part["intrinsics"][:, 2:], whole["intrinsics"][:, 2:] - [x0, y0])
        # The crop's camera maps are the whole frame's maps in the crop's latent cells.
        maps_part = np.asarray(camera_control(part["intrinsics"][None], part["c2w"][None], (32, 32), 1, 0.05, 0.01))
        maps_whole = np.asarray(camera_control(whole["intrinsics"][None], whole["c2w"][None], HW, 1, 0.05, 0.01))
        np.testing.assert_allclose(maps_part, maps_whole[:, :, y0 // 8:y0 // 8 + 4, x0 // 8:x0 // 8 + 4], atol=1e-5)
    corners = {cropped.corner(i) for i in range(8)}
    assert len(corners) > 1 and cropped.corner(5) == CroppedSource(world_source, 32, seed=3).corner(5)


def test_crop_field_is_checked():
    cfg = {"source": "world", "height": 64, "width": 64}
    assert validate_data_config({**cfg, "crop": 32})["crop"] == 32
    with pytest.raises(ValueError, match="data.crop: expected 0 or a multiple of 8"):
        make_source({**cfg, "crop": 20})
    with pytest.raises(ValueError, match="data.crop: expected 0 .whole frames."):
        validate_data_config({**cfg, "crop": -8})
    assert make_source({**cfg, "crop": 32, "num_examples": 2})[0]["video"].shape[1:3] == (32, 32)


def test_control_maps_follow_the_cell_size(world_source):
    item = world_source[0]
    intrinsics, c2w = item["intrinsics"][None], item["c2w"][None]
    fine = np.asarray(control_maps(ControlConfig(kind="camera", fold=1, cell=4), HW, intrinsics=intrinsics, c2w=c2w))
    coarse = np.asarray(control_maps(ControlConfig(kind="camera", fold=2, cell=8), HW, intrinsics=intrinsics, c2w=c2w))
    assert fine.shape == (1, 1, 16, 16, 24) and control_channels(ControlConfig(kind="camera", fold=1, cell=4)) == 24
    # Same 16 x 16 ray grid: unfold coarse's (dy, dx) channels back into space.
    b, k, h, w, _ = coarse.shape
    unfolded = coarse.reshape(b, k, h, w, 24, 2, 2).transpose(0, 1, 2, 5, 3, 6, 4).reshape(b, k, 2 * h, 2 * w, 24)
    np.testing.assert_allclose(fine, unfolded, atol=1e-6)
    with pytest.raises(ValueError, match="divisible by 24"):
        control_maps(ControlConfig(kind="camera", fold=1, cell=24), HW, intrinsics=intrinsics, c2w=c2w)


def test_branched_walk_leaves_the_same_first_frame(world_source):
    world = world_source.world(0)
    kw = dict(fov_deg=70.0, warmup_frames=10)
    own = random_walk(world, 48, 11, HW, **kw)
    again = random_walk(world, 48, 11, HW, **kw)
    other = random_walk(world, 48, 11, HW, branch_seed=5, **kw)
    np.testing.assert_array_equal(own.c2w, again.c2w)
    np.testing.assert_array_equal(own.c2w[0], other.c2w[0])
    assert np.abs(own.c2w[-1] - other.c2w[-1]).max() > 0.05
    a, b = (render_path(world, p.intrinsics, p.c2w, HW) for p in (own, other))
    np.testing.assert_array_equal(a[0], b[0])


def test_interval_and_control_following():
    mean, half = world_figures.mean_ci95([1.0, 2.0, 3.0, 4.0])
    assert mean == 2.5 and half == pytest.approx(3.182 * np.std([1, 2, 3, 4], ddof=1) / 2)
    assert world_figures.t95(60) == pytest.approx(2.000, abs=2e-3)
    rng = np.random.default_rng(0)
    own = rng.integers(0, 255, (49, 8, 8, 3), dtype=np.uint8)
    other = rng.integers(0, 255, (49, 8, 8, 3), dtype=np.uint8)
    assert world_figures.control_following(own, own, other, 24, (1, 2)) > 20
    assert world_figures.control_following(other, own, other, 24, (1, 2)) < -20
    baseline = world_figures.copy_first_frame(own)
    assert baseline.shape == own.shape and (baseline == own[0]).all()
    with pytest.raises(ValueError, match="seconds"):
        world_figures.window_psnr(own, own, 24, (3, 4))
