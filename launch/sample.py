"""Stream a video from an AAPT generator: one forward pass per latent frame, decoded as it goes.

    python -m launch.sample                                    # tiny config, random init
    python -m launch.sample --config=configs/tiny_world.py --checkpoint=runs/cd \
        --config.vae.checkpoint=runs/vae --config.sample.num_frames=240 --out=/tmp/stream

Each generated latent frame is decoded at once by the causal VAE's streaming decoder (4
video frames per latent frame, no look-ahead). Writes ``video.mp4``, ``latents.npy``
``[B, 1 + K, h, w, C]`` and, with a camera config, ``controls.npy`` to ``--out``. The
camera follows a scripted walk. Without checkpoints the weights are random (the video is
noise, but every stage of the path runs).
"""

import json
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import flags, logging
from ml_collections import config_flags
from tqdm import tqdm

from aapt_jax import cli, configs
from aapt_jax.io.files import atomic_save_npy
from aapt_jax.io.generator_source import load_generator
from aapt_jax.io.vae_source import load_vae
from aapt_jax.io.video import unit_to_frames, write_mp4
from aapt_jax.model import vae as vae_lib
from aapt_jax.model.controls import control_maps
from aapt_jax.model.dit import abstract_model, create
from aapt_jax.sample.camera_path import walk_path
from aapt_jax.sample.streaming import StreamingSampler

_CONFIG = config_flags.DEFINE_config_file("config", "configs/tiny.py", "Experiment config file.")
_CHECKPOINT = flags.DEFINE_string("checkpoint", None, "A finished stage's workdir or a diffusers transformer "
                                  "directory; default: random init.")
_FIRST = flags.DEFINE_string("first_frame", None, "Optional .npy latent [B, 1, h, w, C] (normalized) to start from.")
_OUT = flags.DEFINE_string("out", "out/sample", "Output directory.")


def _read_first_frame(path: str, shape: tuple) -> jax.Array:
    try:
        first = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as e:  # a pickled or non-.npy file is refused, never executed
        raise ValueError(f"--first_frame: expected a .npy float array, cannot read {path} "
                         f"({type(e).__name__}: {e})") from e
    if tuple(first.shape) != shape:
        raise ValueError(f"--first_frame: expected shape {list(shape)}, got {list(first.shape)}")
    return jnp.asarray(first)


def main(argv):
    del argv
    config = _CONFIG.value
    configs.check_common(config)
    configs.check_sample(config)
    cfg = configs.model_config(config)
    ctrl_cfg = configs.control_config(config)
    K, B, seed = config.sample.num_frames, config.sample.batch, config.sample.seed
    if ctrl_cfg.kind == "pose":
        raise ValueError("control.kind: launch.sample drives 'none' or 'camera' (a scripted walk), got 'pose'")
    hw = (config.video.height, config.video.width)
    shape = (B, 1, cfg.latent_height, cfg.latent_width, cfg.latent_channels)
    first = _read_first_frame(_FIRST.value, shape) if _FIRST.value else None  # before anything loads
    if _CHECKPOINT.value:
        params, stage = load_generator(_CHECKPOINT.value, cfg, seed=seed, field="--checkpoint")
        graphdef, _ = abstract_model(cfg)
        logging.info("generator from %s (%s)", _CHECKPOINT.value, stage)
    else:
        graphdef, params = create(cfg, seed)
        logging.warning("no --checkpoint: random generator weights")
    vcfg, vae_graphdef, vae_params = load_vae(config.vae.preset, config.vae.checkpoint, seed=seed, allow_random=True)
    if not config.vae.checkpoint:
        logging.warning("no vae.checkpoint: decoding with a random VAE")

    key = jax.random.key(seed)
    k_first, k_text, k_steps = jax.random.split(key, 3)
    if first is None:
        first = jax.random.normal(k_first, shape)
    text = jnp.zeros((B, cfg.text_len, cfg.text_dim)) if _CHECKPOINT.value else jax.random.normal(
        k_text, (B, cfg.text_len, cfg.text_dim))
    controls = None
    if ctrl_cfg.kind == "camera":
        intr, c2w = walk_path(1 + config.video.vae_temporal * K, hw)
        controls = control_maps(ctrl_cfg, hw, intrinsics=np.repeat(intr, B, 0), c2w=np.repeat(c2w, B, 0))

    sampler = StreamingSampler(cfg, graphdef)
    state = sampler.init(params, first, text)
    decoder = vae_lib.decode_init(vcfg, B, (cfg.latent_height, cfg.latent_width))
    denorm = lambda z: vae_lib.denormalize_latents(vcfg, z)  # noqa: E731
    decoder, video0 = vae_lib.decode_step(vae_graphdef, vae_params, decoder, denorm(first))
    latents, video = [np.asarray(first)], [np.asarray(video0)]
    keys = jax.random.split(k_steps, K)
    step_times = []
    for i in tqdm(range(K), desc="latent frames", unit="frame"):
        t0 = time.perf_counter()
        state, frame = sampler.step(params, state, None if controls is None else controls[:, i:i + 1], keys[i])
        frame.block_until_ready()
        step_times.append(time.perf_counter() - t0)
        decoder, pixels = vae_lib.decode_step(vae_graphdef, vae_params, decoder, denorm(frame))
        latents.append(np.asarray(frame))
        video.append(np.asarray(pixels))
    latents = np.concatenate(latents, axis=1)
    video = np.concatenate(video, axis=1)
    if not np.isfinite(latents).all():
        raise FloatingPointError("generated latents contain NaN/Inf")
    os.makedirs(_OUT.value, exist_ok=True)
    atomic_save_npy(os.path.join(_OUT.value, "latents.npy"), latents)
    if controls is not None:
        atomic_save_npy(os.path.join(_OUT.value, "controls.npy"), np.asarray(controls))
    frames_u8 = unit_to_frames(np.asarray(video[0]))
    write_mp4(os.path.join(_OUT.value, "video.mp4"), frames_u8, fps=config.video.fps)
    steady = float(np.median(step_times[1:])) if K > 1 else step_times[0]
    summary = dict(config=config.name, latent_frames=K, video_frames=int(video.shape[1]),
                   latents_shape=list(latents.shape), first_step_s_with_compile=step_times[0],
                   median_step_ms=1e3 * steady, generator_latent_fps=1.0 / steady, out=_OUT.value)
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    cli.run(main)
