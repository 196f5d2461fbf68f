"""Block-causal sliding-window flash attention for training and prefill (Pallas).

The AAPT rule (:mod:`aapt_jax.model.window`): a token of latent frame ``f`` sees frame 0
(the sink), frames ``f - N .. f`` (itself bidirectionally and ``N`` past frames), nothing
else. With ``T`` frames of ``S`` tokens in q and k ("parallel" layout), query block ``i``
spanning frames ``f_lo..f_hi`` needs only

* the sink's key blocks ``[0, ceil(S / block_k))``, and
* the window's key blocks ``[start of frame f_lo - N, end of frame f_hi]``,

so the forward and dq kernels loop over those two ranges and the dk/dv kernel over the
query blocks ``[start of frame f_lo, end of frame f_hi + N]`` (all of them for a block that
holds sink tokens). Masked key blocks are never read; the cost follows ``T * (N + 2)`` frames
rather than ``T * T``. A block straddling a frame boundary or the window edge gets the element
mask from token -> frame arithmetic. Token counts that are not block multiples are padded
to the largest block and the padding is masked (frame id ``-1``).

Backend: Triton lowering of Pallas; the reasons are in :mod:`aapt_jax.kernels._flash`. The shipped
tiles (:func:`aapt_jax.kernels._flash.default_block_sizes`) are ``128 x 64`` (forward), ``64 x 32``
(dq) and ``32 x 64`` (dk/dv) for bf16, smaller for fp32, inside Hopper's 228 KiB of shared
memory (:func:`aapt_jax.kernels._flash.shared_memory_bytes`).

Shapes: q ``[B, L, H, D]``, k and v ``[B, L, Hkv, D]`` with ``L = T * S``, ``H % Hkv == 0``,
``D`` in ``(64, 128)``, dtype bfloat16 or float32. Output ``[B, L, H, D]`` in q's dtype.
Gradients (dq, dk, dv) come from Pallas kernels through a ``jax.custom_vjp``.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from aapt_jax.kernels import _flash
from aapt_jax.kernels._flash import BlockSizes, ParallelFrames, Spec
from aapt_jax.model.reference_attention import frame_ids, xla_attention
from aapt_jax.model.window import frame_visible
from aapt_jax.timing import median_seconds

__all__ = ["block_causal_attention", "block_causal_attention_reference", "benchmark",
           "parallel_spec"]


def parallel_spec(q_shape, *, tokens_per_frame: int, window: int | None,
                  block_sizes: BlockSizes | None = None, dtype=jnp.bfloat16,
                  interpret: bool = False) -> Spec:
    """The static description of one call, for callers that count blocks or flops."""
    length = q_shape[1]
    blocks = (block_sizes or _flash.default_block_sizes(dtype)).shrink_to(length, length)
    return Spec(frames=ParallelFrames(tokens_per_frame=tokens_per_frame, length=length,
                                      window=window),
                blocks=blocks, sm_scale=1.0 / math.sqrt(q_shape[-1]), interpret=interpret,
                q_length=length, k_length=length)


def check_parallel(q, k, v, *, tokens_per_frame, window, who="block_causal_attention") -> None:
    """ValueError naming the violated constraint; None when the kernel supports the call."""
    _flash.check_qkv(q, k, v, who=who)
    _flash.check_window(window, who=who)
    if q.shape[1] != k.shape[1]:
        raise ValueError(f"{who}: the parallel layout needs as many keys as queries, got "
                         f"Lq={q.shape[1]}, Lk={k.shape[1]}")
    if not isinstance(tokens_per_frame, int) or tokens_per_frame <= 0:
        raise ValueError(f"{who}: tokens_per_frame must be a positive int, got {tokens_per_frame!r}")
    if q.shape[1] % tokens_per_frame:
        raise ValueError(f"{who}: sequence length {q.shape[1]} is not a whole number of frames "
                         f"of tokens_per_frame={tokens_per_frame}")


def block_causal_attention(q, k, v, *, tokens_per_frame: int, window: int | None,
                           block_sizes: BlockSizes | None = None, interpret: bool | None = None):
    """AAPT attention over ``T`` contiguous frames (training / prefill).

    Args:
      q: ``[B, L, H, D]``; k, v: ``[B, L, Hkv, D]``, ``L = T * tokens_per_frame``.
      tokens_per_frame: ``S``, tokens of one latent frame.
      window: ``N`` past frames seen besides the sink and the own frame; ``None`` =
        bidirectional.
      block_sizes: tiles; default :func:`aapt_jax.kernels._flash.default_block_sizes` of q's dtype.
      interpret: run the Pallas interpreter; default: on a CPU backend.

    Returns:
      ``[B, L, H, D]`` in q's dtype.
    """
    check_parallel(q, k, v, tokens_per_frame=tokens_per_frame, window=window)
    if interpret is None:
        interpret = _flash.default_interpret()
    spec = parallel_spec(q.shape, tokens_per_frame=tokens_per_frame, window=window,
                         block_sizes=block_sizes, dtype=q.dtype, interpret=interpret)
    length = q.shape[1]
    padded = _flash.round_up(length, spec.blocks.largest)
    out = _flash.flash_attention(_flash.pad_tokens(q, padded), _flash.pad_tokens(k, padded),
                                 _flash.pad_tokens(v, padded), (), spec)
    return out[:, :length]


def block_causal_attention_reference(q, k, v, *, tokens_per_frame: int, window: int | None):
    """The project's jnp reference: dense mask from :func:`frame_visible`. Same shapes."""
    ids = frame_ids(q.shape[1] // tokens_per_frame, tokens_per_frame)
    return xla_attention(q, k, v, frame_visible(ids, ids, window))


def benchmark(batch: int = 1, num_frames: int = 32, tokens_per_frame: int = 1196,
              heads: int = 32, head_dim: int = 128, window: int | None = 30,
              dtype=jnp.bfloat16, backward: bool = True, repeats: int = 5) -> dict:
    """Time the kernel and the dense jnp reference on the default backend.

    Returns seconds per call (median) for ``kernel`` and ``reference``, forward only or
    forward + backward. Meaningful only on a GPU; on CPU the kernel runs interpreted.
    """
    length = num_frames * tokens_per_frame
    keys = jax.random.split(jax.random.key(0), 3)
    q = jax.random.normal(keys[0], (batch, length, heads, head_dim), dtype)
    k = jax.random.normal(keys[1], (batch, length, heads, head_dim), dtype)
    v = jax.random.normal(keys[2], (batch, length, heads, head_dim), dtype)
    kw = dict(tokens_per_frame=tokens_per_frame, window=window)

    def wrap(fn):
        if not backward:
            return jax.jit(lambda q, k, v: fn(q, k, v, **kw))
        loss = lambda q, k, v: jnp.sum(fn(q, k, v, **kw).astype(jnp.float32))
        return jax.jit(jax.grad(loss, argnums=(0, 1, 2)))

    def seconds(f):
        return median_seconds(lambda: f(q, k, v), repeats=repeats)

    return {"kernel": seconds(wrap(block_causal_attention)),
            "reference": seconds(wrap(block_causal_attention_reference)),
            "backend": jax.default_backend()}


if __name__ == "__main__":
    print(benchmark())
