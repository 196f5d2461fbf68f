"""One attention API, several implementations.

Every attention in the model goes through the functions here; ``impl`` picks the
implementation and all of them compute the same numbers within tolerance:

* ``xla``: plain jnp with a dense mask from :func:`aapt_jax.model.window.frame_visible`;
  always available, the reference for the others.
* ``cudnn``: ``jax.nn.dot_product_attention(implementation='cudnn')`` with the same mask
  (GPU only).
* ``pallas``: the block-sparse kernels in ``kernels/`` (``aapt_jax.kernels.registry``).
* ``auto``: ``pallas`` where a kernel supports the call, else ``xla``, chosen explicitly.

Shapes: queries ``[B, Lq, H, D]``, keys and values ``[B, Lk, Hkv, D]`` with ``H % Hkv == 0``.
Frame ids give the latent-frame index of every token (``-1`` for an empty cache slot).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from aapt_jax.model.reference_attention import frame_ids, repeat_kv, xla_attention
from aapt_jax.model.window import frame_visible

__all__ = ["IMPLEMENTATIONS", "attention", "check_impl", "frame_ids", "full_attention", "xla_attention"]

IMPLEMENTATIONS = ("xla", "cudnn", "pallas", "auto")


def check_impl(impl: str) -> None:
    if impl not in IMPLEMENTATIONS:
        raise ValueError(f"attention_impl: expected one of {IMPLEMENTATIONS}, got {impl!r}")


def _cudnn_attention(q, k, v, mask):
    k = repeat_kv(k, q.shape[2])
    v = repeat_kv(v, q.shape[2])
    m = None if mask is None else mask[None, None]
    return jax.nn.dot_product_attention(q, k, v, mask=m, implementation="cudnn")


def attention(q, k, v, q_frames, k_frames, *, window: int | None, impl: str = "xla",
              tokens_per_frame: int | None = None, layout: str | None = None):
    """Attention under the AAPT frame rule.

    Args:
      q: ``[B, Lq, H, D]``; k, v: ``[B, Lk, Hkv, D]``.
      q_frames: int ``[Lq]``; k_frames: int ``[Lk]`` (``-1`` = empty slot).
      window: see :mod:`aapt_jax.model.window`; ``None`` = bidirectional.
      impl: one of :data:`IMPLEMENTATIONS`.
      tokens_per_frame: tokens of one latent frame; kernels use it for their loop bounds.
      layout: static promise about the frame ids, for kernels (the xla path ignores it):
        ``"parallel"``: q and k both hold frames ``0..T-1`` contiguously (training, prefill);
        ``"decode"``: q is one frame, k is ``[sink | ring slots | current]`` frames of
        ``tokens_per_frame`` tokens each, with traced ids (``-1`` = empty slot);
        ``None``: anything else (only ``xla``/``cudnn``).

    Returns:
      ``[B, Lq, H, D]`` in q's dtype.
    """
    check_impl(impl)
    if impl in ("pallas", "auto"):
        # The kernels implement this API on top of the references below it (imported on first
        # use: the other implementations need no Pallas machinery).
        from aapt_jax.kernels.registry import pallas_attention

        out = pallas_attention(q, k, v, q_frames, k_frames, window=window, tokens_per_frame=tokens_per_frame,
                               layout=layout, strict=(impl == "pallas"))
        if out is not None:
            return out
    mask = frame_visible(q_frames, k_frames, window)
    if impl == "cudnn":
        return _cudnn_attention(q, k, v, mask)
    return xla_attention(q, k, v, mask)


# Queries per block of the unmasked (text) attention. Its logits are [B, H, Lq, Lk] in fp32:
# 2.4 GB per layer for one aapt-8B clip (37k visual tokens x 512 text tokens x 32 heads);
# in blocks, forward and backward hold one block's (rematerialized per block).
CROSS_QUERY_BLOCK = 4096


def full_attention(q, k, v, *, impl: str = "xla", query_block: int = CROSS_QUERY_BLOCK):
    """Unmasked attention (cross-attention to text). q ``[B, Lq, H, D]``, k/v ``[B, Lk, H, D]``.

    The ``xla`` path runs ``query_block`` queries at a time when ``Lq`` is larger (same
    numbers; the memory of one block's logits instead of all of them).
    """
    check_impl(impl)
    if impl == "cudnn":
        return _cudnn_attention(q, k, v, None)
    B, Lq, H, D = q.shape
    if Lq <= query_block:
        return xla_attention(q, k, v, None)
    n = -(-Lq // query_block)
    blocks = jnp.pad(q, ((0, 0), (0, n * query_block - Lq), (0, 0), (0, 0)))
    blocks = jnp.moveaxis(blocks.reshape(B, n, query_block, H, D), 1, 0)
    out = jax.lax.map(jax.checkpoint(lambda qb: xla_attention(qb, k, v, None)), blocks)
    return jnp.moveaxis(out, 0, 1).reshape(B, n * query_block, H, D)[:, :Lq]
