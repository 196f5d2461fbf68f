"""A procedural 2D stick figure with exactly known keypoints.

The figure uses a :class:`~aapt_jax.model.pose.Skeleton` (joint names, limbs, rest pose).
Its "core" joints (those left after repeatedly removing joints that hang off a single
limb: head, shoulders and hips for the default skeleton) move as one rigid body (body
translation, scale and lean); every other joint hangs off the joint it was peeled from
(elbow from shoulder, wrist from elbow, ...) and turns by a smooth random angle relative
to it, so lower limbs follow upper limbs (forward kinematics in 2D). Angles and body
motion are sums of a few slow sinusoids with random frequencies and phases, so a clip can
start at any frame and run for any length.

Rendering paints, per video frame: a textured background, the torso (the convex hull of
the shoulder and hip joints), every limb as a thick capsule and the head as a disc, in flat
colours from the seed (left limbs lighter than right ones, so sides can be told apart).
Keypoints are pixel ``(x, y)`` in the convention of :mod:`aapt_jax.model.pose` (pixel row
``i``, column ``j`` covers ``[j, j+1) x [i, i+1)``); a joint is visible when it lies inside
the frame.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from aapt_jax.model.pose import DEFAULT_SKELETON, Skeleton


@dataclasses.dataclass(frozen=True)
class PoseClip:
    """uint8 ``frames [T, H, W, 3]``, float32 ``keypoints [T, J, 2]`` (pixel x, y), bool
    ``visibility [T, J]`` and the figure's flat colours, uint8 ``figure_colors [2 + L, 3]``
    (torso, head, then one per skeleton limb)."""
    frames: np.ndarray
    keypoints: np.ndarray
    visibility: np.ndarray
    figure_colors: np.ndarray


def kinematic_tree(skeleton: Skeleton) -> tuple[np.ndarray, np.ndarray]:
    """Split a skeleton into a rigid core and hanging chains.

    Returns:
      ``parent`` int ``[J]`` (-1 for core joints) and ``order`` int ``[J']`` listing the
      non-core joints parents-first.
    """
    neighbours = [set() for _ in range(skeleton.num_joints)]
    for a, b in skeleton.limbs:
        neighbours[a].add(b)
        neighbours[b].add(a)
    parent = np.full(skeleton.num_joints, -1)
    peeled = []
    remaining = set(range(skeleton.num_joints))
    while True:
        leaves = sorted(j for j in remaining if len(neighbours[j] & remaining) == 1)
        if not leaves or len(remaining) - len(leaves) < 2:
            break
        for j in leaves:
            parent[j] = next(iter(neighbours[j] & remaining))
        remaining -= set(leaves)
        peeled.append(leaves)
    order = [j for leaves in reversed(peeled) for j in leaves]
    return parent, np.array(order, int)


def _smooth(rng: np.random.Generator, t: np.ndarray, shape=(), terms: int = 3,
            periods=(40.0, 160.0)) -> np.ndarray:
    """Smooth random signals in ``[-1, 1]``: ``[T, *shape]`` sums of ``terms`` sinusoids."""
    amp = rng.uniform(0.3, 1.0, size=(terms,) + shape)
    freq = 2 * np.pi / rng.uniform(*periods, size=(terms,) + shape)
    phase = rng.uniform(0, 2 * np.pi, size=(terms,) + shape)
    t = t.reshape((-1, 1) + (1,) * len(shape))
    return np.sum(amp * np.sin(freq * t + phase), axis=1) / np.sum(amp, axis=0)


def _rotate(v, angle):
    c, s = np.cos(angle), np.sin(angle)
    return np.stack([c * v[..., 0] - s * v[..., 1], s * v[..., 0] + c * v[..., 1]], -1)


def animate(rng: np.random.Generator, frames: np.ndarray, video_hw,
            skeleton: Skeleton = DEFAULT_SKELETON) -> tuple[np.ndarray, float]:
    """Keypoints of a randomly moving figure at the given frame times.

    Args:
      rng: draws the motion (consumed the same way whatever ``frames`` holds).
      frames: float ``[T]`` frame times (any start, any length).
      video_hw: ``(H, W)``.

    Returns:
      float64 keypoints ``[T, J, 2]`` in pixels and the figure's mean height in pixels.
    """
    height, width = video_hw
    rest = np.asarray(skeleton.rest_xy, np.float64)
    parent, order = kinematic_tree(skeleton)
    t = np.asarray(frames, np.float64)

    size = height * rng.uniform(0.55, 0.8)
    scale = size * (1 + 0.06 * _smooth(rng, t))
    centre = np.stack([width * (0.5 + 0.3 * _smooth(rng, t, periods=(120.0, 400.0))),
                       height * (0.48 + 0.04 * _smooth(rng, t))], -1)
    lean = 0.15 * _smooth(rng, t)
    # Upper limbs swing widely, lower ones less; each chain joint has its own rest bend.
    depth = np.zeros(skeleton.num_joints, int)
    for j in order:
        depth[j] = depth[parent[j]] + 1
    reach = np.where(depth == 1, 1.1, 0.8) * rng.uniform(0.5, 1.0)
    bend = rng.uniform(-0.3, 0.3, size=skeleton.num_joints)
    angle = bend + reach * _smooth(rng, t, shape=(skeleton.num_joints,), periods=(20.0, 90.0))

    keypoints = np.empty((len(t), skeleton.num_joints, 2))
    core = parent < 0
    keypoints[:, core] = centre[:, None] + scale[:, None, None] * _rotate(rest[core], lean[:, None])
    total = np.zeros((len(t), skeleton.num_joints))
    total[:, core] = lean[:, None]
    for j in order:
        total[:, j] = total[:, parent[j]] + angle[:, j]
        offset = _rotate(rest[j] - rest[parent[j]], total[:, j])
        keypoints[:, j] = keypoints[:, parent[j]] + scale[:, None] * offset
    return keypoints, size


@dataclasses.dataclass(frozen=True)
class Appearance:
    """Flat colours of a figure and its background.

    ``part_colors`` uint8 ``[P, 3]`` (index 0 unused: background), ``limb_part`` int
    ``[L]`` (part of each limb), ``torso_part`` and ``head_part`` ints, ``background``
    uint8 ``[H, W, 3]``.
    """
    part_colors: np.ndarray
    limb_part: np.ndarray
    torso_part: int
    head_part: int
    background: np.ndarray


def _limb_group(names: tuple[str, str]) -> str:
    if any("head" in n for n in names):
        return "skin"
    if any(k in n for n in names for k in ("knee", "ankle")) or all("hip" in n for n in names):
        return "trousers"
    return "shirt"


def _side_tint(names: tuple[str, str]) -> float:
    sides = {n.split("_")[0] for n in names} & {"left", "right"}
    return {frozenset({"left"}): 1.25, frozenset({"right"}): 0.75}.get(frozenset(sides), 1.0)


def make_appearance(rng: np.random.Generator, video_hw,
                    skeleton: Skeleton = DEFAULT_SKELETON) -> Appearance:
    height, width = video_hw
    base = {"shirt": rng.uniform(0.25, 0.75, 3), "trousers": rng.uniform(0.1, 0.5, 3),
            "skin": rng.uniform(0.45, 1.0) * np.array([1.0, 0.78, 0.62])}
    colors = [np.zeros(3), base["shirt"], base["skin"]]  # background, torso, head
    limb_part = []
    for a, b in skeleton.limbs:
        names = (skeleton.joint_names[a], skeleton.joint_names[b])
        colors.append(np.clip(base[_limb_group(names)] * _side_tint(names), 0, 1))
        limb_part.append(len(colors) - 1)
    part_colors = np.round(np.stack(colors) * 255).astype(np.uint8)

    # A desaturated wall with broad stripes over a checkered floor, with fine noise.
    y = np.arange(height)[:, None] + 0.5
    x = np.arange(width)[None, :] + 0.5
    wall = rng.uniform(0.3, 0.7, 3) * 0.5 + 0.25
    stripe = rng.uniform(8, 24)
    horizon = height * rng.uniform(0.65, 0.85)
    bg = wall * (1 + 0.12 * (np.floor(x / stripe) % 2))[..., None]
    floor = rng.uniform(0.3, 0.6, 3) * 0.5 + 0.2
    tile = rng.uniform(6, 14)
    checker = (np.floor(x / tile) + np.floor((y - horizon) / (tile * 0.5))) % 2
    bg = np.where((y > horizon)[..., None], floor * (1 - 0.2 * checker[..., None]), bg)
    bg = bg + rng.normal(0, 0.02, size=(height, width, 3))
    background = np.round(np.clip(bg, 0, 1) * 255).astype(np.uint8)
    return Appearance(part_colors, np.array(limb_part), 1, 2, background)


def _convex_hull(points: np.ndarray) -> np.ndarray:
    """Counter-clockwise (in image axes) hull of ``[n, 2]`` points (monotone chain)."""
    pts = sorted(map(tuple, points))
    if len(pts) < 3:
        return np.array(pts)

    def half(seq):
        out = []
        for p in seq:
            while len(out) >= 2 and ((out[-1][0] - out[-2][0]) * (p[1] - out[-2][1])
                                     - (out[-1][1] - out[-2][1]) * (p[0] - out[-2][0])) <= 0:
                out.pop()
            out.append(p)
        return out[:-1]
    return np.array(half(pts) + half(reversed(pts)))


def render(keypoints: np.ndarray, appearance: Appearance, size: float,
           skeleton: Skeleton = DEFAULT_SKELETON) -> np.ndarray:
    """Paint the figure: uint8 ``[T, H, W, 3]`` from keypoints ``[T, J, 2]`` (pixels)."""
    height, width = appearance.background.shape[:2]
    u = np.arange(width)[None, :] + 0.5
    v = np.arange(height)[:, None] + 0.5
    limb_radius = max(1.5, 0.045 * size)
    head_radius = max(2.0, 0.08 * size)
    torso = [j for j, n in enumerate(skeleton.joint_names) if "shoulder" in n or "hip" in n]
    heads = [j for j, n in enumerate(skeleton.joint_names) if "head" in n]
    frames = np.empty((len(keypoints), height, width, 3), np.uint8)
    for f, kp in enumerate(keypoints):
        part = np.zeros((height, width), np.int64)
        if len(torso) >= 3:
            hull = _convex_hull(kp[torso])
            inside = np.ones((height, width), bool)
            for (ax, ay), (bx, by) in zip(hull, np.roll(hull, -1, axis=0)):
                inside &= (bx - ax) * (v - ay) - (by - ay) * (u - ax) >= 0
            part[inside] = appearance.torso_part
        for (a, b), p in zip(skeleton.limbs, appearance.limb_part):
            (ax, ay), (bx, by) = kp[a], kp[b]
            ex, ey = bx - ax, by - ay
            along = np.clip(((u - ax) * ex + (v - ay) * ey) / max(ex * ex + ey * ey, 1e-9), 0, 1)
            dist2 = (u - ax - along * ex) ** 2 + (v - ay - along * ey) ** 2
            part[dist2 <= limb_radius ** 2] = p
        for j in heads:
            part[(u - kp[j, 0]) ** 2 + (v - kp[j, 1]) ** 2 <= head_radius ** 2] = appearance.head_part
        frames[f] = np.where((part > 0)[..., None], appearance.part_colors[part],
                             appearance.background)
    return frames


def pose_clip(seed: int, num_frames: int, video_hw, *, start_frame: int = 0,
              skeleton: Skeleton = DEFAULT_SKELETON) -> PoseClip:
    """Frames ``start_frame .. start_frame + num_frames`` of the figure drawn from ``seed``."""
    if num_frames < 1:
        raise ValueError(f"num_frames: expected >= 1, got {num_frames!r}")
    height, width = video_hw
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), 0x9F]))
    appearance = make_appearance(rng, video_hw, skeleton)
    keypoints, size = animate(rng, np.arange(num_frames) + start_frame, video_hw, skeleton)
    keypoints = keypoints.astype(np.float32)
    visibility = ((keypoints[..., 0] >= 0) & (keypoints[..., 0] < width)
                  & (keypoints[..., 1] >= 0) & (keypoints[..., 1] < height))
    frames = render(keypoints.astype(np.float64), appearance, size, skeleton)
    return PoseClip(frames, keypoints, visibility, appearance.part_colors[1:])
