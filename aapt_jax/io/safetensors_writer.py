"""Writing safetensors one tensor at a time, and diffusers' sharded layout.

``safetensors.numpy.save_file`` needs every tensor of a file in memory at once; a 1.3B
model would need its whole bf16 copy on the host. The format is simple (8-byte header
length, a JSON header of names, dtypes, shapes and byte offsets, then the raw bytes), and
every shape is known before any tensor is read, so the header is written first and each
tensor is produced, written and dropped in turn: peak host memory is one tensor.
"""

from __future__ import annotations

import json
import math
import os
import struct
from typing import Callable, Iterable, Sequence

import numpy as np

_DTYPES = {"float32": "F32", "bfloat16": "BF16", "float16": "F16", "int32": "I32", "int64": "I64"}
INDEX_NAME = "diffusion_pytorch_model.safetensors.index.json"


def np_dtype(name: str) -> np.dtype:
    """numpy dtype of ``'float32'`` / ``'bfloat16'`` (via ml_dtypes, which JAX ships)."""
    if name == "bfloat16":
        import ml_dtypes

        return np.dtype(ml_dtypes.bfloat16)
    return np.dtype(name)


def _nbytes(shape, dtype: str) -> int:
    return math.prod(shape) * np_dtype(dtype).itemsize


def write_file(path: str, specs: Sequence[tuple[str, tuple, str]], fetch: Callable[[str], np.ndarray],
               metadata: dict | None = None) -> None:
    """Write ``specs`` (``(name, shape, dtype name)``) to ``path``, calling ``fetch(name)``
    for each tensor in order; a tensor whose shape or dtype differs from its spec raises."""
    header, offset = {}, 0
    for name, shape, dtype in specs:
        if dtype not in _DTYPES:
            raise ValueError(f"{name}: dtype expected one of {sorted(_DTYPES)}, got {dtype!r}")
        size = _nbytes(shape, dtype)
        header[name] = {"dtype": _DTYPES[dtype], "shape": list(shape), "data_offsets": [offset, offset + size]}
        offset += size
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)  # the reference writer aligns the data to 8 bytes
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(raw)))
        f.write(raw)
        for name, shape, dtype in specs:
            value = np.ascontiguousarray(fetch(name))
            if tuple(value.shape) != tuple(shape) or value.dtype != np_dtype(dtype):
                raise ValueError(f"{name}: expected {tuple(shape)} {dtype}, got {tuple(value.shape)} {value.dtype}")
            f.write(memoryview(value.reshape(-1).view(np.uint8)))
            del value


def plan_shards(specs: Sequence[tuple[str, tuple, str]], max_shard_bytes: int) -> list[list]:
    """Consecutive groups of specs, each at most ``max_shard_bytes`` (or one larger tensor)."""
    shards, current, size = [], [], 0
    for spec in specs:
        n = _nbytes(spec[1], spec[2])
        if current and size + n > max_shard_bytes:
            shards.append(current)
            current, size = [], 0
        current.append(spec)
        size += n
    if current or not shards:
        shards.append(current)
    return shards


def write_sharded(directory: str, specs: Iterable[tuple[str, tuple, str]], fetch: Callable[[str], np.ndarray],
                  max_shard_bytes: int = 2 << 30) -> list[str]:
    """diffusers' sharded layout in ``directory``: ``diffusion_pytorch_model-0000i-of-0000n
    .safetensors`` and the ``.index.json`` weight map. Returns the shard file names."""
    specs = list(specs)
    shards = plan_shards(specs, max_shard_bytes)
    names = [f"diffusion_pytorch_model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))]
    weight_map = {}
    for name, group in zip(names, shards):
        write_file(os.path.join(directory, name), group, fetch, metadata={"format": "pt"})
        weight_map.update({spec[0]: name for spec in group})
    index = {"metadata": {"total_size": sum(_nbytes(s[1], s[2]) for s in specs)}, "weight_map": weight_map}
    with open(os.path.join(directory, INDEX_NAME), "w") as f:
        json.dump(index, f, indent=2, sort_keys=True)
    return names
