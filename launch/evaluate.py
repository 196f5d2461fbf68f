"""Long-horizon drift evaluation: how fast do generators drift from the true video?

    python -m launch.evaluate --vae=runs/vae --models=stage1=runs/adapt,cd=runs/cd \\
        --seconds=10,60 --paths=4 --out=out/drift [--config=configs/tiny_world.py:distill]

Every model walks the same ``--paths`` camera paths of the procedural world (fixed seeds,
``--seed``, distinct from the training data seed): it starts from the VAE encoding of the
path's true first frame, follows the path's camera for the longest horizon once, and is
decoded by the streaming VAE decoder. The shorter horizons are prefixes of that video.
The stage recorded in each export picks the sampler (``adapt``: the multi-step stage 1
sampler with a fixed window; ``distill``/``adversarial``: one step per latent frame).
Seconds are counted at ``config.video.fps`` after the given first frame (a second is
``fps / 4`` latent frames). Writes to ``--out``:

* ``drift.json``: per model, the per-second metrics (mean over paths and per path), a summary
  per horizon with the half width of each figure's 95% interval over paths (``ci95``), and
  the paired differences between every two models (``paired``); the VAE reconstruction of
  the true video (``reference``) and the true first frame held still (``baseline``).
* ``drift.md``: a table, model x horizon: PSNR and SSIM means, PSNR at the last second,
  control following (PSNR against the path's own render minus against a walk branched from
  the same first frame), sharpness and colour distance, each ± its 95% interval; then the
  paired differences.
* ``drift.png``: PSNR, SSIM and control following per second, one line per model, shaded
  over the 95% interval.
* ``frames.png``: the first path's true render and each model's video at 0, 1, 2, 5, 10, 30,
  60 and 300 s (those within the video) and its last frame.
* ``<model>_path0.mp4``: real | generated, side by side, of the first path.
* ``rollouts/``: each model's report on each path as it finishes (and the reference's),
  keyed by the weights' fingerprint, the sampler and the path: a rerun into the same
  ``--out`` reads what is still valid and streams only the rest, so a stopped evaluation
  resumes and a model added later streams alone (:mod:`aapt_jax.eval.rollout_cache`).

Every flag is checked, and every export's info read, before anything compiles.
"""

from __future__ import annotations

import json

from absl import app, flags, logging

from aapt_jax import cli, configs
from aapt_jax.eval.report import evaluate
from aapt_jax.eval.rollout import WORLDS
from aapt_jax.train.stages import generator_stages

_CONFIG = cli.define_config("configs/tiny_world.py:distill", "Experiment config file (video size, fps, control, "
                            "VAE preset, stage 1 sampler steps).")
_VAE = flags.DEFINE_string("vae", None, "Workdir of a finished 'vae' stage (or a diffusers VAE directory).")
_MODELS = flags.DEFINE_string("models", None, "Comma-separated name=workdir pairs of finished generator stages "
                              f"({', '.join(sorted(generator_stages()))}).")
_SECONDS = flags.DEFINE_string("seconds", "10,60", "Comma-separated horizons in seconds; the longest is generated "
                               "once and the others are its prefixes.")
_PATHS = flags.DEFINE_integer("paths", 4, "Camera paths per model (the same for every model).")
_SEED = flags.DEFINE_integer("seed", 7_000_003, "Seed of the evaluation paths (must differ from config.data.seed).")
_WORLDS = flags.DEFINE_enum("worlds", "heldout", WORLDS, "'heldout': worlds of data seed --seed (places never "
                            "trained on); 'training': new walks through the training worlds.")
_OUT = flags.DEFINE_string("out", "out/drift", "Output directory.")

def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments {argv[1:]}")
    config = _CONFIG.value
    configs.check_common(config)
    result = evaluate(config, vae=_VAE.value, models=_MODELS.value, seconds=_SECONDS.value, paths=_PATHS.value,
                      out=_OUT.value, seed=_SEED.value, worlds=_WORLDS.value)
    logging.info("wrote %s", _OUT.value)
    print(json.dumps({name: m["horizons"] for name, m in result["models"].items()}))
    return 0


if __name__ == "__main__":
    cli.run(main)
