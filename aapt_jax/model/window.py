"""The AAPT attention rule: which latent frames a visual token may see.

This is the single definition of the sliding window. The dense mask of the parallel
forward, the KV cache's ring buffer and the attention kernels all derive from it.

A visual token of latent frame ``f`` sees the tokens of latent frame ``j`` iff

    j == 0                      (the first frame is a permanent sink), or
    f - window <= j <= f        (its own frame, bidirectionally, and the N previous frames).

So a frame sees at most ``window + 2`` frames: the sink, ``window`` past frames and itself
(fewer while ``f <= window``, where the sink is also inside the window). Text enters through
cross-attention and is always visible. ``window=None`` means full bidirectional attention
(the base Wan model). A key frame id of ``-1`` marks an empty cache slot: never visible.
"""

from __future__ import annotations

import jax.numpy as jnp

EMPTY_FRAME = -1


def frame_visible(query_frames, key_frames, window: int | None):
    """Visibility of key frames from query frames.

    Args:
      query_frames: int array ``[..., Q]`` of latent-frame indices of the queries.
      key_frames: int array ``[..., K]`` of latent-frame indices of the keys; ``-1`` = empty.
      window: the number ``N`` of past frames a frame sees besides itself and the sink, or
        ``None`` for bidirectional attention over all non-empty keys.

    Returns:
      bool array ``[..., Q, K]``.
    """
    q = jnp.asarray(query_frames)[..., :, None]
    k = jnp.asarray(key_frames)[..., None, :]
    valid = k != EMPTY_FRAME
    if window is None:
        return jnp.broadcast_to(valid, jnp.broadcast_shapes(q.shape, k.shape))
    in_window = (k <= q) & (k >= q - window)
    return valid & ((k == 0) | in_window)
