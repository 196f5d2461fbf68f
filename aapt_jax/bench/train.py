"""Training throughput of every stage at the tiny config: ``train_steps_per_s``, one over
the median wall time of a step (each step timed until its outputs are ready).

Weights are random (``train.random_init``): throughput does not depend on their values,
and the suite then needs no earlier stage on disk.
"""

from __future__ import annotations

import jax
from ml_collections import ConfigDict

from aapt_jax.configs import Named
from aapt_jax.data.sources import make_loader, make_source
from aapt_jax.timing import median_seconds
from aapt_jax.train import stages
from aapt_jax.train.loop import make_train_step
from aapt_jax.train.sharded import layout_for
from aapt_jax.train.optim import make_optimizer


def compiled_step(config: ConfigDict, model_fields: dict | None = None, **train_fields):
    """(stage, jitted train step, initial state, batches iterator, config) of a stage's config
    with random weights and ``train_fields`` / ``model_fields`` changed, on its ``config.mesh``."""
    config = config.copy_and_resolve_references()  # a copy: the fields below change
    config.train.random_init = True
    config.train.update(train_fields)
    config.model.update(model_fields or {})
    layout = layout_for(config)
    stage = stages.build(config, layout)
    tx, _ = stage.optimizer or make_optimizer(config.train.optimizer, config.train.lr,
                                              weight_decay=config.train.weight_decay, grad_clip=config.train.grad_clip)
    rows = config.train.batch_size * stage.clips_per_example
    loader = make_loader(make_source(config.data), rows, seed=0)
    step = make_train_step(stage, tx, layout, rows)
    state = step.init_state(0)
    return stage, step, state, loader, config


def seconds_per_step(step, state, frozen, batches, warmup_steps: int) -> float:
    """Median wall time of the steps after ``warmup_steps`` (which absorb the compile), one
    step per batch."""
    run = {"state": state, "batches": iter(batches)}

    def one_step():
        run["state"], metrics = step(run["state"], frozen, next(run["batches"]))
        return metrics

    return median_seconds(one_step, repeats=len(batches) - warmup_steps, warmup=warmup_steps)


def steps_per_s(config: ConfigDict, measure_steps: int, warmup_steps: int = 2, **train_fields) -> dict:
    stage, step, state, loader, config = compiled_step(config, **train_fields)
    stage_name = stage.name
    batches = [next(loader) for _ in range(warmup_steps + measure_steps)]
    elapsed = measure_steps * seconds_per_step(step, state, stage.frozen, batches, warmup_steps)
    return dict(name="train_steps_per_s", value=measure_steps / elapsed, unit="steps/s", stage=stage_name,
                batch_size=config.train.batch_size, video_frames=1 + 4 * config.data.latent_frames,
                video_hw=[config.video.height, config.video.width], measured_steps=measure_steps,
                statistic="median", backend=jax.default_backend())


def run(named: Named, quick: bool = False):
    for name in ("vae", "base", "adapt", "distill", "adversarial"):
        yield steps_per_s(named(f"tiny_world:{name}"), measure_steps=2 if quick else 10)
