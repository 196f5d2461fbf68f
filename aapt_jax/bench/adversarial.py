"""Stage 3 cost at the tiny config: one generator + discriminator update.

``student_forcing_step_s``: seconds per update with the generator rolling out through its
KV cache (the default mode); ``teacher_forcing_step_s`` (App. D mode) and
``long_video_step_s`` (one extension segment) and ``student_forcing_remat_step_s``
(remat per block) for comparison. Peak memory comes from the
compiled update's ``memory_analysis()``: arguments + outputs + temporaries - aliased
(donated) buffers, i.e. what XLA plans to hold at once, not a sampled RSS.
"""

from __future__ import annotations

import jax

from aapt_jax.bench.train import compiled_step, seconds_per_step


def _peak_bytes(step, state, frozen, batch) -> int | None:
    analysis = step.lower(state, frozen, batch).compile().memory_analysis()
    if analysis is None:  # some backends do not report
        return None
    return int(analysis.argument_size_in_bytes + analysis.output_size_in_bytes + analysis.temp_size_in_bytes
               - analysis.alias_size_in_bytes)


def update_time(name: str, measure_steps: int, warmup_steps: int = 1, model_fields=None, **train_fields) -> list:
    stage, step, state, loader, config = compiled_step("adversarial", model_fields, **train_fields)
    batches = [next(loader) for _ in range(warmup_steps + measure_steps)]
    peak = _peak_bytes(step, state, stage.frozen, batches[0])
    seconds = seconds_per_step(step, state, stage.frozen, batches, warmup_steps)
    tc = config.train
    common = dict(forcing=tc.forcing, extensions=tc.extensions, remat=bool(config.model.get("remat", False)),
                  batch_size=tc.batch_size,
                  segment_frames=tc.segment_frames or config.data.latent_frames, overlap=tc.overlap,
                  video_hw=[config.video.height, config.video.width], measured_steps=measure_steps,
                  backend=jax.default_backend())
    return [dict(name=name, value=seconds, unit="s", **common),
            dict(name=name.replace("_step_s", "_peak_bytes"), value=peak, unit="bytes",
                 source="compiled memory_analysis(): arguments + outputs + temporaries - aliased", **common)]


def run(quick: bool = False):
    n = 1 if quick else 5
    yield from update_time("student_forcing_step_s", n)
    yield from update_time("teacher_forcing_step_s", n, forcing="teacher")
    yield from update_time("long_video_step_s", n, extensions=1)
    # remat per block: the backward recomputes each block, trading time for activation memory
    yield from update_time("student_forcing_remat_step_s", n, model_fields={"remat": True})
