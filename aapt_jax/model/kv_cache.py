"""The streaming KV cache: a sink frame plus a ring buffer, as an explicit pytree.

Layout per layer: slot 0 holds the sink (latent frame 0, kept forever); slots
``1..R`` are a ring buffer holding the most recent ``R`` frames after the sink, frame
``j >= 1`` living in slot ``1 + (j - 1) % R``. With ``R >= window`` this keeps every frame
the window rule (:mod:`aapt_jax.model.window`) can make visible, and the rule itself
decides visibility from the frame ids below, so cache and mask cannot disagree. Memory
is constant in the video length. Keys are stored after RoPE, at their absolute
positions: RoPE depends only on position differences, so they never need re-rotation.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import struct

from aapt_jax.model.window import EMPTY_FRAME


@struct.dataclass
class KVCache:
    """Self-attention keys/values of past frames and cross-attention keys/values of the text.

    Shapes: ``k, v``: ``[layers, B, 1 + R, S, H, D]``; ``text_k, text_v``:
    ``[layers, B, Lt, H, D]``.
    """

    k: jax.Array
    v: jax.Array
    text_k: jax.Array
    text_v: jax.Array

    @property
    def ring_frames(self) -> int:
        return self.k.shape[2] - 1


def empty_cache(num_layers, batch, ring_frames, tokens_per_frame, num_heads, head_dim,
                text_k, text_v, dtype) -> KVCache:
    shape = (num_layers, batch, 1 + ring_frames, tokens_per_frame, num_heads, head_dim)
    return KVCache(k=jnp.zeros(shape, dtype), v=jnp.zeros(shape, dtype), text_k=text_k, text_v=text_v)


def slot_frames(position, ring_frames: int):
    """Latent-frame id held in each slot just before frame ``position`` is computed.

    Args:
      position: int32 scalar, the frame about to be generated (``>= 0``).
    Returns:
      int32 ``[1 + R]``; ``-1`` marks a slot not yet filled.
    """
    p = jnp.asarray(position, jnp.int32)
    sink = jnp.where(p >= 1, 0, EMPTY_FRAME)
    s = jnp.arange(ring_frames, dtype=jnp.int32)
    held = p - 1 - jnp.mod(p - 2 - s, ring_frames)
    ring = jnp.where(held >= 1, held, EMPTY_FRAME)
    return jnp.concatenate([sink[None], ring])


def write_slot(position, ring_frames: int):
    """Slot that frame ``position`` is written to: 0 for the sink, else its ring slot."""
    p = jnp.asarray(position, jnp.int32)
    return jnp.where(p == 0, 0, 1 + jnp.mod(p - 1, ring_frames))


def write_frame(cache_arr, layer: int, position, ring_frames: int, value):
    """Store one frame's keys or values ``[B, S, H, D]`` of ``layer`` at its slot."""
    slot = write_slot(position, ring_frames)
    update = value[None, :, None].astype(cache_arr.dtype)
    start = (jnp.int32(layer), jnp.int32(0), slot, jnp.int32(0), jnp.int32(0), jnp.int32(0))
    return jax.lax.dynamic_update_slice(cache_arr, update, start)
