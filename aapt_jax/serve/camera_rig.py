"""Held keys and mouse drags -> the camera path of the next latent frame.

Actions follow :mod:`aapt_jax.data.world_camera` (per video frame: forward and strafe in
metres, yaw and pitch in radians), with speeds from the range the procedural world's
training walks cover (:class:`~aapt_jax.data.world_camera.WalkParams`: up to 0.06 m and
0.05 rad per frame), so a trained generator sees controls like the ones it learned. In a
procedural world the camera slides along walls as in training; from an uploaded image
there are no walls.

Action names (the page maps keys to them): ``forward`` ``back`` ``left`` ``right`` (move)
and ``turn_left`` ``turn_right`` ``look_up`` ``look_down`` (turn).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from aapt_jax.data.world import World
from aapt_jax.data.world_camera import CameraState, apply_action, camera_to_world, pinhole_intrinsics

ACTIONS = ("forward", "back", "left", "right", "turn_left", "turn_right", "look_up", "look_down")
MOVE_PER_FRAME = 0.06  # metres per video frame (1.4 m/s at 24 fps)
STRAFE_PER_FRAME = 0.03
TURN_PER_FRAME = 0.04  # radians per video frame
DRAG_RADIANS_PER_PIXEL = 0.004  # of the page's canvas
MAX_PITCH = 0.5
FOV_DEG = 70.0  # the procedural world source's field of view


@dataclasses.dataclass
class CameraRig:
    """The camera of one stream; :meth:`advance` moves it through one latent frame."""
    state: CameraState
    intrinsics: np.ndarray  # float32 [4]
    world: World | None = None

    @classmethod
    def free(cls, video_hw, state: CameraState = CameraState(0.0, 0.0, 0.0)) -> "CameraRig":
        return cls(state, pinhole_intrinsics(video_hw, FOV_DEG))

    @classmethod
    def in_world(cls, world: World, state: CameraState, video_hw) -> "CameraRig":
        return cls(state, pinhole_intrinsics(video_hw, FOV_DEG), world)

    def pose(self) -> list[float]:
        """``[x, z, yaw, pitch]`` for the page."""
        s = self.state
        return [round(float(v), 4) for v in (s.x, s.z, s.yaw, s.pitch)]

    def advance(self, actions: frozenset, drag: tuple[float, float], frames: int):
        """Move through ``frames`` video frames holding ``actions`` and turning by ``drag``
        (canvas pixels ``(dx, dy)``, spread evenly over the frames).

        Returns the path the control maps need: ``intrinsics [1, 1 + frames, 4]`` and
        ``c2w [1, 1 + frames, 4, 4]`` (the pose before the move, then one per frame), float32.
        """
        if frames < 1:
            raise ValueError(f"frames: expected >= 1, got {frames}")
        held = lambda name: 1.0 if name in actions else 0.0  # noqa: E731
        forward = MOVE_PER_FRAME * (held("forward") - held("back"))
        strafe = STRAFE_PER_FRAME * (held("right") - held("left"))
        yaw = TURN_PER_FRAME * (held("turn_right") - held("turn_left")) + DRAG_RADIANS_PER_PIXEL * drag[0] / frames
        pitch = TURN_PER_FRAME * (held("look_up") - held("look_down")) - DRAG_RADIANS_PER_PIXEL * drag[1] / frames
        poses = [camera_to_world(self.state)]
        for _ in range(frames):
            self.state = self._move(self.state, (forward, strafe, yaw, pitch))
            poses.append(camera_to_world(self.state))
        c2w = np.stack(poses).astype(np.float32)[None]
        intrinsics = np.broadcast_to(self.intrinsics, (1, 1 + frames, 4)).astype(np.float32)
        return intrinsics, c2w

    def _move(self, state: CameraState, action) -> CameraState:
        if self.world is not None:
            moved = apply_action(self.world, state, action)
        else:
            forward, strafe, yaw, pitch = action
            heading = state.yaw + yaw
            moved = CameraState(state.x + forward * np.sin(heading) + strafe * np.cos(heading),
                                state.z + forward * np.cos(heading) - strafe * np.sin(heading),
                                heading, state.pitch + pitch)
        return dataclasses.replace(moved, pitch=float(np.clip(moved.pitch, -MAX_PITCH, MAX_PITCH)))
