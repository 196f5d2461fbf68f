"""Device meshes with the project's four axes: data, fsdp, context, tensor.

Every binary builds its mesh once, from ``config.mesh`` (:func:`mesh_from_config`); a single
device is a mesh of shape (1, 1, 1, 1) on the same code path. The axes are typed
``AxisType.Auto`` explicitly: jitted functions take explicit in/out shardings and the
compiler (GSPMD) propagates them through the body; the Ulysses attention switches the
``context`` axis to manual inside its ``shard_map``.
"""

from __future__ import annotations

import math
from typing import Mapping

import jax
import numpy as np
from jax.sharding import AxisType, Mesh

MESH_AXES = ("data", "fsdp", "context", "tensor")
AXIS_TYPES = (AxisType.Auto,) * len(MESH_AXES)


def resolve_sizes(data: int = -1, fsdp: int = 1, context: int = 1, tensor: int = 1, *,
                  device_count: int) -> dict:
    """``{axis: size}`` for ``device_count`` devices, one size of -1 taking what is left.
    ValueError naming the axis (``mesh.NAME``) when a size is not a positive int or -1, or the
    sizes do not multiply to the device count."""
    sizes = [data, fsdp, context, tensor]
    for name, size in zip(MESH_AXES, sizes):
        if isinstance(size, bool) or not isinstance(size, int) or (size < 1 and size != -1):
            raise ValueError(f"mesh.{name}: expected a positive int or -1, got {size!r}")
    if sizes.count(-1) > 1:
        raise ValueError(f"mesh: at most one axis may be -1, got {dict(zip(MESH_AXES, sizes))}")
    known = math.prod(s for s in sizes if s != -1)
    if -1 in sizes:
        if device_count % known:
            raise ValueError(f"mesh: {device_count} devices do not divide by the fixed axes "
                             f"{dict((n, s) for n, s in zip(MESH_AXES, sizes) if s != -1)} (product {known})")
        sizes[sizes.index(-1)] = device_count // known
    if math.prod(sizes) != device_count:
        raise ValueError(f"mesh: axes {dict(zip(MESH_AXES, sizes))} need {math.prod(sizes)} devices, "
                         f"have {device_count}")
    return dict(zip(MESH_AXES, sizes))


def make_mesh(data: int = -1, fsdp: int = 1, context: int = 1, tensor: int = 1, devices=None) -> Mesh:
    """A mesh over ``devices`` (default: all). One size may be -1: it takes what is left.

    A single device is simply a mesh of shape (1, 1, 1, 1).
    """
    devices = list(jax.devices() if devices is None else devices)
    sizes = resolve_sizes(data, fsdp, context, tensor, device_count=len(devices))
    return Mesh(np.asarray(devices).reshape(tuple(sizes.values())), MESH_AXES, axis_types=AXIS_TYPES)


def mesh_from_config(mesh: Mapping | None, devices=None) -> Mesh:
    """The mesh of an experiment config's ``mesh`` section (``{data, fsdp, context, tensor}``,
    missing axes 1, -1 = the devices left) over ``devices`` (default: every device of every
    process). None: all devices on ``data``."""
    fields = dict(mesh or {"data": -1})
    unknown = sorted(set(fields) - set(MESH_AXES))
    if unknown:
        raise ValueError(f"mesh: unknown field(s) {unknown}; expected fields {list(MESH_AXES)}")
    return make_mesh(**{name: fields.get(name, 1) for name in MESH_AXES}, devices=devices)
