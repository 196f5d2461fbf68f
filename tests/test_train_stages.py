"""The stages chain from an empty workdir: vae -> base (0) -> adapt (1) -> distill (2)."""

import json

import numpy as np

from aapt_jax.io import checkpoint as ckpt
from aapt_jax.io.video import read_video
from aapt_jax.train.loop import train
from configs import tiny_world


def _config(stage, **train_fields):
    c = tiny_world.get_config(stage)
    c.video.height = c.video.width = c.data.height = c.data.width = 32
    c.data.latent_frames = min(c.data.latent_frames, 2)
    c.train.update(dict(steps=3, batch_size=1, checkpoint_every=3, log_every=1, sample_every=3, warmup_steps=0,
                        sample_steps=2, distill_steps=4))
    c.train.update(train_fields)
    return c


def test_stage_chain_runs_and_exports(tmp_path):
    runs = {s: tmp_path / s for s in ("vae", "base", "adapt", "distill")}
    train(_config("vae"), str(runs["vae"]))
    from aapt_jax.io.vae_source import load_vae

    vae_info = ckpt.export_info(str(runs["vae"]))
    assert len(vae_info["latents_mean"]) == len(vae_info["latents_std"]) == 16
    assert all(s > 0 for s in vae_info["latents_std"])
    vcfg, _, _ = load_vae("tiny", str(runs["vae"]))
    assert vcfg.std == tuple(vae_info["latents_std"])  # the generator stages train on normalized latents
    for stage, init in (("base", ""), ("adapt", "base"), ("distill", "adapt")):
        c = _config(stage, init_from=str(runs[init]) if init else "")
        c.vae.checkpoint = str(runs["vae"])
        summary = train(c, str(runs[stage]))
        assert summary["finished"] and np.isfinite(summary["last_10pct_loss"]), summary
        info = ckpt.export_info(str(runs[stage]))
        assert info["stage"] == stage and info["model"]["causal"] == (stage != "base")
        video = read_video(str(runs[stage] / "samples" / "step_3.mp4"), 32, 64)  # real | generated
        assert video.shape == (1 + 4 * 2, 32, 64, 3)
        assert (runs[stage] / "tb").exists() and any((runs[stage] / "tb").iterdir())
        assert json.loads((runs[stage] / "summary.json").read_text())["stage"] == stage
