"""The whole AAPT pipeline with its drift report (``python -m launch.pipeline``): train every
stage of the chain (:func:`aapt_jax.train.pipeline.run_stages`), then stream the generator
stages along camera paths of held-out worlds and report their drift from the true renders
(:func:`aapt_jax.eval.report.evaluate`) in ``WORKDIR/drift``."""

from __future__ import annotations

import os
import time
from typing import Callable

from ml_collections import ConfigDict

from aapt_jax.eval.report import evaluate, parse_seconds
from aapt_jax.io.files import WorkdirLock, atomic_write_json
from aapt_jax.train.pipeline import PIPELINE, run_stages, stage_config
from aapt_jax.train.stages import generator_stages


def run_pipeline(get_config: Callable[[str], ConfigDict], workdir: str, *, overrides: dict, seconds: str,
                 paths: int, eval_stages, seed: int, pretrained: dict | None = None) -> dict | None:
    """Train the chain in ``workdir`` and report the drift of ``eval_stages``; every
    argument is checked before the first stage trains. ``pretrained`` (``{stage: source}``,
    e.g. the shipped VAE and base model) are not trained but started from. Returns what
    ``pipeline.json`` holds, or None when SIGTERM stopped a stage (rerun to resume)."""
    pretrained = dict(pretrained or {})
    unknown = [s for s in pretrained if s not in PIPELINE]
    if unknown:
        raise ValueError(f"pretrained: expected stages among {PIPELINE}, got {unknown}")
    bad = [s for s in eval_stages if s not in generator_stages()]
    if bad:
        raise ValueError(f"--eval_stages: expected stages among {generator_stages()}, got {bad}")
    eval_config = stage_config(get_config, "distill", workdir, overrides, pretrained)
    # The evaluation flags are checked before the first stage trains (its exports come later).
    parse_seconds(seconds, eval_config.video.fps, eval_config.video.vae_temporal)
    if paths < 1:
        raise ValueError(f"--paths: expected an int >= 1, got {paths}")
    if seed == eval_config.data.seed:
        raise ValueError(f"--seed: expected a seed distinct from the training data seed, got {seed}")
    with WorkdirLock(workdir, field="--workdir"):
        t0 = time.perf_counter()
        summaries = run_stages(get_config, workdir, stages=tuple(s for s in PIPELINE if s not in pretrained),
                               overrides=overrides, pretrained=pretrained)
        if any(not s["finished"] for s in summaries.values()):
            return None
        t_train = time.perf_counter() - t0
        models = ",".join(f"{s}={os.path.join(workdir, s)}" for s in eval_stages)
        result = evaluate(eval_config, vae=eval_config.vae.checkpoint, models=models, seconds=seconds,
                          paths=paths, out=os.path.join(workdir, "drift"), seed=seed)
        report = {"train_seconds": round(t_train, 1), "total_seconds": round(time.perf_counter() - t0, 1),
                  "pretrained": pretrained,
                  "stages": {k: {f: v.get(f) for f in ("first_10pct_loss", "last_10pct_loss", "seconds", "skipped")}
                             for k, v in summaries.items()},
                  "drift": {name: m["horizons"] for name, m in result["models"].items()},
                  "outputs": os.path.join(workdir, "drift")}
        atomic_write_json(os.path.join(workdir, "pipeline.json"), report)
    return report
