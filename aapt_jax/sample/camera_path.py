"""Scripted camera paths for driving a camera-controlled stream without a dataset."""

from __future__ import annotations

import numpy as np


def walk_path(num_video_frames: int, video_hw, *, step: float = 0.05, yaw_amplitude: float = 0.6,
              yaw_period: float = 96.0, fov_deg: float = 60.0):
    """A camera walking forward while swaying its yaw; world y points down (as the camera's y)
    and the camera looks along +z.

    Returns:
      intrinsics ``[1, T, 4]`` (fx, fy, cx, cy in pixels) and c2w ``[1, T, 4, 4]``, float32.
    """
    if num_video_frames < 1:
        raise ValueError(f"num_video_frames: expected >= 1, got {num_video_frames}")
    H, W = video_hw
    f = 0.5 * W / np.tan(np.deg2rad(fov_deg) / 2)
    t = np.arange(num_video_frames, dtype=np.float64)
    yaw = yaw_amplitude * np.sin(2 * np.pi * t / yaw_period)
    c, s = np.cos(yaw), np.sin(yaw)
    c2w = np.zeros((num_video_frames, 4, 4))
    c2w[:, 0, 0], c2w[:, 0, 2], c2w[:, 2, 0], c2w[:, 2, 2] = c, s, -s, c
    c2w[:, 1, 1] = c2w[:, 3, 3] = 1.0
    heading = np.stack([s, np.zeros_like(s), c], -1)
    c2w[:, :3, 3] = np.cumsum(step * heading, axis=0) - step * heading[0]
    intr = np.broadcast_to(np.array([f, f, W / 2, H / 2]), (num_video_frames, 4))
    return intr[None].astype(np.float32), c2w[None].astype(np.float32)
