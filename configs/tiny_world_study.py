"""The recipes the drift study (docs/results.md) trained with: ``tiny_world`` with the
longer stages 1-3 that the README's main job ran before it was cut to fit 20 minutes on a
slower day (1500 / 250 / 200 updates, stage 3 at generator lr 5e-5, instead of 800 / 200 /
100 at 2e-5).

    python -m launch.study --workdir=runs/study --config=configs/tiny_world_study.py \\
        --config.train.sample_steps=4 --seconds=10,60,300
"""

from ml_collections import ConfigDict

from configs import tiny_world

CHANGES = {"adapt": dict(steps=1500), "distill": dict(steps=250), "adversarial": dict(steps=200, lr=5e-5)}

STAGE_DEFAULTS = tiny_world.with_changes(CHANGES)


def get_config(stage: str = "base") -> ConfigDict:
    """``--config=configs/tiny_world_study.py:STAGE``: ``tiny_world`` with the changes above."""
    return tiny_world.config_of(stage, STAGE_DEFAULTS)
