"""The shipped tiny world on held-out paths (``--suite=world``): the figures a user sees first.

Names (mean over paths, ``ci95`` the 95% interval half width, ``per_path`` the values):
  vae_psnr_heldout_db            shipped VAE, held-out walks of 2 s, streaming reconstruction PSNR
  generator_psnr_s1_5_db         shipped AAPT generator from the true first frame, along the
                                 walk's camera, seconds 1-5 against the true render
  copy_first_frame_psnr_s1_5_db  baseline: the true first frame repeated, same seconds
  control_following_db           PSNR(generated, own walk's render) - PSNR(generated, the render
                                 of a walk branched from the same first frame), seconds 1-5
  control_teacher_forced_db      the generator's frames predicted from the TRUE previous frames:
                                 own camera minus the branched walk's camera, PSNR on the own
                                 render, seconds 1-5 (uses the camera at all, apart from drift?)

Held-out walks are in worlds of a data seed no training run uses
(:data:`~aapt_jax.eval.world_figures.HELDOUT_SEED`): neither the places nor the walks were
seen in training. Every figure comes from the weights under ``aapt_jax/weights/tiny_world``
(:mod:`aapt_jax.io.builtin`), the ones ``launch.sample`` and the demo load by default.
"""

from __future__ import annotations

from typing import Iterator

from absl import logging

from aapt_jax.configs import Named
from aapt_jax.eval import world_figures as wf
from aapt_jax.io import builtin
from aapt_jax.io.vae_source import load_vae

VAE = "builtin:tiny_world/vae"
GENERATOR = "builtin:tiny_world/aapt"


def run(named: Named, quick: bool = False) -> Iterator[dict]:
    config = named("tiny_world:adversarial")
    paths = 2 if quick else 8
    seconds = (1.0, 2.0) if quick else (1.0, 5.0)
    common = {"paths": paths, "heldout_seed": wf.HELDOUT_SEED, "video_hw": [config.video.height, config.video.width]}
    vae = load_vae(config.vae.preset, VAE)
    yield wf.summarize("vae_psnr_heldout_db", wf.vae_heldout_psnr(config, vae, paths=paths, seconds=2.0),
                       seconds=2.0, **common)
    if GENERATOR not in builtin.shipped():
        logging.warning("world suite: %s is not shipped (python -m launch.pretrain makes it); "
                        "no generator figures", GENERATOR)
        return
    held = wf.generator_heldout(config, vae, GENERATOR, paths=paths, seconds=seconds)
    context = dict(common, seconds=list(seconds), stage=held["stage"])
    yield wf.summarize("generator_psnr_s1_5_db", held["generator"], **context)
    yield wf.summarize("copy_first_frame_psnr_s1_5_db", held["copy_first_frame"], **context)
    yield wf.summarize("control_following_db", held["control_following"], **context)
    yield wf.summarize("control_teacher_forced_db",
                       wf.teacher_forced_following(config, vae, GENERATOR, paths=paths, seconds=seconds), **context)
