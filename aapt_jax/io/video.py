"""Video files in and out (PyAV): uint8 ``[T, H, W, 3]`` RGB frames.

Reading resizes and centre-crops to a target size (aspect preserved: crop the source to
the target aspect, then resize). Writing makes H.264 yuv420p MP4s that ordinary players
open, through a temporary file renamed into place, so a crash never leaves half a file.
Every failure to read a file is a ``ValueError`` that names the file.
"""

from __future__ import annotations

import dataclasses
import fractions
import logging
import os

import av
import jax
import jax.numpy as jnp
import numpy as np

from aapt_jax.io.files import atomic_path

VIDEO_EXTENSIONS = (".mp4", ".mov", ".mkv", ".webm", ".avi", ".m4v")


@dataclasses.dataclass(frozen=True)
class VideoInfo:
    height: int
    width: int
    fps: float
    num_frames: int  # from the container; 0 when it does not say


def _open(path: str):
    if not os.path.isfile(path):
        raise ValueError(f"{path}: no such video file")
    try:
        container = av.open(path)
    except (av.error.FFmpegError, OSError, UnicodeDecodeError) as err:
        raise ValueError(f"{path}: cannot open as a video ({err})") from err
    if not container.streams.video:
        container.close()
        raise ValueError(f"{path}: no video stream")
    stream = container.streams.video[0]
    if stream.codec_context is None:
        container.close()
        raise ValueError(f"{path}: no decoder for its video codec")
    stream.thread_type = "AUTO"
    return container, stream


def probe_video(path: str) -> VideoInfo:
    """Size, rate and frame count of ``path``, after decoding its first frame."""
    path = os.fspath(path)
    container, stream = _open(path)
    try:
        try:
            frame = next(container.decode(stream), None)
        except (av.error.FFmpegError, OSError) as err:
            raise ValueError(f"{path}: cannot decode its video stream ({err})") from err
        if frame is None:
            raise ValueError(f"{path}: the video stream has no frames")
        fps = float(stream.average_rate) if stream.average_rate else 0.0
        return VideoInfo(frame.height, frame.width, fps, int(stream.frames or 0))
    finally:
        container.close()


def count_decodable_frames(path: str) -> int:
    """Frames of ``path`` that actually decode, up to the first decode error.

    A truncated file can keep a header that promises more frames than are left; this
    decodes (without converting to RGB) to count what is really there.
    """
    path = os.fspath(path)
    container, stream = _open(path)
    count = 0
    try:
        for _ in container.decode(stream):
            count += 1
    except (av.error.FFmpegError, OSError):
        pass  # the frames before the damage are usable
    finally:
        container.close()
    return count


def _crop_box(src_h: int, src_w: int, height: int, width: int):
    """The centred region of the source with the target's aspect ratio."""
    if src_w * height > width * src_h:  # source wider than target
        crop_w = max(1, round(src_h * width / height))
        left = (src_w - crop_w) // 2
        return 0, src_h, left, left + crop_w
    crop_h = max(1, round(src_w * height / width))
    top = (src_h - crop_h) // 2
    return top, top + crop_h, 0, src_w


def read_video(path, height: int, width: int, num_frames: int | None = None, start: int = 0) -> np.ndarray:
    """Frames ``start .. start + num_frames`` (all remaining if ``None``) of ``path``.

    Returns uint8 ``[T, height, width, 3]`` RGB. Raises ``ValueError`` naming the file if
    it is missing, not a video, cannot be decoded or is shorter than asked.
    """
    path = os.fspath(path)
    for name, value in (("height", height), ("width", width)):
        if not isinstance(value, int) or value <= 0:
            raise ValueError(f"read_video {name}: expected a positive int, got {value!r}")
    if num_frames is not None and (not isinstance(num_frames, int) or num_frames <= 0):
        raise ValueError(f"read_video num_frames: expected None or a positive int, got {num_frames!r}")
    if not isinstance(start, int) or start < 0:
        raise ValueError(f"read_video start: expected an int >= 0, got {start!r}")
    container, stream = _open(path)
    frames = []
    try:
        index = -1
        for index, frame in enumerate(container.decode(stream)):
            if index < start:
                continue
            rgb = frame.to_ndarray(format="rgb24")
            top, bottom, left, right = _crop_box(rgb.shape[0], rgb.shape[1], height, width)
            crop = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb[top:bottom, left:right]), format="rgb24")
            frames.append(crop.reformat(width=width, height=height, interpolation="AREA").to_ndarray(format="rgb24"))
            if num_frames is not None and len(frames) == num_frames:
                break
    except (av.error.FFmpegError, OSError) as err:
        raise ValueError(f"{path}: cannot decode its video stream ({err})") from err
    finally:
        container.close()
    if not frames:
        raise ValueError(f"{path}: no frames from index {start} (the video has {index + 1})")
    if num_frames is not None and len(frames) < num_frames:
        raise ValueError(f"{path}: num_frames {num_frames} from index {start} asked, "
                         f"the video has only {len(frames)} from there")
    return np.stack(frames)


def write_mp4(path, frames, fps: float, crf: int = 18) -> None:
    """Write uint8 ``frames [T, H, W, 3]`` (H, W even) as an H.264 yuv420p MP4 at ``fps``."""
    path = os.fspath(path)
    frames = np.asarray(frames)
    if frames.dtype != np.uint8:
        raise ValueError(f"write_mp4 frames: expected uint8 (see unit_to_frames), got {frames.dtype}")
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.shape[0] == 0:
        raise ValueError(f"write_mp4 frames: expected [T>0, H, W, 3], got shape {frames.shape}")
    if frames.shape[1] % 2 or frames.shape[2] % 2:
        raise ValueError(f"write_mp4 frames: expected even height and width (yuv420p), got "
                         f"{frames.shape[1]}x{frames.shape[2]}")
    if not fps > 0:
        raise ValueError(f"write_mp4 fps: expected a positive number, got {fps!r}")
    with atomic_path(path) as tmp, av.open(tmp, mode="w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=fractions.Fraction(fps).limit_denominator(1001))
        stream.height, stream.width = frames.shape[1], frames.shape[2]
        stream.pix_fmt = "yuv420p"
        stream.options = {"crf": str(crf)}
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)


def _array_module(x):
    """jax.numpy for a jax array (also a traced one), else numpy: one conversion serves the
    host-side tools and the jitted steps alike."""
    return jnp if isinstance(x, jax.Array) else np


def frames_to_unit(frames):
    """uint8 frames -> float32 in ``[-1, 1]`` (the VAE's input range); same array kind out."""
    xp = _array_module(frames)
    frames = xp.asarray(frames)
    if frames.dtype != xp.uint8:
        raise ValueError(f"frames_to_unit frames: expected uint8, got {frames.dtype}")
    return frames.astype(xp.float32) / 127.5 - 1.0


def unit_to_frames(x):
    """Floats in ``[-1, 1]`` -> uint8 frames (clipped, rounded); same array kind out."""
    xp = _array_module(x)
    x = xp.asarray(x, xp.float32)
    return xp.clip(xp.round((x + 1.0) * 127.5), 0, 255).astype(xp.uint8)


def list_videos(folder, extensions=VIDEO_EXTENSIONS) -> tuple[list[str], int]:
    """Readable videos under ``folder`` (recursive, sorted) and the number skipped.

    Files whose extension is in ``extensions`` are probed (opened, first frame decoded);
    each one that fails is logged with ``logging.warning`` and counted, never dropped
    silently. Files with other extensions, and hidden ones (``.``-prefixed: partial writes,
    macOS resource forks), are not videos and are not considered.
    """
    folder = os.fspath(folder)
    if not os.path.isdir(folder):
        raise ValueError(f"{folder}: no such folder")
    extensions = tuple(e.lower() for e in extensions)
    paths, skipped = [], 0
    for root, dirs, files in os.walk(folder):
        dirs.sort()
        for name in sorted(files):
            if not name.lower().endswith(extensions) or name.startswith("."):
                continue
            path = os.path.join(root, name)
            try:
                probe_video(path)
            except ValueError as err:
                logging.warning("skipping unreadable video: %s", err)
                skipped += 1
                continue
            paths.append(path)
    return paths, skipped
