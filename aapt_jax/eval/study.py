"""The drift study (``python -m launch.study``): which stage 3 recipe drifts least?

From the config's pretrained VAE and base model, the study trains stage 1 and stage 2 once
(``WORKDIR/adapt``, ``WORKDIR/distill``), then the stage 3 variants of :data:`VARIANTS`,
each in ``WORKDIR/<variant>``, and streams all of them along the same held-out camera paths
(:func:`aapt_jax.eval.report.evaluate`, ``WORKDIR/report``):

* ``teacher`` / ``student``: adversarial training with teacher or student forcing (paper
  Fig. 7), both from stage 2 for the same number of updates;
* ``student_long``: ``student`` continued with long-video training (extension segments
  well past the attention window, paper 2.2 and Table 5);
* ``student_more``: ``student`` continued for as many updates without the extensions, so
  that the long-video comparison is not a comparison of training lengths.

Every run resumes like :func:`aapt_jax.train.pipeline.run_stages`; the wall time of each
finished run is kept in ``WORKDIR/train_seconds.json``.
"""

from __future__ import annotations

import json
import os
from typing import Callable

from ml_collections import ConfigDict

from aapt_jax.eval.report import evaluate, parse_seconds
from aapt_jax.io.files import WorkdirLock, atomic_write_json
from aapt_jax.train.pipeline import run_stages, stage_config, train_unless_done
from aapt_jax.train.stages import check_config

CHAIN = ("adapt", "distill")
LONG_PHASE = "adversarial_long"
# name -> (config phase, the run it starts from, overrides before the command line's).
VARIANTS = {
    "teacher": ("adversarial", "distill", {"train.forcing": "teacher"}),
    "student": ("adversarial", "distill", {"train.forcing": "student"}),
    "student_long": (LONG_PHASE, "student", {"train.forcing": "student"}),
    "student_more": ("adversarial", "student", {"train.forcing": "student"}),
}
# What the report calls the chain's stages.
CHAIN_NAMES = {"adapt": "stage1", "distill": "stage2"}


def variant_config(get_config: Callable[[str], ConfigDict], variant: str, workdir: str, overrides: dict,
                   pretrained: dict) -> ConfigDict:
    """The stage 3 config of ``variant`` in the study rooted at ``workdir``."""
    if variant not in VARIANTS:
        raise ValueError(f"--variants: expected names among {list(VARIANTS)}, got {variant!r}")
    phase, start, extra = VARIANTS[variant]
    if variant == "student_more":  # as many updates as the long-video run, without extensions
        extra = {**extra, "train.steps": get_config(LONG_PHASE).train.steps}
    c = stage_config(lambda _: get_config(phase), "adversarial", workdir, {**extra, **overrides}, pretrained)
    c.train.init_from = os.path.join(workdir, start)
    return c


def _add_seconds(times: dict, run: dict) -> None:
    """A resumed run's wall time adds to the earlier calls' (a skipped run adds nothing)."""
    if "seconds" in run:
        times[run["run"]] = round(times.get(run["run"], 0.0) + run["seconds"], 1)


def run_study(get_config: Callable[[str], ConfigDict], workdir: str, *, overrides: dict, pretrained: dict,
              variants, seconds: str, paths: int, seed: int) -> dict | None:
    """Train the chain and ``variants`` in ``workdir`` and evaluate them all; every config and
    flag is checked before the first run trains. Returns what ``study.json`` holds, or None
    when SIGTERM stopped a run (rerun to resume)."""
    configs = {v: variant_config(get_config, v, workdir, overrides, pretrained) for v in variants}
    for v, c in configs.items():
        if VARIANTS[v][1] not in (*CHAIN, *variants):
            raise ValueError(f"--variants: {v} starts from {VARIANTS[v][1]}, which is not in {list(variants)}")
        check_config(c)
    configs = {v: configs[v] for v in VARIANTS if v in configs}  # a run's start trains before it
    eval_config = stage_config(get_config, "distill", workdir, overrides, pretrained)
    parse_seconds(seconds, eval_config.video.fps, eval_config.video.vae_temporal)
    if isinstance(paths, bool) or not isinstance(paths, int) or paths < 1:
        raise ValueError(f"--paths: expected an int >= 1, got {paths!r}")
    if seed == eval_config.data.seed:
        raise ValueError(f"--seed: expected a seed distinct from the training data seed, got {seed}")
    with WorkdirLock(workdir, field="--workdir"):
        times_path = os.path.join(workdir, "train_seconds.json")
        times = {}
        if os.path.exists(times_path):
            with open(times_path) as f:
                times = json.load(f)
        chain = run_stages(get_config, workdir, stages=CHAIN, overrides=overrides, pretrained=pretrained)
        runs = list(chain.values())
        for run in runs:
            _add_seconds(times, run)
        atomic_write_json(times_path, times)
        for v, c in configs.items():
            if not runs[-1]["finished"]:
                break
            runs.append(train_unless_done(c, os.path.join(workdir, v), tag="study"))
            _add_seconds(times, runs[-1])
            atomic_write_json(times_path, times)  # after every run: a later crash keeps it
        if not runs[-1]["finished"]:
            return None
        models = {**{CHAIN_NAMES[s]: os.path.join(workdir, s) for s in CHAIN},
                  **{v: os.path.join(workdir, v) for v in configs}}
        result = evaluate(eval_config, vae=eval_config.vae.checkpoint, seconds=seconds, paths=paths, seed=seed,
                          models=",".join(f"{k}={d}" for k, d in models.items()),
                          out=os.path.join(workdir, "report"))
        report = {"train_seconds": times, "pretrained": pretrained, "models": models,
                  "rollout_seconds": {k: m["rollout_seconds"] for k, m in result["models"].items()},
                  "horizons": {k: m["horizons"] for k, m in result["models"].items()},
                  "outputs": os.path.join(workdir, "report")}
        atomic_write_json(os.path.join(workdir, "study.json"), report)
    return report
