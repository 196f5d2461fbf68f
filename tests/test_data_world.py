"""Procedural maze world: determinism, exact re-rendering, collisions, camera convention."""

import math
import time

import numpy as np
import pytest

from aapt_jax.data import world as W
from aapt_jax.data import world_camera as C
from aapt_jax.data.pose_figure import _convex_hull
from aapt_jax.model import camera

HW = (48, 64)


@pytest.fixture(scope="module")
def world():
    return W.make_world(7)


@pytest.fixture(scope="module")
def long_walk(world):
    return C.random_walk(world, 2000, seed=3, video_hw=HW)


def test_same_seed_same_video_different_seed_different(world):
    path = C.random_walk(world, 9, seed=1, video_hw=HW, warmup_frames=20)
    again = C.random_walk(W.make_world(7), 9, seed=1, video_hw=HW, warmup_frames=20)
    np.testing.assert_array_equal(path.c2w, again.c2w)
    frames = W.render_path(world, path.intrinsics, path.c2w, HW)
    np.testing.assert_array_equal(frames, W.render_path(W.make_world(7), again.intrinsics, again.c2w, HW))
    assert frames.shape == (9, *HW, 3) and frames.dtype == np.uint8

    other_world = W.make_world(8)
    assert not np.array_equal(other_world.solid, world.solid)
    other_walk = C.random_walk(world, 9, seed=2, video_hw=HW, warmup_frames=20)
    assert not np.allclose(other_walk.c2w, path.c2w)
    assert not np.array_equal(W.render_path(world, other_walk.intrinsics, other_walk.c2w, HW), frames)
    # Same camera, other world: other pixels.
    assert not np.array_equal(W.render_path(other_world, path.intrinsics, path.c2w, HW), frames)


def test_render_path_is_pure_frame_by_frame(world, long_walk):
    sl = slice(100, 140)
    frames = W.render_path(world, long_walk.intrinsics[sl], long_walk.c2w[sl], HW)
    # Any chunking, any order: the same pixels.
    for t in (0, 17, 39):
        np.testing.assert_array_equal(
            W.render_path(world, long_walk.intrinsics[sl][t:t + 1], long_walk.c2w[sl][t:t + 1], HW),
            frames[t:t + 1])
    np.testing.assert_array_equal(
        W.render_path(world, long_walk.intrinsics[sl][::-1], long_walk.c2w[sl][::-1], HW), frames[::-1])


def test_camera_never_enters_walls(world, long_walk):
    radius = C.WalkParams().radius
    xz = long_walk.c2w[:, [0, 2], 3].astype(np.float64)
    # Also the midpoints: a camera that jumped through a wall would have one inside it.
    points = np.concatenate([xz, 0.5 * (xz[1:] + xz[:-1])])
    nearest = min(C.wall_distance(world, x, z) for x, z in points)
    assert nearest >= radius - 1e-4
    travelled = np.sum(np.linalg.norm(np.diff(xz, axis=0), axis=1))
    cells = {tuple(c) for c in np.floor(xz / world.cell_size).astype(int)}
    assert travelled > 30.0 and len(cells) > 8  # it really walks the maze
    rot = long_walk.c2w[:, :3, :3].astype(np.float64)
    np.testing.assert_allclose(rot @ np.swapaxes(rot, 1, 2), np.broadcast_to(np.eye(3), rot.shape),
                               atol=1e-5)


def test_frames_repeat_exactly_when_still_and_change_when_moving(world, long_walk):
    c2w = long_walk.c2w
    still = np.flatnonzero(np.all(c2w[1:] == c2w[:-1], axis=(1, 2))) + 1
    moving = np.flatnonzero(np.any(c2w[1:] != c2w[:-1], axis=(1, 2))) + 1
    assert len(still) > 10 and len(moving) > 1000
    np.testing.assert_array_equal(long_walk.actions[still], 0.0)

    def consecutive_frames_equal(frames):
        pairs = np.stack([frames - 1, frames], 1).ravel()
        video = W.render_path(world, long_walk.intrinsics[pairs], c2w[pairs], HW)
        return [np.array_equal(a, b) for a, b in video.reshape(-1, 2, *HW, 3)]

    assert all(consecutive_frames_equal(still[:: max(1, len(still) // 12)]))
    assert not any(consecutive_frames_equal(moving[::150]))


def test_rendering_speed(world, long_walk):
    hw = (96, 128)
    intrinsics = np.broadcast_to(C.pinhole_intrinsics(hw, 70.0), (200, 4))
    start = time.perf_counter()
    W.render_path(world, intrinsics, long_walk.c2w[:200], hw)
    elapsed = time.perf_counter() - start
    assert elapsed < 4.0, f"200 frames of 96x128 took {elapsed:.2f} s"


def test_pixel_rays_match_the_model_camera():
    intrinsics = np.array([[50.0, 47.0, 30.5, 21.0]], np.float32)
    state = C.CameraState(x=3.1, z=-1.7, yaw=0.7, pitch=-0.3)
    c2w = C.camera_to_world(state)[None].astype(np.float32)
    origin, direction = W.pixel_rays(intrinsics, c2w, HW)
    rays = np.asarray(camera.camera_rays(intrinsics[None], c2w[None], *HW))[0]
    np.testing.assert_allclose(origin, rays[..., :3], atol=1e-6)
    np.testing.assert_allclose(direction, rays[..., 3:], atol=2e-6)


def _open_room(size: int, pillar) -> W.World:
    solid = np.ones((size, size), bool)
    solid[1:-1, 1:-1] = False
    if pillar is not None:
        solid[pillar] = True
    rng = np.random.default_rng(0)
    return W.World(solid=solid, wall_style=np.zeros(solid.shape, int),
                   wall_colors=rng.uniform(0, 1, solid.shape + (3, 3)).astype(np.float32),
                   has_panel=np.zeros(solid.shape, bool),
                   floor_colors=rng.uniform(0, 1, solid.shape + (2, 3)).astype(np.float32),
                   ceiling_colors=rng.uniform(0, 1, solid.shape + (2, 3)).astype(np.float32))


def _signed_distance_to_hull(points, u, v):
    """Pixel-centre distance to the convex hull of ``points`` [n, 2]: > 0 inside."""
    hull = _convex_hull(np.asarray(points))
    dist = np.full(u.shape, np.inf)
    for (ax, ay), (bx, by) in zip(hull, np.roll(hull, -1, axis=0)):
        dist = np.minimum(dist, ((bx - ax) * (v - ay) - (by - ay) * (u - ax)) / math.hypot(bx - ax, by - ay))
    return dist


def test_projected_pillar_lands_where_it_is_drawn():
    """Project a pillar's corners with the model's camera convention; the renderer must
    draw the pillar exactly inside that silhouette and nothing changes outside it."""
    hw = (96, 128)
    pillar = (5, 6)
    room, empty = _open_room(11, pillar), _open_room(11, None)
    s = room.cell_size
    state = C.CameraState(x=5.3 * s, z=2.4 * s, yaw=0.35, pitch=0.12)
    c2w = C.camera_to_world(state).astype(np.float32)
    fx, fy, cx, cy = 70.0, 66.0, 61.0, 51.5  # off-centre principal point, non-square pixels
    intrinsics = np.array([[fx, fy, cx, cy]], np.float32)

    corners = np.array([[x, y, z] for x in (pillar[1] * s, (pillar[1] + 1) * s)
                        for z in (pillar[0] * s, (pillar[0] + 1) * s)
                        for y in (room.floor_y, -room.ceiling_y)])
    rot, pos = c2w[:3, :3].astype(np.float64), c2w[:3, 3].astype(np.float64)
    cam = (corners - pos) @ rot  # rows: R^T (p - o)
    assert np.all(cam[:, 2] > 0)
    projected = np.stack([fx * cam[:, 0] / cam[:, 2] + cx, fy * cam[:, 1] / cam[:, 2] + cy], -1)

    v, u = np.mgrid[:hw[0], :hw[1]] + 0.5
    dist = _signed_distance_to_hull(projected, u, v)
    origin, direction = W.pixel_rays(intrinsics, c2w[None], hw)
    hits = W.cast_rays(room, origin.reshape(-1, 3), direction.reshape(-1, 3))
    on_pillar = ((hits.cell_z == pillar[0]) & (hits.cell_x == pillar[1])
                 & (hits.kind >= W.WALL_X)).reshape(hw)
    inside, outside = dist > 0.75, dist < -0.75
    assert inside.sum() > 500 and outside.sum() > 3000
    assert on_pillar[inside].all() and not on_pillar[outside].any()

    with_pillar = W.render_path(room, intrinsics, c2w[None], hw)[0]
    without = W.render_path(empty, intrinsics, c2w[None], hw)[0]
    changed = np.any(with_pillar != without, axis=-1)
    assert not changed[outside].any()
    assert changed[inside].mean() > 0.9


def test_apply_action_slides_along_walls_and_turns():
    room = _open_room(5, None)
    s = room.cell_size
    state = C.CameraState(x=1.5 * s, z=3.5 * s, yaw=0.3, pitch=0.0)  # heading +z, wall near
    for _ in range(200):
        state = C.apply_action(room, state, (0.05, 0.0, 0.0, 0.0))
    # Pushed into the wall at z = 4 s, it stopped within a step of the radius and slid
    # along +x instead.
    assert 4 * s - 0.35 - 0.05 < state.z <= 4 * s - 0.35 and state.x > 1.5 * s + 1.0
    turned = C.apply_action(room, state, (0.0, 0.0, 0.1, 0.05))
    assert (turned.x, turned.z) == (state.x, state.z)
    assert turned.yaw == pytest.approx(state.yaw + 0.1) and turned.pitch == pytest.approx(0.05)


def test_bad_path_shapes_raise():
    world = _open_room(5, None)
    with pytest.raises(ValueError, match="c2w"):
        W.render_path(world, np.zeros((2, 4)), np.zeros((2, 3, 4)), HW)
    with pytest.raises(ValueError, match="intrinsics"):
        W.render_path(world, np.zeros((3, 4)), np.zeros((2, 4, 4)), HW)
    with pytest.raises(ValueError, match="video_hw"):
        W.render_path(world, np.zeros((2, 4)), np.zeros((2, 4, 4)), (48,))
    with pytest.raises(ValueError, match="supersample"):
        W.render_path(world, np.zeros((2, 4)), np.zeros((2, 4, 4)), HW, supersample=0)


def test_supersampled_pixels_average_their_sub_pixels(world, long_walk):
    frames = slice(100, 104)
    intrinsics, c2w = long_walk.intrinsics[frames], long_walk.c2w[frames]
    fine = W.render_path(world, intrinsics * 2, c2w, (2 * HW[0], 2 * HW[1]), supersample=1)
    boxed = fine.reshape(4, HW[0], 2, HW[1], 2, 3).astype(np.float64).mean(axis=(2, 4))
    np.testing.assert_array_equal(W.render_path(world, intrinsics, c2w, HW, supersample=2),
                                  np.floor(boxed + 0.5).astype(np.uint8))


def test_supersampling_makes_small_camera_steps_predictable(world, long_walk):
    # Aliased stripes flicker under sub-pixel motion: one latent frame (4 video frames) later,
    # the point-sampled frame differs from its predecessor more than the filtered one does.
    pairs = np.stack([np.arange(300, 1900, 97), np.arange(304, 1904, 97)], 1).ravel()
    change = {}
    for s in (1, 2):
        video = W.render_path(world, long_walk.intrinsics[pairs], long_walk.c2w[pairs], HW, supersample=s)
        a, b = video.reshape(-1, 2, *HW, 3).astype(np.float64).transpose(1, 0, 2, 3, 4)
        change[s] = np.mean((a - b) ** 2)
    assert change[2] < 0.85 * change[1], change
