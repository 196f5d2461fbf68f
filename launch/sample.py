"""Stream a video from an AAPT generator: one forward pass per latent frame, decoded as it goes.

    python -m launch.sample                                    # the tiny world's shipped generator
    python -m launch.sample --checkpoint=runs/pipeline/adversarial --config.sample.num_frames=240 --out=/tmp/stream
    python -m launch.sample --config=configs/tiny.py --checkpoint=   # random weights, scripted walk

Each generated latent frame is decoded at once by the causal VAE's streaming decoder (4
video frames per latent frame, no look-ahead). Writes ``video.mp4``, ``latents.npy``
``[B, 1 + K, h, w, C]`` and, with a camera config, ``controls.npy`` to ``--out``. The tiny
world starts from a rendered frame of world ``sample.seed`` and follows its camera walk; other
configs follow a scripted walk. ``--checkpoint=`` (empty) samples random weights (the video is
noise, but every stage of the path runs). See :mod:`aapt_jax.sample.video`.
"""

import json

from absl import flags

from aapt_jax import cli
from aapt_jax.sample.video import stream_video

_CONFIG = cli.define_config("configs/tiny_world.py", "Experiment config file.")
_CHECKPOINT = flags.DEFINE_string("checkpoint", None, "A finished stage's workdir, a diffusers transformer "
                                  "directory or builtin:WORLD/aapt; default: the config's shipped generator, "
                                  "if any; '' = random init.")
_FIRST = flags.DEFINE_string("first_frame", None, "Optional .npy latent [B, 1, h, w, C] (normalized) to start from.")
_OUT = flags.DEFINE_string("out", "out/sample", "Output directory.")


def main(argv):
    del argv
    summary = stream_video(_CONFIG.value, checkpoint=_CHECKPOINT.value, first_frame=_FIRST.value or "",
                           out=_OUT.value)
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    cli.run(main)
