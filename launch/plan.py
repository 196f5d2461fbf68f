"""Size a cluster before renting it: the per-device plan of a stage's real train step (or of
one streaming step) on a target mesh, lowered on abstract shapes on this CPU host with
virtual devices; nothing is allocated and no file is read.

    python -m launch.plan --config=configs/aapt_8b.py:adapt --config.mesh.fsdp=8 --config.train.batch_size=8
    python -m launch.plan --config=configs/aapt_8b.py:adversarial --config.train.batch_size=1
    python -m launch.plan --config=configs/aapt_8b_720p.py:adversarial --stream

Prints JSON lines: one per device (params, gradients and optimizer-state bytes from the
actual shardings, saved activation bytes of the backward, the total in GiB, the per-device
flops), then a summary (``"device": "all"``: mesh, per-player strategies, the compiled
step's collectives). ``--devices`` is the target's device count where ``config.mesh`` has a
-1 axis. See :mod:`aapt_jax.train.plan` for what the figures count.
"""

import json

from absl import flags, logging

from aapt_jax import cli
from aapt_jax.train import plan

_CONFIG = cli.define_config("configs/aapt_8b.py:adapt", "Experiment config file, FILE.py[:STAGE].")
_DEVICES = flags.DEFINE_integer("devices", 8, "Devices of the target where config.mesh has a -1 axis.")
_STREAM = flags.DEFINE_bool("stream", False, "Plan one streaming step (the sampler) instead of the train step.")
_COMPILE = flags.DEFINE_bool("compile", True, "Compile the partitioned step for its flops and collectives "
                             "(--nocompile: memory only, faster).")


def main(argv):
    del argv
    logging.set_verbosity(logging.WARNING)
    for record in plan.in_subprocess(_CONFIG.value, kind="stream" if _STREAM.value else "train",
                                     devices=_DEVICES.value, compile=_COMPILE.value):
        print(json.dumps(record), flush=True)
    return 0


if __name__ == "__main__":
    cli.run(main)
