"""configs/aapt_8b.py at 1280x720 with the paper's window there, N = 15 latent frames
(paper: "1280x720 is trained and run with N = 15"), for 8 GPUs: every stage runs one sample
across the 8 devices (Ulysses context parallelism, ``context=8``), the players' params,
gradients and optimizer state sharded over those devices as configs/aapt_8b.py says.

1280x720 is 90x160 latents, 45x80 = 3600 tokens per latent frame (8 divides it: no pad).

    python -m launch.plan --config=configs/aapt_8b_720p.py:adversarial --config.train.batch_size=1
"""

from ml_collections import ConfigDict

from configs import aapt_8b

WINDOW = 15
STAGE_DEFAULTS = aapt_8b.STAGE_DEFAULTS


def get_config(stage: str = "adapt") -> ConfigDict:
    c = aapt_8b.get_config(stage)
    c.name = "aapt-8B-720p"
    c.model.window = WINDOW
    c.video.update(dict(height=720, width=1280))
    c.data.update(dict(height=720, width=1280))
    c.data.latent_frames = {"adapt_long": 3 * WINDOW}.get(stage, WINDOW)
    c.mesh = ConfigDict(dict(data=1, fsdp=-1, context=8, tensor=1))
    return c
