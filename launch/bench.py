"""Print benchmark figures as JSON lines: ``python -m launch.bench --suite=streaming``."""

import json

from absl import flags

import configs
from aapt_jax import bench, cli

_SUITE = flags.DEFINE_string("suite", None, "Suite to run (a module of aapt_jax.bench).", required=True)
_QUICK = flags.DEFINE_bool("quick", False, "Tiny sizes, for checking that a suite runs.")
_OUT = flags.DEFINE_string("out", None, "Also append the JSON lines to this file.")


def main(argv):
    del argv
    suite = bench.load(_SUITE.value)
    sink = open(_OUT.value, "a") if _OUT.value else None
    for record in suite.run(configs.get, quick=_QUICK.value):
        line = json.dumps({"suite": _SUITE.value, **record})
        print(line, flush=True)
        if sink:
            sink.write(line + "\n")
    if sink:
        sink.close()
    return 0


if __name__ == "__main__":
    cli.run(main)
