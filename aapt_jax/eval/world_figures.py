"""Held-out figures of a VAE and a generator on the procedural world, with 95% intervals.

The world renders exactly along any camera path, so three questions have exact answers:

* how close the VAE gets to the true video (reconstruction PSNR, the ceiling of any
  generator in its latent space);
* how close a generator's video stays to the true render over seconds 1-5, next to the
  trivial baseline that repeats the true first frame;
* whether the generator follows the camera (``control_following_db``): PSNR against the
  render of its own path minus PSNR against the render of another path that leaves the
  same first frame along other actions (``random_walk(branch_seed=...)``). A generator that
  ignores its controls is as close to one as to the other and scores about 0 dB;
* whether it uses the camera at all, apart from drift (``control_teacher_forced_db``): its
  frames predicted from the TRUE previous frames with the path's own camera, against the
  same with the branched walk's camera, both scored on the own render. A generator that
  keeps its camera only until its own errors take over scores well above 0 here and near 0
  on ``control_following_db``; one that ignores the camera scores exactly 0 on both.

Every figure is a mean over paths with a 95% interval (Student t over the per-path values),
so two models are distinguishable only where their intervals say so.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from aapt_jax import configs
from aapt_jax.data.sources import clip_text
from aapt_jax.eval.drift import psnr
from aapt_jax.eval.rollout import (DriftRollout, decode_stream, encode_stream, eval_path,
                                   load_generator_export, vae_reconstruction)
from aapt_jax.io.generator_source import load_generator
from aapt_jax.model import flow
from aapt_jax.model.dit import abstract_model
from aapt_jax.sample.streaming import replay_frames
from aapt_jax.train.stages import ONESTEP

# Two-sided 95% Student t quantiles for 1 .. 30 degrees of freedom (n - 1 paths); past the
# table, the first Cornish-Fisher term, within 0.002 of the exact value.
_T95 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145,
        2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048,
        2.045, 2.042)


def t95(dof: int) -> float:
    """Two-sided 95% Student t quantile with ``dof`` degrees of freedom."""
    if dof <= len(_T95):
        return _T95[dof - 1]
    z = 1.959964
    return z + (z**3 + z) / (4 * dof)


def mean_ci95(values) -> tuple[float, float]:
    """``(mean, half width of the 95% interval)`` of per-path values (half width 0 for one)."""
    x = np.asarray(values, np.float64)
    if x.ndim != 1 or len(x) == 0:
        raise ValueError(f"values: expected a non-empty 1-D list, got shape {list(x.shape)}")
    if len(x) == 1:
        return float(x[0]), 0.0
    return float(x.mean()), float(t95(len(x) - 1) * x.std(ddof=1) / math.sqrt(len(x)))


def window_psnr(generated, real, fps: float, seconds: tuple[float, float]) -> float:
    """Mean per-frame PSNR (dB) of uint8 ``[T, H, W, 3]`` videos over frames
    ``[round(lo fps), round(hi fps)]`` (both ends included, clipped to the video)."""
    lo, hi = (int(round(s * fps)) for s in seconds)
    hi = min(hi, len(real) - 1)
    if lo > hi:
        raise ValueError(f"seconds: expected a window inside the {len(real)} frames at {fps} fps, got {seconds}")
    return float(np.mean(psnr(generated[lo:hi + 1], real[lo:hi + 1])))


def copy_first_frame(video) -> np.ndarray:
    """The baseline video: ``video[0]`` repeated for every frame, uint8 ``[T, H, W, 3]``."""
    video = np.asarray(video)
    return np.broadcast_to(video[:1], video.shape)


def control_following(generated, own, other, fps: float, seconds: tuple[float, float]) -> float:
    """PSNR(generated, own path's render) - PSNR(generated, other path's render), in dB over
    ``seconds``; both renders start from the same first frame."""
    return window_psnr(generated, own, fps, seconds) - window_psnr(generated, other, fps, seconds)


def summarize(name: str, values, unit: str = "dB", **context) -> dict:
    """One figure ``{'name', 'value', 'ci95', 'unit', 'per_path', ...}`` (values rounded to 0.01)."""
    mean, half = mean_ci95(values)
    return {"name": name, "value": round(mean, 2), "ci95": round(half, 2), "unit": unit,
            "per_path": [round(float(v), 2) for v in values], **context}


# ----- the figures themselves, shared by the world suite, launch.pretrain and the tests -----

HELDOUT_SEED = 7_000_003  # launch.evaluate's default: worlds and walks no training run draws
BASE_NOISE_T = 0.5  # the base model's denoising figure: flow time of the noised clip


def _latent_frames(config, seconds: float) -> int:
    return math.ceil(seconds * config.video.fps / config.video.vae_temporal)


def vae_heldout_psnr(config, vae, *, paths: int, seconds: float) -> list[float]:
    """Per path: mean per-frame PSNR (dB) of the VAE's streaming reconstruction of a held-out
    walk of ``seconds`` (:func:`aapt_jax.eval.rollout.vae_reconstruction`)."""
    k = _latent_frames(config, seconds)
    out = []
    for i in range(paths):
        video = eval_path(config, i, latent_frames=k, seed=HELDOUT_SEED).video
        out.append(float(np.mean(psnr(vae_reconstruction(vae, video), video))))
    return out


def base_denoise_psnr(config, vae, base_source: str, *, paths: int, latent_frames: int) -> list[float]:
    """Per path: PSNR (dB) of the base model's one-step clean estimate ``x_t - t v`` of a
    held-out clip noised to flow time :data:`BASE_NOISE_T` (fixed noise), decoded by ``vae``.

    The base (stage 0) model is bidirectional and text-only; this is a held-out check that it
    denoises the world's latents, not a generation figure."""
    cfg = configs.model_config(config).replace(causal=False, control_channels=0)
    params, _ = load_generator(base_source, cfg, stages=("base",), field="base")
    graphdef, _ = abstract_model(cfg)
    text = jnp.asarray(clip_text(config), jnp.float32)[None]

    @jax.jit
    def clean_estimate(params, latents, eps):
        x_t = flow.noisy(latents, eps, jnp.full((1,), BASE_NOISE_T))
        v = nnx.merge(graphdef, params)(x_t, jnp.full((1,), 1000.0 * BASE_NOISE_T), text)
        return x_t - BASE_NOISE_T * v

    out = []
    for i in range(paths):
        video = eval_path(config, i, latent_frames=latent_frames, seed=HELDOUT_SEED).video
        latents = encode_stream(vae, video)
        eps = jax.random.normal(jax.random.fold_in(jax.random.key(HELDOUT_SEED), i), latents.shape)
        estimate = decode_stream(vae, np.asarray(clean_estimate(params, latents, eps)))
        out.append(float(np.mean(psnr(estimate, video))))
    return out


def generator_heldout(config, vae, generator_source: str, *, paths: int, seconds: tuple[float, float]) -> dict:
    """Per path, over ``seconds``: the generator's PSNR against the true render
    (``generator``), the copied first frame's (``copy_first_frame``) and the camera-following
    difference (``control_following``). The generator starts from the VAE encoding of the
    true first frame and follows the path's camera (:class:`aapt_jax.eval.rollout.DriftRollout`)."""
    k = _latent_frames(config, seconds[1])
    generator = load_generator_export(generator_source, config, field="generator")
    runner = DriftRollout(config, vae)
    text = clip_text(config)
    fps = config.video.fps
    out = {"generator": [], "copy_first_frame": [], "control_following": [], "stage": generator.stage}
    for i in range(paths):
        path = eval_path(config, i, latent_frames=k, seed=HELDOUT_SEED)
        other = eval_path(config, i, latent_frames=k, seed=HELDOUT_SEED, branch_seed=i + 1).video
        generated, real = runner(generator, path, text, jax.random.fold_in(jax.random.key(HELDOUT_SEED), i))
        out["generator"].append(window_psnr(generated, real, fps, seconds))
        out["copy_first_frame"].append(window_psnr(copy_first_frame(real), real, fps, seconds))
        out["control_following"].append(control_following(generated, real, other, fps, seconds))
    return out


def teacher_forced_following(config, vae, generator_source: str, *, paths: int,
                             seconds: tuple[float, float]) -> list[float]:
    """Per path, over ``seconds`` (dB): PSNR against the true render of the one-step frames
    predicted from the true previous latent frames with the path's own camera, minus the
    same with the camera of the walk branched from its first frame (the same noise). One
    block-causal pass each (:func:`aapt_jax.sample.streaming.replay_frames`, what a stream
    computes when every recycled frame is the true one); one-step generators only."""
    k = _latent_frames(config, seconds[1])
    generator = load_generator_export(generator_source, config, field="generator")
    if generator.sampler != ONESTEP:
        raise ValueError(f"generator: expected a one-step generator (stage distill or adversarial), got "
                         f"{generator_source} of stage {generator.stage!r}")
    runner = DriftRollout(config, vae)
    text = clip_text(config)
    graphdef, fps = generator.graphdef, config.video.fps

    @jax.jit
    def predict(params, latents, text, controls, noise):
        return replay_frames(nnx.merge(graphdef, params), None, latents[:, :1], noise, latents[:, 1:], controls, text)

    out = []
    for i in range(paths):
        path = eval_path(config, i, latent_frames=k, seed=HELDOUT_SEED)
        branch = eval_path(config, i, latent_frames=k, seed=HELDOUT_SEED, branch_seed=i + 1)
        latents = encode_stream(vae, path.video)
        _, text_b, own = runner.inputs(path, text)
        other = runner.inputs(branch, text)[2]
        noise = jax.random.normal(jax.random.fold_in(jax.random.key(HELDOUT_SEED), i), latents[:, 1:].shape)
        first = np.asarray(latents[:, :1])
        videos = [decode_stream(vae, np.concatenate([first, np.asarray(predict(generator.params, latents, text_b,
                                                                                c, noise))], axis=1))
                  for c in (own, other)]
        out.append(window_psnr(videos[0], path.video, fps, seconds) - window_psnr(videos[1], path.video, fps, seconds))
    return out
