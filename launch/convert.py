"""Convert a stage's Orbax checkpoint into diffusers-layout folders for PyTorch.

    python -m launch.convert --checkpoint=runs/adversarial --out=/tmp/aapt_torch
    python -m launch.convert --checkpoint=runs/adversarial/checkpoints/400 --out=/tmp/d \
        --what=generator,discriminator --dtype=float32

Writes OUT/transformer (WanTransformer3DModel), OUT/aapt.json, OUT/vae (AutoencoderKLWan)
and, when asked, OUT/discriminator; refuses an existing OUT (exit status 2, as for any bad
input; see aapt_jax/cli.py). See aapt_jax/io/convert.py.
"""

import json

from absl import flags, logging

from aapt_jax import cli
from aapt_jax.io.convert import convert

_CHECKPOINT = flags.DEFINE_string("checkpoint", None, "A stage workdir or WORKDIR/checkpoints/STEP.", required=True)
_OUT = flags.DEFINE_string("out", None, "New output directory (must not exist).", required=True)
_DTYPE = flags.DEFINE_enum("dtype", "bfloat16", ["bfloat16", "float32"], "Transformer weight dtype.")
_WHAT = flags.DEFINE_string("what", "generator,vae", "Comma-separated: generator, vae, discriminator.")
_VAE = flags.DEFINE_string("vae", "", "VAE stage workdir or diffusers VAE folder (default: the stage's own).")


def main(argv):
    del argv
    logging.set_verbosity(logging.WARNING)  # orbax logs every restore at INFO
    print(json.dumps(convert(_CHECKPOINT.value, _OUT.value, dtype=_DTYPE.value, what=_WHAT.value, vae=_VAE.value)))
    return 0


if __name__ == "__main__":
    cli.run(main)
