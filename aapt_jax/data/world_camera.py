"""A camera that walks through a :class:`~aapt_jax.data.world.World` under actions.

An action per video frame is ``(forward, strafe, yaw, pitch)``: metres moved along the
heading and to the camera's right, and radians turned (positive yaw turns right, positive
pitch looks up). :func:`apply_action` moves the camera and never lets it come closer than
``radius`` to a wall (it slides along walls instead); :func:`random_walk` drives it with a
smooth random policy that slows down and turns before walls and now and then stands
still, deterministic from a seed.

Poses follow :mod:`aapt_jax.model.camera` and :mod:`aapt_jax.data.world`: the camera sits
at eye height ``y = 0``; ``c2w = [[R_yaw @ R_pitch, (x, 0, z)], [0, 0, 0, 1]]`` with
``R_yaw`` a rotation about world ``y`` (down) taking the camera's forward ``+z`` to the
heading ``(sin yaw, 0, cos yaw)``.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from aapt_jax.data.world import World, cast_rays


@dataclasses.dataclass(frozen=True)
class CameraState:
    """Where the camera is: ground position ``(x, z)``, heading ``yaw`` and ``pitch`` (rad)."""
    x: float
    z: float
    yaw: float
    pitch: float = 0.0


@dataclasses.dataclass(frozen=True)
class WalkParams:
    """The random policy's ranges, per video frame (24 fps: 0.06 m/frame = 1.4 m/s).

    Attributes:
      max_speed: largest forward speed, metres per frame.
      max_strafe: largest sideways speed, metres per frame.
      yaw_rate_sd: standard deviation of the cruising turn rate, radians per frame.
      max_yaw_rate: turn rate when avoiding a wall (and the cap), radians per frame.
      max_pitch: the camera looks at most this far up or down, radians.
      stop_probability: chance that a new segment of the walk is standing still.
      segment_frames: ``(min, max)`` frames between new random targets.
      smoothing: fraction of the gap to the target action closed each frame.
      radius: the camera keeps this distance from every wall, metres.
      slow_distance: below this free distance ahead the camera slows down and turns.
    """
    max_speed: float = 0.06
    max_strafe: float = 0.02
    yaw_rate_sd: float = 0.012
    max_yaw_rate: float = 0.05
    max_pitch: float = 0.25
    stop_probability: float = 0.12
    segment_frames: tuple[int, int] = (16, 96)
    smoothing: float = 0.12
    radius: float = 0.35
    slow_distance: float = 2.0


@dataclasses.dataclass(frozen=True)
class CameraPath:
    """A walk: float32 ``intrinsics [T, 4]``, ``c2w [T, 4, 4]`` and the commanded
    ``actions [T, 4]`` (row ``t`` moved the camera from frame ``t - 1`` to ``t``; row 0 is 0)."""
    intrinsics: np.ndarray
    c2w: np.ndarray
    actions: np.ndarray


def pinhole_intrinsics(video_hw, fov_deg: float) -> np.ndarray:
    """float32 ``[4]`` ``(fx, fy, cx, cy)``: square pixels, horizontal field of view
    ``fov_deg``, principal point at the image centre."""
    height, width = video_hw
    if not 0.0 < fov_deg < 180.0:
        raise ValueError(f"fov_deg: expected a float in (0, 180), got {fov_deg!r}")
    f = 0.5 * width / math.tan(math.radians(fov_deg) / 2)
    return np.array([f, f, width / 2, height / 2], np.float32)


def camera_to_world(state: CameraState) -> np.ndarray:
    """float64 ``[4, 4]`` camera-to-world pose of ``state``."""
    cy, sy = math.cos(state.yaw), math.sin(state.yaw)
    cp, sp = math.cos(state.pitch), math.sin(state.pitch)
    r_yaw = np.array([[cy, 0.0, sy], [0.0, 1.0, 0.0], [-sy, 0.0, cy]])
    r_pitch = np.array([[1.0, 0.0, 0.0], [0.0, cp, -sp], [0.0, sp, cp]])
    c2w = np.eye(4)
    c2w[:3, :3] = r_yaw @ r_pitch
    c2w[:3, 3] = (state.x, 0.0, state.z)
    return c2w


def wall_distance(world: World, x: float, z: float) -> float:
    """Distance from ground point ``(x, z)`` to the nearest wall cell within one cell
    (cells outside the grid count as wall); ``cell_size`` if none is that close."""
    s = world.cell_size
    nz, nx = world.solid.shape
    ix, iz = math.floor(x / s), math.floor(z / s)
    nearest = s
    for cz in range(iz - 1, iz + 2):
        for cx in range(ix - 1, ix + 2):
            if 0 <= cz < nz and 0 <= cx < nx and not world.solid[cz, cx]:
                continue
            ddx = max(cx * s - x, 0.0, x - (cx + 1) * s)
            ddz = max(cz * s - z, 0.0, z - (cz + 1) * s)
            nearest = min(nearest, math.hypot(ddx, ddz))
    return nearest


def apply_action(world: World, state: CameraState, action, radius: float = 0.35) -> CameraState:
    """The state after ``action = (forward, strafe, yaw, pitch)``.

    Turning is always applied (pitch clipped to +-89 degrees); the move is taken whole if
    it keeps ``radius`` from every wall, else along ``x`` or ``z`` alone (sliding along the
    wall), else not at all. Moves longer than ``radius`` are cut to ``radius`` so the
    camera cannot jump across a wall.
    """
    forward, strafe, yaw_rate, pitch_rate = (float(a) for a in action)
    yaw = state.yaw + yaw_rate
    pitch = min(max(state.pitch + pitch_rate, -1.55), 1.55)
    sy, cy = math.sin(yaw), math.cos(yaw)
    dx = forward * sy + strafe * cy
    dz = forward * cy - strafe * sy
    length = math.hypot(dx, dz)
    if length > radius:
        dx, dz = dx * radius / length, dz * radius / length
    x, z = state.x, state.z
    for mx, mz in ((dx, dz), (dx, 0.0), (0.0, dz)):
        if (mx or mz) and wall_distance(world, x + mx, z + mz) >= radius:
            x, z = x + mx, z + mz
            break
    return CameraState(x, z, yaw, pitch)


def clearance(world: World, x: float, z: float, headings) -> np.ndarray:
    """float64 ``[n]``: free distance from ``(x, z)`` along each ground heading (rad)."""
    headings = np.asarray(headings, np.float64)
    origin = np.tile([x, 0.0, z], (headings.size, 1))
    direction = np.stack([np.sin(headings), np.zeros_like(headings), np.cos(headings)], -1)
    return cast_rays(world, origin, direction).t


def start_state(world: World, rng: np.random.Generator) -> CameraState:
    """A random free cell's centre, facing along an open neighbour (plus a little jitter)."""
    free = world.free_cells()
    iz, ix = free[int(rng.integers(len(free)))]
    s = world.cell_size
    open_yaws = [yaw for yaw, (dz, dx) in zip((0.0, math.pi / 2, math.pi, -math.pi / 2),
                                              ((1, 0), (0, 1), (-1, 0), (0, -1)))
                 if not world.solid[iz + dz, ix + dx]] or [0.0]
    yaw = open_yaws[int(rng.integers(len(open_yaws)))] + float(rng.normal(0.0, 0.2))
    return CameraState((ix + 0.5) * s, (iz + 0.5) * s, yaw, 0.0)


class RandomPolicy:
    """Smooth random actions that avoid walls (see :class:`WalkParams`).

    Targets for the four action channels are redrawn at random intervals; the actions
    approach them exponentially, so speed and turn rate change smoothly. In front of a
    wall the forward target shrinks with the free distance and the camera turns, keeping
    the chosen side until the way is clear, so it does not dither at dead ends. A
    standing-still segment drives all actions to exactly zero, so frames repeat exactly.
    """

    def __init__(self, world: World, rng: np.random.Generator, params: WalkParams):
        self.world, self.rng, self.p = world, rng, params
        self.action = np.zeros(4)
        self.frames_left = 0
        self.still = False
        self.cruise = np.zeros(4)
        self.pitch_target = 0.0
        self.avoid_side = 0.0

    def _new_segment(self):
        p, rng = self.p, self.rng
        lo, hi = p.segment_frames
        self.frames_left = int(rng.integers(lo, hi + 1))
        self.still = bool(rng.random() < p.stop_probability)
        strafe = rng.uniform(-p.max_strafe, p.max_strafe) if rng.random() < 0.3 else 0.0
        yaw_rate = float(np.clip(rng.normal(0.0, p.yaw_rate_sd), -p.max_yaw_rate, p.max_yaw_rate))
        self.cruise = np.array([rng.uniform(0.3, 1.0) * p.max_speed, strafe, yaw_rate, 0.0])
        self.pitch_target = rng.uniform(-0.7, 0.7) * p.max_pitch

    def __call__(self, state: CameraState) -> np.ndarray:
        """The action ``[4]`` to take from ``state``."""
        p = self.p
        if self.frames_left <= 0:
            self._new_segment()
        self.frames_left -= 1
        if self.still:
            target = np.zeros(4)
        else:
            target = self.cruise.copy()
            ahead, left, right = clearance(self.world, state.x, state.z,
                                           [state.yaw, state.yaw - 0.6, state.yaw + 0.6])
            if ahead < p.slow_distance:
                if self.avoid_side == 0.0:
                    self.avoid_side = 1.0 if right >= left else -1.0
                room = (ahead - p.radius - 0.2) / (p.slow_distance - p.radius - 0.2)
                target[0] *= min(max(room, 0.0), 1.0)
                target[1] = 0.0
                target[2] = self.avoid_side * p.max_yaw_rate
            else:
                self.avoid_side = 0.0
            target[3] = 0.05 * (self.pitch_target - state.pitch)
        self.action = self.action + p.smoothing * (target - self.action)
        if self.still and np.max(np.abs(self.action)) < 1e-4:
            self.action = np.zeros(4)
        return self.action.copy()


def random_walk(world: World, num_frames: int, seed: int, video_hw, *, fov_deg: float = 70.0,
                warmup_frames: int = 0, params: WalkParams = WalkParams(),
                branch_seed: int | None = None) -> CameraPath:
    """A walk of ``num_frames`` frames from a random start, deterministic from ``seed``.

    ``warmup_frames`` policy steps run before the first returned frame, so a clip can
    start in motion rather than from rest. ``branch_seed`` (None: no branch) keeps the
    start and the warm-up of ``seed``'s walk but draws the returned frames' actions from a
    fresh policy seeded by it: another path from the same first frame, which is what a
    camera-following measure compares against.
    """
    if num_frames < 1:
        raise ValueError(f"num_frames: expected >= 1, got {num_frames!r}")
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), 0xCA]))
    state = start_state(world, rng)
    policy = RandomPolicy(world, rng, params)
    for _ in range(warmup_frames):
        state = apply_action(world, state, policy(state), params.radius)
    if branch_seed is not None:
        branch_rng = np.random.default_rng(np.random.SeedSequence([int(branch_seed), 0xB7]))
        moving = policy.action
        policy = RandomPolicy(world, branch_rng, params)
        policy.action = moving  # the same velocity at the branch point: the paths part smoothly
    c2w = np.empty((num_frames, 4, 4))
    actions = np.zeros((num_frames, 4))
    c2w[0] = camera_to_world(state)
    for t in range(1, num_frames):
        actions[t] = policy(state)
        state = apply_action(world, state, actions[t], params.radius)
        c2w[t] = camera_to_world(state)
    intrinsics = np.broadcast_to(pinhole_intrinsics(video_hw, fov_deg), (num_frames, 4))
    return CameraPath(np.ascontiguousarray(intrinsics), c2w.astype(np.float32),
                      actions.astype(np.float32))
