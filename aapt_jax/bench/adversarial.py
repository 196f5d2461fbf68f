"""Stage 3 cost: one generator + discriminator update.

Time, at the tiny config, as the median seconds per update: ``student_forcing_step_s``:
with the generator rolling out through its KV cache (the default mode); ``teacher_forcing_step_s`` (App. D
mode) and ``long_video_step_s`` (one extension segment) and
``student_forcing_remat_step_s`` (remat per block) for comparison. Peak memory comes from
the compiled update's ``memory_analysis()``: arguments + outputs + temporaries - aliased
(donated) buffers, i.e. what XLA plans to hold at once, not a sampled RSS.

Memory of the generator's backward, backend-independently on abstract shapes
(``saved_residuals``: what the backward pass keeps, less its own arguments, i.e. params and
batch, which are held anyway): the student-forcing generator loss (rollout without gradient,
then one parallel replay judged by the discriminator) against a teacher-forcing parallel pass
on the same clip (ground-truth recycled frames, the same discriminator), and against the
literal design that differentiates the rollout through the cache under ``lax.scan``; at the
tiny size (K = 32 frames, window 16) and at ``configs/aapt_8b.py`` (30 frames, remat).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from aapt_jax import configs as aapt_configs
from aapt_jax.configs import Named
from aapt_jax.bench.train import compiled_step, seconds_per_step
from aapt_jax.model.discriminator import Discriminator, DiscriminatorConfig
from aapt_jax.model.dit import abstract_model
from aapt_jax.sample.streaming import init_state, rollout_frames
from aapt_jax.train.adversarial import generator_loss, student_generator_loss
from aapt_jax.train.plan import saved_activation_bytes

GIB = 2.0**30


def _abstract_players(cfg, dcfg):
    g_graphdef, g_params = abstract_model(cfg)
    d_graphdef, d_params = nnx.split(nnx.eval_shape(lambda: Discriminator(cfg, dcfg, rngs=nnx.Rngs(1))))
    return g_graphdef, nnx.to_pure_dict(g_params), d_graphdef, nnx.to_pure_dict(d_params)


def generator_loss_variants(cfg, dcfg, frames: int, batch: int = 1):
    """``{name: (loss(g_params, d_params, clip), abstract args)}`` for one generator update of
    ``frames`` generated frames: ``student`` (the update), ``teacher`` (ground-truth recycled
    frames, one parallel pass) and ``scan`` (the rollout differentiated through the cache)."""
    g_graphdef, g_params, d_graphdef, d_params = _abstract_players(cfg, dcfg)
    dtype = jnp.dtype(cfg.dtype)
    lat = lambda n: jax.ShapeDtypeStruct((batch, n, cfg.latent_height, cfg.latent_width,  # noqa: E731
                                          cfg.latent_channels), dtype)
    clip = dict(real=lat(1 + frames), noise=lat(frames), rolled=lat(frames),
                text=jax.ShapeDtypeStruct((batch, cfg.text_len, cfg.text_dim), dtype),
                t=jax.ShapeDtypeStruct((batch,), jnp.float32),
                real_logits=jax.ShapeDtypeStruct((batch, frames), jnp.float32),
                controls=(jax.ShapeDtypeStruct((batch, frames, cfg.latent_height, cfg.latent_width,
                                                cfg.control_channels), dtype) if cfg.control_channels else None))

    def judged(d_params, clip, frames_):
        disc = nnx.merge(d_graphdef, d_params)
        video = jnp.concatenate([clip["real"][:, :1], frames_], axis=1)
        return generator_loss(disc(video, clip["t"], clip["text"], clip["controls"]), clip["real_logits"])

    def student(gp, dp, clip):
        disc = nnx.merge(d_graphdef, dp)
        first = clip["real"][:, :1]
        loss, _ = student_generator_loss(g_graphdef, disc, None, first, first, clip["noise"], clip["rolled"],
                                         clip["controls"], clip["controls"], clip["text"], clip["t"],
                                         clip["real_logits"], gp)
        return loss

    def teacher(gp, dp, clip):
        gen, real = nnx.merge(g_graphdef, gp), clip["real"]
        v = gen(clip["noise"], jnp.full(clip["t"].shape, 1000.0), clip["text"], recycled=real[:, :-1],
                control=clip["controls"])
        return judged(dp, clip, clip["noise"] - v)

    def scan(gp, dp, clip):
        gen = nnx.merge(g_graphdef, gp)
        state = init_state(gen, clip["real"][:, :1], clip["text"])
        _, frames_ = rollout_frames(gen, state, clip["noise"], clip["controls"], detach_recycled=True)
        return judged(dp, clip, frames_)

    args = (g_params, d_params, clip)
    return {"student": (student, args), "teacher": (teacher, args), "scan": (scan, args)}


def student_forcing_memory(named: Named, quick: bool = False) -> list:
    out = []
    # tiny: the tiny world's generator with K = 32 generated frames and a window of 16
    config = named("tiny_world:adversarial")
    frames, window = (8, 4) if quick else (32, 16)
    cfg = aapt_configs.model_config(config).replace(window=window, remat=True)  # as the paper trains
    dcfg = DiscriminatorConfig(layers=tuple(config.train.disc_layers), head_dim=config.train.disc_head_dim)
    saved = {name: saved_activation_bytes(f, *args)
             for name, (f, args) in generator_loss_variants(cfg, dcfg, frames).items()}
    common = dict(config="tiny_world", frames=frames, window=window, batch=1, remat=True, source="saved_residuals")
    out.append(dict(name="student_forcing_saved_bytes_vs_parallel", value=saved["student"] / saved["teacher"],
                    unit="ratio", student_bytes=saved["student"], teacher_parallel_bytes=saved["teacher"], **common))
    out.append(dict(name="scan_through_cache_saved_bytes_vs_parallel", value=saved["scan"] / saved["teacher"],
                    unit="ratio", scan_bytes=saved["scan"], teacher_parallel_bytes=saved["teacher"], **common))
    if quick:
        return out
    # the paper's scale: aapt-8B, 30 generated frames at 736x416, remat per block, bf16
    cfg = aapt_configs.model_config(named("aapt-8B")).replace(remat=True, attention_impl="xla")
    dcfg = DiscriminatorConfig(layers=(11, 23, 35), head_dim=256)
    variants = generator_loss_variants(cfg, dcfg, 30)
    for name, metric in (("student", "aapt8b_student_forcing_saved_gib_per_sample"),
                         ("scan", "aapt8b_scan_through_cache_saved_gib_per_sample")):
        f, args = variants[name]
        out.append(dict(name=metric, value=saved_activation_bytes(f, *args) / GIB, unit="GiB",
                        config="aapt-8B", frames=30, window=cfg.window, remat=True, dtype=cfg.dtype,
                        discriminator_layers=list(dcfg.layers), source="saved_residuals, abstract shapes"))
    return out


def _peak_bytes(step, state, frozen, batch) -> int | None:
    analysis = step.lower(state, frozen, batch).compile().memory_analysis()
    if analysis is None:  # some backends do not report
        return None
    return int(analysis.argument_size_in_bytes + analysis.output_size_in_bytes + analysis.temp_size_in_bytes
               - analysis.alias_size_in_bytes)


def update_time(config, name: str, measure_steps: int, warmup_steps: int = 1, model_fields=None,
                **train_fields) -> list:
    stage, step, state, loader, config = compiled_step(config, model_fields, **train_fields)
    batches = [next(loader) for _ in range(warmup_steps + measure_steps)]
    peak = _peak_bytes(step, state, stage.frozen, batches[0])
    seconds = seconds_per_step(step, state, stage.frozen, batches, warmup_steps)
    tc = config.train
    common = dict(forcing=tc.forcing, extensions=tc.extensions, remat=bool(config.model.get("remat", False)),
                  batch_size=tc.batch_size,
                  segment_frames=tc.segment_frames or config.data.latent_frames, overlap=tc.overlap,
                  video_hw=[config.video.height, config.video.width], measured_steps=measure_steps,
                  statistic="median", backend=jax.default_backend())
    return [dict(name=name, value=seconds, unit="s", **common),
            dict(name=name.replace("_step_s", "_peak_bytes"), value=peak, unit="bytes",
                 source="compiled memory_analysis(): arguments + outputs + temporaries - aliased", **common)]


def run(named: Named, quick: bool = False):
    yield from student_forcing_memory(named, quick)
    n = 1 if quick else 5
    config = named("tiny_world:adversarial")
    yield from update_time(config, "student_forcing_step_s", n)
    yield from update_time(config, "teacher_forcing_step_s", n, forcing="teacher")
    yield from update_time(config, "long_video_step_s", n, extensions=1)
    # remat per block: the backward recomputes each block, trading time for activation memory
    yield from update_time(config, "student_forcing_remat_step_s", n, model_fields={"remat": True})
