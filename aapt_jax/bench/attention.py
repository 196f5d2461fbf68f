"""Attention kernels: how much of the sequence the block-sparse kernels touch, and at what cost.

Figures (full run: 120 latent frames of ``S = 1196`` tokens, the 736x416 AAPT latent with
2x2 patches, window ``N = 30``, aapt-8B heads ``32 x 128``, bf16, tiles as shipped):

* ``visited_block_fraction[_dq|_dkv]``: key blocks the kernel's loops read / all blocks,
  from the kernels' own loop bounds;
* ``mask_block_density[_dq|_dkv]``: tiles of the dense ``frame_visible`` mask that hold any
  visible entry, counted from the mask (not from the loop bounds); the two must agree;
* ``kernel_flops_*``: the ``pl.CostEstimate`` the kernels hand to ``pallas_call``, read back
  from the traced program, against ``dense_flops_*`` from XLA's ``cost_analysis()`` of the
  dense jnp reference of the same shape (matmuls and softmax) and against the hand-counted
  dense matmul flops; ``cuda_module_cost_analysis_flops`` is what
  ``cost_analysis()`` of the CUDA-lowered kernel module reports (XLA cannot see inside a
  Triton custom call, which is why the kernels carry their own estimate);
* ``shared_memory_bytes_*``: the tile budget of each kernel against Hopper's 228 KiB;
* timings (median seconds per call, :mod:`aapt_jax.timing`) only when the backend is a GPU.
"""

from __future__ import annotations

from typing import Iterator

import jax
import jax.extend.core as jex_core
import jax.numpy as jnp
import numpy as np

from aapt_jax.model.window import frame_visible
from aapt_jax.kernels import _flash
from aapt_jax.kernels.block_causal_attention import (block_causal_attention,
                                            block_causal_attention_reference, parallel_spec)
from aapt_jax.kernels.block_causal_attention import benchmark as parallel_benchmark
from aapt_jax.kernels.decode_attention import benchmark as decode_benchmark
from aapt_jax.kernels.decode_attention import decode_attention, decode_attention_reference


def mask_block_density(num_frames: int, tokens_per_frame: int, window: int | None,
                       block_q: int, block_k: int) -> float:
    """Fraction of ``block_q x block_k`` tiles of the dense token mask with a visible entry.

    The token mask is ``frame_visible(frame(a), frame(b))``, constant on frame x frame
    rectangles, so tile ``(i, j)`` holds a visible entry iff some frame under query tile
    ``i`` sees some frame under key tile ``j``: ``(A_q M A_k^T)[i, j] > 0`` with the
    ``[T, T]`` frame mask ``M`` and tile->frame incidence ``A``. Exact, and the same as
    reducing the ``L x L`` mask (a test checks this at small sizes), without building it.
    """
    length = num_frames * tokens_per_frame
    frames = np.arange(num_frames)
    frame_mask = np.asarray(frame_visible(frames, frames, window), np.float64)

    def incidence(block):
        tiles = -(-length // block)
        first = np.arange(tiles) * block
        last = np.minimum(first + block, length) - 1
        lo, hi = first // tokens_per_frame, last // tokens_per_frame
        return ((frames[None] >= lo[:, None]) & (frames[None] <= hi[:, None])).astype(np.float64)

    a_q, a_k = incidence(block_q), incidence(block_k)
    tiles = (a_q @ frame_mask @ a_k.T) > 0
    return float(tiles.mean())


def dense_attention_flops(batch: int, q_len: int, k_len: int, heads: int, head_dim: int) -> int:
    """Hand count of the two matmuls of dense attention (for checking cost_analysis)."""
    return 4 * batch * heads * q_len * k_len * head_dim


def _pallas_costs(fn, *args) -> tuple[int, int]:
    """(flops, number of pallas_calls) summed over the cost estimates in ``fn``'s jaxpr."""
    flops, calls = 0, 0

    def walk(jaxpr):
        nonlocal flops, calls
        for eqn in jaxpr.eqns:
            if eqn.primitive.name == "pallas_call":
                calls += 1
                flops += eqn.params["cost_estimate"].flops
        for sub in jex_core.subjaxprs(jaxpr):
            walk(sub)

    walk(jax.make_jaxpr(fn)(*args).jaxpr)
    return flops, calls


def _dense_flops(fn, *args) -> float:
    return float(jax.jit(fn).trace(*args).lower().cost_analysis()["flops"])


def run(named, quick: bool = False) -> Iterator[dict]:
    del named  # measures no experiment config
    if quick:
        frames, s, window, heads, head_dim, ring = 8, 50, 3, 2, 64, 3
    else:
        frames, s, window, heads, head_dim, ring = 120, 1196, 30, 32, 128, 30
    dtype = jnp.bfloat16
    ctx = dict(frames=frames, tokens_per_frame=s, window=window, heads=heads,
               head_dim=head_dim, dtype=jnp.dtype(dtype).name)
    yield from _block_figures(ctx, dtype)
    yield from _flop_figures(ctx, dtype)
    yield from _decode_figures(ctx, dtype, ring)
    for dt in (jnp.bfloat16, jnp.float32):
        tiles = _flash.default_block_sizes(dt)
        for kernel_name, used in _flash.shared_memory_bytes(tiles, head_dim, dt).items():
            yield dict(name=f"shared_memory_bytes_{kernel_name}", value=used, unit="byte",
                       limit=_flash.HOPPER_SHARED_MEMORY_BYTES, head_dim=head_dim,
                       dtype=jnp.dtype(dt).name, estimate=True)
    if jax.default_backend() == "gpu":
        yield from _timings(ctx, ring, timing_frames=8 if quick else 32)


def _block_figures(ctx: dict, dtype) -> Iterator[dict]:
    """The key blocks each kernel visits, against the mask's block density."""
    frames, s, window = ctx["frames"], ctx["tokens_per_frame"], ctx["window"]
    length = frames * s
    spec = parallel_spec((1, length, ctx["heads"], ctx["head_dim"]), tokens_per_frame=s, window=window,
                         dtype=dtype)
    blocks = spec.blocks
    for tag, bq, bk in (("", blocks.block_q, blocks.block_k),
                        ("_dq", blocks.block_q_dq, blocks.block_k_dq),
                        ("_dkv", blocks.block_q_dkv, blocks.block_k_dkv)):
        num_q, num_k = -(-length // bq), -(-length // bk)
        if tag == "_dkv":
            visited = _flash.visited_block_pairs_dkv(spec.frames, num_k, bq, bk)
        else:
            visited = _flash.visited_block_pairs(spec.frames, num_q, bq, bk)
        tile = dict(ctx, block_q=bq, block_k=bk)
        yield dict(name=f"visited_block_fraction{tag}", value=visited / (num_q * num_k),
                   unit="fraction", visited_blocks=visited, total_blocks=num_q * num_k, **tile)
        yield dict(name=f"mask_block_density{tag}",
                   value=mask_block_density(frames, s, window, bq, bk), unit="fraction", **tile)


def _flop_figures(ctx: dict, dtype) -> Iterator[dict]:
    """The parallel kernel's flops (its cost estimates) against dense attention's."""
    length, heads, head_dim = ctx["frames"] * ctx["tokens_per_frame"], ctx["heads"], ctx["head_dim"]
    q = k = v = jax.ShapeDtypeStruct((1, length, heads, head_dim), dtype)
    kw = dict(tokens_per_frame=ctx["tokens_per_frame"], window=ctx["window"])
    kernel = lambda q, k, v: block_causal_attention(q, k, v, interpret=False, **kw)
    reference = lambda q, k, v: block_causal_attention_reference(q, k, v, **kw)
    loss = lambda f: (lambda q, k, v: jnp.sum(f(q, k, v).astype(jnp.float32)))
    grad = lambda f: jax.grad(loss(f), argnums=(0, 1, 2))

    fwd_flops, _ = _pallas_costs(kernel, q, k, v)
    dense_fwd = _dense_flops(reference, q, k, v)
    yield dict(name="kernel_flops_forward", value=fwd_flops, unit="flop", batch=1, **ctx)
    yield dict(name="dense_flops_forward", value=dense_fwd, unit="flop", batch=1, **ctx)
    yield dict(name="flops_ratio_forward", value=fwd_flops / dense_fwd, unit="fraction", **ctx)
    # The kernel estimate counts matmuls only; this is the dense matmul count to set beside it.
    dense_matmul = dense_attention_flops(1, length, length, heads, head_dim)
    yield dict(name="dense_matmul_flops_forward", value=dense_matmul, unit="flop", batch=1,
               counted="by hand", **ctx)
    yield dict(name="flops_ratio_forward_matmul", value=fwd_flops / dense_matmul,
               unit="fraction", **ctx)
    train_flops, calls = _pallas_costs(grad(kernel), q, k, v)
    dense_train = _dense_flops(grad(reference), q, k, v)
    yield dict(name="kernel_flops_forward_backward", value=train_flops, unit="flop", batch=1,
               pallas_calls=calls, **ctx)
    yield dict(name="dense_flops_forward_backward", value=dense_train, unit="flop", batch=1, **ctx)
    yield dict(name="flops_ratio_forward_backward", value=train_flops / dense_train,
               unit="fraction", **ctx)
    lowered = jax.jit(kernel).trace(q, k, v).lower(lowering_platforms=("cuda",))
    yield dict(name="cuda_module_cost_analysis_flops",
               value=float(lowered.cost_analysis().get("flops", 0.0)), unit="flop",
               triton_custom_calls=lowered.as_text().count("__gpu$xla.gpu.triton"), **ctx)


def _decode_figures(ctx: dict, dtype, ring: int) -> Iterator[dict]:
    """Decode: one frame against [sink | ring | current]; ids are traced, so the estimate
    counts every key block (empty slots are skipped at run time, not at trace time)."""
    s, heads, head_dim = ctx["tokens_per_frame"], ctx["heads"], ctx["head_dim"]
    kw = dict(tokens_per_frame=s, window=ctx["window"])
    qd = jax.ShapeDtypeStruct((1, s, heads, head_dim), dtype)
    kd = jax.ShapeDtypeStruct((1, (ring + 2) * s, heads, head_dim), dtype)
    ids = jax.ShapeDtypeStruct((ring + 2,), jnp.int32)
    cur = jax.ShapeDtypeStruct((), jnp.int32)
    decode_flops, _ = _pallas_costs(
        lambda q, k, v, i, c: decode_attention(q, k, v, i, c, interpret=False, **kw),
        qd, kd, kd, ids, cur)
    dense_decode = _dense_flops(
        lambda q, k, v, i, c: decode_attention_reference(q, k, v, i, c, **kw), qd, kd, kd, ids, cur)
    yield dict(name="kernel_flops_decode_upper_bound", value=decode_flops, unit="flop",
               ring_slots=ring, **ctx)
    yield dict(name="dense_flops_decode", value=dense_decode, unit="flop", ring_slots=ring, **ctx)


def _timings(ctx: dict, ring: int, timing_frames: int) -> Iterator[dict]:
    """Median seconds per call of the kernels and the dense references (GPU only)."""
    shape = dict(tokens_per_frame=ctx["tokens_per_frame"], heads=ctx["heads"], head_dim=ctx["head_dim"],
                 window=ctx["window"])
    for backward in (False, True):
        t = parallel_benchmark(num_frames=timing_frames, backward=backward, **shape)
        phase = "forward_backward" if backward else "forward"
        for impl in ("kernel", "reference"):
            yield dict(name=f"seconds_parallel_{phase}_{impl}", value=t[impl], unit="s",
                       timing_frames=timing_frames, statistic="median", **ctx)
    t = decode_benchmark(ring_slots=ring, **shape)
    for impl in ("kernel", "reference"):
        yield dict(name=f"seconds_decode_{impl}", value=t[impl], unit="s", ring_slots=ring, statistic="median",
                   **ctx)


__all__ = ["run", "mask_block_density", "dense_attention_flops"]
