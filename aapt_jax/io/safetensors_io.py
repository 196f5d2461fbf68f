"""Reading PyTorch-side weights safely (safetensors only, nothing executed) and checking keys.

Shared by every importer: a diffusers model directory (``config.json`` plus one or more
``*.safetensors`` shards), a single ``.safetensors`` file, or an in-memory state dict of
numpy arrays / torch tensors.
"""

from __future__ import annotations

import json
import os
from typing import Mapping

import numpy as np


def _to_numpy(value) -> np.ndarray:
    if isinstance(value, np.ndarray):
        return value
    if hasattr(value, "detach"):  # a torch tensor; bf16 has no numpy dtype, so go via fp32
        value = value.detach().cpu()
        if str(value.dtype) == "torch.bfloat16":
            value = value.float()
        return value.numpy()
    return np.asarray(value)


def _load_file(path: str) -> dict[str, np.ndarray]:
    from safetensors.numpy import load_file

    try:
        return dict(load_file(path))
    except Exception as e:  # SafetensorError, OSError...: a truncated or foreign file; name it once
        raise ValueError(f"{path}: cannot read as safetensors ({type(e).__name__}: {e}); the file is "
                         f"truncated or not a safetensors file") from e


class LazyStateDict(Mapping):
    """``{key: numpy array}`` over safetensors files, each tensor read (memory-mapped) when it
    is looked up: an importer holds one tensor at a time, not the whole model."""

    def __init__(self, paths):
        from safetensors import safe_open

        self._where = {}
        for path in paths:
            try:
                with safe_open(path, framework="np") as f:
                    self._where.update((k, path) for k in f.keys())
            except Exception as e:  # a truncated or foreign file; name it once
                raise ValueError(f"{path}: cannot read as safetensors ({type(e).__name__}: {e}); the file is "
                                 f"truncated or not a safetensors file") from e

    def __getitem__(self, key):
        from safetensors import safe_open

        with safe_open(self._where[key], framework="np") as f:
            return f.get_tensor(key)

    def shape_of(self, key) -> tuple:
        """A tensor's shape, read from the file header."""
        from safetensors import safe_open

        with safe_open(self._where[key], framework="np") as f:
            return tuple(f.get_slice(key).get_shape())

    def without(self, keys) -> "LazyStateDict":
        out = LazyStateDict([])
        out._where = {k: v for k, v in self._where.items() if k not in keys}
        return out

    def __contains__(self, key):  # Mapping's default would read the tensor
        return key in self._where

    def __iter__(self):
        return iter(self._where)

    def __len__(self):
        return len(self._where)


def load_state_dict(source, lazy: bool = False) -> Mapping[str, np.ndarray]:
    """A flat ``{key: numpy array}`` from a directory, a ``.safetensors`` file or a mapping;
    ``lazy``: files are read tensor by tensor on lookup (:class:`LazyStateDict`)."""
    if isinstance(source, Mapping):
        return {k: _to_numpy(v) for k, v in source.items()}
    path = os.fspath(source)
    if os.path.isdir(path):
        shards = sorted(f for f in os.listdir(path) if f.endswith(".safetensors"))
        if not shards:
            raise ValueError(f"{path}: no *.safetensors files in this directory")
        if lazy:
            return LazyStateDict([os.path.join(path, shard) for shard in shards])
        out: dict[str, np.ndarray] = {}
        for shard in shards:
            out.update(_load_file(os.path.join(path, shard)))
        return out
    if not os.path.exists(path):
        raise ValueError(f"{path}: no such file or directory")
    if not path.endswith(".safetensors"):
        raise ValueError(f"{path}: expected a .safetensors file or a diffusers model directory")
    return LazyStateDict([path]) if lazy else _load_file(path)


def load_config(source) -> dict | None:
    """The diffusers ``config.json`` beside the weights, if ``source`` is a directory."""
    if isinstance(source, Mapping):
        return None
    path = os.path.join(os.fspath(source), "config.json")
    if os.path.isfile(path):
        with open(path) as f:
            return json.load(f)
    return None


def check_keys(expected: Mapping[str, tuple], state: Mapping[str, np.ndarray], what: str) -> None:
    """Raise one ValueError listing every missing, unexpected and mis-shaped key."""
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    shape = state.shape_of if isinstance(state, LazyStateDict) else lambda k: tuple(state[k].shape)
    misshaped = sorted(
        f"{k}: expected {tuple(expected[k])}, got {shape(k)}"
        for k in set(expected) & set(state)
        if tuple(expected[k]) != shape(k)
    )
    if missing or unexpected or misshaped:
        parts = []
        for title, items in (("missing", missing), ("unexpected", unexpected), ("mis-shaped", misshaped)):
            if items:
                parts.append(f"{len(items)} {title} key(s):\n  " + "\n  ".join(items))
        raise ValueError(f"{what}: state dict does not match the model.\n" + "\n".join(parts))
