"""Ulysses context parallelism for the AAPT self-attention (DeepSpeed-Ulysses).

One video sample is split over the ``context`` mesh axis (size ``C``) by tokens: everything
in a block except self-attention (norms, projections, RoPE, cross-attention, FFN) works
token by token. Self-attention needs every token, so two all-to-alls trade the split around
it: tokens -> heads before, heads -> tokens after. In between, each device holds *all*
tokens of ``H / C`` heads and runs the unchanged attention API
(:func:`aapt_jax.model.attention.attention`: ``xla``, ``cudnn`` or the Pallas kernels) on
its local heads, with the frame ids of the whole sequence; so the mask, the sliding window,
the sink and the kernels' loop bounds are exactly the single-device ones.

Token layout. The token split is *inside every frame*: an array ``[B, T, P, H, D]`` (``T``
frames of ``P`` token slots) is sharded on ``P``, each device holding ``P / C`` tokens of
every frame. This is the model's own activation layout (``x`` is ``[B, T, S, dim]`` with
``"tokens" -> "context"`` in :data:`aapt_jax.parallel.sharding.DEFAULT_RULES`), and the
one-frame streaming step, which has only one frame, splits the same way.

Padding. A frame of ``S`` real tokens (``S = tokens_per_frame``) need not divide ``C``
(aapt-8B: 1196 tokens per frame on ``context=8``). The functions pad every frame at its end
to ``Sp = ceil(S / C) * C`` slots (1200), with zeros, so the token split is even. After the
tokens -> heads all-to-all each device has every slot of its heads and drops the pad slots
(``[:, :, :S]``) before attending: a pad slot is never a query or a key, so no mask entry is
needed for it, and the attention call gets exactly the single-device shapes and frame ids.
The output's pad rows are zeros; they are dropped (or, for 5-D inputs, returned as zeros)
after the heads -> tokens all-to-all. The gradient reaching a pad slot is zero. Inputs that
already carry padded frames (``[B, T, P, H, D]`` with ``P >= S``, whatever is in the pad
slots) are accepted as they are: only the first ``S`` slots of each frame are real, and
``P`` itself is padded up to a multiple of ``C`` if needed.

Heads. Query heads and key/value heads must both divide by ``C`` (times the ``tensor`` size
where the rules split heads over ``tensor`` too); otherwise a ``ValueError`` names the
field. Device ``c`` of the context axis gets heads ``[c H / C, (c + 1) H / C)``, which keeps
grouped-query pairs together (query head ``h`` uses kv head ``h // (H / Hkv)``).

Streaming. The KV cache (:class:`aapt_jax.model.kv_cache.KVCache`,
``[layers, B, 1 + R, S, Hkv, D]``) is sharded by heads (:func:`cache_sharding`): a device
keeps every token of its heads, so after the all-to-all the new frame's keys and values are
exactly its slice and are written into the cache locally; only the new frame moves.

Communication per call and device: four all-to-alls (q, k, v in, which XLA merges into one
instruction; the output back), each moving ``(C - 1) / C`` of the local
``[B, T, Sp / C, H, D]`` block; attention flops per device are ``1 / C`` of one device's.
That is all that moves when the inputs arrive in the token layout above (``[B, T, Sp, H, D]``
split on ``Sp``, or ``[B, T*S, H, D]`` when ``C`` divides ``S``) and the cache by heads; a
flat ``[B, T*S, H, D]`` input with ``S % C != 0`` is re-laid out by the compiler around the
call (correct, but with extra collectives). A mesh whose context axis has size 1 runs the
same code (the all-to-alls are identities).

Call sites in :mod:`aapt_jax.model.dit`, taken when the active mesh's context axis is
larger than 1 (:func:`context_size`):

* ``_parallel_trunk``: the model carries ``Sp`` token slots per frame (pad in
  ``_input_tokens``, RoPE angles for ``Sp`` slots, the pad dropped in ``_head`` and in the
  features it returns; every other op is per token), so a block works on ``[B, T, Sp, dim]``
  split on ``Sp`` and self-attention is ::

      ulysses_attention(q, k, v, tokens_per_frame=S, window=window, impl=impl,
                        frame_indices=None if contiguous else frames)

  with q, k, v ``[B, T, Sp, H, Dh]``: only the all-to-alls move. Cross-attention to the text
  runs on each device's own tokens (:func:`local_cross_attention`; the text keys and values
  are not split over the context axis), so it moves nothing.
* ``_cached_trunk``: the per-layer attention is ::

      o, ks, vs = ulysses_cached_attention(q, k, v, ks, vs, position, layer=i,
                                           tokens_per_frame=S, window=cfg.window, impl=impl)

  and the block returns ``(ks, vs)`` as its cache output (passed in and out of the block
  explicitly: nothing leaks out of ``jax.checkpoint`` under remat).
* :mod:`aapt_jax.sample.streaming` places the KV cache with :func:`cache_shardings`
  (:func:`shard_cache` for a concrete cache).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from aapt_jax.model import kv_cache as kvc
from aapt_jax.model.attention import attention, check_impl, full_attention
from aapt_jax.parallel import sharding as shd

__all__ = ["CONTEXT_AXIS", "cache_sharding", "cache_shardings", "context_size", "local_cross_attention",
           "padded_tokens_per_frame", "shard_cache", "ulysses_attention", "ulysses_cached_attention"]

CONTEXT_AXIS = "context"


def padded_tokens_per_frame(tokens_per_frame: int, context: int) -> int:
    """Token slots per frame in the token-sharded layout: ``S`` rounded up to a multiple of ``C``."""
    return -(-tokens_per_frame // context) * context


def context_size(axis: str = CONTEXT_AXIS) -> int:
    """Size of ``axis`` on the mesh of the innermost ``use_mesh`` (1 without one, or where the
    mesh has no such axis): the model takes the Ulysses path where this is larger than 1."""
    active = shd.active_mesh()
    return 1 if active is None else int(dict(active[0].shape).get(axis, 1))


# ----- mesh and specs ------------------------------------------------------------------------


def _resolve(mesh, rules):
    """The mesh and rules to use: the arguments, else those of the innermost ``use_mesh``,
    else (rules) :data:`aapt_jax.parallel.sharding.DEFAULT_RULES`."""
    active = shd.active_mesh()
    if mesh is None:
        if active is None:
            raise ValueError("mesh: expected a Mesh argument or an active use_mesh(...), got None")
        mesh = active[0]
    if rules is None:
        rules = shd.DEFAULT_RULES if active is None else active[1]
    return mesh, rules


def _axes(rules, name, mesh, axis):
    """Mesh axes (size > 1) that ``rules`` gives logical ``name``, never the context axis."""
    target = rules.get(name)
    names = (target,) if isinstance(target, str) else tuple(target or ())
    return tuple(n for n in names if n != axis and n in mesh.shape and mesh.shape[n] > 1)


def _entry(names):
    return None if not names else names[0] if len(names) == 1 else names


class _Plan:
    """Partition specs of one call. ``batch`` and ``heads`` are spec entries (mesh axes the
    batch and the head dimension are split over besides the context axis)."""

    def __init__(self, mesh: Mesh, rules, axis: str, batch: int, heads: int, kv_heads: int):
        if axis not in mesh.shape:
            raise ValueError(f"axis: expected a mesh axis of {tuple(mesh.shape)}, got {axis!r}")
        self.mesh, self.axis, self.context = mesh, axis, mesh.shape[axis]
        # Heads are split over the rules' head axes (tensor) outside, and over the context axis
        # too inside; both splits must be even, so a mismatch is an error, not a fallback.
        head_names = _axes(rules, "heads", mesh, axis)
        split = math.prod(mesh.shape[n] for n in head_names) * self.context
        what = "*".join(f"{n}={mesh.shape[n]}" for n in head_names + (axis,))
        for field, n in (("num_heads", heads), ("kv_heads", kv_heads)):
            if n % split:
                raise ValueError(f"{field}: expected a multiple of {what} (Ulysses splits heads over "
                                 f"the context axis), got {n}")
        self.heads = _entry(head_names)
        # The batch split follows the rules; a batch they do not divide is shrunk to the axes
        # that do (logged), as every other array (shard_map needs an even split).
        batch_names = _axes(rules, "batch", mesh, axis)
        self.batch = shd.fit_entry(batch, _entry(batch_names), mesh, what="ulysses batch",
                                    index=0, strict=False)
        self.local_heads = _entry(head_names + (axis,))

    def tokens_spec(self):
        """``[B, T, Sp, H, D]`` split by tokens (inside every frame)."""
        return P(self.batch, None, self.axis, self.heads, None)

    def cache_spec(self):
        """``[layers, B, 1 + R, S, Hkv, D]`` split by heads."""
        return P(None, self.batch, None, None, self.local_heads, None)


def cache_sharding(cache_shape, *, mesh: Mesh | None = None, rules=None,
                   axis: str = CONTEXT_AXIS) -> NamedSharding:
    """Head sharding of a KV cache array ``[layers, B, 1 + R, S, Hkv, D]``: each device of the
    context axis holds all ``(1 + R) * S`` tokens of ``Hkv / C`` heads (batch split as the rules;
    heads also over ``tensor`` where the rules say so). No token padding: the cache is not
    split by tokens."""
    mesh, rules = _resolve(mesh, rules)
    heads = cache_shape[4]
    return NamedSharding(mesh, _Plan(mesh, rules, axis, cache_shape[1], heads, heads).cache_spec())


def cache_shardings(cache: kvc.KVCache, *, mesh: Mesh | None = None, rules=None,
                    axis: str = CONTEXT_AXIS) -> kvc.KVCache:
    """A :class:`KVCache` of NamedShardings for ``cache`` (concrete, traced or abstract):
    ``k``/``v`` head-sharded (:func:`cache_sharding`), the text keys/values
    ``[layers, B, Lt, H, D]`` not split over the context axis (cross-attention's queries are
    token-sharded and need every text key of every head), only by batch and by the rules'
    head axes. On a mesh without ``axis`` the cache is split by batch and heads as the rules
    say. For jit in/out shardings and ``with_sharding_constraint``."""
    mesh, rules = _resolve(mesh, rules)
    if axis not in mesh.shape:
        kv = shd.array_sharding(cache.k.shape, ("cache_layers", "batch", None, None, "heads", None), mesh, rules,
                                name="kv cache")
        text = shd.array_sharding(cache.text_k.shape, ("cache_layers", "batch", None, "heads", None), mesh, rules,
                                  name="text cache")
        return kvc.KVCache(k=kv, v=kv, text_k=text, text_v=text)
    heads = cache.k.shape[4]
    plan = _Plan(mesh, rules, axis, cache.k.shape[1], heads, heads)
    kv = NamedSharding(mesh, plan.cache_spec())
    text = NamedSharding(mesh, P(None, plan.batch, None, plan.heads, None))
    return kvc.KVCache(k=kv, v=kv, text_k=text, text_v=text)


def shard_cache(cache: kvc.KVCache, *, mesh: Mesh | None = None, rules=None,
                axis: str = CONTEXT_AXIS) -> kvc.KVCache:
    """``cache`` placed by :func:`cache_shardings`: ``k``/``v`` head-sharded, the text
    keys/values split only by batch and the rules' head axes."""
    return jax.device_put(cache, cache_shardings(cache, mesh=mesh, rules=rules, axis=axis))


# ----- layout ----------------------------------------------------------------------------------


def _frames_layout(x, tokens_per_frame: int, context: int, name: str):
    """``x`` ``[B, T*S, H, D]`` or ``[B, T, P, H, D]`` -> (``[B, T, Sp, H, D]``, ``P``): every
    frame padded with zeros at its end to ``Sp``, the next multiple of ``context``."""
    if not isinstance(tokens_per_frame, int) or tokens_per_frame <= 0:
        raise ValueError(f"tokens_per_frame: expected a positive int, got {tokens_per_frame!r}")
    if x.ndim == 4:
        B, L, H, D = x.shape
        if L % tokens_per_frame:
            raise ValueError(f"{name}: expected a token count that is a multiple of "
                             f"tokens_per_frame={tokens_per_frame}, got {L}")
        x = x.reshape(B, L // tokens_per_frame, tokens_per_frame, H, D)
    elif x.ndim != 5:
        raise ValueError(f"{name}: expected shape [B, T*S, H, D] or [B, T, P, H, D], got {x.shape}")
    slots = x.shape[2]
    if slots < tokens_per_frame:
        raise ValueError(f"{name}: expected at least tokens_per_frame={tokens_per_frame} slots per "
                         f"frame, got {slots}")
    padded = padded_tokens_per_frame(slots, context)
    return jnp.pad(x, ((0, 0), (0, 0), (0, padded - slots), (0, 0), (0, 0))), slots


def _restore(o, like_ndim: int, like_shape, slots: int):
    """Output ``[B, T, Sp, H, D]`` back to the caller's layout (4-D: ``[B, T*S, H, D]``; 5-D:
    its ``P`` slots per frame)."""
    o = o[:, :, :slots]
    return o.reshape(like_shape) if like_ndim == 4 else o


def _to_heads(x, axis):
    """Inside the shard_map: ``[b, T, Sp / C, H', D]`` -> ``[b, T, Sp, H' / C, D]``. Device ``c``
    sends head chunk ``j`` to device ``j`` and stacks what it receives in device order, which is
    token order, since device ``j`` held token chunk ``j`` of every frame."""
    return jax.lax.all_to_all(x, axis, split_axis=3, concat_axis=2, tiled=True)


def _to_tokens(x, axis):
    """The inverse of :func:`_to_heads`."""
    return jax.lax.all_to_all(x, axis, split_axis=2, concat_axis=3, tiled=True)


def _check_vma(impl: str) -> bool:
    """shard_map's varying-across-devices check, off where a Pallas kernel may run: a
    ``pallas_call``'s output types carry no such annotation (the kernels are not ours to
    change), and the body's only collectives are the all-to-alls either way."""
    return impl in ("xla", "cudnn")


def _real_tokens(x, tokens_per_frame):
    """``[b, F, Sp, h, D]`` -> ``[b, F*S, h, D]``: the pad slots dropped, frames contiguous as
    the attention API expects."""
    b, F, _, h, D = x.shape
    return x[:, :, :tokens_per_frame].reshape(b, F * tokens_per_frame, h, D)


def _pad_slots(o, num_frames, slots):
    """``[b, F*S, h, D]`` -> ``[b, F, Sp, h, D]`` with zero pad slots."""
    b, L, h, D = o.shape
    o = o.reshape(b, num_frames, L // num_frames, h, D)
    return jnp.pad(o, ((0, 0), (0, 0), (0, slots - o.shape[2]), (0, 0), (0, 0)))


# ----- the two entry points ------------------------------------------------------------------


def ulysses_attention(q, k, v, *, tokens_per_frame: int, window: int | None, impl: str = "xla",
                      frame_indices=None, mesh: Mesh | None = None, rules=None,
                      axis: str = CONTEXT_AXIS):
    """Block-causal self-attention of ``T`` frames (the training / prefill forward), tokens
    split over ``axis``; equal to ``attention(q, k, v, ids, ids, ...)`` on one device, with
    ``ids`` the frame id of every token.

    Args:
      q: ``[B, T*S, H, D]`` or ``[B, T, P, H, D]`` (``P >= S`` slots per frame, the first ``S``
        real); k, v: the same with ``Hkv`` heads. Any input sharding; the shard_map takes them
        split by tokens inside every frame (see the module docstring).
      tokens_per_frame: ``S``, real tokens of one latent frame.
      window: the AAPT window (:mod:`aapt_jax.model.window`); ``None`` = bidirectional.
      impl: an attention implementation of :mod:`aapt_jax.model.attention`.
      frame_indices: int ``[T]``, latent-frame index of every frame (default ``0..T-1``, the
        kernels' ``"parallel"`` layout); any other ids take the layout-free path.
      mesh, rules: default: those of the innermost :func:`aapt_jax.parallel.sharding.use_mesh`.
      axis: the mesh axis to split tokens over.

    Returns:
      q's shape and dtype; for 5-D inputs the pad slots (``>= S``) are zero.
    """
    check_impl(impl)
    mesh, rules = _resolve(mesh, rules)
    if q.ndim != k.ndim or k.shape != v.shape or q.shape[:-2] != k.shape[:-2]:
        raise ValueError(f"q, k, v: expected matching token layouts, got {q.shape}, {k.shape}, {v.shape}")
    plan = _Plan(mesh, rules, axis, q.shape[0], q.shape[-2], k.shape[-2])
    S = tokens_per_frame
    q5, slots = _frames_layout(q, S, plan.context, "q")
    k5, _ = _frames_layout(k, S, plan.context, "k")
    v5, _ = _frames_layout(v, S, plan.context, "v")
    T = q5.shape[1]
    contiguous = frame_indices is None
    frames = jnp.arange(T, dtype=jnp.int32) if contiguous else jnp.asarray(frame_indices, jnp.int32)
    if frames.shape != (T,):
        raise ValueError(f"frame_indices: expected shape ({T},), got {frames.shape}")
    layout = "parallel" if contiguous else None

    def body(q, k, v, frames):
        q, k, v = (_real_tokens(_to_heads(x, axis), S) for x in (q, k, v))
        # The global frame ids: after the all-to-all this device holds every token of its heads.
        ids = jnp.repeat(frames, S)
        o = attention(q, k, v, ids, ids, window=window, impl=impl, tokens_per_frame=S, layout=layout)
        return _to_tokens(_pad_slots(o, T, q5.shape[2]), axis)

    spec = plan.tokens_spec()
    o = jax.shard_map(body, mesh=mesh, in_specs=(spec, spec, spec, P()), out_specs=spec,
                      check_vma=_check_vma(impl))(q5, k5, v5, frames)
    return _restore(o, q.ndim, q.shape, slots)


def ulysses_cached_attention(q, k, v, cache_k, cache_v, position, *, layer: int, tokens_per_frame: int,
                             window: int | None, impl: str = "xla", mesh: Mesh | None = None, rules=None,
                             axis: str = CONTEXT_AXIS):
    """The streaming step: ``F`` new frames (normally one) against a head-sharded KV cache,
    their keys and values written into it; equal to the single-device ``_cached_trunk``
    attention of :mod:`aapt_jax.model.dit` followed by its ``write_frame`` calls.

    Args:
      q: ``[B, F*S, H, D]`` or ``[B, F, P, H, D]``, the new frames' queries (any sharding;
        taken split by tokens); k, v: their keys and values, the same with ``Hkv`` heads.
      cache_k, cache_v: ``[layers, B, 1 + R, S, Hkv, D]``, holding frames before ``position``,
        best placed by :func:`cache_sharding` (otherwise resharded on every call).
      position: int32 scalar, latent-frame index of the first new frame.
      layer: static int, the layer whose cache slice is read and written.
      tokens_per_frame, window, impl, mesh, rules, axis: as in :func:`ulysses_attention`.
        A single new frame uses the kernels' ``"decode"`` layout; several take the dense path
        under ``impl="pallas"`` as in the model.

    Returns:
      ``(o, cache_k, cache_v)``: ``o`` q's shape and dtype, the caches with frames
      ``position .. position + F - 1`` written to ``layer`` (head-sharded).
    """
    check_impl(impl)
    mesh, rules = _resolve(mesh, rules)
    S = tokens_per_frame
    if q.ndim != k.ndim or k.shape != v.shape or q.shape[:-2] != k.shape[:-2]:
        raise ValueError(f"q, k, v: expected matching token layouts, got {q.shape}, {k.shape}, {v.shape}")
    if cache_k.shape != cache_v.shape or cache_k.ndim != 6:
        raise ValueError(f"cache_k, cache_v: expected equal shapes [layers, B, 1 + R, S, Hkv, D], got "
                         f"{cache_k.shape} and {cache_v.shape}")
    expected = (q.shape[0], S) + k.shape[-2:]
    given = (cache_k.shape[1], cache_k.shape[3]) + cache_k.shape[4:]
    if given != expected:
        raise ValueError(f"cache_k: expected [layers, B, 1 + R, S, Hkv, D] with (B, S, Hkv, D) = {expected}, "
                         f"got {cache_k.shape}")
    if not isinstance(layer, int) or not 0 <= layer < cache_k.shape[0]:
        raise ValueError(f"layer: expected an int in [0, {cache_k.shape[0]}), got {layer!r}")
    plan = _Plan(mesh, rules, axis, q.shape[0], q.shape[-2], k.shape[-2])
    q5, slots = _frames_layout(q, S, plan.context, "q")
    k5, _ = _frames_layout(k, S, plan.context, "k")
    v5, _ = _frames_layout(v, S, plan.context, "v")
    F = q5.shape[1]
    R = cache_k.shape[2] - 1
    layout = "decode" if F == 1 else None
    # No kernel covers several new frames against a cache: dense path, as the model does.
    impl = "auto" if layout is None and impl == "pallas" else impl

    def body(q, k, v, ck, cv, position):
        q, k, v = (_real_tokens(_to_heads(x, axis), S) for x in (q, k, v))
        b, _, h, D = k.shape
        # Read the past before writing: frame position's ring slot may still hold a visible frame
        # (position - R when R == window).
        past_k = ck[layer].reshape(b, (1 + R) * S, h, D).astype(k.dtype)
        past_v = cv[layer].reshape(b, (1 + R) * S, h, D).astype(v.dtype)
        q_frames = jnp.repeat(position + jnp.arange(F, dtype=jnp.int32), S)
        k_frames = jnp.concatenate([jnp.repeat(kvc.slot_frames(position, R), S), q_frames])
        o = attention(q, jnp.concatenate([past_k, k], 1), jnp.concatenate([past_v, v], 1), q_frames, k_frames,
                      window=window, impl=impl, tokens_per_frame=S, layout=layout)
        # This device's heads of the new frames are exactly its slice of the cache: a local write.
        for f in range(F):
            ck = kvc.write_frame(ck, layer, position + f, R, k[:, f * S:(f + 1) * S])
            cv = kvc.write_frame(cv, layer, position + f, R, v[:, f * S:(f + 1) * S])
        return _to_tokens(_pad_slots(o, F, q5.shape[2]), axis), ck, cv

    tokens, cache = plan.tokens_spec(), plan.cache_spec()
    step = jax.shard_map(body, mesh=mesh, in_specs=(tokens, tokens, tokens, cache, cache, P()),
                         out_specs=(tokens, cache, cache), check_vma=_check_vma(impl))
    o, cache_k, cache_v = step(q5, k5, v5, cache_k, cache_v, jnp.asarray(position, jnp.int32))
    return _restore(o, q.ndim, q.shape, slots), cache_k, cache_v


def local_cross_attention(q, k, v, *, impl: str = "xla", mesh: Mesh | None = None, rules=None,
                          axis: str = CONTEXT_AXIS):
    """Cross-attention of token-split queries to the text, with no communication: every query
    attends to all text keys on its own, so each device runs
    :func:`aapt_jax.model.attention.full_attention` on the queries it holds.

    Args:
      q: ``[B, T, P, H, D]``, ``P`` (token slots per frame) a multiple of the context size;
        any sharding (taken split by tokens inside every frame, as :func:`ulysses_attention`).
      k, v: ``[B, Lt, H, D]`` text keys/values (taken whole on the context axis).
      impl: ``xla`` or ``cudnn`` (the implementations of ``full_attention``).
    Returns:
      q's shape and dtype, split by tokens.
    """
    check_impl(impl)
    mesh, rules = _resolve(mesh, rules)
    if q.ndim != 5 or k.ndim != 4 or k.shape != v.shape or k.shape[0] != q.shape[0] or k.shape[2:] != q.shape[3:]:
        raise ValueError(f"q, k, v: expected [B, T, P, H, D] and two [B, Lt, H, D], got {q.shape}, {k.shape}, "
                         f"{v.shape}")
    plan = _Plan(mesh, rules, axis, q.shape[0], q.shape[3], k.shape[2])
    if q.shape[2] % plan.context:
        raise ValueError(f"q: expected token slots per frame that are a multiple of {axis}={plan.context}, "
                         f"got {q.shape[2]}")

    def body(q, k, v):
        b, T, p, h, D = q.shape
        o = full_attention(q.reshape(b, T * p, h, D), k, v, impl=impl)
        return o.reshape(b, T, p, h, D)

    text = P(plan.batch, None, plan.heads, None)
    return jax.shard_map(body, mesh=mesh, in_specs=(plan.tokens_spec(), text, text), out_specs=plan.tokens_spec(),
                         check_vma=_check_vma(impl))(q, k, v)
