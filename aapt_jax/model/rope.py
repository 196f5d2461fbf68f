"""3D rotary position embedding of Wan, with AAPT's fixed temporal interval.

The head dimension ``d`` is split into temporal/height/width parts of
``d - 4(d//6)``, ``2(d//6)``, ``2(d//6)`` channels; each part rotates interleaved channel
pairs ``(2i, 2i+1)`` by ``position * theta**(-2i/part)``. Temporal positions are
``frame_index * interval`` computed on the fly (no table), so any frame index works: the
1440th frame gets the same treatment as the 4th, and because RoPE only sees position
differences, keys cached with their absolute positions stay valid forever.
"""

from __future__ import annotations

import jax.numpy as jnp


def rope_split(head_dim: int) -> tuple[int, int, int]:
    hw = 2 * (head_dim // 6)
    return head_dim - 2 * hw, hw, hw


def _inv_freq(part: int, theta: float):
    return 1.0 / (theta ** (jnp.arange(0, part, 2, dtype=jnp.float32) / part))


def rope_angles(frame_positions, height: int, width: int, head_dim: int, theta: float):
    """Rotation angles of every token of the given frames.

    Args:
      frame_positions: float ``[T]`` temporal positions (frame index times interval).
      height, width: token grid of one frame (after patching).
    Returns:
      fp32 ``[T * height * width, head_dim // 2]``, tokens in frame, row, column order.
    """
    t_dim, h_dim, w_dim = rope_split(head_dim)
    ft = jnp.asarray(frame_positions, jnp.float32)[:, None] * _inv_freq(t_dim, theta)
    fh = jnp.arange(height, dtype=jnp.float32)[:, None] * _inv_freq(h_dim, theta)
    fw = jnp.arange(width, dtype=jnp.float32)[:, None] * _inv_freq(w_dim, theta)
    T = ft.shape[0]
    ft = jnp.broadcast_to(ft[:, None, None, :], (T, height, width, ft.shape[-1]))
    fh = jnp.broadcast_to(fh[None, :, None, :], (T, height, width, fh.shape[-1]))
    fw = jnp.broadcast_to(fw[None, None, :, :], (T, height, width, fw.shape[-1]))
    return jnp.concatenate([ft, fh, fw], axis=-1).reshape(T * height * width, head_dim // 2)


def apply_rope(x, angles):
    """Rotate interleaved pairs. x ``[B, L, H, D]``; angles ``[L, D/2]``. Returns x's dtype."""
    cos = jnp.cos(angles)[None, :, None, :]
    sin = jnp.sin(angles)[None, :, None, :]
    x32 = x.astype(jnp.float32)
    x1, x2 = x32[..., 0::2], x32[..., 1::2]
    out = jnp.stack([x1 * cos - x2 * sin, x1 * sin + x2 * cos], axis=-1)
    return out.reshape(x.shape).astype(x.dtype)
