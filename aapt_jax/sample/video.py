"""Stream a video from an AAPT generator into files: one forward pass per latent frame,
each decoded at once by the causal VAE's streaming decoder (``python -m launch.sample``).

A world config (``configs/tiny_world.py``) starts from a rendered frame of a procedural world
and follows that world's camera walk, with the world's shipped generator and VAE unless told
otherwise; other configs start from a random latent and follow a scripted walk
(:func:`aapt_jax.sample.camera_path.walk_path`). Without checkpoints the weights are random
(the video is noise, but every stage of the path runs).
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
from aapt_jax.data.sources import clip_text
from aapt_jax.data.world import make_world, render_path
from aapt_jax.data.world_camera import random_walk
from aapt_jax.io import builtin
from aapt_jax.io.files import atomic_save_npy
from aapt_jax.io.generator_source import load_generator
from aapt_jax.io.vae_source import load_vae
from aapt_jax.io.video import frames_to_unit, unit_to_frames, write_mp4
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


def _weights(config: ConfigDict, cfg, checkpoint: str, vae_source: str, seed: int):
    """(graphdef, params, vae): the generator of ``checkpoint`` and the VAE of ``vae_source``
    (each random when '')."""
    if checkpoint:
        params, stage = load_generator(checkpoint, cfg, seed=seed, field="--checkpoint")
        graphdef, _ = abstract_model(cfg)
        log.info("generator from %s (%s)", checkpoint, stage)
    else:
        graphdef, params = create(cfg, seed)
        log.warning("no --checkpoint: random generator weights")
    vae = load_vae(config.vae.preset, vae_source, seed=seed, allow_random=True)
    if not vae_source:
        log.warning("no vae.checkpoint: decoding with a random VAE")
    return graphdef, params, vae


def _world_start(config: ConfigDict, ctrl_cfg, vae):
    """(first latent ``[B, 1, h, w, C]`` normalized, camera controls or None) of a walk in the
    procedural world ``config.sample.seed``: its first frame rendered and encoded by the VAE,
    then the walk's camera, as the training clips were made."""
    vcfg, vae_graphdef, vae_params = vae
    B, K, seed = config.sample.batch, config.sample.num_frames, config.sample.seed
    hw = (config.video.height, config.video.width)
    world = make_world(seed)
    path = random_walk(world, 1 + config.video.vae_temporal * K, seed, hw)
    rgb = render_path(world, path.intrinsics[:1], path.c2w[:1], hw)  # uint8 [1, H, W, 3]
    mean, _ = vae_lib.encode(vae_graphdef, vae_params, frames_to_unit(rgb)[None])
    first = jnp.repeat(vae_lib.normalize_latents(vcfg, mean), B, axis=0)
    controls = None
    if ctrl_cfg.kind == "camera":
        controls = control_maps(ctrl_cfg, hw, intrinsics=np.repeat(path.intrinsics[None], B, 0),
                                c2w=np.repeat(path.c2w[None], B, 0))
    return first, controls


def _inputs(config: ConfigDict, cfg, ctrl_cfg, first, trained: bool, vae):
    """(first latent, text, controls or None, per-step keys). A world config without a given
    first frame starts in a world and follows its walk; otherwise the first latent is
    random (or given) and the camera follows the scripted walk."""
    K, B, seed = config.sample.num_frames, config.sample.batch, config.sample.seed
    k_first, k_text, k_steps = jax.random.split(jax.random.key(seed), 3)
    # A trained generator gets the text its clips carried; a random one random text (so the
    # text path runs on something).
    text = (jnp.repeat(jnp.asarray(clip_text(config))[None], B, axis=0) if trained
            else jax.random.normal(k_text, (B, cfg.text_len, cfg.text_dim)))
    if first is None and (config.get("data") or {}).get("source") == "world":
        first, controls = _world_start(config, ctrl_cfg, vae)
        return first, text, controls, jax.random.split(k_steps, K)
    if first is None:
        first = jax.random.normal(k_first, (B, 1, cfg.latent_height, cfg.latent_width, cfg.latent_channels))
    controls = None
    if ctrl_cfg.kind == "camera":
        hw = (config.video.height, config.video.width)
        intr, c2w = walk_path(1 + config.video.vae_temporal * K, hw)
        controls = control_maps(ctrl_cfg, hw, intrinsics=np.repeat(intr, B, 0), c2w=np.repeat(c2w, B, 0))
    return first, text, controls, jax.random.split(k_steps, K)


def stream_video(config: ConfigDict, *, checkpoint: str | None = None, first_frame: str = "", out: str) -> dict:
    """Stream ``config.sample.num_frames`` latent frames and write ``video.mp4``,
    ``latents.npy`` ``[B, 1 + K, h, w, C]`` and, with a camera config, ``controls.npy`` to
    ``out``. ``checkpoint`` None: the config's shipped generator (``builtin:NAME/aapt``) if
    there is one, else random weights as with ''. Returns a summary with the median step time
    (steps after the first, which compiles)."""
    configs.check_common(config)
    configs.check_sample(config)
    cfg, ctrl_cfg = configs.model_config(config), configs.control_config(config)
    if ctrl_cfg.kind == "pose":
        raise ValueError("control.kind: launch.sample drives 'none' or 'camera' (a scripted walk), got 'pose'")
    B, K = config.sample.batch, config.sample.num_frames
    shape = (B, 1, cfg.latent_height, cfg.latent_width, cfg.latent_channels)
    first = read_first_frame(first_frame, shape) if first_frame else None  # before anything loads
    checkpoint, vae_source = builtin.sources(config, checkpoint)
    graphdef, params, vae = _weights(config, cfg, checkpoint, vae_source, config.sample.seed)
    vcfg, vae_graphdef, vae_params = vae
    first, text, controls, keys = _inputs(config, cfg, ctrl_cfg, first, bool(checkpoint), vae)

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
    return dict(config=config.name, generator=checkpoint or "random init", latent_frames=K, video_frames=int(video.shape[1]),
                latents_shape=list(latents.shape), first_step_s_with_compile=step_times[0],
                median_step_ms=1e3 * steady, generator_latent_fps=1.0 / steady, out=out)
