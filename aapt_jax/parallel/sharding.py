"""Logical axis names -> mesh axes, for parameters and activations.

Parameters carry ``logical_axes`` metadata (see :mod:`aapt_jax.model.layers`);
activations are annotated with :func:`constrain`. A rule set maps each logical name to a
mesh axis (or a tuple of them, or None = replicated). Strategies are rule sets, so adding
one (ZeRO-2 for the student-forcing generator, Ulysses context parallel) does not touch
the model.

A dimension that a mesh axis does not divide (a tiny test width, 1196 tokens per frame on
``context=8``) cannot be split evenly. It is never replicated silently: with
``strict=True`` it is a ``ValueError``; otherwise the mesh axes are kept as far as their
product divides the dimension (``batch`` 2 on ``data=2, fsdp=4`` stays split over
``data``), the rest are dropped, and the logger ``aapt_jax.parallel.sharding`` warns once
per message, naming the array (param path or activation axes), the dimension, its size
and the mesh axes with their sizes.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import math
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

# Per-player strategies (paper App. "Parallelism"): which rules place a player's params, and
# which its gradients and optimizer state. The ZeRO group is every device of ``fsdp`` and
# ``context``: the devices that split one sample by tokens hold different parts of the
# model too (as DeepSpeed's ZeRO spans its data and sequence-parallel ranks), so one sample
# on 8 devices (``context=8``) still divides the model by 8. ZeRO-3 shards params, gradients
# and optimizer state over the group; ZeRO-2 keeps the params whole within it (the
# student-forcing generator runs one recurrent forward per frame and must not all-gather
# its weights for each) and shards the gradients (reduce-scattered) and the optimizer state,
# the update all-gathering the new params once per step. ``tensor`` splits stay in both.
ZERO_RULES: dict = dict(DEFAULT_RULES, embed=("fsdp", "context"))
ZERO2_PARAM_RULES: dict = dict(DEFAULT_RULES, embed=None)
STRATEGIES: dict = {
    "zero3": {"params": ZERO_RULES, "state": ZERO_RULES},
    "zero2": {"params": ZERO2_PARAM_RULES, "state": ZERO_RULES},
}

_ACTIVE: contextvars.ContextVar = contextvars.ContextVar("aapt_sharding", default=None)

logger = logging.getLogger(__name__)
# Messages already logged: constrain() runs once per block per trace, and one warning per
# distinct mismatch is enough.
_WARNED: set = set()


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


def fit_entry(dim: int, entry, mesh: Mesh, *, what: str, index: int, strict: bool):
    """``entry`` (mesh axis, tuple of them, or None) for a dimension of size ``dim``: the
    longest prefix of its axes whose product divides ``dim``; a shortfall is an error when
    ``strict``, else a logged warning."""
    names = () if entry is None else (entry,) if isinstance(entry, str) else tuple(entry)
    keep = names
    while keep and dim % math.prod(mesh.shape[n] for n in keep):
        keep = keep[:-1]
    if keep != names:
        sizes = ", ".join(f"{n}={mesh.shape[n]}" for n in names)
        msg = (f"sharding: {what} dim {index} (size {dim}) does not divide by mesh axes ({sizes}, "
               f"product {math.prod(mesh.shape[n] for n in names)})")
        if strict:
            raise ValueError(msg)
        dropped = ", ".join(names[len(keep):])
        msg += (f"; split over {', '.join(keep)} only, replicated over {dropped}" if keep
                else f"; replicated over {dropped}")
        if msg not in _WARNED:
            _WARNED.add(msg)
            logger.warning(msg)
    return None if not keep else keep[0] if len(keep) == 1 else keep


def _fits(shape, pspec: P, mesh: Mesh, *, what: str = "array", strict: bool = False) -> P:
    """``pspec`` for an array of ``shape``, each entry reduced to the mesh axes that divide its
    dimension (see :func:`fit_entry`); ``what`` names the array in the warning or error."""
    entries = tuple(pspec) + (None,) * (len(shape) - len(pspec))
    return P(*(fit_entry(dim, entry, mesh, what=what, index=i, strict=strict)
               for i, (dim, entry) in enumerate(zip(shape, entries))))


def _path_name(path) -> str:
    return "/".join(str(getattr(k, "key", getattr(k, "idx", getattr(k, "name", k)))) for k in path)


def param_shardings(params: nnx.State, mesh: Mesh, rules: Rules = DEFAULT_RULES, *, strict: bool = False):
    """A pytree of NamedSharding matching ``params``, from each Param's ``logical_axes``.

    A dimension its mesh axes do not divide raises (``strict``) or is logged with the
    param's path (see the module docstring)."""

    def one(path, var):
        # A bare array (a pure-dict state) has no logical axes: replicated.
        is_var = isinstance(var, nnx.Variable)
        shape = (var.get_value() if is_var else var).shape
        axes = (var.get_metadata().get("logical_axes") if is_var else None) or (None,) * len(shape)
        what = f"param {_path_name(path)} {tuple(axes)}"
        return NamedSharding(mesh, _fits(shape, spec(axes, rules, mesh), mesh, what=what, strict=strict))

    return jax.tree_util.tree_map_with_path(one, params, is_leaf=lambda x: isinstance(x, nnx.Variable))


class Axes(tuple):
    """The logical axis names of one array (a leaf of an axes tree: a tuple that pytree
    functions do not descend into)."""


def is_axes(x) -> bool:
    return isinstance(x, Axes)


def logical_axes(state) -> dict:
    """The pure-dict tree (``nnx.to_pure_dict`` layout) of ``state``'s logical axes: an
    :class:`Axes` per Param (``(None,) * ndim`` for one without ``logical_axes``); works on
    abstract states (``nnx.eval_shape``), so nothing is allocated."""

    def one(var):
        shape = var.get_value().shape if isinstance(var, nnx.Variable) else var.shape
        axes = (var.get_metadata().get("logical_axes") if isinstance(var, nnx.Variable) else None)
        return Axes(axes or (None,) * len(shape))

    return nnx.to_pure_dict(jax.tree.map(one, state, is_leaf=lambda x: isinstance(x, nnx.Variable)))


def replicated_axes(tree) -> dict:
    """An axes tree for ``tree`` with every dimension unnamed (replicated)."""
    return jax.tree.map(lambda x: Axes((None,) * len(x.shape)), tree)


def tree_shardings(axes, tree, mesh: Mesh, rules: Rules = DEFAULT_RULES, *, what: str = "param",
                   strict: bool = False):
    """NamedShardings for ``tree`` (arrays or ``ShapeDtypeStruct``) from ``axes`` (an axes
    tree of the same structure; an :class:`Axes` may stand for a whole subtree, e.g. a
    replicated one). A dimension its mesh axes do not divide is logged with its path or,
    ``strict``, raises."""

    def one(path, ax, x):
        name = f"{what} {_path_name(path)} {tuple(ax)}"
        return NamedSharding(mesh, _fits(x.shape, spec(ax, rules, mesh), mesh, what=name, strict=strict))

    def subtree(path, ax, sub):
        return jax.tree_util.tree_map_with_path(lambda p, x: one(path + p, ax, x), sub)

    return jax.tree_util.tree_map_with_path(subtree, axes, tree, is_leaf=is_axes)


def shard_params(params: nnx.State, mesh: Mesh, rules: Rules = DEFAULT_RULES, *, strict: bool = False) -> nnx.State:
    return jax.device_put(params, param_shardings(params, mesh, rules, strict=strict))


def array_sharding(shape, axes, mesh: Mesh, rules: Rules = DEFAULT_RULES, *, name: str | None = None,
                   strict: bool = False) -> NamedSharding:
    """NamedSharding for an array of ``shape`` with logical ``axes``; ``name`` (default: the
    axes) names it if a dimension does not divide."""
    what = name or f"array {tuple(axes)}"
    return NamedSharding(mesh, _fits(shape, spec(axes, rules, mesh), mesh, what=what, strict=strict))


@contextlib.contextmanager
def use_mesh(mesh: Mesh, rules: Rules = DEFAULT_RULES):
    """Activate ``mesh`` and ``rules`` for :func:`constrain` while tracing."""
    token = _ACTIVE.set((mesh, dict(rules)))
    try:
        yield mesh
    finally:
        _ACTIVE.reset(token)


def active_mesh():
    """``(mesh, rules)`` set by the innermost :func:`use_mesh`, or None."""
    return _ACTIVE.get()


def constrain(x, axes: Sequence[str | None]):
    """``with_sharding_constraint`` by logical names; a no-op outside :func:`use_mesh`."""
    active = _ACTIVE.get()
    if active is None:
        return x
    mesh, rules = active
    return jax.lax.with_sharding_constraint(
        x, array_sharding(x.shape, axes, mesh, rules, name=f"activation {tuple(axes)}"))
