"""Train one stage: ``python -m launch.train --config=configs/tiny_world.py --workdir=DIR``.

The stage comes from ``config.train.stage`` (override with ``--config.train.stage=adapt``);
stages chain through ``config.train.init_from`` (the previous stage's workdir). Rerunning
the same command in the same workdir resumes from the last checkpoint.
"""

import json
import sys

from absl import app, flags, logging
from ml_collections import config_flags

from aapt_jax.train.loop import TrainingStopped, train

_CONFIG = config_flags.DEFINE_config_file("config", "configs/tiny_world.py", "Experiment config file.")
_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory (checkpoints, TensorBoard, samples).",
                               required=True)


def main(argv):
    del argv
    logging.set_verbosity(logging.WARNING)  # orbax logs every save at INFO; progress is the tqdm bar
    try:
        summary = train(_CONFIG.value, _WORKDIR.value)
    except TrainingStopped as e:
        logging.error("%s", e)
        return 1
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(app.run(main))
