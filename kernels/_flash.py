"""Flash attention under the AAPT frame rule: the Pallas kernels both public kernels share.

Three ``pallas_call`` kernels (forward, dq, dk/dv) wrapped in one ``jax.custom_vjp``. They
are written once, against a *frame structure* that answers two questions:

* which latent frame every query / key token belongs to (``-1`` = empty or padding), and
* which key blocks a query block must visit (and which query blocks a key block must visit
  in the dk/dv kernel).

:class:`ParallelFrames` answers both from arithmetic on ``tokens_per_frame`` and the window
(training / prefill: frames ``0..T-1`` contiguous in q and k), so the loops only run over the
sink's key blocks and the window's key blocks. :class:`FrameIds` answers from traced frame-id
arrays (decode: ``[sink | ring slots | current]`` with empty slots) and skips, at run time,
every block in which no query sees any key. In both, visibility *inside* a block is
:func:`aapt_jax.model.window.frame_visible` on the tokens' frame ids, so the kernels use the
project's single definition of the window.

Backend: the kernels lower through Pallas' Triton backend (``compiler_params`` is a
``jax.experimental.pallas.triton.CompilerParams``). Why Triton rather than Mosaic GPU:

* the loop bounds are data (program id) dependent and a query block straddles frames, which
  the Triton lowering expresses directly (``scf.for`` with traced bounds, masks from
  ``iota`` arithmetic) while Mosaic GPU needs explicit TMA/barrier pipelines per bound;
* ``pl.pallas_call`` with Mosaic GPU is deprecated in jax 0.10 in favour of
  ``plgpu.kernel``, whose warpgroup programming model has no CPU interpreter path that
  shares code with Triton, so the numerics proven here with ``interpret=True`` would be of a
  different program;
* the same kernel also lowers for ROCm, which Mosaic GPU does not.

What this gives up is hand-scheduled WGMMA/TMA pipelining on Hopper; Triton still emits
WGMMA for sm_90. Triton allocates shared memory when it compiles (on the GPU host), not at
lowering, so :func:`shared_memory_bytes` bounds the tiles we ship against Hopper's 228 KiB
per SM and a test checks every shipped configuration.

Shapes: q ``[B, Lq, H, D]``, k and v ``[B, Lk, Hkv, D]`` with ``H % Hkv == 0``, already
padded by the caller to a multiple of every block size. Softmax runs in base 2 in fp32
(``exp2(x * log2(e))`` is ``exp(x)``); the forward saves the base-2 log-sum-exp.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as pltriton

from aapt_jax.model.window import EMPTY_FRAME, frame_visible

LOG2_E = math.log2(math.e)
# Finite rather than -inf, so a row whose first visited block is fully masked gives
# exp2(MASK - MASK) = 1 instead of NaN; the first visible block rescales that by
# exp2(MASK - m) = 0, so it never reaches the output.
MASK_VALUE = -0.7 * float(np.finfo(np.float32).max)

SUPPORTED_HEAD_DIMS = (64, 128)
SUPPORTED_DTYPES = (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float32))
HOPPER_SHARED_MEMORY_BYTES = 228 * 1024
# Triton reserves some shared memory for layout conversions and reductions beyond the tiles.
SHARED_MEMORY_HEADROOM_BYTES = 16 * 1024


@dataclasses.dataclass(frozen=True)
class BlockSizes:
    """Tile sizes (tokens); every one a power of two >= 16 (the smallest Triton dot).

    ``block_q``/``block_k``: forward. ``block_q_dq``/``block_k_dq``: the dq kernel.
    ``block_q_dkv``/``block_k_dkv``: the dk/dv kernel.
    """

    block_q: int = 128
    block_k: int = 64
    block_q_dq: int = 64
    block_k_dq: int = 32
    block_q_dkv: int = 32
    block_k_dkv: int = 64
    num_warps: int = 8
    num_warps_bwd: int = 4
    num_stages: int = 2

    def __post_init__(self):
        for field in ("block_q", "block_k", "block_q_dq", "block_k_dq", "block_q_dkv",
                      "block_k_dkv"):
            value = getattr(self, field)
            if value < 16 or value & (value - 1):
                raise ValueError(f"BlockSizes.{field}: expected a power of two >= 16, got {value}")

    @property
    def largest(self) -> int:
        return max(self.block_q, self.block_k, self.block_q_dq, self.block_k_dq,
                   self.block_q_dkv, self.block_k_dkv)

    def shrink_to(self, q_len: int, k_len: int) -> "BlockSizes":
        """The same tiles, no larger than the (power-of-two rounded) sequences need."""
        cap_q = max(16, pl.next_power_of_2(q_len))
        cap_k = max(16, pl.next_power_of_2(k_len))
        return dataclasses.replace(
            self, block_q=min(self.block_q, cap_q), block_k=min(self.block_k, cap_k),
            block_q_dq=min(self.block_q_dq, cap_q), block_k_dq=min(self.block_k_dq, cap_k),
            block_q_dkv=min(self.block_q_dkv, cap_q), block_k_dkv=min(self.block_k_dkv, cap_k))


def default_block_sizes(dtype) -> BlockSizes:
    """Shipped tiles; fp32 tiles are smaller (twice the bytes per element) to stay inside
    Hopper's shared memory with two pipeline stages."""
    if jnp.dtype(dtype) == jnp.float32:
        return BlockSizes(block_q=64, block_k=32, block_q_dq=32, block_k_dq=32,
                          block_q_dkv=32, block_k_dkv=32, num_warps=4)
    return BlockSizes()


def shared_memory_bytes(blocks: BlockSizes, head_dim: int, dtype) -> dict[str, int]:
    """Upper estimate of each kernel's shared memory (bytes), for checking against Hopper.

    Triton keeps the loop-invariant tile and ``num_stages`` copies of every tile loaded in
    the pipelined loop in shared memory, plus the probabilities re-laid-out as a dot operand.
    """
    item = jnp.dtype(dtype).itemsize
    stages = blocks.num_stages
    fwd = (blocks.block_q * head_dim + stages * 2 * blocks.block_k * head_dim
           + blocks.block_q * blocks.block_k) * item
    # The backward kernels also hold p and ds as dot operands, and stream lse and delta (fp32).
    dq = ((2 * blocks.block_q_dq * head_dim + stages * 2 * blocks.block_k_dq * head_dim
           + 2 * blocks.block_q_dq * blocks.block_k_dq) * item
          + 2 * blocks.block_q_dq * 4)
    dkv = ((2 * blocks.block_k_dkv * head_dim + stages * 2 * blocks.block_q_dkv * head_dim
            + 2 * blocks.block_q_dkv * blocks.block_k_dkv) * item
           + stages * 2 * blocks.block_q_dkv * 4)
    return {name: b + SHARED_MEMORY_HEADROOM_BYTES
            for name, b in (("forward", fwd), ("dq", dq), ("dkv", dkv))}


def _ops(index):
    """(array namespace, floor division) for block indices: numpy arrays when counting
    visits outside a kernel (no XLA dispatch per op), jnp/lax on traced program ids."""
    if isinstance(index, np.ndarray):
        return np, lambda a, b: a // b
    return jnp, lax.div

@dataclasses.dataclass(frozen=True)
class ParallelFrames:
    """q and k both hold frames ``0..T-1``, ``tokens_per_frame`` contiguous tokens each.

    ``length = T * tokens_per_frame`` real tokens; positions at or past it are padding
    (frame ``-1``). Block ranges work on traced scalars (in a kernel) and on arrays of block
    indices (to count visits outside one).
    """

    tokens_per_frame: int
    length: int
    window: int | None

    uses_ids = False
    skips_empty_blocks = False

    def _frames(self, start, size):
        idx = start + lax.broadcasted_iota(jnp.int32, (size,), 0)
        return jnp.where(idx < self.length, lax.div(idx, self.tokens_per_frame), EMPTY_FRAME)

    def query_frames(self, start, size, ref=None):
        return self._frames(start, size)

    def key_frames(self, start, size, ref=None):
        return self._frames(start, size)

    def _block_frame_span(self, block, size):
        """The first and last frame of block ``block`` of ``size`` tokens (real tokens only)."""
        xp, div = _ops(block)
        first = block * size
        last = xp.minimum(first + size, self.length) - 1
        return div(first, self.tokens_per_frame), div(last, self.tokens_per_frame)

    def key_block_ranges(self, q_block, block_q, block_k):
        """Half-open key-block ranges ``[(lo, hi), ...]`` query block ``q_block`` visits.

        The sink's blocks, then the window's blocks ``[start of frame f_lo - N, end of
        frame f_hi]`` where ``f_lo..f_hi`` are the frames the query block spans; the sink
        range stops where the window range starts so no block is visited twice.
        """
        s, n = self.tokens_per_frame, self.window
        xp, div = _ops(q_block)
        if n is None:
            return [(xp.zeros_like(q_block), xp.full_like(q_block, -(-self.length // block_k)))]
        f_lo, f_hi = self._block_frame_span(q_block, block_q)
        window_lo = div(xp.maximum(f_lo - n, 0) * s, block_k)
        window_hi = div((f_hi + 1) * s + block_k - 1, block_k)
        sink_hi = xp.minimum(-(-s // block_k), window_lo)
        return [(xp.zeros_like(q_block), sink_hi), (window_lo, window_hi)]

    def query_block_ranges(self, k_block, block_q, block_k):
        """Half-open query-block ranges that see key block ``k_block`` (dk/dv kernel).

        A block holding sink tokens is seen by every query; otherwise its frames
        ``f_lo..f_hi`` are seen by frames ``f_lo..f_hi + N``.
        """
        s, n = self.tokens_per_frame, self.window
        xp, div = _ops(k_block)
        num_q = -(-self.length // block_q)
        if n is None:
            return [(xp.zeros_like(k_block), xp.full_like(k_block, num_q))]
        f_lo, f_hi = self._block_frame_span(k_block, block_k)
        is_sink = f_lo == 0
        lo = xp.where(is_sink, 0, div(f_lo * s, block_q))
        hi = xp.where(is_sink, num_q,
                      div(xp.minimum((f_hi + n + 1) * s, self.length) + block_q - 1, block_q))
        return [(lo, hi)]


@dataclasses.dataclass(frozen=True)
class FrameIds:
    """Frame ids come from traced int32 arrays (padded with ``-1``); every block is a
    candidate and a block where no query sees a key is skipped at run time."""

    q_length: int
    k_length: int
    window: int | None

    uses_ids = True
    skips_empty_blocks = True

    def query_frames(self, start, size, ref):
        return ref[pl.ds(start, size)]

    def key_frames(self, start, size, ref):
        return ref[pl.ds(start, size)]

    def key_block_ranges(self, q_block, block_q, block_k):
        xp, _ = _ops(q_block)
        return [(xp.zeros_like(q_block), xp.full_like(q_block, -(-self.k_length // block_k)))]

    def query_block_ranges(self, k_block, block_q, block_k):
        xp, _ = _ops(k_block)
        return [(xp.zeros_like(k_block), xp.full_like(k_block, -(-self.q_length // block_q)))]


Frames = ParallelFrames | FrameIds


@dataclasses.dataclass(frozen=True)
class Spec:
    """Everything static about one call (hashable: it is a ``custom_vjp`` nondiff arg)."""

    frames: Any
    blocks: BlockSizes
    sm_scale: float
    interpret: bool
    q_length: int  # real (unpadded) query tokens
    k_length: int


def visited_block_pairs(frames, num_q_blocks: int, block_q: int, block_k: int) -> int:
    """Key blocks the forward/dq loops visit, summed over query blocks (the kernels' own
    bounds, evaluated in numpy on all query-block indices at once)."""
    q_block = np.arange(num_q_blocks, dtype=np.int64)
    ranges = frames.key_block_ranges(q_block, block_q, block_k)
    return sum(int(np.maximum(hi - lo, 0).sum()) for lo, hi in ranges)


def visited_block_pairs_dkv(frames, num_k_blocks: int, block_q: int, block_k: int) -> int:
    """Query blocks the dk/dv loop visits, summed over key blocks."""
    k_block = np.arange(num_k_blocks, dtype=np.int64)
    ranges = frames.query_block_ranges(k_block, block_q, block_k)
    return sum(int(np.maximum(hi - lo, 0).sum()) for lo, hi in ranges)


def _dot(a, b, *, trans_a=False, trans_b=False):
    """2-D matmul accumulated in fp32 (IEEE fp32 for fp32 inputs: no TF32)."""
    dims = (((0 if trans_a else 1,), (1 if trans_b else 0,)), ((), ()))
    precision = lax.Precision.HIGHEST if a.dtype == jnp.float32 else None
    return lax.dot_general(a, b, dims, precision=precision, preferred_element_type=jnp.float32)


def _run_loops(ranges, body, carry, visible_fn, skip_empty):
    """``fori_loop`` over each half-open range; optionally skip blocks nobody sees."""

    def step(idx, c):
        visible = visible_fn(idx)
        if not skip_empty:
            return body(idx, visible, c)
        anyone = jnp.max(jnp.max(visible.astype(jnp.int32), axis=1), axis=0) > 0
        return lax.cond(anyone, lambda c: body(idx, visible, c), lambda c: c, c)

    for lo, hi in ranges:
        carry = lax.fori_loop(lo, hi, step, carry)
    return carry


def _keys_visible(frames, q_frames, block_k: int, kid_ref):
    """``k_block -> [block_q, block_k]`` bool: which keys of key block ``k_block`` the query
    block (frames ``q_frames``) sees; the forward and dq kernels' mask."""

    def visible(k_block):
        k_start = pl.multiple_of(k_block * block_k, block_k)
        return frame_visible(q_frames, frames.key_frames(k_start, block_k, kid_ref), frames.window)

    return visible


def _forward_kernel(*refs, spec: Spec):
    frames, blocks = spec.frames, spec.blocks
    bq, bk = blocks.block_q, blocks.block_k
    if frames.uses_ids:
        q_ref, k_ref, v_ref, qid_ref, kid_ref, o_ref, lse_ref = refs
    else:
        q_ref, k_ref, v_ref, o_ref, lse_ref = refs
        qid_ref = kid_ref = None
    q_block = pl.program_id(0)
    q = q_ref[...]
    q_frames = frames.query_frames(q_block * bq, bq, qid_ref)
    scale = spec.sm_scale * LOG2_E

    visible_fn = _keys_visible(frames, q_frames, bk, kid_ref)

    def body(k_block, visible, carry):
        acc, m_prev, l_prev = carry
        k_slice = pl.ds(pl.multiple_of(k_block * bk, bk), bk)
        s = _dot(q, k_ref[k_slice, :], trans_b=True) * scale
        s = jnp.where(visible, s, MASK_VALUE)
        m_next = jnp.maximum(m_prev, jnp.max(s, axis=1))
        correction = jnp.exp2(m_prev - m_next)
        p = jnp.exp2(s - m_next[:, None])
        l_next = correction * l_prev + jnp.sum(p, axis=1)
        v = v_ref[k_slice, :]
        acc = correction[:, None] * acc + _dot(p.astype(v.dtype), v)
        return acc, m_next, l_next

    head_dim = q_ref.shape[-1]
    carry = (jnp.zeros((bq, head_dim), jnp.float32),
             jnp.full((bq,), -jnp.inf, jnp.float32),
             jnp.zeros((bq,), jnp.float32))
    acc, m, l = _run_loops(frames.key_block_ranges(q_block, bq, bk), body, carry, visible_fn,
                           frames.skips_empty_blocks)
    # Rows with nothing visible (padding only) have l == 0 when every block was skipped.
    l = jnp.where(l == 0.0, 1.0, l)
    o_ref[...] = (acc / l[:, None]).astype(o_ref.dtype)
    lse_ref[...] = m + jnp.log2(l)


def _dq_kernel(*refs, spec: Spec):
    frames, blocks = spec.frames, spec.blocks
    bq, bk = blocks.block_q_dq, blocks.block_k_dq
    if frames.uses_ids:
        q_ref, k_ref, v_ref, do_ref, lse_ref, delta_ref, qid_ref, kid_ref, dq_ref = refs
    else:
        q_ref, k_ref, v_ref, do_ref, lse_ref, delta_ref, dq_ref = refs
        qid_ref = kid_ref = None
    q_block = pl.program_id(0)
    q, do = q_ref[...], do_ref[...]
    lse, delta = lse_ref[...], delta_ref[...]
    q_frames = frames.query_frames(q_block * bq, bq, qid_ref)
    scale = spec.sm_scale * LOG2_E

    visible_fn = _keys_visible(frames, q_frames, bk, kid_ref)

    def body(k_block, visible, dq):
        k_slice = pl.ds(pl.multiple_of(k_block * bk, bk), bk)
        k, v = k_ref[k_slice, :], v_ref[k_slice, :]
        s = _dot(q, k, trans_b=True) * scale
        p = jnp.where(visible, jnp.exp2(s - lse[:, None]), 0.0)
        ds = p * (_dot(do, v, trans_b=True) - delta[:, None])
        return dq + _dot(ds.astype(k.dtype), k)

    dq = jnp.zeros((bq, q_ref.shape[-1]), jnp.float32)
    dq = _run_loops(frames.key_block_ranges(q_block, bq, bk), body, dq, visible_fn,
                    frames.skips_empty_blocks)
    dq_ref[...] = (dq * spec.sm_scale).astype(dq_ref.dtype)


def _dkv_kernel(*refs, spec: Spec, groups: int):
    frames, blocks = spec.frames, spec.blocks
    bq, bk = blocks.block_q_dkv, blocks.block_k_dkv
    if frames.uses_ids:
        q_ref, k_ref, v_ref, do_ref, lse_ref, delta_ref, qid_ref, kid_ref, dk_ref, dv_ref = refs
    else:
        q_ref, k_ref, v_ref, do_ref, lse_ref, delta_ref, dk_ref, dv_ref = refs
        qid_ref = kid_ref = None
    k_block = pl.program_id(0)
    k, v = k_ref[...], v_ref[...]
    k_frames = frames.key_frames(k_block * bk, bk, kid_ref)
    scale = spec.sm_scale * LOG2_E
    ranges = frames.query_block_ranges(k_block, bq, bk)

    def visible_fn(q_block):
        q_start = pl.multiple_of(q_block * bq, bq)
        return frame_visible(frames.query_frames(q_start, bq, qid_ref), k_frames, frames.window)

    def head_body(g, carry):
        # The query heads of this KV head's group share its dk/dv; sum them here rather than
        # writing per-query-head gradients and reducing them in HBM.
        def body(q_block, visible, carry):
            dk, dv = carry
            q_slice = pl.ds(pl.multiple_of(q_block * bq, bq), bq)
            q, do = q_ref[q_slice, g, :], do_ref[q_slice, g, :]
            lse, delta = lse_ref[g, q_slice], delta_ref[g, q_slice]
            s = _dot(q, k, trans_b=True) * scale
            p = jnp.where(visible, jnp.exp2(s - lse[:, None]), 0.0)
            dv = dv + _dot(p.astype(do.dtype), do, trans_a=True)
            ds = p * (_dot(do, v, trans_b=True) - delta[:, None])
            dk = dk + _dot(ds.astype(q.dtype), q, trans_a=True)
            return dk, dv

        return _run_loops(ranges, body, carry, visible_fn, frames.skips_empty_blocks)

    head_dim = k_ref.shape[-1]
    carry = (jnp.zeros((bk, head_dim), jnp.float32), jnp.zeros((bk, head_dim), jnp.float32))
    dk, dv = lax.fori_loop(0, groups, head_body, carry)
    dk_ref[...] = (dk * spec.sm_scale).astype(dk_ref.dtype)
    dv_ref[...] = dv.astype(dv_ref.dtype)


def _compiler_params(num_warps, num_stages):
    return pltriton.CompilerParams(num_warps=num_warps, num_stages=num_stages)


# Per visited tile, (matmuls, q-side [bq, D] tiles moved, k-side [bk, D] tiles moved).
# forward: QK^T, PV; reads q, writes o once per query block, streams k, v.
# dq: recomputes QK^T and dO V^T, adds dS K; q, do in, dq out; streams k, v.
# dk/dv: recomputes QK^T and dO V^T, adds P^T dO and dS^T Q; k, v in, dk, dv out; streams q, do.
_TILE_WORK = {"forward": (2, 2, 2), "dq": (3, 3, 2), "dkv": (4, 2, 4)}


def kernel_cost(spec: Spec, batch: int, heads: int, head_dim: int, itemsize: int,
                which: str) -> pl.CostEstimate:
    """Cost of one kernel from the tiles its loops visit (every candidate tile when the
    frame ids are traced: the run-time skip of empty blocks is not counted)."""
    blocks, frames = spec.blocks, spec.frames
    matmuls, q_side, k_side = _TILE_WORK[which]
    if which == "dkv":
        bq, bk = blocks.block_q_dkv, blocks.block_k_dkv
        outer = -(-spec.k_length // bk)
        tiles = visited_block_pairs_dkv(frames, outer, bq, bk)
        tile_bytes = (k_side * bk * outer + q_side * bq * tiles) * head_dim * itemsize
    else:
        bq, bk = (blocks.block_q, blocks.block_k) if which == "forward" else (
            blocks.block_q_dq, blocks.block_k_dq)
        outer = -(-spec.q_length // bq)
        tiles = visited_block_pairs(frames, outer, bq, bk)
        tile_bytes = (q_side * bq * outer + k_side * bk * tiles) * head_dim * itemsize
    scores = batch * heads * tiles * bq * bk
    return pl.CostEstimate(flops=2 * matmuls * scores * head_dim, transcendentals=scores,
                           bytes_accessed=batch * heads * tile_bytes)


def _id_inputs(frames, q_ids, k_ids):
    if not frames.uses_ids:
        return (), []
    spec_q = pl.BlockSpec((q_ids.shape[0],), lambda *_: (0,))
    spec_k = pl.BlockSpec((k_ids.shape[0],), lambda *_: (0,))
    return (q_ids, k_ids), [spec_q, spec_k]


def _forward(q, k, v, ids, spec: Spec):
    batch, q_pad, heads, head_dim = q.shape
    k_pad, kv_heads = k.shape[1], k.shape[2]
    groups = heads // kv_heads
    bq = spec.blocks.block_q
    id_args, id_specs = _id_inputs(spec.frames, *ids) if ids else ((), [])
    grid = (-(-spec.q_length // bq), batch, heads)
    out, lse = pl.pallas_call(
        functools.partial(_forward_kernel, spec=spec),
        grid=grid,
        in_specs=[
            pl.BlockSpec((None, bq, None, head_dim), lambda i, b, h: (b, i, h, 0)),
            pl.BlockSpec((None, k_pad, None, head_dim), lambda i, b, h: (b, 0, h // groups, 0)),
            pl.BlockSpec((None, k_pad, None, head_dim), lambda i, b, h: (b, 0, h // groups, 0)),
            *id_specs,
        ],
        out_specs=[
            pl.BlockSpec((None, bq, None, head_dim), lambda i, b, h: (b, i, h, 0)),
            pl.BlockSpec((None, None, bq), lambda i, b, h: (b, h, i)),
        ],
        out_shape=[jax.ShapeDtypeStruct(q.shape, q.dtype),
                   jax.ShapeDtypeStruct((batch, heads, q_pad), jnp.float32)],
        compiler_params=_compiler_params(spec.blocks.num_warps, spec.blocks.num_stages),
        cost_estimate=kernel_cost(spec, batch, heads, head_dim, q.dtype.itemsize, "forward"),
        interpret=spec.interpret,
        name="aapt_flash_forward",
    )(q, k, v, *id_args)
    return out, lse


def _backward(q, k, v, ids, out, lse, do, spec: Spec):
    batch, q_pad, heads, head_dim = q.shape
    k_pad, kv_heads = k.shape[1], k.shape[2]
    groups = heads // kv_heads
    blocks = spec.blocks
    id_args, id_specs = _id_inputs(spec.frames, *ids) if ids else ((), [])
    # delta_i = sum_d o_id * do_id: a row reduction XLA fuses with the transpose it needs.
    delta = jnp.einsum("bqhd,bqhd->bhq", out.astype(jnp.float32), do.astype(jnp.float32))
    params = _compiler_params(blocks.num_warps_bwd, blocks.num_stages)

    bq, bk = blocks.block_q_dq, blocks.block_k_dq
    dq = pl.pallas_call(
        functools.partial(_dq_kernel, spec=spec),
        grid=(-(-spec.q_length // bq), batch, heads),
        in_specs=[
            pl.BlockSpec((None, bq, None, head_dim), lambda i, b, h: (b, i, h, 0)),
            pl.BlockSpec((None, k_pad, None, head_dim), lambda i, b, h: (b, 0, h // groups, 0)),
            pl.BlockSpec((None, k_pad, None, head_dim), lambda i, b, h: (b, 0, h // groups, 0)),
            pl.BlockSpec((None, bq, None, head_dim), lambda i, b, h: (b, i, h, 0)),
            pl.BlockSpec((None, None, bq), lambda i, b, h: (b, h, i)),
            pl.BlockSpec((None, None, bq), lambda i, b, h: (b, h, i)),
            *id_specs,
        ],
        out_specs=pl.BlockSpec((None, bq, None, head_dim), lambda i, b, h: (b, i, h, 0)),
        out_shape=jax.ShapeDtypeStruct(q.shape, q.dtype),
        compiler_params=params,
        cost_estimate=kernel_cost(spec, batch, heads, head_dim, q.dtype.itemsize, "dq"),
        interpret=spec.interpret,
        name="aapt_flash_dq",
    )(q, k, v, do, lse, delta, *id_args)

    bq, bk = blocks.block_q_dkv, blocks.block_k_dkv
    dk, dv = pl.pallas_call(
        functools.partial(_dkv_kernel, spec=spec, groups=groups),
        grid=(-(-spec.k_length // bk), batch, kv_heads),
        in_specs=[
            pl.BlockSpec((None, q_pad, groups, head_dim), lambda j, b, h: (b, 0, h, 0)),
            pl.BlockSpec((None, bk, None, head_dim), lambda j, b, h: (b, j, h, 0)),
            pl.BlockSpec((None, bk, None, head_dim), lambda j, b, h: (b, j, h, 0)),
            pl.BlockSpec((None, q_pad, groups, head_dim), lambda j, b, h: (b, 0, h, 0)),
            pl.BlockSpec((None, groups, q_pad), lambda j, b, h: (b, h, 0)),
            pl.BlockSpec((None, groups, q_pad), lambda j, b, h: (b, h, 0)),
            *id_specs,
        ],
        out_specs=[pl.BlockSpec((None, bk, None, head_dim), lambda j, b, h: (b, j, h, 0)),
                   pl.BlockSpec((None, bk, None, head_dim), lambda j, b, h: (b, j, h, 0))],
        out_shape=[jax.ShapeDtypeStruct(k.shape, k.dtype), jax.ShapeDtypeStruct(v.shape, v.dtype)],
        compiler_params=params,
        cost_estimate=kernel_cost(spec, batch, heads, head_dim, q.dtype.itemsize, "dkv"),
        interpret=spec.interpret,
        name="aapt_flash_dkv",
    )(q, k, v, do, lse, delta, *id_args)
    return dq, dk, dv


@functools.partial(jax.custom_vjp, nondiff_argnums=(4,))
def flash_attention(q, k, v, ids, spec: Spec):
    """Padded-in, padded-out attention. ``ids`` is ``()`` or ``(q_ids, k_ids)`` int32.

    q ``[B, Lq_pad, H, D]``, k/v ``[B, Lk_pad, Hkv, D]``; returns ``[B, Lq_pad, H, D]``.
    Rows at or past ``spec.q_length`` hold unspecified values.
    """
    return _forward(q, k, v, ids, spec)[0]


def _flash_fwd(q, k, v, ids, spec):
    out, lse = _forward(q, k, v, ids, spec)
    return out, (q, k, v, ids, out, lse)


def _flash_bwd(spec, residuals, do):
    q, k, v, ids, out, lse = residuals
    # Padded query rows of `do` are zero (the caller slices them off), so they add nothing.
    dq, dk, dv = _backward(q, k, v, ids, out, lse, do, spec)
    return dq, dk, dv, None


flash_attention.defvjp(_flash_fwd, _flash_bwd)


def pad_tokens(x, length: int, value=0):
    """Pad axis 1 of ``x`` (or axis 0 of a 1-D id array) to ``length``."""
    axis = 0 if x.ndim == 1 else 1
    extra = length - x.shape[axis]
    if extra == 0:
        return x
    widths = [(0, 0)] * x.ndim
    widths[axis] = (0, extra)
    return jnp.pad(x, widths, constant_values=value)


def round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


def default_interpret() -> bool:
    """Pallas' GPU kernels run only through the interpreter on a CPU backend."""
    return jax.default_backend() == "cpu"


def check_qkv(q, k, v, *, who: str) -> None:
    """Constraints every kernel here shares; ValueError naming the one violated."""
    if q.ndim != 4 or k.ndim != 4 or v.ndim != 4:
        raise ValueError(f"{who}: expected q, k, v of rank 4 [B, L, H, D], got shapes "
                         f"{q.shape}, {k.shape}, {v.shape}")
    if k.shape != v.shape:
        raise ValueError(f"{who}: expected k and v of the same shape, got {k.shape} and {v.shape}")
    if q.shape[0] != k.shape[0]:
        raise ValueError(f"{who}: batch of q ({q.shape[0]}) and k ({k.shape[0]}) differ")
    if q.shape[-1] != k.shape[-1]:
        raise ValueError(f"{who}: head dim of q ({q.shape[-1]}) and k ({k.shape[-1]}) differ")
    if q.shape[-1] not in SUPPORTED_HEAD_DIMS:
        raise ValueError(f"{who}: head dim must be one of {SUPPORTED_HEAD_DIMS}, got {q.shape[-1]}")
    if q.shape[2] % k.shape[2]:
        raise ValueError(f"{who}: query heads ({q.shape[2]}) must be a multiple of key/value "
                         f"heads ({k.shape[2]})")
    dtypes = {jnp.dtype(x.dtype) for x in (q, k, v)}
    if len(dtypes) != 1:
        raise ValueError(f"{who}: q, k, v must share a dtype, got {q.dtype}, {k.dtype}, {v.dtype}")
    if jnp.dtype(q.dtype) not in SUPPORTED_DTYPES:
        raise ValueError(f"{who}: dtype must be bfloat16 or float32, got {q.dtype}")


def check_window(window, *, who: str) -> None:
    if window is not None and (not isinstance(window, (int, np.integer)) or isinstance(window, bool)
                               or window < 0):
        raise ValueError(f"{who}: window must be None or an int >= 0, got {window!r}")
