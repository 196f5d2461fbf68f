"""The plain-jnp attention every implementation is checked against, and the frame ids of
contiguous tokens: below both the attention API (:mod:`aapt_jax.model.attention`) and the
kernels that implement it (``kernels/``), which test against these."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp


def repeat_kv(k, num_heads):
    groups = num_heads // k.shape[2]
    return k if groups == 1 else jnp.repeat(k, groups, axis=2)


def xla_attention(q, k, v, mask):
    """Reference attention; softmax in fp32. mask: bool ``[Lq, Lk]`` or None."""
    scale = 1.0 / math.sqrt(q.shape[-1])
    k = repeat_kv(k, q.shape[2])
    v = repeat_kv(v, q.shape[2])
    logits = jnp.einsum("bqhd,bkhd->bhqk", q, k, preferred_element_type=jnp.float32) * scale
    if mask is not None:
        logits = jnp.where(mask, logits, -jnp.inf)
    probs = jax.nn.softmax(logits, axis=-1)
    # A query row with no visible key (never produced by the AAPT rule) would give NaN.
    out = jnp.einsum("bhqk,bkhd->bqhd", probs.astype(v.dtype), v, preferred_element_type=jnp.float32)
    return out.astype(q.dtype)


def frame_ids(num_frames: int, tokens_per_frame: int, first_frame: int = 0):
    """Frame id of every token of ``num_frames`` contiguous frames: int32 ``[num_frames * S]``."""
    return jnp.repeat(jnp.arange(first_frame, first_frame + num_frames, dtype=jnp.int32),
                      tokens_per_frame)
