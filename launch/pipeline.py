"""The whole AAPT pipeline on one machine: ``python -m launch.pipeline --workdir=DIR``.

Trains the VAE and stages 0 -> 3 of ``--config`` (default: the tiny procedural camera
world, sized for a 2-core CPU) in ``DIR/<stage>``, then streams ``--seconds`` of video
along camera paths of held-out worlds with the stage 2 and stage 3 generators and writes
``DIR/drift/``: the drift report (``drift.md``, ``drift.json``, ``drift.png``) against the
true renders and one mp4 per model (real | generated). Rerunning the command resumes:
finished stages are skipped, an interrupted one continues from its last checkpoint.

    python -m launch.pipeline --workdir=runs/pipeline
    python -m launch.pipeline --workdir=/tmp/p --override=train.steps=3  # smoke run

Exit statuses as ``launch.train`` (:mod:`aapt_jax.cli`): 75 when SIGTERM stopped a stage
before its last step (rerun to resume). The pipeline directory is locked while it runs.
"""

from __future__ import annotations

import ast
import importlib
import json
import os
import time

from absl import app, flags, logging

from aapt_jax import cli
from aapt_jax.eval.report import evaluate, parse_seconds
from aapt_jax.io.files import WorkdirLock, atomic_write_json
from aapt_jax.train.pipeline import PIPELINE, run_stages, stage_config

_WORKDIR = flags.DEFINE_string("workdir", None, "Pipeline directory (one subdirectory per stage).", required=True)
_CONFIG = flags.DEFINE_string("config", "configs.tiny_world", "Config module with get_config(stage).")
_OVERRIDE = flags.DEFINE_multi_string("override", [], "FIELD=VALUE applied to every stage's config, e.g. "
                                      "train.steps=50 (VALUE is a Python literal).")
_SECONDS = flags.DEFINE_string("seconds", "10,60", "Horizons of the streamed videos (seconds).")
_PATHS = flags.DEFINE_integer("paths", 1, "Camera paths streamed per model.")
_MODELS = flags.DEFINE_list("eval_stages", ["distill", "adversarial"], "Generator stages to stream and "
                            "evaluate ('adapt' adds the multi-step stage 1 baseline, ~16x slower per frame).")
_SEED = flags.DEFINE_integer("seed", 7_000_003, "Seed of the evaluation camera paths.")


def parse_overrides(items) -> dict:
    out = {}
    for item in items:
        field, sep, value = item.partition("=")
        if not sep or not field:
            raise ValueError(f"--override: expected FIELD=VALUE, got {item!r}")
        try:
            out[field] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            out[field] = value  # a bare string
    return out


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments {argv[1:]}")
    logging.set_verbosity(logging.WARNING)
    workdir = os.path.abspath(_WORKDIR.value)
    get_config = importlib.import_module(_CONFIG.value).get_config
    overrides = parse_overrides(_OVERRIDE.value)
    bad = [s for s in _MODELS.value if s not in PIPELINE[2:]]
    if bad:
        raise ValueError(f"--eval_stages: expected stages among {PIPELINE[2:]}, got {bad}")
    eval_config = stage_config(get_config, "distill", workdir, overrides)
    # The evaluation flags are checked before the first stage trains (its exports come later).
    parse_seconds(_SECONDS.value, eval_config.video.fps, eval_config.video.vae_temporal)
    if _PATHS.value < 1:
        raise ValueError(f"--paths: expected an int >= 1, got {_PATHS.value}")
    if _SEED.value == eval_config.data.seed:
        raise ValueError(f"--seed: expected a seed distinct from the training data seed, got {_SEED.value}")
    with WorkdirLock(workdir, field="--workdir"):
        return _run(get_config, workdir, overrides, eval_config)


def _run(get_config, workdir, overrides, eval_config) -> int:
    t0 = time.perf_counter()
    summaries = run_stages(get_config, workdir, overrides=overrides)
    if any(not s.get("finished", True) for s in summaries.values()):
        return cli.EXIT_INTERRUPTED
    t_train = time.perf_counter() - t0
    models = ",".join(f"{s}={os.path.join(workdir, s)}" for s in _MODELS.value)
    result = evaluate(eval_config, vae=os.path.join(workdir, "vae"), models=models, seconds=_SECONDS.value,
                      paths=_PATHS.value, out=os.path.join(workdir, "drift"), seed=_SEED.value)
    report = {"train_seconds": round(t_train, 1), "total_seconds": round(time.perf_counter() - t0, 1),
              "stages": {k: {f: v.get(f) for f in ("first_10pct_loss", "last_10pct_loss", "seconds", "skipped")}
                         for k, v in summaries.items()},
              "drift": {name: m["horizons"] for name, m in result["models"].items()},
              "outputs": os.path.join(workdir, "drift")}
    atomic_write_json(os.path.join(workdir, "pipeline.json"), report)
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    cli.run(main)
