"""The drift study: ``python -m launch.study --workdir=runs/study``.

From the config's pretrained VAE and base model (the tiny world's shipped ones), trains
stages 1 and 2 and the stage 3 variants (teacher forcing, student forcing, student forcing
+ long-video training, student forcing trained as long without it; see
:mod:`aapt_jax.eval.study`), then streams every model along ``--paths`` held-out camera
paths for the longest of ``--seconds`` and writes the report to ``WORKDIR/report``
(``drift.md`` with 95% intervals and paired differences, ``drift.json``, ``drift.png``,
``frames.png``, mp4s) and a summary with each run's wall time to ``WORKDIR/study.json``.
Rerunning resumes: finished runs are skipped and finished rollouts read back
(``WORKDIR/report/rollouts``); the workdir is locked while it runs.

    python -m launch.study --workdir=runs/study                       # 8 paths, 10 s / 60 s / 5 min
    python -m launch.study --workdir=/tmp/s --config.train.steps=2 --paths=2 --seconds=1  # smoke run

Exit statuses as ``launch.train`` (:mod:`aapt_jax.cli`).
"""

from __future__ import annotations

import json
import os

from absl import app, flags, logging

from aapt_jax import cli
from aapt_jax.eval.study import VARIANTS, run_study
from aapt_jax.train.pipeline import pretrained_of

_WORKDIR = flags.DEFINE_string("workdir", None, "Study directory (one subdirectory per run).", required=True)
_CONFIG = cli.define_config("configs/tiny_world.py", "Experiment config file (without :STAGE).")
_VARIANTS = flags.DEFINE_list("variants", list(VARIANTS), "Stage 3 variants to train and compare.")
_SECONDS = flags.DEFINE_string("seconds", "10,60,300", "Horizons (seconds); the longest is streamed once.")
_PATHS = flags.DEFINE_integer("paths", 8, "Held-out camera paths per model.")
_SEED = flags.DEFINE_integer("seed", 7_000_003, "Seed of the evaluation paths (held-out worlds).")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments {argv[1:]}")
    logging.set_verbosity(logging.WARNING)
    get_config, overrides = cli.config_per_stage(flags.FLAGS["config"])
    report = run_study(get_config, os.path.abspath(_WORKDIR.value), overrides=overrides,
                       pretrained=pretrained_of(get_config, overrides), variants=tuple(_VARIANTS.value),
                       seconds=_SECONDS.value, paths=_PATHS.value, seed=_SEED.value)
    if report is None:
        return cli.EXIT_INTERRUPTED
    print(json.dumps(report["horizons"]))
    return 0


if __name__ == "__main__":
    cli.run(main)
