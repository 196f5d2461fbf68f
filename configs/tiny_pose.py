"""The tiny CPU pipeline with pose control, on the procedural articulated figure.

Same stages, sizes and schedules as ``configs/tiny_world.py`` (see it for the chain of
commands); the data is :class:`aapt_jax.data.sources.PoseSource` (a stick figure with exact
keypoints) and the control is its 13 joints as heatmaps:
    python -m launch.train --workdir=runs/pose_vae   --config=configs/tiny_pose.py:vae
    python -m launch.train --workdir=runs/pose_base  --config=configs/tiny_pose.py:base \
        --config.vae.checkpoint=runs/pose_vae
    python -m launch.train --workdir=runs/pose_adapt --config=configs/tiny_pose.py:adapt \
        --config.vae.checkpoint=runs/pose_vae --config.train.init_from=runs/pose_base
    python -m launch.train --workdir=runs/pose_cd    --config=configs/tiny_pose.py:distill \
        --config.vae.checkpoint=runs/pose_vae --config.train.init_from=runs/pose_adapt
"""

from ml_collections import ConfigDict

from aapt_jax.model.pose import DEFAULT_SKELETON
from configs import tiny_world

STAGE_DEFAULTS = tiny_world.STAGE_DEFAULTS


def get_config(stage: str = "base") -> ConfigDict:
    """``--config=configs/tiny_pose.py:STAGE`` picks the stage and its defaults."""
    c = tiny_world.get_config(stage)  # validates the stage name
    c.name = "tiny_pose"
    # fold 1: one heatmap sample per latent cell and video frame, 13 joints x 4 frames = 52
    # channels, fewer than the model width (96). sigma 0.5 latent cells: at 64x64 (8x8 latents)
    # a joint lights up its own cell and, faintly, its neighbours, so sub-cell motion shows.
    c.control = ConfigDict(dict(kind="pose", fold=1, num_joints=DEFAULT_SKELETON.num_joints, pose_sigma=0.5))
    c.data.source = "pose"
    return c
