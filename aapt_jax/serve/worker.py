"""One stream's generator thread: just-in-time latent frames, paced at the video rate.

The thread owns the clock. Latent frame ``k + 1`` is due to start playing at ``t_next``;
the thread starts generating it ``lead`` seconds before (the slowest of the last few
generation times, times 1.5, plus a margin), with the controls held up to that moment. So
a key press reaches the screen after at most one latent period of waiting plus that lead,
never behind a queue of frames generated earlier. A frame that is late anyway is sent at
once and the schedule kept (the stream stays at the video rate); only a stall of more than
a latent period restarts the schedule from now.

Frames leave through ``emit(frames, play_times, header)``, which blocks while two latent
frames are still unsent (a client that stops reading stalls only its own stream).
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from typing import Callable

import numpy as np

from aapt_jax.data.world import make_world, render_path
from aapt_jax.data.world_camera import camera_to_world, start_state
from aapt_jax.serve.camera_rig import CameraRig
from aapt_jax.serve.engine import Engine

log = logging.getLogger(__name__)

LEAD_FACTOR = 1.5
LEAD_MARGIN_S = 0.02
RECENT_GENERATIONS = 8


class Controls:
    """Actions held and drag since the last latent frame; written by the event loop, read by
    the worker thread."""

    def __init__(self):
        self._lock = threading.Lock()
        self._held = frozenset()
        self._pressed = set()
        self._drag = [0.0, 0.0]
        self._seq = 0

    def update(self, seq: int, actions: frozenset, drag) -> None:
        with self._lock:
            self._held = actions
            self._pressed |= actions
            self._drag[0] += drag[0]
            self._drag[1] += drag[1]
            self._seq = seq

    def take(self):
        """(actions held at any time since the last take, drag, last seq) and start afresh."""
        with self._lock:
            actions = frozenset(self._held | self._pressed)
            drag, seq = tuple(self._drag), self._seq
            self._pressed, self._drag = set(), [0.0, 0.0]
        return actions, drag, seq


def world_start(seed: int, video_hw):
    """The procedural world of ``seed``: (camera rig at its start, uint8 ``[H, W, 3]`` first frame)."""
    world = make_world(seed)
    rig = CameraRig.in_world(world, start_state(world, np.random.default_rng(seed)), video_hw)
    c2w = camera_to_world(rig.state)[None].astype(np.float32)
    return rig, render_path(world, rig.intrinsics[None], c2w, video_hw)[0]


class StreamWorker(threading.Thread):
    """Generates one stream until :meth:`stop` (or ``emit`` returns False).

    Args:
      start: ``{'source': 'world', 'seed'}`` or ``{'source': 'image', 'rgb': uint8 [H, W, 3], 'seed'}``.
      emit: ``emit(frames uint8 [n, H, W, 3], play_times [n] (time.monotonic), header) -> bool``.
      on_error: called with a one-line message if the stream dies of an unexpected error.
    """

    def __init__(self, engine: Engine, start: dict, controls: Controls, stream_id: int,
                 emit: Callable[..., bool], on_error: Callable[[str], None]):
        super().__init__(daemon=True, name=f"stream-{stream_id}")
        self.engine, self.start_spec, self.controls = engine, start, controls
        self.stream_id, self.emit, self.on_error = stream_id, emit, on_error
        self.stopping = threading.Event()

    def stop(self) -> None:
        self.stopping.set()

    def run(self) -> None:
        try:
            self._run()
        except Exception as err:  # noqa: BLE001 (a stream's failure must not reach the server)
            log.exception("stream %d failed", self.stream_id)
            self.on_error(f"the stream stopped on an internal error: {type(err).__name__}: {err}")

    def _run(self) -> None:
        engine = self.engine
        period = 1.0 / engine.fps
        n = engine.frames_per_latent
        if self.start_spec["source"] == "world":
            rig, first_rgb = world_start(self.start_spec["seed"], engine.video_hw)
        else:
            rig, first_rgb = CameraRig.free(engine.video_hw), self.start_spec["rgb"]
        handle, frames = engine.start(first_rgb, self.start_spec["seed"])
        t_next = time.monotonic()
        header = dict(stream=self.stream_id, latent=0, ctrl_seq=0, step_ms=0.0, decode_ms=0.0, pose=rig.pose())
        if not self.emit(frames, [t_next], header):
            return
        t_next += period
        recent = collections.deque([0.05], maxlen=RECENT_GENERATIONS)
        while not self.stopping.is_set():
            wait = t_next - (LEAD_FACTOR * max(recent) + LEAD_MARGIN_S) - time.monotonic()
            if wait > 0 and self.stopping.wait(wait):
                return
            actions, drag, seq = self.controls.take()
            t0 = time.monotonic()
            intrinsics, c2w = rig.advance(actions, drag, n)
            frames, step_ms, decode_ms = engine.next(handle, intrinsics, c2w)
            t1 = time.monotonic()
            recent.append(t1 - t0)
            if t1 > t_next + n * period:
                t_next = t1  # far behind (a stall): start the schedule again from now
            header = dict(stream=self.stream_id, latent=handle.index, ctrl_seq=seq, step_ms=round(step_ms, 2),
                          decode_ms=round(decode_ms, 2), pose=rig.pose())
            if not self.emit(frames, [t_next + i * period for i in range(n)], header):
                return
            t_next += n * period
