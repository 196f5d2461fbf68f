import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from aapt_jax.model import camera

# Eager mode dispatches (and compiles) every primitive separately; one jit per shape is
# much faster on a CPU.
camera_control = jax.jit(camera.camera_control, static_argnames=(
    "video_hw", "fold", "origin_scale", "rotation_scale", "dtype"))
camera_rays = jax.jit(camera.camera_rays, static_argnames=("height", "width"))
relative_poses = jax.jit(camera.relative_poses)


def rotation(axis_angle):
    """Rodrigues: rotation vector [..., 3] -> rotation matrix [..., 3, 3] (numpy)."""
    w = np.asarray(axis_angle, np.float64)
    theta = np.linalg.norm(w, axis=-1)[..., None, None]
    k = w / np.maximum(np.linalg.norm(w, axis=-1, keepdims=True), 1e-12)
    kx = np.zeros(w.shape[:-1] + (3, 3))
    kx[..., 0, 1], kx[..., 0, 2] = -k[..., 2], k[..., 1]
    kx[..., 1, 0], kx[..., 1, 2] = k[..., 2], -k[..., 0]
    kx[..., 2, 0], kx[..., 2, 1] = -k[..., 1], k[..., 0]
    return np.eye(3) + np.sin(theta) * kx + (1 - np.cos(theta)) * kx @ kx


def rigid(rot, trans):
    m = np.zeros(np.shape(rot)[:-2] + (4, 4))
    m[..., :3, :3], m[..., :3, 3], m[..., 3, 3] = rot, trans, 1.0
    return m


def compose_steps(start, steps):
    """Absolute trajectory [B, T, 4, 4] from a start pose [B, 4, 4] and steps [B, T-1, 4, 4]."""
    poses = [start]
    for t in range(steps.shape[1]):
        poses.append(poses[-1] @ steps[:, t])
    return np.stack(poses, axis=1)


def pinhole(batch, frames, height, width, hfov_deg=60.0):
    fx = width / (2 * np.tan(np.deg2rad(hfov_deg) / 2))
    return np.broadcast_to(np.array([fx, fx, width / 2, height / 2]), (batch, frames, 4)).copy()


def smooth_trajectory(rng, batch, frames, step_t, step_r):
    """Random smooth trajectories: per-sample constant velocity plus small per-frame jitter.

    Per-axis steps have std ~step_t (translation) and ~step_r (rotation, radians), and the
    start pose is far from the origin and arbitrarily oriented.
    """
    jitter = (batch, frames - 1, 3)
    vel_t = rng.normal(0, step_t, (batch, 1, 3)) + rng.normal(0, 0.3 * step_t, jitter)
    vel_r = rng.normal(0, step_r, (batch, 1, 3)) + rng.normal(0, 0.3 * step_r, jitter)
    steps = rigid(rotation(vel_r), vel_t)
    start = rigid(rotation(rng.normal(0, 1.0, (batch, 3))), rng.normal(0, 50.0, (batch, 3)))
    return compose_steps(start, steps)


def test_identity_camera_rays():
    height, width = 9, 11
    intr = np.array([[[8.0, 8.0, width / 2, height / 2]]])
    pose = rigid(np.eye(3), np.array([1.0, -2.0, 3.0]))[None, None]
    rays = np.asarray(camera_rays(intr, pose, height, width))
    assert rays.shape == (1, 1, height, width, 6)
    np.testing.assert_allclose(rays[0, 0, 4, 5, 3:], [0.0, 0.0, 1.0], atol=1e-7)
    np.testing.assert_allclose(np.linalg.norm(rays[..., 3:], axis=-1), 1.0, rtol=1e-6)
    np.testing.assert_allclose(rays[..., :3],
                               np.broadcast_to([1.0, -2.0, 3.0], rays[..., :3].shape))
    # Pixel (row 0, column 0) has centre (0.5, 0.5): x = (0.5 - 5.5) / 8, y = (0.5 - 4.5) / 8.
    corner = np.array([-5.0 / 8, -4.0 / 8, 1.0])
    np.testing.assert_allclose(rays[0, 0, 0, 0, 3:], corner / np.linalg.norm(corner), rtol=1e-6)


def test_rotated_camera_rays():
    height, width = 9, 11
    intr = np.array([[[8.0, 6.0, width / 2, height / 2]]])
    yaw = rotation([0.0, np.pi / 2, 0.0])  # camera forward (z) turns to world +x
    identity = np.asarray(camera_rays(intr, np.eye(4)[None, None], height, width))
    rays = np.asarray(camera_rays(intr, rigid(yaw, np.zeros(3))[None, None], height, width))
    np.testing.assert_allclose(rays[0, 0, 4, 5, 3:], [1.0, 0.0, 0.0], atol=1e-6)
    np.testing.assert_allclose(rays[..., 3:], identity[..., 3:] @ yaw.T, atol=1e-6)


def test_relative_poses_compose_to_trajectory():
    traj = smooth_trajectory(np.random.default_rng(0), 2, 9, step_t=0.3, step_r=0.2)
    rel = np.asarray(relative_poses(traj.astype(np.float32)), np.float64)
    np.testing.assert_allclose(rel[:, 0], np.broadcast_to(np.eye(4), (2, 4, 4)), atol=1e-7)
    np.testing.assert_allclose(rel[:, 1:, 3], np.broadcast_to([0, 0, 0, 1.0], (2, 8, 4)))
    np.testing.assert_allclose(compose_steps(traj[:, 0], rel[:, 1:]), traj, atol=1e-4)


def test_relative_pose_translation_is_in_previous_camera_frame():
    # The camera turns 90 degrees to face world +x, then steps +1 along world x: in its own
    # (previous-frame) coordinates that is a step straight forward, +z.
    yaw = rotation([0.0, np.pi / 2, 0.0])
    traj = np.stack([rigid(yaw, [5.0, 0, 0]), rigid(yaw, [6.0, 0, 0])])[None]
    rel = np.asarray(relative_poses(traj))
    np.testing.assert_allclose(rel[0, 1], rigid(np.eye(3), [0, 0, 1.0]), atol=1e-6)


def test_relative_control_stays_bounded_while_absolute_grows():
    # 1000 frames of constant velocity: a forward step and a slow yaw every frame.
    frames = 1001
    step = rigid(rotation([0.0, 0.01, 0.0]), [0.0, 0.0, 0.05])
    traj = compose_steps(np.eye(4)[None], np.broadcast_to(step, (1, frames - 1, 4, 4)))
    intr = pinhole(1, frames, 8, 8)
    ctrl = np.asarray(camera_control(intr, traj, video_hw=(8, 8), fold=1, origin_scale=0.05,
                                     rotation_scale=0.01))
    assert ctrl.shape == (1, 250, 1, 1, camera.camera_channels(1))
    assert np.abs(ctrl).max() < 3.0
    # Every latent frame sees the same per-frame change, at the start and 1000 frames on.
    np.testing.assert_allclose(ctrl[0, -1], ctrl[0, 0], atol=1e-2)
    # Poses relative to the FIRST frame (CameraCtrl II) drift without bound instead.
    first_relative = np.linalg.inv(traj[:, :1]) @ traj
    absolute = np.asarray(camera_rays(intr, first_relative, 1, 1))[..., :3] / 0.05
    assert np.abs(absolute[0, 1]).max() < 3.0
    assert np.abs(absolute[0, -1]).max() > 100 * np.abs(absolute[0, 1]).max()


def numpy_wan_fold(x, fold):
    """Reference layout in PyTorch's NCHW terms: Wan's 4-frame stacking, then PixelUnshuffle."""
    b, t, gh, gw, c = x.shape
    k, h, w = t // 4, gh // fold, gw // fold
    x = x.transpose(0, 1, 4, 2, 3)                                    # b, f, c, H, W
    x = x.reshape(b, k, 4, c, gh, gw).transpose(0, 1, 3, 2, 4, 5)     # b, k, c, s, H, W
    x = x.reshape(b, k, c * 4, gh, gw)
    # PixelUnshuffle: out[ch * r*r + dy * r + dx, i, j] = in[ch, i*r + dy, j*r + dx]
    x = x.reshape(b, k, c * 4, h, fold, w, fold).transpose(0, 1, 2, 4, 6, 3, 5)
    x = x.reshape(b, k, c * 4 * fold * fold, h, w)
    return x.transpose(0, 1, 3, 4, 2)


def test_fold_to_latent_places_known_pixel():
    fold, c = 3, 5
    x = np.zeros((2, 8, 2 * fold, 3 * fold, c), np.float32)
    # batch 1, video frame 1 + 4*1 + 2 (latent index 1, sub-frame 2), latent cell (1, 2),
    # offset (dy, dx) = (2, 1), component 4.
    x[1, 4 * 1 + 2, 1 * fold + 2, 2 * fold + 1, 4] = 1.0
    out = np.asarray(camera.fold_to_latent(x, fold))
    assert out.shape == (2, 2, 2, 3, c * 4 * fold**2)
    expected = np.zeros_like(out)
    expected[1, 1, 1, 2, ((4 * 4 + 2) * fold + 2) * fold + 1] = 1.0
    np.testing.assert_array_equal(out, expected)
    rand = np.random.default_rng(1).normal(size=x.shape).astype(np.float32)
    np.testing.assert_array_equal(np.asarray(camera.fold_to_latent(rand, fold)),
                                  numpy_wan_fold(rand, fold))


def test_camera_control_channel_layout():
    # Still camera except for one step of exactly origin_scale along camera x, between
    # video frames 5 and 6: that is latent index 1 (video frames 5..8), sub-frame 1.
    fold, scale = 2, 0.05
    traj = np.broadcast_to(np.eye(4), (1, 13, 4, 4)).copy()
    traj[0, 6:, 0, 3] = scale
    intr = pinhole(1, 13, 16, 24)
    ctrl = np.asarray(camera_control(intr, traj, video_hw=(16, 24), fold=fold, origin_scale=scale,
                                     rotation_scale=0.01))
    assert ctrl.shape == (1, 3, 2, 3, camera.camera_channels(fold)) == (1, 3, 2, 3, 96)
    expected = np.zeros_like(ctrl)
    for dy in range(fold):
        for dx in range(fold):
            expected[0, 1, :, :, ((0 * 4 + 1) * fold + dy) * fold + dx] = 1.0
    np.testing.assert_allclose(ctrl, expected, atol=1e-6)


def test_control_is_scaled_rays_of_relative_poses():
    # fold=1 on a 16x24 video: rays on the 2x3 latent grid, intrinsics divided by 8.
    traj = smooth_trajectory(np.random.default_rng(5), 2, 9, 0.05, 0.01)
    intr = pinhole(2, 9, 16, 24)
    ctrl = np.asarray(camera_control(intr, traj, video_hw=(16, 24), fold=1, origin_scale=0.05,
                                     rotation_scale=0.01))
    grid_intr = intr[:, 1:] / 8
    rel = relative_poses(traj)[:, 1:]
    rays = np.asarray(camera_rays(grid_intr, rel, 2, 3), np.float64)
    still = np.asarray(camera_rays(grid_intr, np.broadcast_to(np.eye(4), rel.shape), 2, 3))
    scaled = np.concatenate([rays[..., :3] / 0.05, (rays[..., 3:] - still[..., 3:]) / 0.01], -1)
    # atol: float32 rounding of unit directions, divided by rotation_scale.
    np.testing.assert_allclose(ctrl, numpy_wan_fold(scaled, 1), atol=1e-4)


@pytest.mark.parametrize("hfov_deg", [60.0, 5.0])
def test_scaled_control_has_unit_order_std(hfov_deg):
    # Also at a 5-degree (telephoto) field of view, where the z spread of the identity
    # camera's directions is ~1e-3: nothing may be divided by it.
    step_t, step_r, fold = 0.05, 0.01, 2
    traj = smooth_trajectory(np.random.default_rng(2), 8, 33, step_t, step_r)
    intr = pinhole(8, 33, 48, 64, hfov_deg)
    ctrl = np.asarray(camera_control(intr, traj, video_hw=(48, 64), fold=fold, origin_scale=step_t,
                                     rotation_scale=step_r))
    half = ctrl.shape[-1] // 2
    origin, direction = ctrl[..., :half], ctrl[..., half:]
    for group in (origin, direction):
        assert 0.3 < group.std() < 3.0, group.std()
    per_channel = ctrl.reshape(-1, ctrl.shape[-1]).std(axis=0)
    assert per_channel.max() < 3.0
    assert np.abs(ctrl).max() < 10.0
    assert not np.asarray(camera.camera_outlier_mask(ctrl, 10.0)).any()


def test_outlier_mask_flags_jumps_and_nans():
    traj = smooth_trajectory(np.random.default_rng(3), 3, 9, 0.05, 0.01)
    traj[1, 5:, :3, 3] += 100 * 0.05  # a failed estimate teleports sample 1 once
    intr = pinhole(3, 9, 16, 16)
    ctrl = np.array(camera_control(intr, traj, video_hw=(16, 16), fold=1, origin_scale=0.05,
                                   rotation_scale=0.01))
    ctrl[2, 0, 0, 0, 0] = np.nan
    np.testing.assert_array_equal(np.asarray(camera.camera_outlier_mask(ctrl, 10.0)),
                                  [False, True, True])


def test_camera_control_differentiates():
    traj = smooth_trajectory(np.random.default_rng(4), 1, 5, 0.05, 0.01).astype(np.float32)
    intr = pinhole(1, 5, 8, 8).astype(np.float32)
    fn = functools.partial(camera.camera_control, video_hw=(8, 8), fold=2,
                           origin_scale=0.05, rotation_scale=0.01)
    grads = jax.jit(jax.grad(lambda c, k: jnp.sum(fn(k, c) ** 2), argnums=(0, 1)))(traj, intr)
    for g in grads:
        assert np.isfinite(np.asarray(g)).all() and np.abs(np.asarray(g)).max() > 0


@pytest.mark.parametrize("kwargs, field", [
    (dict(intrinsics=np.zeros((1, 9, 3))), "intrinsics"),
    (dict(intrinsics=np.zeros((1, 5, 4))), "intrinsics"),
    (dict(c2w=np.zeros((1, 9, 3, 4))), "c2w"),
    (dict(c2w=np.zeros((1, 8, 4, 4)), intrinsics=np.zeros((1, 8, 4))), "c2w"),
    (dict(video_hw=(20, 16)), "video_hw"),
    (dict(fold=0), "fold"),
    (dict(origin_scale=0.0), "origin_scale"),
    (dict(rotation_scale=-1.0), "rotation_scale"),
])
def test_camera_control_rejects_bad_inputs(kwargs, field):
    args = dict(intrinsics=pinhole(1, 9, 16, 16), c2w=np.broadcast_to(np.eye(4), (1, 9, 4, 4)),
                video_hw=(16, 16), fold=1, origin_scale=0.05, rotation_scale=0.01)
    args.update(kwargs)
    with pytest.raises(ValueError, match=field):
        camera.camera_control(**args)
