"""VAE figures: streaming decode latency, light-decoder speed-up, streaming exactness.

* ``decode_ms_per_latent_frame_tiny``: one jitted streaming decode step (a latent frame in,
  ``temporal_ratio`` video frames out) of the ``tiny`` VAE, median after warm-up.
* ``light_vs_full_decode_speedup``: the same step for a Wan2.1-shaped decoder at narrow
  widths (base 32: widths [32, 64, 128, 128], 3 residual blocks per scale) over its App. C
  light version ([16, 32, 64, 128], 2 blocks), same resolution; ``flops_ratio`` is XLA's
  count for the two programs.
* ``streaming_vs_full_decode_max_abs_diff``: frame-by-frame decode against the one-pass
  decode of the same latents (tiny VAE).
"""

from __future__ import annotations

import dataclasses
from typing import Iterator

import jax
import jax.numpy as jnp
import numpy as np

from aapt_jax.model import vae as V
from aapt_jax.model.vae_config import VAEConfig, get_vae_config, light_decoder
from aapt_jax.timing import median_seconds

# Wan2.1's shape (dim_mult, blocks, temporal pattern) at a width a CPU runs.
NARROW_WAN = VAEConfig(base_dim=32, z_dim=16, dim_mult=(1, 2, 4, 4), num_res_blocks=2,
                       temporal_downsample=(False, True, True))


def _decode_step_timing(config: VAEConfig, latent_hw, warmup: int, repeats: int, seed: int = 0):
    """(median ms, XLA flops) of a non-first streaming decode step, batch 1."""
    graphdef, params = V.init_vae(config, seed)
    # A mid-video state: the later-step program is the one a stream runs over and over.
    state = dataclasses.replace(V.decode_init(config, 1, latent_hw), first=False)
    z = jnp.asarray(np.random.default_rng(seed).normal(size=(1, 1, *latent_hw, config.z_dim)), jnp.float32)
    flops = V.decode_step.trace(graphdef, params, state, z).lower().cost_analysis().get("flops", float("nan"))
    stream = [state]

    def step():
        stream[0], frames = V.decode_step(graphdef, params, stream[0], z)
        return frames

    return 1e3 * median_seconds(step, repeats=repeats, warmup=warmup), float(flops)


def _streaming_diff(config: VAEConfig, batch: int, latent_frames: int, latent_hw, seed: int = 0) -> float:
    graphdef, params = V.init_vae(config, seed)
    # Unit-normal latents: the scale of normalized ones, and no encoder to compile.
    z = V.denormalize_latents(config, jnp.asarray(
        np.random.default_rng(seed).normal(size=(batch, latent_frames, *latent_hw, config.z_dim)), jnp.float32))
    full = V.decode(graphdef, params, z)
    state = V.decode_init(config, batch, latent_hw)
    chunks = []
    for i in range(latent_frames):
        state, frames = V.decode_step(graphdef, params, state, z[:, i:i + 1])
        chunks.append(frames)
    return float(jnp.max(jnp.abs(jnp.concatenate(chunks, 1) - full)))


def run(named, quick: bool = False) -> Iterator[dict]:
    del named  # measures no experiment config
    backend = jax.default_backend()
    tiny = get_vae_config("tiny")
    # Full: the tiny pipeline's 96x128 video (configs/tiny.py). Quick: the streaming tests'
    # sizes, so a test session compiles these programs once.
    tiny_hw = (4, 6) if quick else (12, 16)
    warmup, repeats = (1, 3) if quick else (2, 10)
    ms, _ = _decode_step_timing(tiny, tiny_hw, warmup, repeats)
    yield {"name": "decode_ms_per_latent_frame_tiny", "value": round(ms, 3), "unit": "ms",
           "latent_hw": list(tiny_hw), "video_hw": [v * tiny.spatial_ratio for v in tiny_hw],
           "frames_per_step": tiny.temporal_ratio, "batch": 1, "backend": backend,
           "conv_impl": tiny.conv_impl, "repeats": repeats}

    light = light_decoder(NARROW_WAN)
    hw = (4, 4) if quick else (8, 8)
    full_ms, full_flops = _decode_step_timing(NARROW_WAN, hw, warmup, repeats)
    light_ms, light_flops = _decode_step_timing(light, hw, warmup, repeats)
    yield {"name": "light_vs_full_decode_speedup", "value": round(full_ms / light_ms, 3), "unit": "x",
           "full_ms": round(full_ms, 3), "light_ms": round(light_ms, 3),
           "flops_ratio": round(full_flops / light_flops, 3),
           "full_widths": list(NARROW_WAN.decoder_widths), "light_widths": list(light.decoder_widths),
           "full_blocks_per_scale": NARROW_WAN.dec_num_res_blocks + 1,
           "light_blocks_per_scale": light.dec_num_res_blocks + 1,
           "latent_hw": list(hw), "video_hw": [v * NARROW_WAN.spatial_ratio for v in hw], "batch": 1,
           "backend": backend, "repeats": repeats}

    frames = 3 if quick else 5
    diff = _streaming_diff(tiny, 1, frames, tiny_hw if quick else (8, 8))
    yield {"name": "streaming_vs_full_decode_max_abs_diff", "value": diff, "unit": "abs",
           "latent_frames": frames, "latent_hw": list(tiny_hw if quick else (8, 8)), "backend": backend}
