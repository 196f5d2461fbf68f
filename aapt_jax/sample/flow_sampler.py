"""Multi-step flow samplers: the diffusion baselines later stages are compared with.

* :func:`sample_clip`: the bidirectional base model (stage 0), a whole clip at once.
* :func:`sample_autoregressive`: the stage 1 causal model, frame by frame with recycled
  context. Stage 1 trains every position at one shared noise level (teacher forcing, one
  t per clip), so at each solver step the already generated frames are re-noised to the
  current t and the whole prefix is recomputed: exactly the training distribution, at the
  cost of no KV cache (this is the slow baseline).
* :func:`sample_long`: the same stage 1 sampler for videos far longer than the attention
  window, at a constant cost per frame: every call runs a fixed window of ``N + 2``
  positions (the sink, ``N`` context frames, the current frame) at their true frame numbers.
"""

from __future__ import annotations

import functools
from typing import Callable

import jax
import jax.numpy as jnp

from aapt_jax.sample.streaming import check_control, check_inputs
from aapt_jax.model import flow


def sample_clip(model, eps, text, *, num_steps: int, shift: float):
    """eps ``[B, T, h, w, C]`` -> x0 of the bidirectional model."""
    return flow.euler_sample(lambda x, t: model(x, 1000.0 * t, text), eps, num_steps, shift)


def sample_autoregressive(model, first, text, controls, key, *, num_frames: int, num_steps: int, shift: float):
    """Stage 1 model, ``num_frames`` frames after ``first`` ``[B, 1, h, w, C]``.

    Every call runs all K positions: the model is causal, so positions after the one being
    sampled (zero-filled) cannot affect it, and one compiled program serves every frame.
    controls: ``[B, K, h, w, Cc]`` or None. Returns ``[B, K, h, w, C]``.
    """
    B, _, h, w, C = first.shape
    K = num_frames
    grid = flow.distillation_grid(num_steps, shift)[::-1]
    positions = jnp.arange(K)[None, :, None, None, None]

    def one_frame(p, carry):
        frames, key = carry
        key, k_ctx, k_eps = jax.random.split(key, 3)
        ctx_eps = jax.random.normal(k_ctx, frames.shape, frames.dtype)
        recycled = jnp.concatenate([first, frames[:, :-1]], axis=1)

        def solver_step(x, ts):
            t, t_next = ts
            tb = jnp.full((B,), t)
            x_all = jnp.where(positions < p, flow.noisy(frames, ctx_eps, tb), 0.0)
            x_all = jax.lax.dynamic_update_slice_in_dim(x_all, x, p, axis=1)
            v = model(x_all, 1000.0 * tb, text, recycled=recycled, control=controls)
            return x + (t_next - t) * jax.lax.dynamic_slice_in_dim(v, p, 1, axis=1), None

        x = jax.random.normal(k_eps, (B, 1, h, w, C), first.dtype)
        x, _ = jax.lax.scan(solver_step, x, (grid[:-1], grid[1:]))
        return jax.lax.dynamic_update_slice_in_dim(frames, x, p, axis=1), key

    frames, _ = jax.lax.fori_loop(0, K, one_frame, (jnp.zeros((B, K, h, w, C), first.dtype), key))
    return frames


def window_frame_indices(p, window: int):
    """The true frame numbers (model positions) of :func:`sample_long`'s window for position ``p``.

    Returns (int32 ``[window + 2]`` ``[0, start, start + 1, ..., start + window]`` with
    ``start = max(1, p - window)``, and the slot of ``p`` in it, ``p - start + 1``: 0 for
    ``p = 0``, which is the sink itself).
    Slot 0 is the attention sink (position 0), which every frame sees; slots after ``p``
    hold positions the causal mask hides from it.
    """
    p = jnp.asarray(p, jnp.int32)
    start = jnp.maximum(1, p - window)
    indices = jnp.concatenate([jnp.zeros((1,), jnp.int32), start + jnp.arange(window + 1, dtype=jnp.int32)])
    return indices, p - start + 1


def sample_long(model, first, text, controls, key, *, num_frames: int, num_steps: int, shift: float,
                noise: Callable | None = None):
    """Stage 1 model, ``num_frames`` frames after ``first`` ``[B, 1, h, w, C]``, at constant cost per frame.

    Position ``p`` takes x_t of frame ``p + 1``, the recycled frame ``p`` (``first`` for
    ``p = 0``) and the control of frame ``p + 1``, as in :func:`sample_autoregressive`, with
    the same semantics: at each Euler step the context frames are re-noised to the current
    t (stage 1 was trained with one t shared by every position) and recomputed. Instead of
    all ``K`` positions, every call runs the ``N + 2`` positions of
    :func:`window_frame_indices` (``N = model.cfg.window``) with ``frame_indices`` set, so
    RoPE and the mask see the true frame numbers: one compiled program of fixed shape
    serves every frame, however long the video.

    For ``num_frames <= N + 1`` the window holds every position and this computes what
    :func:`sample_autoregressive` does (given the same noise, see ``noise``). Beyond, a
    frame's context is recomputed from the window alone: the context frames' own hidden
    states no longer see the frames before the window (in the full causal forward, deeper
    layers reach ``N`` frames further back per layer). This truncation is what keeps the
    cost constant.

    Args:
      model: a causal :class:`~aapt_jax.model.dit.WanDiT` (anything with ``cfg`` and the
        same call signature).
      first: ``[B, 1, h, w, C]`` the given first latent frame.
      text: ``[B, Lt, text_dim]``.
      controls: ``[B, K, h, w, Cc]`` (control of frames ``1 .. K``) or None.
      key: PRNG key.
      num_frames: ``K`` (static).
      num_steps, shift: the Euler grid (:func:`aapt_jax.model.flow.distillation_grid`).
      noise: optional ``(key, p, frame_indices [N + 2]) -> (context noise [B, N + 2, h, w, C],
        initial noise [B, 1, h, w, C])``, the draws of position ``p``: the noise that
        re-noises the window's context slots (the same at every Euler step) and the frame's
        starting noise. Default: one standard normal draw from ``fold_in(key, p)`` (the
        noise is a function of the key and the position alone; a single random op keeps
        the CPU compile short).
    Returns:
      ``[B, K, h, w, C]``.
    """
    cfg = model.cfg
    check_inputs(cfg, first, text)
    if isinstance(num_frames, bool) or not isinstance(num_frames, int) or num_frames < 1:
        raise ValueError(f"num_frames: expected an int >= 1, got {num_frames!r}")
    if isinstance(num_steps, bool) or not isinstance(num_steps, int) or num_steps < 1:
        raise ValueError(f"num_steps: expected an int >= 1, got {num_steps!r}")
    B, _, h, w, C = first.shape
    check_control(cfg, controls, B, h, w, frames=num_frames)
    grid = flow.distillation_grid(num_steps, shift)[::-1]
    if noise is None:
        def noise(key, p, indices):
            draw = jax.random.normal(jax.random.fold_in(key, p), (B, indices.shape[0] + 1, h, w, C), first.dtype)
            return draw[:, :-1], draw[:, -1:]

    one_frame = functools.partial(_long_frame, model, first, text, controls, key, grid, noise)
    return jax.lax.fori_loop(0, num_frames, one_frame, jnp.zeros((B, num_frames, h, w, C), first.dtype))


def _gather(frames, indices, keep):
    """frames ``[B, K, ...]`` at ``indices`` ``[N + 2]`` (clipped: out-of-range slots are
    hidden by the mask anyway), zeroed where ``keep`` is False."""
    picked = jnp.take(frames, jnp.clip(indices, 0, frames.shape[1] - 1), axis=1)
    return jnp.where(keep.reshape(1, -1, 1, 1, 1), picked, jnp.zeros((), picked.dtype))


def _long_frame(model, first, text, controls, key, grid, noise, p, frames):
    """:func:`sample_long`'s position ``p``: its window's Euler solve; returns ``frames``
    with generated frame ``p`` written in."""
    B = first.shape[0]
    indices, slot = window_frame_indices(p, model.cfg.window)
    past, upto = indices < p, indices <= p
    clean = _gather(frames, indices, past)  # generated frames of the context slots
    # Recycled input of position q is frame q: the given first frame for q = 0, else
    # generated frame q (stored at frames[q - 1]).
    recycled = jnp.where((indices == 0).reshape(1, -1, 1, 1, 1), first, _gather(frames, indices - 1, upto))
    control = None if controls is None else _gather(controls, indices, upto)
    ctx_eps, x = noise(key, p, indices)

    def solver_step(x, ts):
        t, t_next = ts
        tb = jnp.full((B,), t)
        x_all = jnp.where(past.reshape(1, -1, 1, 1, 1), flow.noisy(clean, ctx_eps, tb), 0.0)
        x_all = jax.lax.dynamic_update_slice_in_dim(x_all.astype(x.dtype), x, slot, axis=1)
        v = model(x_all, 1000.0 * tb, text, recycled=recycled, control=control, frame_indices=indices)
        return x + (t_next - t) * jax.lax.dynamic_slice_in_dim(v, slot, 1, axis=1), None

    x, _ = jax.lax.scan(solver_step, x.astype(first.dtype), (grid[:-1], grid[1:]))
    return jax.lax.dynamic_update_slice_in_dim(frames, x.astype(frames.dtype), p, axis=1)
