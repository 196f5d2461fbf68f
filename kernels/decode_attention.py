"""One streaming step of AAPT attention: one frame of queries against the KV cache (Pallas).

Keys are laid out ``[sink | R ring slots | current frame]``, ``S`` tokens per slot, and the
latent frame stored in every slot is a *traced* int (``-1`` while the cache is still
filling, so the ring has empty slots). The queries are the ``S`` tokens of the current
frame. Visibility is :func:`aapt_jax.model.window.frame_visible` of the slot ids, so a
slot holding a frame that has fallen out of the window is masked too.

Why a Pallas kernel rather than ``jax.nn.dot_product_attention(implementation="cudnn")``:

* the visible keys are not a prefix: empty ring slots sit between the sink and the current
  frame, so cuDNN's ``key_value_seq_lengths`` cannot say it, and its ``mask`` argument is
  materialised as a dense ``[S, (R + 2) S]`` bias (about 45 M entries for
  ``S = 1196, R = 30``) per step;
* AAPT's student forcing lets gradients flow through the KV cache, so the step needs a
  backward pass; this one is the training kernel's own Pallas dq and dk/dv kernels
  (:mod:`aapt_jax.kernels._flash`), with the same numerics as the parallel forward it must equal;
* blocks of empty slots are skipped at run time instead of being multiplied and masked.

The kernel is the shared flash kernel driven by per-token frame-id arrays (queries all carry
``query_frame``; keys carry their slot's id, padding ``-1``): every key block is a candidate
and a block no query sees is skipped with a branch. Backend: Triton lowering of Pallas, for
the reasons given in :mod:`aapt_jax.kernels._flash`.

Shapes: q ``[B, S, H, D]``; k, v ``[B, (R + 2) * S, Hkv, D]``; ``slot_frames`` int
``[R + 2]``; ``query_frame`` int scalar. Output ``[B, S, H, D]`` in q's dtype.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from aapt_jax.kernels import _flash
from aapt_jax.kernels._flash import BlockSizes, FrameIds, Spec
from aapt_jax.model.reference_attention import xla_attention
from aapt_jax.model.window import EMPTY_FRAME, frame_visible
from aapt_jax.timing import median_seconds

__all__ = ["decode_attention", "decode_attention_reference", "benchmark"]


def check_decode(q, k, v, *, tokens_per_frame, window, who="decode_attention") -> None:
    """ValueError naming the violated constraint; None when the kernel supports the call."""
    _flash.check_qkv(q, k, v, who=who)
    _flash.check_window(window, who=who)
    if not isinstance(tokens_per_frame, int) or tokens_per_frame <= 0:
        raise ValueError(f"{who}: tokens_per_frame must be a positive int, got {tokens_per_frame!r}")
    if q.shape[1] != tokens_per_frame:
        raise ValueError(f"{who}: decode queries must be one frame of tokens_per_frame="
                         f"{tokens_per_frame} tokens, got Lq={q.shape[1]}")
    if k.shape[1] % tokens_per_frame or k.shape[1] < 2 * tokens_per_frame:
        raise ValueError(f"{who}: decode keys must be [sink | ring slots | current], a whole "
                         f"number >= 2 of frames of {tokens_per_frame} tokens, got Lk={k.shape[1]}")


def decode_attention(q, k, v, slot_frames, query_frame, *, tokens_per_frame: int,
                     window: int | None, block_sizes: BlockSizes | None = None,
                     interpret: bool | None = None):
    """Attention of the current frame's tokens to the cache.

    Args:
      q: ``[B, S, H, D]``, the current frame's queries.
      k, v: ``[B, (R + 2) * S, Hkv, D]``: sink, ``R`` ring slots, current frame.
      slot_frames: int ``[R + 2]``: the latent frame in every slot, ``-1`` = empty.
      query_frame: int scalar: the current frame's index.
      tokens_per_frame: ``S``.
      window: ``N``; ``None`` = every non-empty slot.
      block_sizes, interpret: as for :func:`aapt_jax.kernels.block_causal_attention.block_causal_attention`.

    Returns:
      ``[B, S, H, D]`` in q's dtype.
    """
    check_decode(q, k, v, tokens_per_frame=tokens_per_frame, window=window)
    slots = k.shape[1] // tokens_per_frame
    slot_frames = jnp.asarray(slot_frames, jnp.int32)
    if slot_frames.shape != (slots,):
        raise ValueError(f"decode_attention: slot_frames must have shape ({slots},) for "
                         f"Lk={k.shape[1]}, got {slot_frames.shape}")
    query_frame = jnp.asarray(query_frame, jnp.int32)
    if query_frame.shape != ():
        raise ValueError(f"decode_attention: query_frame must be a scalar, got {query_frame.shape}")
    if interpret is None:
        interpret = _flash.default_interpret()
    q_len, k_len = q.shape[1], k.shape[1]
    blocks = (block_sizes or _flash.default_block_sizes(q.dtype)).shrink_to(q_len, k_len)
    spec = Spec(frames=FrameIds(q_length=q_len, k_length=k_len, window=window), blocks=blocks,
                sm_scale=1.0 / math.sqrt(q.shape[-1]), interpret=interpret,
                q_length=q_len, k_length=k_len)
    q_pad = _flash.round_up(q_len, blocks.largest)
    k_pad = _flash.round_up(k_len, blocks.largest)
    q_ids = jnp.full((q_pad,), query_frame, jnp.int32)
    k_ids = _flash.pad_tokens(jnp.repeat(slot_frames, tokens_per_frame), k_pad, EMPTY_FRAME)
    out = _flash.flash_attention(_flash.pad_tokens(q, q_pad), _flash.pad_tokens(k, k_pad),
                                 _flash.pad_tokens(v, k_pad), (q_ids, k_ids), spec)
    return out[:, :q_len]


def decode_attention_reference(q, k, v, slot_frames, query_frame, *, tokens_per_frame: int,
                               window: int | None):
    """The project's jnp reference with the dense mask. Same shapes as the kernel."""
    k_ids = jnp.repeat(jnp.asarray(slot_frames, jnp.int32), tokens_per_frame)
    q_ids = jnp.full((q.shape[1],), query_frame, jnp.int32)
    return xla_attention(q, k, v, frame_visible(q_ids, k_ids, window))


def benchmark(batch: int = 1, tokens_per_frame: int = 1196, ring_slots: int = 30,
              heads: int = 32, head_dim: int = 128, window: int = 30, filled: int | None = None,
              dtype=jnp.bfloat16, repeats: int = 10) -> dict:
    """Time one decode step of the kernel and of the dense reference (median seconds).

    ``filled`` ring slots hold frames (default all); the rest are empty. Meaningful only on
    a GPU; on CPU the kernel runs interpreted.
    """
    filled = ring_slots if filled is None else filled
    current = ring_slots + 1
    ring = [current - ring_slots + i if i < filled else EMPTY_FRAME for i in range(ring_slots)]
    slot_frames = jnp.asarray([0, *ring, current], jnp.int32)
    keys = jax.random.split(jax.random.key(0), 3)
    lk = (ring_slots + 2) * tokens_per_frame
    q = jax.random.normal(keys[0], (batch, tokens_per_frame, heads, head_dim), dtype)
    k = jax.random.normal(keys[1], (batch, lk, heads, head_dim), dtype)
    v = jax.random.normal(keys[2], (batch, lk, heads, head_dim), dtype)
    kw = dict(tokens_per_frame=tokens_per_frame, window=window)

    def seconds(fn):
        f = jax.jit(lambda q, k, v, ids, cur: fn(q, k, v, ids, cur, **kw))
        return median_seconds(lambda: f(q, k, v, slot_frames, current), repeats=repeats)

    return {"kernel": seconds(decode_attention), "reference": seconds(decode_attention_reference),
            "backend": jax.default_backend()}


if __name__ == "__main__":
    print(benchmark())
