"""Streaming sampler figures: constant step time, cache speedup, FLOPs, 8B projections.

Names (see README "Benchmarks"):
  step_time_ratio_late_vs_early      tiny, N=30, 1440 steps: median ms of steps 1400-1440 / 40-80
  cache_speedup_vs_recompute         tiny: recompute-the-window step time / cached step time
  flops_ratio_vs_diffusion_forcing   XLA flops of our step / a one-step diffusion-forcing step
                                     that computes two frames per step (paper Fig. 2)
  aapt_8b_tflops_per_latent_frame    XLA-counted, abstract shapes, 736x416, N=30, full window
  aapt_8b_h100_video_fps_at_50pct_mfu  4 video frames / (flops / (0.5 * 989e12))
  param_count_<config>               parameters (diffusers' count alongside for Wan configs)
"""

from __future__ import annotations

import statistics

import jax
import jax.numpy as jnp
from flax import nnx

from aapt_jax import configs
from aapt_jax.configs import Named
from aapt_jax.io.wan_transformer import abstract_params
from aapt_jax.model import kv_cache as kvc
from aapt_jax.model.config import DiTConfig
from aapt_jax.model.dit import abstract_model, create
from aapt_jax.sample.streaming import StreamingSampler
from aapt_jax.timing import median_seconds, timed

H100_BF16_DENSE_FLOPS = 989e12
# The configs whose parameters the suite counts (param_count_<name>).
COUNTED = ("tiny", "tiny_world", "wan2.1-t2v-1.3B", "wan2.1-t2v-14B", "aapt-8B")


def _median_ms(times, lo, hi):
    return 1e3 * statistics.median(times[lo:hi])


def _tiny_inputs(cfg: DiTConfig, key):
    k1, k2 = jax.random.split(key)
    first = jax.random.normal(k1, (1, 1, cfg.latent_height, cfg.latent_width, cfg.latent_channels))
    text = jax.random.normal(k2, (1, cfg.text_len, cfg.text_dim))
    return first, text


def _control(cfg: DiTConfig, key, frames):
    if not cfg.control_channels:
        return None
    return jax.random.normal(key, (1, frames, cfg.latent_height, cfg.latent_width, cfg.control_channels))


def step_times(cfg: DiTConfig, num_frames: int, seed: int = 0):
    """Wall time of every jitted ``step`` of a ``num_frames`` stream, in seconds."""
    graphdef, params = create(cfg, seed)
    sampler = StreamingSampler(cfg, graphdef)
    first, text = _tiny_inputs(cfg, jax.random.key(seed))
    controls = _control(cfg, jax.random.key(seed + 1), num_frames)
    state = sampler.init(params, first, text)
    keys = jax.random.split(jax.random.key(seed + 2), num_frames)
    times = []
    for i in range(num_frames):
        ctrl = None if controls is None else controls[:, i:i + 1]
        (state, _), seconds = timed(lambda: sampler.step(params, state, ctrl, keys[i]))
        times.append(seconds)
    return times, (graphdef, params, state, text, controls)


def recompute_time(cfg: DiTConfig, graphdef, params, text, controls, position: int, repeats: int):
    """Median seconds of a step that recomputes sink + window + current frame without cache."""
    frames = [0] + list(range(max(1, position - cfg.window), position + 1))
    n = len(frames)
    key = jax.random.key(7)
    shape = (1, n, cfg.latent_height, cfg.latent_width, cfg.latent_channels)
    x_t, recycled = jax.random.normal(key, shape), jax.random.normal(jax.random.key(8), shape)
    ctrl = None if controls is None else controls[:, :n]
    idx = jnp.asarray(frames, jnp.int32)

    @jax.jit
    def recompute(params, x_t, recycled, ctrl):
        v = nnx.merge(graphdef, params)(x_t, jnp.full((1,), 1000.0), text, recycled=recycled, control=ctrl,
                                        frame_indices=idx)
        return x_t[:, -1:] - v[:, -1:]

    return median_seconds(lambda: recompute(params, x_t, recycled, ctrl), repeats=repeats), n


def step_flops(cfg: DiTConfig, frames_per_step: int, batch: int = 1) -> float:
    """XLA-counted flops of one cached forward of ``frames_per_step`` frames, full cache,
    lowered on abstract shapes (nothing allocated)."""
    graphdef, params = abstract_model(cfg)
    dt = jnp.dtype(cfg.dtype)
    S, R = cfg.tokens_per_frame, cfg.window
    sds = jax.ShapeDtypeStruct
    kv = sds((cfg.num_layers, batch, 1 + R, S, cfg.num_heads, cfg.head_dim), dt)
    txt = sds((cfg.num_layers, batch, cfg.text_len, cfg.num_heads, cfg.head_dim), dt)
    cache = kvc.KVCache(k=kv, v=kv, text_k=txt, text_v=txt)
    lat = sds((batch, frames_per_step, cfg.latent_height, cfg.latent_width, cfg.latent_channels), dt)
    ctrl = (sds((batch, frames_per_step, cfg.latent_height, cfg.latent_width, cfg.control_channels), dt)
            if cfg.control_channels else None)

    def fwd(params, cache, x_t, recycled, ctrl):
        model = nnx.merge(graphdef, params)
        return model.cached_forward(cache, jnp.int32(R + 5), x_t, jnp.full((batch,), 1000.0),
                                    recycled=recycled, control=ctrl)

    lowered = jax.jit(fwd).trace(params, cache, lat, lat, ctrl).lower()
    return float(lowered.cost_analysis()["flops"])


def diffusers_param_count(config) -> int | None:
    """Parameters of diffusers' ``WanTransformer3DModel`` of ``config.model`` (on the meta
    device: nothing allocated); None without torch and diffusers."""
    try:
        import diffusers
        import torch
    except ImportError:
        return None
    m = config.model
    with torch.device("meta"):
        model = diffusers.WanTransformer3DModel(
            num_layers=m.num_layers, num_attention_heads=m.num_heads, attention_head_dim=m.head_dim,
            ffn_dim=m.ffn_dim, in_channels=m.latent_channels, out_channels=m.latent_channels,
            text_dim=m.text_dim, freq_dim=m.freq_dim)
    return sum(p.numel() for p in model.parameters())


def run(named: Named, quick: bool = False):
    tiny = configs.model_config(named("tiny"))
    num_frames = 60 if quick else 1440
    early, late = ((10, 20), (50, 60)) if quick else ((40, 80), (1400, 1440))
    times, (graphdef, params, state, text, controls) = step_times(tiny, num_frames)
    early_ms, late_ms = _median_ms(times, *early), _median_ms(times, *late)
    ctx = dict(config="tiny", window=tiny.window, tokens_per_frame=tiny.tokens_per_frame,
               backend=jax.default_backend())
    yield dict(name="step_time_ratio_late_vs_early", value=late_ms / early_ms, unit="ratio",
               early_ms=early_ms, late_ms=late_ms, early_frames=list(early), late_frames=list(late),
               num_frames=num_frames, **ctx)

    cached_s = statistics.median(times[early[0]:])
    rec_s, rec_frames = recompute_time(tiny, graphdef, params, text, controls, position=num_frames // 2,
                                       repeats=3 if quick else 30)
    yield dict(name="cache_speedup_vs_recompute", value=rec_s / cached_s, unit="x",
               cached_ms=1e3 * cached_s, recompute_ms=1e3 * rec_s, recompute_frames=rec_frames, **ctx)

    ours, df = step_flops(tiny, 1), step_flops(tiny, 2)
    yield dict(name="flops_ratio_vs_diffusion_forcing", value=ours / df, unit="ratio",
               step_flops=ours, diffusion_forcing_flops=df, **ctx)

    big_config = named("aapt-8B")
    if quick:  # same shapes per block, 2 of the 36 blocks: only checks that the path runs
        big_config.model.num_layers = 2
    # Counted on the dense jnp path: XLA's cost model sees a Pallas kernel as an opaque call
    # (no flops), and the config trains and streams with the kernels.
    big = configs.model_config(big_config).replace(attention_impl="xla")
    flops = step_flops(big, 1)
    yield dict(name="aapt_8b_tflops_per_latent_frame", value=flops / 1e12, unit="TFLOP",
               config="aapt-8B", num_layers=big.num_layers, resolution="736x416", window=big.window,
               tokens_per_frame=big.tokens_per_frame, keys_per_query=(big.window + 2) * big.tokens_per_frame)
    fps = big_config.video.vae_temporal / (flops / (0.5 * H100_BF16_DENSE_FLOPS))
    yield dict(name="aapt_8b_h100_video_fps_at_50pct_mfu", value=fps, unit="fps", config="aapt-8B",
               assumed_peak_flops=H100_BF16_DENSE_FLOPS, mfu=0.5)

    for name in COUNTED:
        config = named(name)
        count = sum(x.size for x in jax.tree.leaves(abstract_params(configs.model_config(config))))
        record = dict(name=f"param_count_{name}", value=count, unit="params", config=name)
        if name.startswith("wan") and not quick:
            theirs = diffusers_param_count(config)
            record.update(diffusers_value=theirs, equal=None if theirs is None else theirs == count)
        yield record
