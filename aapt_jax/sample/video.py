"""Stream a video from an AAPT generator into files: one forward pass per latent frame,
each decoded at once by the causal VAE's streaming decoder (``python -m launch.sample``).

The camera follows a scripted walk (:func:`aapt_jax.sample.camera_path.walk_path`); without
checkpoints the weights are random (the video is noise, but every stage of the path runs).
"""

from __future__ import annotations

import logging
import os

import jax
import jax.numpy as jnp
import numpy as np
from ml_collections import ConfigDict
from tqdm import tqdm

from aapt_jax import configs
from aapt_jax.io.files import atomic_save_npy
from aapt_jax.io.generator_source import load_generator
from aapt_jax.io.vae_source import load_vae
from aapt_jax.io.video import unit_to_frames, write_mp4
from aapt_jax.model import vae as vae_lib
from aapt_jax.model.controls import control_maps
from aapt_jax.model.dit import abstract_model, create
from aapt_jax.parallel.mesh import mesh_from_config
from aapt_jax.sample.camera_path import walk_path
from aapt_jax.sample.streaming import StreamingSampler
from aapt_jax.timing import timed

log = logging.getLogger(__name__)


def read_first_frame(path: str, shape: tuple) -> jax.Array:
    """A normalized latent ``.npy`` of ``shape`` ``[B, 1, h, w, C]``; a pickled or non-.npy
    file is refused, never executed."""
    try:
        first = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as e:
        raise ValueError(f"--first_frame: expected a .npy float array, cannot read {path} "
                         f"({type(e).__name__}: {e})") from e
    if tuple(first.shape) != shape:
        raise ValueError(f"--first_frame: expected shape {list(shape)}, got {list(first.shape)}")
    return jnp.asarray(first)


def _weights(config: ConfigDict, cfg, checkpoint: str, seed: int):
    """(graphdef, params, vae): the generator of ``checkpoint`` (random without one) and the
    VAE of ``config.vae.checkpoint`` (random without one)."""
    if checkpoint:
        params, stage = load_generator(checkpoint, cfg, seed=seed, field="--checkpoint")
        graphdef, _ = abstract_model(cfg)
        log.info("generator from %s (%s)", checkpoint, stage)
    else:
        graphdef, params = create(cfg, seed)
        log.warning("no --checkpoint: random generator weights")
    vae = load_vae(config.vae.preset, config.vae.checkpoint, seed=seed, allow_random=True)
    if not config.vae.checkpoint:
        log.warning("no vae.checkpoint: decoding with a random VAE")
    return graphdef, params, vae


def _inputs(config: ConfigDict, cfg, ctrl_cfg, first, random_text: bool):
    """(first latent, text, controls of the scripted walk or None, per-step keys)."""
    K, B, seed = config.sample.num_frames, config.sample.batch, config.sample.seed
    k_first, k_text, k_steps = jax.random.split(jax.random.key(seed), 3)
    if first is None:
        first = jax.random.normal(k_first, (B, 1, cfg.latent_height, cfg.latent_width, cfg.latent_channels))
    text = (jax.random.normal(k_text, (B, cfg.text_len, cfg.text_dim)) if random_text
            else jnp.zeros((B, cfg.text_len, cfg.text_dim)))
    controls = None
    if ctrl_cfg.kind == "camera":
        hw = (config.video.height, config.video.width)
        intr, c2w = walk_path(1 + config.video.vae_temporal * K, hw)
        controls = control_maps(ctrl_cfg, hw, intrinsics=np.repeat(intr, B, 0), c2w=np.repeat(c2w, B, 0))
    return first, text, controls, jax.random.split(k_steps, K)


def stream_video(config: ConfigDict, *, checkpoint: str = "", first_frame: str = "", out: str) -> dict:
    """Stream ``config.sample.num_frames`` latent frames and write ``video.mp4``,
    ``latents.npy`` ``[B, 1 + K, h, w, C]`` and, with a camera config, ``controls.npy`` to
    ``out``. Returns a summary with the median step time (steps after the first, which
    compiles)."""
    configs.check_common(config)
    configs.check_sample(config)
    cfg, ctrl_cfg = configs.model_config(config), configs.control_config(config)
    if ctrl_cfg.kind == "pose":
        raise ValueError("control.kind: launch.sample drives 'none' or 'camera' (a scripted walk), got 'pose'")
    B, K = config.sample.batch, config.sample.num_frames
    shape = (B, 1, cfg.latent_height, cfg.latent_width, cfg.latent_channels)
    first = read_first_frame(first_frame, shape) if first_frame else None  # before anything loads
    graphdef, params, (vcfg, vae_graphdef, vae_params) = _weights(config, cfg, checkpoint, config.sample.seed)
    first, text, controls, keys = _inputs(config, cfg, ctrl_cfg, first, random_text=not checkpoint)

    sampler = StreamingSampler(cfg, graphdef, mesh=mesh_from_config(config.get("mesh")))
    state = sampler.init(params, first, text)
    decoder = vae_lib.decode_init(vcfg, B, (cfg.latent_height, cfg.latent_width))
    denorm = lambda z: vae_lib.denormalize_latents(vcfg, z)  # noqa: E731
    decoder, video0 = vae_lib.decode_step(vae_graphdef, vae_params, decoder, denorm(first))
    latents, video, step_times = [np.asarray(first)], [np.asarray(video0)], []
    for i in tqdm(range(K), desc="latent frames", unit="frame"):
        control = None if controls is None else controls[:, i:i + 1]
        (state, frame), seconds = timed(lambda: sampler.step(params, state, control, keys[i]))
        step_times.append(seconds)
        decoder, pixels = vae_lib.decode_step(vae_graphdef, vae_params, decoder, denorm(frame))
        latents.append(np.asarray(frame))
        video.append(np.asarray(pixels))
    latents, video = np.concatenate(latents, axis=1), np.concatenate(video, axis=1)
    if not np.isfinite(latents).all():
        raise FloatingPointError("generated latents contain NaN/Inf")
    os.makedirs(out, exist_ok=True)
    atomic_save_npy(os.path.join(out, "latents.npy"), latents)
    if controls is not None:
        atomic_save_npy(os.path.join(out, "controls.npy"), np.asarray(controls))
    write_mp4(os.path.join(out, "video.mp4"), unit_to_frames(np.asarray(video[0])), fps=config.video.fps)
    steady = float(np.median(step_times[1:])) if K > 1 else step_times[0]
    return dict(config=config.name, latent_frames=K, video_frames=int(video.shape[1]),
                latents_shape=list(latents.shape), first_step_s_with_compile=step_times[0],
                median_step_ms=1e3 * steady, generator_latent_fps=1.0 / steady, out=out)
