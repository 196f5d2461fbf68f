import jax
import jax.numpy as jnp
import numpy as np
import pytest

from aapt_jax.model import pose

# One compilation per shape instead of eager per-primitive dispatch.
pose_control = jax.jit(pose.pose_control, static_argnames=("video_hw", "fold", "sigma", "dtype"))
pose_heatmaps = jax.jit(pose.pose_heatmaps, static_argnames=("video_hw", "fold", "sigma"))

VIDEO_HW = (32, 48)  # latent grid 4 x 6


def single_joint(fold, frame, joint, grid_yx, num_frames=9, num_joints=3):
    """Keypoints with one joint visible in one video frame, at a grid pixel's centre."""
    keypoints = np.full((1, num_frames, num_joints, 2), 7.0, np.float32)
    visibility = np.zeros((1, num_frames, num_joints), bool)
    gy, gx = grid_yx
    # A grid pixel covers 8 / fold video pixels per axis.
    keypoints[0, frame, joint] = ((gx + 0.5) * 8 / fold, (gy + 0.5) * 8 / fold)
    visibility[0, frame, joint] = True
    return keypoints, visibility


def test_single_joint_lands_in_documented_cell_and_channel():
    fold, frame, joint, (gy, gx) = 2, 6, 1, (3, 5)
    keypoints, visibility = single_joint(fold, frame, joint, (gy, gx))
    maps = np.asarray(pose_control(keypoints, visibility, video_hw=VIDEO_HW, fold=fold,
                                   sigma=0.5))
    assert maps.shape == (1, 2, 4, 6, pose.pose_channels(3, fold)) == (1, 2, 4, 6, 48)
    # Video frame 6 = 4 * 1 + 1 + 1: latent index 1 (latent frame 2), sub-frame 1.
    p, s = 1, 1
    cell = (gy // fold, gx // fold)
    channel = ((joint * 4 + s) * fold + gy % fold) * fold + gx % fold
    assert np.unravel_index(np.argmax(maps), maps.shape) == (0, p, *cell, channel)
    np.testing.assert_allclose(maps[0, p, cell[0], cell[1], channel], 1.0, rtol=1e-6)
    # Nothing else of this frame or joint leaks into other latent frames or channels.
    others = np.ones(maps.shape, bool)
    others[0, p, :, :, [((joint * 4 + s) * fold + dy) * fold + dx
                        for dy in range(fold) for dx in range(fold)]] = False
    assert np.abs(maps[others]).max() == 0.0


def test_sigma_is_in_latent_cells():
    # One grid pixel away from the peak is 1/fold latent cells away.
    for fold in (1, 2, 4):
        keypoints, visibility = single_joint(fold, 1, 0, (2, 2), num_frames=5, num_joints=1)
        maps = np.asarray(pose_heatmaps(keypoints, visibility, video_hw=VIDEO_HW, fold=fold,
                                        sigma=0.75))
        assert maps.shape == (1, 5, 4 * fold, 6 * fold, 1)
        np.testing.assert_allclose(maps[0, 1, 2, 3, 0], np.exp(-0.5 * (1 / fold / 0.75) ** 2),
                                   rtol=1e-5)


def test_invisible_joints_give_zero_maps_even_with_nan_keypoints():
    rng = np.random.default_rng(0)
    keypoints = rng.uniform(0, 32, (2, 9, 4, 2)).astype(np.float32)
    visibility = rng.uniform(size=(2, 9, 4)) < 0.5
    keypoints[~visibility] = np.nan
    maps = np.asarray(pose_control(keypoints, visibility, video_hw=VIDEO_HW, fold=1, sigma=1.0))
    assert np.isfinite(maps).all()
    per_joint = maps.reshape(2, 2, 4, 6, 4, 4)  # [..., joint, sub-frame] for fold=1
    vis = visibility[:, 1:].reshape(2, 2, 4, 4)  # [b, p, s, j]
    energy = per_joint.sum(axis=(2, 3)).transpose(0, 1, 3, 2)  # [b, p, s, j]
    assert (energy[~vis] == 0).all() and (energy[vis] > 0).all()
    grad = jax.jit(jax.grad(lambda k: jnp.sum(pose.pose_control(k, visibility, VIDEO_HW, 1, 1.0))))
    g = np.asarray(grad(keypoints))
    assert np.isfinite(g).all() and (g[~visibility] == 0).all()


def test_soft_visibility_scales_the_map_and_none_means_visible():
    keypoints, _ = single_joint(1, 1, 0, (1, 1), num_frames=5, num_joints=1)
    full = np.asarray(pose_control(keypoints, None, video_hw=VIDEO_HW, fold=1, sigma=0.5))
    half = np.asarray(pose_control(keypoints, np.full((1, 5, 1), 0.5), video_hw=VIDEO_HW, fold=1,
                                   sigma=0.5))
    np.testing.assert_allclose(half, 0.5 * full, rtol=1e-6)
    assert full.max() == pytest.approx(1.0)


def test_default_skeleton_is_consistent():
    sk = pose.DEFAULT_SKELETON
    assert sk.num_joints == 13 == len(set(sk.joint_names)) == len(sk.rest_xy)
    for a, b in sk.limbs:
        assert 0 <= a < sk.num_joints and 0 <= b < sk.num_joints and a != b
    # Every joint is reachable from the head along the limbs.
    reached, frontier = {0}, [0]
    while frontier:
        j = frontier.pop()
        for a, b in sk.limbs:
            for x, y in ((a, b), (b, a)):
                if x == j and y not in reached:
                    reached.add(y)
                    frontier.append(y)
    assert reached == set(range(sk.num_joints))
    # Left and right mirror each other in the rest pose.
    for j, name in enumerate(sk.joint_names):
        if name.startswith("left_"):
            m = sk.joint_names.index("right_" + name[len("left_"):])
            assert sk.rest_xy[m] == (-sk.rest_xy[j][0], sk.rest_xy[j][1])


@pytest.mark.parametrize("keypoints, visibility, field", [
    (np.zeros((1, 9, 3)), None, "keypoints"),
    (np.zeros((1, 8, 3, 2)), None, "keypoints"),
    (np.zeros((1, 9, 3, 2)), np.zeros((1, 9, 2)), "visibility"),
])
def test_pose_control_rejects_bad_inputs(keypoints, visibility, field):
    with pytest.raises(ValueError, match=field):
        pose.pose_control(keypoints, visibility, VIDEO_HW, 1, 0.5)


def test_pose_channels_rejects_bad_counts():
    assert pose.pose_channels(13, 2) == 13 * 4 * 4
    with pytest.raises(ValueError, match="num_joints"):
        pose.pose_channels(0, 1)
    with pytest.raises(ValueError, match="fold"):
        pose.pose_channels(13, 0)
