"""The ``"pallas"`` implementation of :func:`aapt_jax.model.attention.attention`."""

from __future__ import annotations

import jax

from aapt_jax.kernels.block_causal_attention import block_causal_attention, check_parallel
from aapt_jax.kernels.decode_attention import check_decode, decode_attention


def _check_frames(q, k, q_frames, k_frames) -> None:
    if getattr(q_frames, "shape", None) != (q.shape[1],):
        raise ValueError(f"attention_impl='pallas': q_frames must have shape ({q.shape[1]},), "
                         f"got {getattr(q_frames, 'shape', None)}")
    if getattr(k_frames, "shape", None) != (k.shape[1],):
        raise ValueError(f"attention_impl='pallas': k_frames must have shape ({k.shape[1]},), "
                         f"got {getattr(k_frames, 'shape', None)}")


def pallas_attention(q, k, v, q_frames, k_frames, *, window, tokens_per_frame, layout, strict):
    """Dispatch an attention call to the Pallas kernel for its layout.

    Shapes as :func:`aapt_jax.model.attention.attention`: q ``[B, Lq, H, D]``, k and v
    ``[B, Lk, Hkv, D]``, frame ids ``[Lq]`` and ``[Lk]``.

    ``layout="parallel"``: frames ``0..T-1`` in q and k, so the ids are implied by
    ``tokens_per_frame`` and are not read. ``layout="decode"``: the slot ids are
    ``k_frames[::tokens_per_frame]`` and the query frame ``q_frames[0]``.

    Returns the output, or ``None`` when ``strict`` is False and the call is outside what the
    kernels support (the caller then uses XLA). With ``strict`` True the same cases raise a
    ValueError naming the constraint. On a CPU backend the kernels run only in the Pallas
    interpreter, which is far slower than XLA, so a non-strict call returns ``None`` there.
    """
    try:
        backend = jax.default_backend()
        if backend not in ("gpu", "cpu"):
            raise ValueError(f"attention_impl='pallas': the kernels are Triton GPU kernels "
                             f"(interpreted on CPU); backend is {backend!r}")
        if layout not in ("parallel", "decode"):
            raise ValueError(f"attention_impl='pallas': layout must be 'parallel' or 'decode', "
                             f"got {layout!r}")
        _check_frames(q, k, q_frames, k_frames)
        if layout == "parallel":
            check_parallel(q, k, v, tokens_per_frame=tokens_per_frame, window=window,
                           who="attention_impl='pallas' (parallel)")
        else:
            check_decode(q, k, v, tokens_per_frame=tokens_per_frame, window=window,
                         who="attention_impl='pallas' (decode)")
    except ValueError:
        if strict:
            raise
        return None
    if not strict and backend == "cpu":
        return None
    window = None if window is None else int(window)
    if layout == "parallel":
        return block_causal_attention(q, k, v, tokens_per_frame=tokens_per_frame, window=window)
    return decode_attention(q, k, v, k_frames[::tokens_per_frame], q_frames[0],
                            tokens_per_frame=tokens_per_frame, window=window)
