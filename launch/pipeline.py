"""The whole AAPT pipeline on one machine: ``python -m launch.pipeline --workdir=DIR``.

Trains the VAE and stages 0 -> 3 of ``--config`` (default: the tiny procedural camera
world, sized for a 2-core CPU) in ``DIR/<stage>``, then streams ``--seconds`` of video
along camera paths of held-out worlds with the stage 2 and stage 3 generators and writes
``DIR/drift/``: the drift report (``drift.md``, ``drift.json``, ``drift.png``, ``frames.png``) against the
true renders and one mp4 per model (real | generated). Rerunning the command resumes:
finished stages are skipped, an interrupted one continues from its last checkpoint.
Each stage's config is the file's ``get_config(STAGE)`` with the ``--config.*`` overrides.

    python -m launch.pipeline --workdir=runs/pipeline
    python -m launch.pipeline --workdir=/tmp/p --config.train.steps=3  # smoke run

Exit statuses as ``launch.train`` (:mod:`aapt_jax.cli`): 75 when SIGTERM stopped a stage
before its last step (rerun to resume). The pipeline directory is locked while it runs.
"""

from __future__ import annotations

import json
import os

from absl import app, flags, logging

from aapt_jax import cli
from aapt_jax.eval.pipeline import run_pipeline
from aapt_jax.train.pipeline import pretrained_of

_WORKDIR = flags.DEFINE_string("workdir", None, "Pipeline directory (one subdirectory per stage).", required=True)
_CONFIG = cli.define_config("configs/tiny_world.py", "Experiment config file (without :STAGE: every stage of "
                            "the chain gets its own config).")
_SECONDS = flags.DEFINE_string("seconds", "10,60", "Horizons of the streamed videos (seconds).")
_PATHS = flags.DEFINE_integer("paths", 1, "Camera paths streamed per model.")
_MODELS = flags.DEFINE_list("eval_stages", ["distill", "adversarial"], "Generator stages to stream and "
                            "evaluate ('adapt' adds the multi-step stage 1 baseline, ~16x slower per frame).")
_SEED = flags.DEFINE_integer("seed", 7_000_003, "Seed of the evaluation camera paths.")
_FROM_SCRATCH = flags.DEFINE_bool("from_scratch", False, "Also train the stages the config starts from "
                                  "(its 'pretrained' section: the tiny world's shipped VAE).")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments {argv[1:]}")
    logging.set_verbosity(logging.WARNING)
    get_config, overrides = cli.config_per_stage(flags.FLAGS["config"])
    pretrained = {} if _FROM_SCRATCH.value else pretrained_of(get_config, overrides)
    report = run_pipeline(get_config, os.path.abspath(_WORKDIR.value), overrides=overrides, pretrained=pretrained,
                          seconds=_SECONDS.value, paths=_PATHS.value, eval_stages=_MODELS.value, seed=_SEED.value)
    if report is None:
        return cli.EXIT_INTERRUPTED
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    cli.run(main)
