"""The whole AAPT chain in one workdir: VAE -> stage 0 -> 1 -> 2 -> 3.

``run_stages`` trains each stage in ``workdir/<stage>`` from the config module's
``get_config(stage)``, wiring every stage to the ones it starts from (the VAE for all of
them, ``init_from`` and the discriminator's ``disc_init_from``). A stage whose export
already exists is skipped and an interrupted one resumes from its last checkpoint, so
rerunning the same command continues where it stopped.
"""

from __future__ import annotations

import os
import time
from typing import Callable

from ml_collections import ConfigDict

from aapt_jax.fields import suggestions
from aapt_jax.io import checkpoint as ckpt
from aapt_jax.train.loop import train
from aapt_jax.train.stages import STAGES, check_config

# The chain in order (aapt_jax.train.stages.STAGES); each stage starts from the first stage
# its init_from (and disc_init_from) names.
PIPELINE = tuple(STAGES)
VAE_STAGE = next(name for name, spec in STAGES.items() if spec.trains_vae)  # every other stage encodes with it


def stage_config(get_config: Callable[[str], ConfigDict], stage: str, workdir: str,
                 overrides: dict | None = None, pretrained: dict | None = None) -> ConfigDict:
    """The config of ``stage`` inside the pipeline rooted at ``workdir``.

    overrides: ``{'train.steps': 10, ...}`` dotted fields applied to every stage (fields a
    stage lacks are an error, naming the field).
    pretrained: ``{stage: source}`` for stages the pipeline does not train but starts from
    (e.g. ``{'vae': 'builtin:tiny_world/vae', 'base': 'builtin:tiny_world/base'}``, what a
    user of a real model downloads); every other stage comes from ``workdir/<stage>``.
    """
    c = get_config(stage)
    spec = STAGES[stage]
    source = lambda name: (pretrained or {}).get(name) or os.path.join(workdir, name)  # noqa: E731
    if not spec.trains_vae:
        c.vae.checkpoint = source(VAE_STAGE)
        c.train.init_from = source(spec.init_from[0]) if spec.init_from else ""
        if spec.disc_init_from:
            c.train.disc_init_from = source(spec.disc_init_from[0])
    for dotted, value in (overrides or {}).items():
        *path, leaf = dotted.split(".")
        target = c
        for depth, name in enumerate(path + [leaf]):
            if name not in target:
                raise ValueError(f"override {dotted}: the {stage} config has no field {name!r}"
                                 f"{suggestions([name], target.keys())}")
            if depth < len(path):
                target = target[name]
        target[leaf] = value
    return c


def pretrained_of(get_config: Callable[[str], ConfigDict], overrides: dict | None = None) -> dict:
    """``{stage: source}`` an experiment config starts from (its ``pretrained`` section, e.g.
    the tiny world's shipped VAE and base model), with ``--config.pretrained.*`` overrides;
    {} when the config names none. Empty sources are dropped (``--config.pretrained.base=``
    trains that stage instead)."""
    section = dict(get_config(PIPELINE[-1]).get("pretrained", None) or {})
    for dotted, value in (overrides or {}).items():
        head, _, name = dotted.partition(".")
        if head == "pretrained":
            section[name] = value
    return {stage: source for stage, source in section.items() if source}


def train_unless_done(config: ConfigDict, run_dir: str, *, log: Callable[[str], None] = print,
                      tag: str = "pipeline") -> dict:
    """Train (or resume) one run in ``run_dir`` unless its export already exists.

    Returns ``{"run": basename, "skipped": True, "finished": True, ...}`` for a finished
    run, else the training summary plus ``run`` and ``seconds`` (this call's wall time);
    ``finished`` is False when SIGTERM stopped it before its last step (rerun to resume).
    """
    name = os.path.basename(os.path.normpath(run_dir))
    if os.path.exists(os.path.join(run_dir, ckpt.EXPORT_DIR, "info.json")):
        log(f"[{tag}] {name}: already finished in {run_dir}, skipped")
        return {"run": name, "stage": config.train.stage, "skipped": True, "finished": True}
    log(f"[{tag}] {name}: training in {run_dir}")
    t0 = time.perf_counter()
    summary = train(config, run_dir)
    if not summary["finished"]:
        log(f"[{tag}] {name}: stopped before its last step; rerun to resume")
    return dict(summary, run=name, seconds=time.perf_counter() - t0)


def run_stages(get_config: Callable[[str], ConfigDict], workdir: str, *, stages=PIPELINE,
               overrides: dict | None = None, pretrained: dict | None = None,
               log: Callable[[str], None] = print) -> dict:
    """Train ``stages`` in order; returns ``{stage: summary}`` (with ``seconds`` taken).
    ``pretrained`` as :func:`stage_config`.

    Every stage's config is built and validated before the first one trains, so a bad
    field fails in seconds, not after an hour of earlier stages.
    """
    unknown = [s for s in stages if s not in PIPELINE]
    if unknown:
        raise ValueError(f"stages: expected a subset of {PIPELINE}, got {unknown}")
    configs = {s: stage_config(get_config, s, workdir, overrides, pretrained) for s in stages}
    for c in configs.values():  # every stage's fields, before the first one trains
        check_config(c)
    summaries = {}
    for s in stages:
        summaries[s] = train_unless_done(configs[s], os.path.join(workdir, s), log=log, tag="pipeline")
        if not summaries[s]["finished"]:
            break
    return summaries
