"""Train one stage: ``python -m launch.train --config=configs/tiny_world.py --workdir=DIR``.

The stage comes from ``config.train.stage`` (override with ``--config.train.stage=adapt``);
stages chain through ``config.train.init_from`` (the previous stage's workdir). Rerunning
the same command in the same workdir resumes from the last checkpoint. Exit statuses: 0
finished, 1 stopped (non-finite loss or state), 2 refused (bad config or input), 75
interrupted by SIGTERM after saving (rerun to resume); see :mod:`aapt_jax.cli`.
"""

import json

from absl import flags, logging

from aapt_jax import cli
from aapt_jax.train.loop import train

_CONFIG = cli.define_config("configs/tiny_world.py", "Experiment config file.")
_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory (checkpoints, TensorBoard, samples).",
                               required=True)


def main(argv):
    del argv
    logging.set_verbosity(logging.WARNING)  # orbax logs every save at INFO; progress is the tqdm bar
    summary = train(_CONFIG.value, _WORKDIR.value)
    print(json.dumps(summary))
    return 0 if summary["finished"] else cli.EXIT_INTERRUPTED


if __name__ == "__main__":
    cli.run(main)
