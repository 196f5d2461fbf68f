"""The model's interactive-control input: one config, one channel count, one map function.

The generator concatenates ``control_maps(cfg, video_hw, **inputs)`` (``[B, K, h, w, C]``,
index ``p`` = the control of latent frame ``p + 1``, which autoregressive position ``p``
produces) to its input channels; ``control_channels(cfg)`` is ``C`` (0 for no control).
The inputs are per VIDEO frame, ``T = 1 + 4K`` of them:

- ``kind='camera'``: ``intrinsics [B, T, 4]`` (fx, fy, cx, cy in video pixels) and
  ``c2w [B, T, 4, 4]`` (absolute camera-to-world poses); see :mod:`aapt_jax.model.camera`.
- ``kind='pose'``: ``keypoints [B, T, J, 2]`` (video pixel x, y) and optionally
  ``visibility [B, T, J]``; see :mod:`aapt_jax.model.pose`.
- ``kind='none'``: no inputs; the maps are None.

Shapes and the config are checked in Python before any array work, so a mistake raises a
ValueError naming the argument (or field), what was expected and what was given.
"""

from __future__ import annotations

import dataclasses
import math

import jax.numpy as jnp

from aapt_jax.model import camera, pose

KINDS = ("none", "camera", "pose")
_INPUTS = {
    "none": ((), ()),
    "camera": (("intrinsics", "c2w"), ()),
    "pose": (("keypoints",), ("visibility",)),
}


@dataclasses.dataclass(frozen=True)
class ControlConfig:
    """Which control the model takes and how it is rendered.

    Attributes:
      kind: 'none', 'camera' or 'pose'.
      fold: grid pixels per latent cell per axis; maps have ``4 * fold**2`` channels per
        ray component or joint (8 = every video pixel, as in CameraCtrl; 1 or 2 for tiny
        models).
      num_joints: pose joints ``J`` (the default skeleton has 13).
      cell: video pixels per latent cell per axis, the VAE's spatial factor (Wan: 8; the
        tiny world's VAE: 4). Must equal ``video.vae_spatial``.
      origin_scale: typical per-axis camera step per video frame, scene units; origins are
        divided by it. The default is ~walking speed in metres at 24 fps.
      rotation_scale: typical per-axis camera rotation per video frame, radians; direction
        changes are divided by it. The default is ~14 degrees per second at 24 fps.
      pose_sigma: heatmap Gaussian standard deviation, in latent cells.
      outlier_max_abs: a camera sample with any scaled value beyond this is an outlier.
    """
    kind: str = "none"
    fold: int = 8
    num_joints: int = pose.DEFAULT_SKELETON.num_joints
    cell: int = camera.SPATIAL_FACTOR
    origin_scale: float = 0.05
    rotation_scale: float = 0.01
    pose_sigma: float = 0.5
    outlier_max_abs: float = 10.0

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"ControlConfig.kind: expected one of {KINDS}, got {self.kind!r}")
        for name in ("fold", "num_joints", "cell"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"ControlConfig.{name}: expected a positive int, got {value!r}")
        for name in ("origin_scale", "rotation_scale", "pose_sigma", "outlier_max_abs"):
            value = getattr(self, name)
            if (isinstance(value, bool) or not isinstance(value, (int, float))
                    or not math.isfinite(value) or value <= 0):
                raise ValueError(
                    f"ControlConfig.{name}: expected a finite float > 0, got {value!r}")


def control_channels(cfg: ControlConfig) -> int:
    """Channels ``C`` that :func:`control_maps` adds to the model input (0 for 'none')."""
    if cfg.kind == "camera":
        return camera.camera_channels(cfg.fold)
    if cfg.kind == "pose":
        return pose.pose_channels(cfg.num_joints, cfg.fold)
    return 0


def _check_inputs(cfg: ControlConfig, inputs: dict) -> dict:
    required, optional = _INPUTS[cfg.kind]
    given = {k: v for k, v in inputs.items() if v is not None}
    unexpected = sorted(set(given) - set(required) - set(optional))
    if unexpected:
        raise ValueError(f"control inputs: kind={cfg.kind!r} expects {required + optional}, "
                         f"got unexpected {tuple(unexpected)}")
    missing = [k for k in required if k not in given]
    if missing:
        raise ValueError(f"{missing[0]}: required for kind={cfg.kind!r}, not given")
    return given


def control_maps(cfg: ControlConfig, video_hw, **inputs):
    """Control maps of latent frames ``1 .. K`` for the model input.

    Args:
      cfg: the control config (static under jit).
      video_hw: ``(H, W)`` of the video, divisible by ``cfg.cell`` (static).
      **inputs: per-video-frame inputs for ``cfg.kind`` (module docstring); None values
        count as absent.

    Returns:
      float32 ``[B, K, H/cell, W/cell, control_channels(cfg)]``, or None for ``kind='none'``.
    """
    given = _check_inputs(cfg, inputs)
    camera.check_video_hw(video_hw, cfg.cell)
    if cfg.kind == "camera":
        return camera.camera_control(given["intrinsics"], given["c2w"], video_hw, cfg.fold,
                                     cfg.origin_scale, cfg.rotation_scale, cell=cfg.cell)
    if cfg.kind == "pose":
        keypoints = given["keypoints"]
        joints = jnp.shape(keypoints)[2] if jnp.ndim(keypoints) == 4 else None
        if joints != cfg.num_joints:
            raise ValueError(f"keypoints: expected shape [B, T, {cfg.num_joints}, 2] "
                             f"(num_joints={cfg.num_joints}), got {tuple(jnp.shape(keypoints))}")
        return pose.pose_control(keypoints, given.get("visibility"), video_hw, cfg.fold,
                                 cfg.pose_sigma, cell=cfg.cell)
    return None


def control_outlier_mask(cfg: ControlConfig, maps):
    """bool ``[B]``: samples to drop from training because their control is an outlier.

    Only camera maps can be outliers (wrong camera estimates give huge per-frame jumps);
    heatmaps are bounded in ``[0, 1]``.
    """
    if cfg.kind == "camera":
        return camera.camera_outlier_mask(maps, cfg.outlier_max_abs)
    if maps is None:
        raise ValueError(f"maps: expected an array [B, ...] for kind={cfg.kind!r}, got None")
    return jnp.zeros(jnp.shape(maps)[:1], bool)
