"""Logical axis names -> mesh axes, for parameters and activations.

Parameters carry ``logical_axes`` metadata (see :mod:`aapt_jax.model.layers`);
activations are annotated with :func:`constrain`. A rule set maps each logical name to a
mesh axis (or a tuple of them, or None = replicated). Strategies are rule sets, so adding
one (ZeRO-2 for the student-forcing generator, Ulysses context parallel) does not touch
the model.
"""

from __future__ import annotations

import contextlib
import contextvars
from typing import Mapping, Sequence

import jax
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

Rules = Mapping[str, "str | tuple[str, ...] | None"]

# Data parallel over `data`, parameters and batch sharded over `fsdp` (ZeRO-3 style),
# Megatron-style splits over `tensor`, tokens over `context`.
DEFAULT_RULES: dict = {
    "batch": ("data", "fsdp"),
    "frames": None,
    "tokens": "context",
    "embed": "fsdp",
    "embed_out": None,
    "qkv": "tensor",
    "mlp": "tensor",
    "modulation": "tensor",
    "heads": "tensor",
    "patch": None,
    "text_embed": None,
    "cache_layers": None,
}

_ACTIVE: contextvars.ContextVar = contextvars.ContextVar("aapt_sharding", default=None)


def spec(axes: Sequence[str | None], rules: Rules, mesh: Mesh) -> P:
    """PartitionSpec for logical ``axes``; a mesh axis is used at most once per array, and
    axes of size 1 are dropped so the same rules serve every mesh."""
    used, out = set(), []
    for name in axes:
        target = None if name is None else rules.get(name)
        names = (target,) if isinstance(target, str) else tuple(target or ())
        keep = tuple(n for n in names if n not in used and mesh.shape[n] > 1)
        used.update(keep)
        out.append(None if not keep else keep[0] if len(keep) == 1 else keep)
    return P(*out)


def _fits(shape, pspec: P, mesh: Mesh) -> P:
    """Drop mesh axes that do not divide their dimension (e.g. tiny test widths)."""
    out = []
    for dim, entry in zip(shape, tuple(pspec) + (None,) * (len(shape) - len(pspec))):
        names = () if entry is None else (entry,) if isinstance(entry, str) else entry
        size = 1
        for n in names:
            size *= mesh.shape[n]
        out.append(entry if dim % size == 0 else None)
    return P(*out)


def param_shardings(params: nnx.State, mesh: Mesh, rules: Rules = DEFAULT_RULES):
    """A pytree of NamedSharding matching ``params``, from each Param's ``logical_axes``."""

    def one(var):
        axes = var.get_metadata().get("logical_axes") or (None,) * var.value.ndim
        return NamedSharding(mesh, _fits(var.value.shape, spec(axes, rules, mesh), mesh))

    return jax.tree.map(one, params, is_leaf=lambda x: isinstance(x, nnx.Variable))


def shard_params(params: nnx.State, mesh: Mesh, rules: Rules = DEFAULT_RULES) -> nnx.State:
    return jax.device_put(params, param_shardings(params, mesh, rules))


def array_sharding(shape, axes, mesh: Mesh, rules: Rules = DEFAULT_RULES) -> NamedSharding:
    return NamedSharding(mesh, _fits(shape, spec(axes, rules, mesh), mesh))


@contextlib.contextmanager
def use_mesh(mesh: Mesh, rules: Rules = DEFAULT_RULES):
    """Activate ``mesh`` and ``rules`` for :func:`constrain` while tracing."""
    token = _ACTIVE.set((mesh, dict(rules)))
    try:
        yield mesh
    finally:
        _ACTIVE.reset(token)


def constrain(x, axes: Sequence[str | None]):
    """``with_sharding_constraint`` by logical names; a no-op outside :func:`use_mesh`."""
    active = _ACTIVE.get()
    if active is None:
        return x
    mesh, rules = active
    return jax.lax.with_sharding_constraint(x, array_sharding(x.shape, axes, mesh, rules))
