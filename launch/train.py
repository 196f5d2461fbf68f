"""Train one stage: ``python -m launch.train --config=configs/tiny_world.py --workdir=DIR``.

On several hosts, run it once per host with the same flags and workdir (a shared
filesystem): under SLURM (``launch/slurm/train.sbatch``) and a Kubernetes Indexed Job or
JobSet (``launch/k8s/``) the processes find each other from the environment; elsewhere pass
``--coordinator_address=HOST:PORT --num_processes=N --process_id=I``
(:mod:`aapt_jax.parallel.distributed`). ``config.mesh`` then spans every process's devices.

The stage comes from ``config.train.stage`` (override with ``--config.train.stage=adapt``);
stages chain through ``config.train.init_from`` (the previous stage's workdir). Rerunning
the same command in the same workdir resumes from the last checkpoint. Exit statuses: 0
finished, 1 stopped (non-finite loss or state), 2 refused (bad config or input), 75
interrupted by SIGTERM after saving (rerun to resume); see :mod:`aapt_jax.cli`.
"""

import json

from absl import flags, logging

from aapt_jax import cli
from aapt_jax.parallel import distributed
from aapt_jax.train.loop import train

_CONFIG = cli.define_config("configs/tiny_world.py", "Experiment config file.")
_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory (checkpoints, TensorBoard, samples).",
                               required=True)
_COORDINATOR = flags.DEFINE_string("coordinator_address", None, "Multi-process runs: HOST:PORT of process 0 "
                                   "(not needed under SLURM or a Kubernetes Indexed Job).")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Multi-process runs: the number of processes.")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "Multi-process runs: this process's index.")


def main(argv):
    del argv
    logging.set_verbosity(logging.WARNING)  # orbax logs every save at INFO; progress is the tqdm bar
    distributed.initialize(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value)  # before any device
    summary = train(_CONFIG.value, _WORKDIR.value)
    print(json.dumps(summary))
    return 0 if summary["finished"] else cli.EXIT_INTERRUPTED


if __name__ == "__main__":
    cli.run(main)
