"""Do the stage 1 (multi-step) and stage 2 (one-step) generators draw the same scenes?

    python -m launch.compare_stages --adapt=runs/adapt --distill=runs/cd --config.vae.checkpoint=runs/vae

On held-out clips (data seed 1; training used seed 0) both generators start from the true
first frame and follow the true camera path: stage 1 with the multi-step flow sampler and
recycled context, stage 2 with one forward pass per frame through the KV cache. Prints
PSNRs (stage 2 vs stage 1, and each vs the true render) and writes
``true | stage 1 | stage 2`` side by side to ``--out`` (see :mod:`aapt_jax.eval.compare`).
"""

import json

from absl import flags

from aapt_jax import cli
from aapt_jax.eval.compare import compare_stages

_CONFIG = cli.define_config("configs/tiny_world.py:adapt", "Experiment config file.")
_ADAPT = flags.DEFINE_string("adapt", None, "Workdir of a finished stage 1 (adapt) run.", required=True)
_DISTILL = flags.DEFINE_string("distill", None, "Workdir of a finished stage 2 (distill) run.", required=True)
_CLIPS = flags.DEFINE_integer("clips", 4, "Held-out clips to compare.")
_OUT = flags.DEFINE_string("out", "out/compare_stages", "Output directory.")


def main(argv):
    del argv
    result = compare_stages(_CONFIG.value, adapt=_ADAPT.value, distill=_DISTILL.value, clips=_CLIPS.value,
                            out=_OUT.value)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    cli.run(main)
