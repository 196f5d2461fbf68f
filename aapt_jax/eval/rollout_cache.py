"""Each finished rollout of the drift evaluation kept on disk, so a stopped evaluation resumes.

At a 5-minute horizon the evaluation streams six models along eight paths for hours on a
CPU, and a crash or a SIGTERM near the end would otherwise throw all of it away. After
every model finishes a path, its per-second report (and, on path 0, the frames the strip
shows) goes to ``OUT/rollouts/``, with a key holding everything that decides it: the
weights' fingerprint, the sampler, the path (seed, index, worlds, latent frames), the video
geometry, the control and the text. A rerun whose key matches reads the entry instead of
streaming again; a different key streams anew and replaces the entry, so a retrained model
or a longer horizon is never scored from stale rollouts. The true render's reports (the VAE
reconstruction and the copied first frame) are kept the same way, keyed without a model.

Files: ``rollouts/path{i}.reference.json`` and ``rollouts/path{i}.model.{name}.json``
(``{"key", "value"}``), and for path 0 ``*.strip.npy`` beside them (uint8
``[moments, H, W, 3]``).
"""

from __future__ import annotations

import hashlib
import json
import os

import numpy as np

from aapt_jax.io import builtin
from aapt_jax.io.checksums import files_under, sha256_file
from aapt_jax.io.files import atomic_save_npy, atomic_write_json

# Files up to this size are hashed whole; larger ones (an 8B model's shards) by size and
# modification time, which a rewrite changes too, so the fingerprint stays cheap.
_HASH_BYTES = 64 << 20
_EXPORT_DIR = "export"


def weights_fingerprint(source: str) -> str:
    """sha256 over the files a generator or VAE loads from ``source`` (a training workdir:
    its ``export/``; a diffusers folder or ``builtin:`` name: the folder itself)."""
    root = builtin.resolve(source, "weights")
    if os.path.isdir(os.path.join(root, _EXPORT_DIR)):
        root = os.path.join(root, _EXPORT_DIR)
    h = hashlib.sha256()
    for rel in files_under(root):
        path = os.path.join(root, rel)
        size = os.path.getsize(path)
        content = sha256_file(path) if size <= _HASH_BYTES else str(os.stat(path).st_mtime_ns)
        h.update(f"{rel}\0{size}\0{content}\0".encode())
    return h.hexdigest()


def _normalised(key: dict) -> dict:
    """``key`` as JSON reads it back (tuples become lists, floats round-trip), so a key built
    in memory compares equal to the one saved."""
    return json.loads(json.dumps(key, sort_keys=True))


class RolloutCache:
    """Entries under ``out/rollouts``: ``get`` returns ``(value, strip or None)`` when the
    saved key equals ``key``, else None; ``put`` writes atomically (an entry is whole or
    absent). ``name`` None is the path's reference entry, else a model's."""

    def __init__(self, out: str):
        self.root = os.path.join(out, "rollouts")
        os.makedirs(self.root, exist_ok=True)

    def _stem(self, index: int, name: str | None) -> str:
        return os.path.join(self.root, f"path{index}.reference" if name is None else f"path{index}.model.{name}")

    def get(self, index: int, name: str | None, key: dict, *, want_strip: bool = False):
        stem = self._stem(index, name)
        try:
            with open(stem + ".json") as f:
                entry = json.load(f)
        except (OSError, ValueError):
            return None
        if entry.get("key") != _normalised(key):
            return None
        strip = None
        if want_strip:
            try:
                strip = np.load(stem + ".strip.npy")
            except (OSError, ValueError):
                return None
        return entry["value"], strip

    def put(self, index: int, name: str | None, key: dict, value: dict, strip=None) -> None:
        stem = self._stem(index, name)
        if strip is not None:
            atomic_save_npy(stem + ".strip.npy", np.asarray(strip, np.uint8))
        atomic_write_json(stem + ".json", {"key": _normalised(key), "value": value})  # last: marks it whole
