"""Make the tiny world's built-in weights: ``python -m launch.pretrain --workdir=runs/pretrain``.

Trains the chain from scratch in ``WORKDIR/<stage>`` (the VAE, the stage 0 base model and,
for the ``aapt`` piece, stages 1-3), resumable like ``launch.pipeline``, then converts the
``--pieces`` into ``aapt_jax/weights/tiny_world/`` (bf16 generators, fp32 VAE, + config: the folders
``launch.convert`` writes) with their held-out figures in ``figures.json``
(:mod:`aapt_jax.eval.shipped`). The weights folder is replaced only once everything new is
written and measured.

    python -m launch.pretrain --workdir=runs/pretrain                     # vae, base, aapt
    python -m launch.pretrain --workdir=runs/pretrain --pieces=vae,base   # stop after the base

Exit statuses as ``launch.train`` (:mod:`aapt_jax.cli`).
"""

from __future__ import annotations

import os
import sys

from absl import app, flags, logging

from aapt_jax import cli
from aapt_jax.eval.shipped import PIECES, ship
from aapt_jax.io.files import WorkdirLock
from aapt_jax.train.pipeline import PIPELINE, run_stages, stage_config

_WORKDIR = flags.DEFINE_string("workdir", None, "Pipeline directory (one subdirectory per stage).", required=True)
_CONFIG = cli.define_config("configs/tiny_world.py", "Experiment config file (every stage gets its own config).")
_PIECES = flags.DEFINE_list("pieces", list(PIECES), f"Weights to make and ship, among {list(PIECES)}.")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments {argv[1:]}")
    logging.set_verbosity(logging.WARNING)
    get_config, overrides = cli.config_per_stage(flags.FLAGS["config"])
    pieces = tuple(_PIECES.value)
    if not set(pieces) <= set(PIECES) or "vae" not in pieces:
        raise ValueError(f"--pieces: expected 'vae' and a subset of {list(PIECES)}, got {list(pieces)}")
    last = max(PIPELINE.index(PIECES[p][0]) for p in pieces)
    workdir = os.path.abspath(_WORKDIR.value)
    with WorkdirLock(workdir, field="--workdir"):
        summaries = run_stages(get_config, workdir, stages=PIPELINE[:last + 1], overrides=overrides)
        if any(not s["finished"] for s in summaries.values()):
            return cli.EXIT_INTERRUPTED
        ship(workdir, stage_config(get_config, "adversarial", workdir, overrides), pieces=pieces,
             command="python -m launch.pretrain " + " ".join(sys.argv[1:]))
    return 0


if __name__ == "__main__":
    cli.run(main)
