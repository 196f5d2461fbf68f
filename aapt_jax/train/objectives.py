"""Training objectives of stages 0-2 (paper 2.2 and App. B), as pure functions.

Every objective takes the model(s), a batch of latents and a key and returns
``(loss, metrics)``. Latents are ``[B, 1 + K, h, w, C]`` (frame 0 is the user's first
frame); ``controls`` are ``[B, K, h, w, Cc]`` (control of frames ``1..K``) or None;
``text`` is ``[B, Lt, text_dim]``.

* stage 0, ``base_flow_loss``: the bidirectional base model, flow matching on whole clips.
* stage 1, ``adaptation_loss``: the causal generator with teacher forcing: position ``p``
  gets the noisy frame ``p + 1``, the ground-truth frame ``p`` as recycled input and the
  control of frame ``p + 1``; one ``t`` per clip (no diffusion forcing).
* stage 2, ``consistency_loss``: consistency distillation on a fixed grid of 32 shifted
  steps, teacher = the frozen stage 1 model, no CFG, no EMA target (improved CD).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from aapt_jax.model import flow


def mse(a, b):
    """Mean squared difference in float32 (the stages' regression losses and metrics)."""
    return jnp.mean(jnp.square(a.astype(jnp.float32) - b.astype(jnp.float32)))


def base_flow_loss(model, latents, text, key, *, shift: float):
    """Stage 0: ``v``-prediction MSE of the bidirectional model on all frames."""
    k_t, k_eps = jax.random.split(key)
    t = flow.sample_t(k_t, latents.shape[0], shift)
    eps = jax.random.normal(k_eps, latents.shape, latents.dtype)
    v = model(flow.noisy(latents, eps, t), 1000.0 * t, text)
    loss = mse(v, eps - latents)
    return loss, {"loss": loss, "t_mean": t.mean()}


def teacher_forcing_inputs(latents):
    """(targets = frames 1..K, recycled = frames 0..K-1), each ``[B, K, h, w, C]``."""
    return latents[:, 1:], latents[:, :-1]


def adaptation_loss(model, latents, text, controls, key, *, shift: float):
    """Stage 1: next-frame flow matching with teacher forcing."""
    x0, recycled = teacher_forcing_inputs(latents)
    k_t, k_eps = jax.random.split(key)
    t = flow.sample_t(k_t, x0.shape[0], shift)
    eps = jax.random.normal(k_eps, x0.shape, x0.dtype)
    v = model(flow.noisy(x0, eps, t), 1000.0 * t, text, recycled=recycled, control=controls)
    loss = mse(v, eps - x0)
    return loss, {"loss": loss, "t_mean": t.mean()}


def consistency_fn(model, x_t, t, text, recycled, controls):
    """``f(x_t, t) = x_t - t v(x_t, t)``: the one-step x0 estimate (identity at t = 0)."""
    v = model(x_t, 1000.0 * t, text, recycled=recycled, control=controls)
    return flow.x0_from_v(x_t, v, t)


def consistency_loss(student, teacher, latents, text, controls, key, *, num_steps: int, shift: float):
    """Stage 2: ``|f_s(x_{t_n}, t_n) - sg(f_s(x_{t_n-1}, t_{n-1}))|^2`` where
    ``x_{t_{n-1}}`` is one Euler step of the frozen teacher from ``x_{t_n}``."""
    x0, recycled = teacher_forcing_inputs(latents)
    B = x0.shape[0]
    k_n, k_eps = jax.random.split(key)
    grid = flow.distillation_grid(num_steps, shift)
    n = jax.random.randint(k_n, (B,), 1, num_steps + 1)
    t_n, t_prev = grid[n], grid[n - 1]
    eps = jax.random.normal(k_eps, x0.shape, x0.dtype)
    x_n = flow.noisy(x0, eps, t_n)
    v_teacher = jax.lax.stop_gradient(
        teacher(x_n, 1000.0 * t_n, text, recycled=recycled, control=controls))
    x_prev = x_n + (t_prev - t_n).reshape(-1, 1, 1, 1, 1) * v_teacher
    target = jax.lax.stop_gradient(consistency_fn(student, x_prev, t_prev, text, recycled, controls))
    pred = consistency_fn(student, x_n, t_n, text, recycled, controls)
    loss = mse(pred, target)
    return loss, {"loss": loss, "t_mean": t_n.mean()}
