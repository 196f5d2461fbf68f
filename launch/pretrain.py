"""Make the tiny world's built-in weights: ``python -m launch.pretrain --workdir=runs/pretrain``.

Trains the chain in ``WORKDIR/<stage>`` (the VAE, the stage 0 base model and, for the
``aapt`` piece, stages 1-3), resumable like ``launch.pipeline``, then converts the
``--pieces`` into ``aapt_jax/weights/tiny_world/`` (bf16 generators, fp32 VAE, + config: the folders
``launch.convert`` writes) with their held-out figures in ``figures.json``
(:mod:`aapt_jax.eval.shipped`). ``--pieces`` is a stretch of the chain ``vae, base, aapt``;
the pieces before it are the shipped ones, which the run starts from and ships again as
they are. The weights folder is replaced only once everything new is written and measured.

    python -m launch.pretrain --workdir=runs/pretrain                     # vae, base, aapt
    python -m launch.pretrain --workdir=runs/pretrain --pieces=vae,base   # stop after the base
    python -m launch.pretrain --workdir=runs/ship --config=configs/tiny_world_ship.py \
        --pieces=aapt                                                     # stages 1-3 on the shipped base

Exit statuses as ``launch.train`` (:mod:`aapt_jax.cli`).
"""

from __future__ import annotations

import os
import sys

from absl import app, flags, logging

from aapt_jax import cli
from aapt_jax.eval.shipped import PIECES, WORLD, carried, ship
from aapt_jax.io.builtin import PREFIX
from aapt_jax.io.files import WorkdirLock
from aapt_jax.train.pipeline import PIPELINE, run_stages, stage_config

_WORKDIR = flags.DEFINE_string("workdir", None, "Pipeline directory (one subdirectory per stage).", required=True)
_CONFIG = cli.define_config("configs/tiny_world.py", "Experiment config file (every stage gets its own config).")
_PIECES = flags.DEFINE_list("pieces", list(PIECES), f"Weights to make and ship: consecutive pieces of the chain "
                            f"{list(PIECES)} (the ones before them are the shipped ones).")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments {argv[1:]}")
    logging.set_verbosity(logging.WARNING)
    get_config, overrides = cli.config_per_stage(flags.FLAGS["config"])
    pieces = tuple(_PIECES.value)
    keep = carried(pieces, WORLD)  # ValueError naming --pieces before anything trains
    # The shipped pieces the run starts from, as a user's pipeline starts from downloaded weights.
    pretrained = {PIECES[p][0]: f"{PREFIX}{WORLD}/{p}" for p in keep}
    first = PIPELINE.index(PIECES[keep[-1]][0]) + 1 if keep else 0
    last = PIPELINE.index(PIECES[pieces[-1]][0])
    workdir = os.path.abspath(_WORKDIR.value)
    with WorkdirLock(workdir, field="--workdir"):
        summaries = run_stages(get_config, workdir, stages=PIPELINE[first:last + 1], overrides=overrides,
                               pretrained=pretrained)
        if any(not s["finished"] for s in summaries.values()):
            return cli.EXIT_INTERRUPTED
        ship(workdir, stage_config(get_config, "adversarial", workdir, overrides, pretrained), world=WORLD,
             pieces=pieces, command="python -m launch.pretrain " + " ".join(sys.argv[1:]))
    return 0


if __name__ == "__main__":
    cli.run(main)
