"""A user's folder of video files as fixed-size clips, with optional text embeddings.

Every readable video under the folder (see :func:`aapt_jax.io.video.list_videos`) that
has at least ``num_frames`` frames is a clip source; frames are centre-cropped to the
target aspect and resized. A text embedding for ``clip.mp4`` is ``clip.npy`` beside it,
float ``[text_len, text_dim]``; without one the clip's text is zeros of that shape.
Files are checked when the folder is opened, so a bad folder fails before any training:
each video is decoded once to count the frames that really decode (a truncated file's
header may promise more). A clip that still fails to read during training (a file changed
or damaged since) is skipped with a warning and counted, never the end of the run.
"""

from __future__ import annotations

import dataclasses
import logging
import os

import numpy as np

from aapt_jax.io.video import count_decodable_frames, list_videos, probe_video, read_video


@dataclasses.dataclass(frozen=True)
class VideoEntry:
    path: str
    num_frames: int
    text_path: str | None  # None: no embedding file, the text is zeros


def _count_frames(path: str) -> int:
    count = count_decodable_frames(path)
    promised = probe_video(path).num_frames
    if promised and promised != count:
        logging.warning("%s: the container says %d frames, %d decode; using %d", path, promised, count, count)
    return count


def _check_text_file(path: str, text_len: int, text_dim: int) -> None:
    try:
        text = np.load(path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError) as err:
        raise ValueError(f"{path}: cannot read as a .npy text embedding ({err})") from err
    if text.shape != (text_len, text_dim) or not np.issubdtype(text.dtype, np.floating):
        raise ValueError(f"{path}: expected a float text embedding of shape "
                         f"({text_len}, {text_dim}) (text_len, text_dim), got {text.dtype} "
                         f"{text.shape}")


class VideoFolder:
    """The clip-able videos of ``folder``.

    Args:
      folder: searched recursively for video files.
      height, width: output frame size.
      num_frames: frames per clip ``T``; shorter videos are skipped with a warning.
      text_len, text_dim: shape of a text embedding.

    Attributes:
      entries: the usable videos, sorted by path.
      skipped: files with a video extension that were not used (unreadable or too short).

    Raises:
      ValueError naming the folder if it holds no usable video, or naming a text file with
      the wrong shape.
    """

    def __init__(self, folder, height: int, width: int, num_frames: int, text_len: int,
                 text_dim: int):
        self.folder = os.fspath(folder)
        self.height, self.width, self.num_frames = height, width, num_frames
        self.text_len, self.text_dim = text_len, text_dim
        paths, self.skipped = list_videos(self.folder)
        entries = []
        for path in paths:
            count = _count_frames(path)
            if count < num_frames:
                logging.warning("skipping %s: %d frames, clips need %d", path, count, num_frames)
                self.skipped += 1
                continue
            text_path = os.path.splitext(path)[0] + ".npy"
            if os.path.isfile(text_path):
                _check_text_file(text_path, text_len, text_dim)
            else:
                text_path = None
            entries.append(VideoEntry(path, count, text_path))
        if not entries:
            raise ValueError(f"{self.folder}: no readable video with at least {num_frames} "
                             f"frames ({self.skipped} video files skipped)")
        self.entries = tuple(entries)

    def __len__(self) -> int:
        return len(self.entries)

    def clip(self, video: int, start: int) -> np.ndarray:
        """uint8 ``[num_frames, height, width, 3]``: frames ``start ..`` of video ``video``."""
        entry = self.entries[video]
        return read_video(entry.path, self.height, self.width, self.num_frames, start)

    def text(self, video: int) -> np.ndarray:
        """float32 ``[text_len, text_dim]`` of video ``video`` (zeros without a file)."""
        path = self.entries[video].text_path
        if path is None:
            return np.zeros((self.text_len, self.text_dim), np.float32)
        return np.load(path, allow_pickle=False).astype(np.float32)
