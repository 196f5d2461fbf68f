"""Multi-step flow samplers: the diffusion baselines later stages are compared with.

* :func:`sample_clip`: the bidirectional base model (stage 0), a whole clip at once.
* :func:`sample_autoregressive`: the stage 1 causal model, frame by frame with recycled
  context. Stage 1 trains every position at one shared noise level (teacher forcing, one
  t per clip), so at each solver step the already generated frames are re-noised to the
  current t and the whole prefix is recomputed: exactly the training distribution, at the
  cost of no KV cache (this is the slow baseline).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from aapt_jax.train import flow


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
