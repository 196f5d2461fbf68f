"""Flow matching as Wan and AAPT use it.

``x_t = (1 - t) x0 + t eps`` with ``t`` in [0, 1] (``t = 1`` is pure noise); the model gets
``1000 t`` and predicts ``v = eps - x0``; so ``x0 = x_t - t v``. Timesteps are sampled
uniformly and passed through ``shift(t, s) = s t / (1 + (s - 1) t)``, which pushes them
toward the noisy end (s = 24 in the paper's stages 1 and 2).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def shift(t, s: float):
    return s * t / (1.0 + (s - 1.0) * t)


def sample_t(key, batch: int, s: float):
    """``[batch]`` timesteps ``shift(U(0, 1), s)``, one per clip (same t for every frame)."""
    return shift(jax.random.uniform(key, (batch,)), s)


def noisy(x0, eps, t):
    """``x_t`` for clip-level ``t`` ``[B]`` and latents ``[B, T, h, w, C]``."""
    t = t.reshape(-1, *([1] * (x0.ndim - 1)))
    return (1.0 - t) * x0 + t * eps


def x0_from_v(x_t, v, t):
    t = t.reshape(-1, *([1] * (x_t.ndim - 1)))
    return x_t - t * v


def distillation_grid(num_steps: int, s: float):
    """The fixed timesteps of consistency distillation: ``shift(linspace(0, 1, n + 1), s)``.

    Returns ``[num_steps + 1]`` increasing from 0 to 1.
    """
    return shift(jnp.linspace(0.0, 1.0, num_steps + 1), s)


def euler_sample(velocity_fn, eps, num_steps: int, s: float):
    """Multi-step Euler flow sampler from ``t = 1`` to 0 on the shifted grid.

    velocity_fn: ``(x_t [B,...], t [B]) -> v``; eps: the starting noise.
    """
    grid = distillation_grid(num_steps, s)[::-1]
    B = eps.shape[0]

    def body(x, ts):
        t, t_next = ts
        v = velocity_fn(x, jnp.full((B,), t))
        return x + (t_next - t) * v, None

    x, _ = jax.lax.scan(body, eps, (grid[:-1], grid[1:]))
    return x
