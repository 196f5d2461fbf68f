"""Pose control: 2D keypoints as Gaussian heatmaps folded to the latent grid.

Each joint of each video frame is rendered as an unnormalised Gaussian (peak 1 at the
keypoint, so values lie in ``[0, 1]`` like OpenPose/DWPose heatmaps) on an
``(h * fold, w * fold)`` grid, one channel per joint. The maps of video frames ``1 .. 4K``
are then folded exactly like the camera maps (:func:`aapt_jax.model.camera.fold_to_latent`):
joint ``j`` of sub-frame ``s`` at grid offset ``(dy, dx)`` inside a latent cell goes to
channel ``((j * 4 + s) * fold + dy) * fold + dx`` of latent index ``p`` (latent frame
``p + 1``, video frames ``4p + 1 .. 4p + 4``).

``sigma`` is in LATENT CELLS (one cell = 8 video pixels = ``fold`` grid pixels), so a
heatmap covers the same part of the model's token grid whatever ``fold`` or the video size.

Keypoints are continuous pixel coordinates ``(x, y)`` of the video frame, pixel (row ``i``,
column ``j``) covering ``[j, j+1) x [i, i+1)`` (the camera module's convention).
"""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp

from aapt_jax.model.camera import (SPATIAL_FACTOR, TEMPORAL_FACTOR, check_fold,
                                   check_positive, check_video_hw, fold_to_latent,
                                   latent_frame_count)


@dataclasses.dataclass(frozen=True)
class Skeleton:
    """A 2D stick figure: joint names, limbs as joint-index pairs, and a rest pose.

    ``rest_xy[j]`` is joint ``j``'s position in units of the figure's height, x to the image
    right, y down, origin midway between the hips; the figure faces the viewer, so its left
    side is at positive x.
    """
    joint_names: tuple[str, ...]
    limbs: tuple[tuple[int, int], ...]
    rest_xy: tuple[tuple[float, float], ...]

    @property
    def num_joints(self) -> int:
        return len(self.joint_names)


# 13 joints (the Penn Action set): enough for a procedural figure whose limbs move visibly
# at tiny resolutions.
DEFAULT_SKELETON = Skeleton(
    joint_names=("head",
                 "left_shoulder", "right_shoulder", "left_elbow", "right_elbow",
                 "left_wrist", "right_wrist", "left_hip", "right_hip",
                 "left_knee", "right_knee", "left_ankle", "right_ankle"),
    limbs=((0, 1), (0, 2), (1, 2),          # head to shoulders, shoulder line
           (1, 3), (3, 5), (2, 4), (4, 6),  # arms
           (1, 7), (2, 8), (7, 8),          # torso sides, hip line
           (7, 9), (9, 11), (8, 10), (10, 12)),  # legs
    rest_xy=((0.0, -0.42),
             (0.10, -0.30), (-0.10, -0.30), (0.12, -0.15), (-0.12, -0.15),
             (0.13, 0.0), (-0.13, 0.0), (0.06, 0.0), (-0.06, 0.0),
             (0.06, 0.24), (-0.06, 0.24), (0.06, 0.48), (-0.06, 0.48)),
)


def pose_channels(num_joints: int, fold: int) -> int:
    """Channels of :func:`pose_control` maps: joints x 4 frames x fold**2."""
    if isinstance(num_joints, bool) or not isinstance(num_joints, int) or num_joints < 1:
        raise ValueError(f"num_joints: expected a positive int, got {num_joints!r}")
    return num_joints * TEMPORAL_FACTOR * check_fold(fold) ** 2


def _check_pose_inputs(keypoints, visibility) -> None:
    kshape = tuple(jnp.shape(keypoints))
    if len(kshape) != 4 or kshape[-1] != 2:
        raise ValueError(f"keypoints: expected shape [B, T, J, 2] (x, y), got {kshape}")
    if visibility is not None and tuple(jnp.shape(visibility)) != kshape[:3]:
        raise ValueError(f"visibility: expected shape {kshape[:3]} ([B, T, J] of keypoints), "
                         f"got {tuple(jnp.shape(visibility))}")


def pose_heatmaps(keypoints, visibility, video_hw, fold: int, sigma: float, *, cell: int = SPATIAL_FACTOR):
    """Per-video-frame joint heatmaps on the ``(h * fold, w * fold)`` grid.

    Args:
      keypoints: ``[B, T, J, 2]`` pixel ``(x, y)`` in the ``H x W`` video frame.
      visibility: ``[B, T, J]`` bool or a weight in ``[0, 1]`` that multiplies the map
        (0 = invisible: a zero map, whatever the keypoint holds, NaN included), or None for
        all visible.
      video_hw: ``(H, W)``, divisible by ``cell``.
      fold: grid pixels per latent cell per axis.
      sigma: Gaussian standard deviation in latent cells.
      cell: video pixels per latent cell per axis (the VAE's spatial factor).

    Returns:
      float32 ``[B, T, h * fold, w * fold, J]``.
    """
    _check_pose_inputs(keypoints, visibility)
    height, width = check_video_hw(video_hw, cell)
    fold = check_fold(fold)
    sigma = check_positive(sigma, "sigma")
    grid_h = height // cell * fold
    grid_w = width // cell * fold

    keypoints = jnp.asarray(keypoints, jnp.float32)
    if visibility is None:
        weight = jnp.ones(keypoints.shape[:3], jnp.float32)
    else:
        weight = jnp.asarray(visibility).astype(jnp.float32)
    # Invisible joints often carry garbage (NaN, sentinels): replace them before the
    # exponent so neither the value nor the gradient picks it up.
    keypoints = jnp.where((weight > 0)[..., None], keypoints, 0.0)
    x = keypoints[..., 0] * (grid_w / width)
    y = keypoints[..., 1] * (grid_h / height)

    sigma_grid = sigma * fold
    u = jnp.arange(grid_w, dtype=jnp.float32) + 0.5
    v = jnp.arange(grid_h, dtype=jnp.float32) + 0.5
    # The 2D Gaussian is separable: render rows and columns and take the outer product.
    gx = jnp.exp(-0.5 * ((u - x[..., None]) / sigma_grid) ** 2)  # [B, T, J, gw]
    gy = jnp.exp(-0.5 * ((v - y[..., None]) / sigma_grid) ** 2)  # [B, T, J, gh]
    return jnp.einsum("btjh,btjw,btj->bthwj", gy, gx, weight)


def pose_control(keypoints, visibility, video_hw, fold: int, sigma: float, *,
                 cell: int = SPATIAL_FACTOR, dtype=jnp.float32):
    """Folded joint heatmaps of latent frames ``1 .. K`` (see the module docstring).

    Args:
      keypoints: ``[B, T, J, 2]`` pixel ``(x, y)`` of video frames ``0 .. 4K``,
        ``T = 1 + 4K``.
      visibility: ``[B, T, J]`` (see :func:`pose_heatmaps`) or None.
      video_hw: ``(H, W)``, divisible by ``cell``; the latent grid is ``(h, w) = (H/cell, W/cell)``.
      fold: grid pixels per latent cell per axis.
      sigma: Gaussian standard deviation in latent cells.
      cell: video pixels per latent cell per axis (the VAE's spatial factor).
      dtype: output dtype.

    Returns:
      ``[B, K, h, w, J * 4 * fold**2]``, channel ``((j * 4 + s) * fold + dy) * fold + dx``.
    """
    _check_pose_inputs(keypoints, visibility)
    latent_frame_count(jnp.shape(keypoints), "keypoints")
    # Video frame 0 is latent frame 0, which the user supplies; no map is needed for it.
    keypoints = jnp.asarray(keypoints)[:, 1:]
    visibility = None if visibility is None else jnp.asarray(visibility)[:, 1:]
    maps = pose_heatmaps(keypoints, visibility, video_hw, fold, sigma, cell=cell)
    return fold_to_latent(maps, fold).astype(dtype)
