"""Do the stage 1 (multi-step) and stage 2 (one-step) generators draw the same scenes?

    python -m launch.compare_stages --adapt=runs/adapt --distill=runs/cd --config.vae.checkpoint=runs/vae

On held-out clips (data seed 1; training used seed 0) both generators start from the true
first frame and follow the true camera path: stage 1 with the multi-step flow sampler and
recycled context, stage 2 with one forward pass per frame through the KV cache. Prints
PSNRs (stage 2 vs stage 1, and each vs the true render) and writes
``true | stage 1 | stage 2`` side by side to ``--out``.
"""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
from absl import flags
from flax import nnx
from ml_collections import config_flags

from aapt_jax import cli, configs
from aapt_jax.data.sources import make_source
from aapt_jax.eval.metrics import psnr
from aapt_jax.io.generator_source import load_generator
from aapt_jax.io.vae_source import load_vae
from aapt_jax.io.video import frames_to_unit, unit_to_frames, write_mp4
from aapt_jax.model import vae as vae_lib
from aapt_jax.model.dit import abstract_model
from aapt_jax.sample.flow_sampler import sample_autoregressive
from aapt_jax.sample.streaming import init_state, rollout_frames
from aapt_jax.train.stages import make_encoder

_CONFIG = config_flags.DEFINE_config_file("config", "configs/tiny_world.py:adapt", "Experiment config file.")
_ADAPT = flags.DEFINE_string("adapt", None, "Workdir of a finished stage 1 (adapt) run.", required=True)
_DISTILL = flags.DEFINE_string("distill", None, "Workdir of a finished stage 2 (distill) run.", required=True)
_CLIPS = flags.DEFINE_integer("clips", 4, "Held-out clips to compare.")
_OUT = flags.DEFINE_string("out", "out/compare_stages", "Output directory.")


def main(argv):
    del argv
    config = _CONFIG.value
    configs.check_common(config)
    cfg = configs.model_config(config)
    graphdef, _ = abstract_model(cfg)
    p1, _ = load_generator(_ADAPT.value, cfg, stages=("adapt",), field="--adapt")
    p2, _ = load_generator(_DISTILL.value, cfg, stages=("distill",), field="--distill")
    vcfg, vae_graphdef, vae_params = load_vae(config.vae.preset, config.vae.checkpoint)
    config.data.seed = 1
    source = make_source(config.data)
    items = [source[i] for i in range(_CLIPS.value)]
    batch = {k: np.stack([it[k] for it in items]) for k in items[0]}
    latents, text, controls = jax.jit(make_encoder(config, vcfg, vae_graphdef))(vae_params, batch)
    K = latents.shape[1] - 1
    first = latents[:, :1]

    @jax.jit
    def stage1(params, key):
        return sample_autoregressive(nnx.merge(graphdef, params), first, text, controls, key, num_frames=K,
                                     num_steps=config.train.sample_steps, shift=config.train.sample_shift)

    @jax.jit
    def stage2(params, key):
        model = nnx.merge(graphdef, params)
        return rollout_frames(model, init_state(model, first, text), jax.random.normal(key, latents[:, 1:].shape),
                              controls)[1]

    decode = jax.jit(lambda z: vae_lib.decode(vae_graphdef, vae_params, vae_lib.denormalize_latents(vcfg, z)))
    key = jax.random.key(0)
    real = np.asarray(decode(latents))[:, 1:]
    v1 = np.asarray(decode(jnp.concatenate([first, stage1(p1, key)], 1)))[:, 1:]
    v2 = np.asarray(decode(jnp.concatenate([first, stage2(p2, key)], 1)))[:, 1:]
    recon_floor = psnr(real, frames_to_unit(np.asarray(batch["video"][:, 1:])))
    result = dict(
        clips=_CLIPS.value, latent_frames=K, video_frames_compared=int(real.shape[1]),
        psnr_stage2_vs_stage1=float(psnr(v2, v1).mean()),
        psnr_stage1_vs_true=float(psnr(v1, real).mean()), psnr_stage2_vs_true=float(psnr(v2, real).mean()),
        psnr_vae_reconstruction_vs_render=float(recon_floor.mean()),
        stage1_sampler=f"{config.train.sample_steps} Euler steps, shift {config.train.sample_shift}",
        stage2_sampler="1 step per latent frame, KV cache")
    os.makedirs(_OUT.value, exist_ok=True)
    side = np.concatenate([real[0], v1[0], v2[0]], axis=2)
    write_mp4(os.path.join(_OUT.value, "true_stage1_stage2.mp4"),
              unit_to_frames(side), fps=config.video.fps)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    cli.run(main)
