"""One client connection: its messages, its stream (at most one) and its recorded video.

Runs on the event loop; the model work runs in the stream's :class:`StreamWorker` thread
and image decoding and MP4 encoding in the default executor, so no message of one client
waits on another client's model work. Frames reach the socket through :meth:`_send_loop`,
which sends each at its play time.
"""

from __future__ import annotations

import asyncio
import collections
import io
import logging
import os
import tempfile
import threading
import time

import numpy as np
from aiohttp import web

from aapt_jax.io.video import write_mp4
from aapt_jax.serve import protocol
from aapt_jax.serve.engine import Engine
from aapt_jax.serve.protocol import ProtocolError
from aapt_jax.serve.worker import Controls, StreamWorker

log = logging.getLogger(__name__)

MAX_IMAGE_PIXELS = 40_000_000  # decoding more would take seconds and gigabytes
MAX_UNSENT_LATENTS = 2


def decode_image(data: bytes, video_hw) -> np.ndarray:
    """PNG/JPEG bytes -> uint8 ``[H, W, 3]``: centre-cropped to the video's aspect, resized."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as img:
            if img.width * img.height > MAX_IMAGE_PIXELS:
                raise ProtocolError("too_large", f"start.image: expected at most {MAX_IMAGE_PIXELS} pixels, "
                                    f"got {img.width}x{img.height}")
            rgb = img.convert("RGB")
    except ProtocolError:
        raise
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as err:
        raise ProtocolError("bad_image", f"start.image: expected a PNG or JPEG image, got undecodable data "
                            f"({type(err).__name__})") from None
    height, width = video_hw
    src_w, src_h = rgb.size
    if src_w * height > width * src_h:
        crop_w = max(1, round(src_h * width / height))
        box = ((src_w - crop_w) // 2, 0, (src_w - crop_w) // 2 + crop_w, src_h)
    else:
        crop_h = max(1, round(src_w * height / width))
        box = (0, (src_h - crop_h) // 2, src_w, (src_h - crop_h) // 2 + crop_h)
    return np.asarray(rgb.resize((width, height), Image.Resampling.BICUBIC, box=box), np.uint8)


class Session:
    """The state of one WebSocket client (see :mod:`aapt_jax.serve.protocol`)."""

    def __init__(self, ws: web.WebSocketResponse, engine: Engine, record_frames: int):
        self.ws, self.engine = ws, engine
        self.loop = asyncio.get_running_loop()
        self.controls = Controls()
        self.worker: StreamWorker | None = None
        self.start_spec: dict | None = None
        self.stream_id = 0
        self.last_seq = 0
        self.recorded = collections.deque(maxlen=record_frames)
        self._outbox: asyncio.Queue = asyncio.Queue()
        self._unsent = threading.Semaphore(MAX_UNSENT_LATENTS)
        self._sender = asyncio.create_task(self._send_loop())

    async def send_json(self, obj: dict) -> None:
        if not self.ws.closed:
            try:
                await self.ws.send_json(obj)
            except (ConnectionError, RuntimeError):
                pass  # the client went away; the read loop ends the session

    async def handle_text(self, text: str) -> None:
        """Answer one text message; a bad one gets an error reply and changes nothing."""
        try:
            msg = protocol.parse(text)
            await getattr(self, "_on_" + msg["type"])(msg)
        except ProtocolError as err:
            await self.send_json(err.reply())

    async def _on_start(self, msg: dict) -> None:
        if self.worker is not None:
            raise ProtocolError("out_of_order", "start: a stream is already running; send reset or stop first")
        if msg["source"] == "image":
            rgb = await self.loop.run_in_executor(None, decode_image, msg.pop("image"), self.engine.video_hw)
            msg["rgb"] = rgb
        self.start_spec = msg
        await self._start()

    async def _on_keys(self, msg: dict) -> None:
        if msg["seq"] <= self.last_seq:
            raise ProtocolError("out_of_order", f"keys.seq: expected > {self.last_seq} (the last seq), got {msg['seq']}")
        if self.worker is None:
            raise ProtocolError("out_of_order", "keys: no stream is running; send start first")
        self.last_seq = msg["seq"]
        self.controls.update(msg["seq"], msg["actions"], msg["drag"])

    async def _on_reset(self, msg: dict) -> None:
        if self.start_spec is None:
            raise ProtocolError("out_of_order", "reset: nothing to reset; send start first")
        await self.stop_stream()
        await self._start()

    async def _on_stop(self, msg: dict) -> None:
        if self.worker is None:
            raise ProtocolError("out_of_order", "stop: no stream is running")
        await self.stop_stream()
        await self.send_json({"type": "stopped", "stream": self.stream_id})

    async def _on_export(self, msg: dict) -> None:
        if not self.recorded:
            raise ProtocolError("out_of_order", "export: no frames streamed yet; send start first")
        frames = list(self.recorded)
        data = await self.loop.run_in_executor(None, _mp4_bytes, frames, self.engine.fps)
        if not self.ws.closed:
            await self.ws.send_bytes(protocol.pack({"type": "mp4", "frames": len(frames), "fps": self.engine.fps},
                                                   data))

    async def _start(self) -> None:
        self.stream_id += 1
        self.controls = Controls()
        self.recorded.clear()
        sid = self.stream_id
        spec = {k: v for k, v in self.start_spec.items() if k != "type"}
        worker = StreamWorker(self.engine, spec, self.controls, sid, emit=None,
                              on_error=lambda m: self._worker_error(sid, m))
        worker.emit = lambda f, t, h: self._emit(worker, sid, f, t, h)
        self.worker = worker
        worker.start()
        await self.send_json({"type": "started", "stream": sid, "source": spec["source"], "seed": spec["seed"]})

    async def stop_stream(self) -> None:
        worker, self.worker = self.worker, None
        if worker is None:
            return
        worker.stop()
        # Join off the loop: the worker may be inside a generation step.
        await self.loop.run_in_executor(None, worker.join, 30.0)

    def _emit(self, worker: StreamWorker, sid: int, frames, play_times, header) -> bool:
        """Worker thread: queue one latent frame's video frames (blocks on backpressure)."""
        while not self._unsent.acquire(timeout=0.1):
            if worker.stopping.is_set() or self.ws.closed:
                return False
        if worker.stopping.is_set() or self.ws.closed:
            self._unsent.release()
            return False
        self.loop.call_soon_threadsafe(self._outbox.put_nowait, (sid, frames, play_times, header))
        return True

    def _worker_error(self, sid: int, message: str) -> None:
        """Worker thread: tell the client its stream died (the connection stays usable)."""
        reply = {"type": "error", "code": "internal", "stream": sid, "message": message}
        try:
            self.loop.call_soon_threadsafe(lambda: asyncio.ensure_future(self.send_json(reply)))
        except RuntimeError:
            pass  # the event loop is already closed: the server is shutting down

    async def _send_loop(self) -> None:
        height, width = self.engine.video_hw
        index = 0
        while True:
            sid, frames, play_times, header = await self._outbox.get()
            try:
                if sid != self.stream_id:
                    continue  # a stream that was reset or stopped
                if header["latent"] == 0:
                    index = 0
                for frame, t_play in zip(frames, play_times):
                    delay = t_play - time.monotonic()
                    if delay > 0:
                        await asyncio.sleep(delay)
                    if sid != self.stream_id or self.ws.closed:
                        break
                    self.recorded.append(frame)
                    head = dict(header, type="frame", index=index, height=height, width=width)
                    index += 1
                    try:
                        await self.ws.send_bytes(protocol.pack(head, frame.tobytes()))
                    except (ConnectionError, RuntimeError):
                        break
            finally:
                self._unsent.release()

    async def close(self) -> None:
        """Stop the stream and the sender (the connection is closing)."""
        await self.stop_stream()
        self._sender.cancel()
        try:
            await self._sender
        except asyncio.CancelledError:
            pass


def _mp4_bytes(frames: list[np.ndarray], fps: float) -> bytes:
    """uint8 ``[H, W, 3]`` frames -> the bytes of an H.264 MP4 (off the event loop: seconds
    for minutes of video)."""
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "stream.mp4")
        write_mp4(path, np.stack(frames), fps=fps)
        with open(path, "rb") as f:
            return f.read()
