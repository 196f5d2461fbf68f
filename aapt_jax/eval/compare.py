"""Do the stage 1 (multi-step) and stage 2 (one-step) generators draw the same scenes?
(``python -m launch.compare_stages``)

On held-out clips (data seed 1; training used seed 0) both generators start from the true
first frame and follow the true camera path: stage 1 with the multi-step flow sampler and
every earlier frame as context, stage 2 with one forward pass per frame through the KV
cache (:class:`aapt_jax.eval.rollout.Generator` runs both). Returns PSNRs (stage 2 vs
stage 1, and each vs the true render) and writes ``true | stage 1 | stage 2`` side by side.
"""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np
from ml_collections import ConfigDict

from aapt_jax import configs
from aapt_jax.data.sources import make_source, validate_data_config
from aapt_jax.eval.metrics import psnr
from aapt_jax.eval.rollout import load_generator_export
from aapt_jax.io.vae_source import load_vae
from aapt_jax.io.video import frames_to_unit, unit_to_frames, write_mp4
from aapt_jax.model import vae as vae_lib
from aapt_jax.train.config import train_config
from aapt_jax.train.stages import make_encoder

HELD_OUT_SEED = 1  # the data seed of the compared clips (training uses the config's, 0)


def compare_stages(config: ConfigDict, *, adapt: str, distill: str, clips: int, out: str) -> dict:
    """Stream ``clips`` held-out clips with the ``adapt`` and ``distill`` exports; writes
    ``out/true_stage1_stage2.mp4`` (the first clip) and returns the figures."""
    configs.check_common(config)
    tc = train_config(config)
    stage1 = load_generator_export(adapt, config, field="--adapt", stages=("adapt",))
    stage2 = load_generator_export(distill, config, field="--distill", stages=("distill",))
    vcfg, vae_graphdef, vae_params = load_vae(config.vae.preset, config.vae.checkpoint)
    source = make_source({**validate_data_config(config.data), "seed": HELD_OUT_SEED})
    items = [source[i] for i in range(clips)]
    batch = {k: np.stack([it[k] for it in items]) for k in items[0]}
    latents, text, controls = jax.jit(make_encoder(config, vcfg, vae_graphdef))(vae_params, batch)
    K, first, key = latents.shape[1] - 1, latents[:, :1], jax.random.key(0)
    grid = dict(num_frames=K, num_steps=tc.sample_steps, shift=tc.sample_shift)
    v1 = stage1.generate(first, text, controls, key, full_context=True, **grid)
    v2 = stage2.generate(first, text, controls, key, **grid)

    decode = jax.jit(lambda z: vae_lib.decode(vae_graphdef, vae_params, vae_lib.denormalize_latents(vcfg, z)))
    real = np.asarray(decode(latents))[:, 1:]
    v1 = np.asarray(decode(jnp.concatenate([first, v1], 1)))[:, 1:]
    v2 = np.asarray(decode(jnp.concatenate([first, v2], 1)))[:, 1:]
    recon_floor = psnr(real, frames_to_unit(np.asarray(batch["video"][:, 1:])))
    os.makedirs(out, exist_ok=True)
    side = np.concatenate([real[0], v1[0], v2[0]], axis=2)
    write_mp4(os.path.join(out, "true_stage1_stage2.mp4"), unit_to_frames(side), fps=config.video.fps)
    return dict(
        clips=clips, latent_frames=K, video_frames_compared=int(real.shape[1]),
        psnr_stage2_vs_stage1=float(psnr(v2, v1).mean()),
        psnr_stage1_vs_true=float(psnr(v1, real).mean()), psnr_stage2_vs_true=float(psnr(v2, real).mean()),
        psnr_vae_reconstruction_vs_render=float(recon_floor.mean()),
        stage1_sampler=f"{tc.sample_steps} Euler steps, shift {tc.sample_shift}",
        stage2_sampler="1 step per latent frame, KV cache")
