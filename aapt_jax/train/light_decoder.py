"""Distil the lightweight VAE decoder of AAPT App. C from a full one.

The student shares the teacher's encoder (and so its latent space); only its decoder and
``post_quant_conv`` are trained, by MSE between the student's decoded frames and the
teacher's, both from the teacher's latents (posterior means) of the same videos. The
teacher runs once up front; the loop is student-only.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from aapt_jax.model import vae as vae_lib
from aapt_jax.model.vae_config import VAEConfig, light_decoder

# The student parameters that train; the encoder and quant_conv stay the teacher's.
TRAINABLE = nnx.Any(nnx.PathContains("decoder"), nnx.PathContains("post_quant_conv"))


@dataclasses.dataclass(frozen=True)
class DistillConfig:
    steps: int = 200
    batch_size: int = 2
    learning_rate: float = 1e-3
    seed: int = 0

    def __post_init__(self):
        for name in ("steps", "batch_size"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ValueError(f"distill.{name}: expected a positive int, got {getattr(self, name)!r}")
        if not self.learning_rate > 0:
            raise ValueError(f"distill.learning_rate: expected a positive float, got {self.learning_rate!r}")


@dataclasses.dataclass
class DistillResult:
    config: VAEConfig  # the student: teacher encoder + light decoder
    graphdef: nnx.GraphDef
    params: nnx.State
    losses: np.ndarray  # [steps] training MSE per step


def teacher_targets(graphdef, params, videos, batch_size: int = 4):
    """Teacher latents (posterior means) and decoded frames of ``videos [N, T, H, W, 3]``.

    Returns ``(latents [N, T', h, w, z], frames [N, T, H, W, 3])`` as numpy, in batches so
    the teacher's activations for the whole set never sit in memory at once.
    """
    latents, frames = [], []
    for start in range(0, len(videos), batch_size):
        mean, _ = vae_lib.encode(graphdef, params, jnp.asarray(videos[start:start + batch_size]))
        latents.append(np.asarray(mean))
        frames.append(np.asarray(vae_lib.decode(graphdef, params, mean)))
    return np.concatenate(latents), np.concatenate(frames)


def init_student(teacher_graphdef, teacher_params, student_config: VAEConfig | None = None,
                 seed: int = 0) -> tuple[VAEConfig, nnx.GraphDef, nnx.State]:
    """A student VAE: the teacher's encoder, quant convs and latent statistics, and a freshly
    initialized decoder (App. C shape unless ``student_config`` says otherwise)."""
    teacher_config = nnx.merge(teacher_graphdef, teacher_params).config
    config = student_config or light_decoder(teacher_config)
    encoder_fields = ("base_dim", "z_dim", "dim_mult", "num_res_blocks", "temporal_downsample")
    for name in encoder_fields:
        if getattr(config, name) != getattr(teacher_config, name):
            raise ValueError(f"student vae.{name}: expected the teacher's {getattr(teacher_config, name)!r} "
                             f"(the encoder is shared), got {getattr(config, name)!r}")
    config = dataclasses.replace(config, latents_mean=teacher_config.latents_mean,
                                 latents_std=teacher_config.latents_std)
    graphdef, params = vae_lib.init_vae(config, seed)
    student = nnx.merge(graphdef, params)
    teacher = nnx.merge(teacher_graphdef, teacher_params)
    for name in ("encoder", "quant_conv", "post_quant_conv"):
        nnx.update(getattr(student, name), nnx.state(getattr(teacher, name), nnx.Param))
    graphdef, params = nnx.split(student)
    return config, graphdef, params


def _loss(graphdef, trainable, frozen, latents, targets):
    model = nnx.merge(graphdef, trainable, frozen)
    # Unclamped, so pixels the student overshoots still get a gradient.
    return jnp.mean(jnp.square(model.decode_video(latents) - targets))


def distill_light_decoder(teacher_graphdef, teacher_params, videos, *, student_config: VAEConfig | None = None,
                          distill: DistillConfig = DistillConfig(),
                          callback: Callable[[int, float], None] | None = None) -> DistillResult:
    """Train a light decoder to reproduce the teacher's decoded frames.

    videos: ``[N, 1 + r k, H, W, 3]`` floats in ``[-1, 1]``. ``callback(step, loss)`` is
    called after every step (a progress bar, a logger). Returns the student and the loss
    curve; Adam with a constant learning rate.
    """
    videos = np.asarray(videos, np.float32)
    if videos.ndim != 5:
        raise ValueError(f"videos: expected [N, T, H, W, 3], got shape {videos.shape}")
    latents, targets = teacher_targets(teacher_graphdef, teacher_params, videos)
    config, graphdef, params = init_student(teacher_graphdef, teacher_params, student_config, distill.seed)
    graphdef, trainable, frozen = nnx.split(nnx.merge(graphdef, params), TRAINABLE, ...)
    tx = optax.adam(distill.learning_rate)
    opt_state = tx.init(trainable)

    @functools.partial(jax.jit, donate_argnums=(0, 1))
    def train_step(trainable, opt_state, frozen, latents, targets):
        loss, grads = jax.value_and_grad(_loss, argnums=1)(graphdef, trainable, frozen, latents, targets)
        updates, opt_state = tx.update(grads, opt_state, trainable)
        return optax.apply_updates(trainable, updates), opt_state, loss

    rng = np.random.default_rng(distill.seed)
    batch = min(distill.batch_size, len(videos))
    losses = []
    for step in range(distill.steps):
        idx = rng.choice(len(videos), batch, replace=False)
        trainable, opt_state, loss = train_step(trainable, opt_state, frozen, latents[idx], targets[idx])
        losses.append(float(loss))
        if callback is not None:
            callback(step, losses[-1])
    graphdef, params = nnx.split(nnx.merge(graphdef, trainable, frozen))
    return DistillResult(config, graphdef, params, np.asarray(losses))


def moving_patterns(n: int, frames: int, height: int, width: int, seed: int = 0) -> np.ndarray:
    """``[n, frames, height, width, 3]`` smooth moving colour gratings in ``[-1, 1]``.

    Stand-in training videos when no folder is given: textured enough to need a decoder,
    with motion so the temporal layers matter.
    """
    rng = np.random.default_rng(seed)
    t = np.arange(frames, dtype=np.float32)[:, None, None, None]
    y = np.linspace(0, 1, height, dtype=np.float32)[None, :, None, None]
    x = np.linspace(0, 1, width, dtype=np.float32)[None, None, :, None]
    out = np.empty((n, frames, height, width, 3), np.float32)
    for i in range(n):
        video = np.zeros((frames, height, width, 3), np.float32)
        for _ in range(3):
            fy, fx = rng.uniform(1, 4, 2)
            vy, vx = rng.uniform(-0.05, 0.05, 2)
            colour = rng.uniform(-1, 1, 3).astype(np.float32)
            phase = rng.uniform(0, 2 * np.pi)
            video += colour * np.sin(2 * np.pi * (fy * (y + vy * t) + fx * (x + vx * t)) + phase)
        out[i] = np.tanh(video)
    return out
