"""Device meshes with the project's four axes: data, fsdp, context, tensor."""

from __future__ import annotations

import math

import jax
import numpy as np
from jax.sharding import Mesh

MESH_AXES = ("data", "fsdp", "context", "tensor")


def make_mesh(data: int = -1, fsdp: int = 1, context: int = 1, tensor: int = 1, devices=None) -> Mesh:
    """A mesh over ``devices`` (default: all). One size may be -1: it takes what is left.

    A single device is simply a mesh of shape (1, 1, 1, 1).
    """
    devices = list(jax.devices() if devices is None else devices)
    sizes = [data, fsdp, context, tensor]
    for name, size in zip(MESH_AXES, sizes):
        if not isinstance(size, int) or (size < 1 and size != -1):
            raise ValueError(f"mesh.{name}: expected a positive int or -1, got {size!r}")
    if sizes.count(-1) > 1:
        raise ValueError(f"mesh: at most one axis may be -1, got {dict(zip(MESH_AXES, sizes))}")
    known = math.prod(s for s in sizes if s != -1)
    if -1 in sizes:
        if len(devices) % known:
            raise ValueError(f"mesh: {len(devices)} devices do not divide by the fixed axes ({known})")
        sizes[sizes.index(-1)] = len(devices) // known
    if math.prod(sizes) != len(devices):
        raise ValueError(f"mesh: axes {dict(zip(MESH_AXES, sizes))} need {math.prod(sizes)} devices, "
                         f"have {len(devices)}")
    return Mesh(np.asarray(devices).reshape(sizes), MESH_AXES)
