"""Distil the lightweight VAE decoder (AAPT App. C) from a full VAE.

    python -m launch.distill_decoder                                  # tiny VAE, synthetic clips
    python -m launch.distill_decoder --teacher=/path/to/Wan2.1/vae --videos=/data/clips \
        --height=416 --width=736 --steps=20000 --out=out/light_vae

Writes the student (teacher encoder + light decoder) to ``--out`` in the diffusers layout
(``config.json`` + safetensors; loadable with ``aapt_jax.io.vae_import.import_vae``) and the
loss curve to ``losses.npy``.
"""

import os

import numpy as np
from absl import flags, logging
from tqdm import tqdm

from aapt_jax import cli
from aapt_jax.io.files import atomic_save_npy
from aapt_jax.io.vae_import import import_vae, save_vae
from aapt_jax.io.video import frames_to_unit, list_videos, read_video
from aapt_jax.model.vae import init_vae
from aapt_jax.model.vae_config import PRESETS, get_vae_config
from aapt_jax.train.light_decoder import DistillConfig, distill_light_decoder, moving_patterns

_TEACHER = flags.DEFINE_string("teacher", "tiny",
                               f"A VAE preset {sorted(PRESETS)} (random init) or a diffusers VAE dir.")
_VIDEOS = flags.DEFINE_string("videos", None, "Folder of training videos; default: synthetic moving patterns.")
_NUM_VIDEOS = flags.DEFINE_integer("num_videos", 16, "Clips to train on (the first ones of the folder).")
_FRAMES = flags.DEFINE_integer("frames", 9, "Frames per clip: 1 + 4k.")
_HEIGHT = flags.DEFINE_integer("height", 64, "Clip height (multiple of 8).")
_WIDTH = flags.DEFINE_integer("width", 64, "Clip width (multiple of 8).")
_STEPS = flags.DEFINE_integer("steps", 300, "Training steps.")
_BATCH = flags.DEFINE_integer("batch_size", 4, "Clips per step.")
_LR = flags.DEFINE_float("learning_rate", 1e-3, "Adam learning rate.")
_SEED = flags.DEFINE_integer("seed", 0, "Seed for initialization and batch order.")
_OUT = flags.DEFINE_string("out", "out/light_vae", "Output directory.")


def _clips() -> np.ndarray:
    shape = (_FRAMES.value, _HEIGHT.value, _WIDTH.value)
    if not _VIDEOS.value:
        return moving_patterns(_NUM_VIDEOS.value, *shape, seed=_SEED.value)
    paths, skipped = list_videos(_VIDEOS.value)
    logging.info("%d readable videos in %s, %d skipped", len(paths), _VIDEOS.value, skipped)
    if not paths:
        raise ValueError(f"--videos: no readable videos in {_VIDEOS.value}")
    clips = [read_video(p, _HEIGHT.value, _WIDTH.value, num_frames=_FRAMES.value) for p in paths[:_NUM_VIDEOS.value]]
    return frames_to_unit(np.stack(clips))


def main(argv):
    del argv
    if _TEACHER.value in PRESETS:
        graphdef, params = init_vae(get_vae_config(_TEACHER.value), _SEED.value)
    else:
        _, graphdef, params = import_vae(_TEACHER.value)
    videos = _clips()
    distill = DistillConfig(steps=_STEPS.value, batch_size=_BATCH.value, learning_rate=_LR.value, seed=_SEED.value)
    with tqdm(total=distill.steps, desc="distill") as bar:
        def progress(step, loss):
            bar.set_postfix(loss=f"{loss:.4g}")
            bar.update(1)

        result = distill_light_decoder(graphdef, params, videos, distill=distill, callback=progress)
    save_vae(_OUT.value, result.config, result.params)
    atomic_save_npy(os.path.join(_OUT.value, "losses.npy"), result.losses)
    logging.info("loss %.4g -> %.4g; wrote %s", result.losses[0], result.losses[-1], _OUT.value)
    return 0


if __name__ == "__main__":
    cli.run(main)
