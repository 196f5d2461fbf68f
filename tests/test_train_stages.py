"""The whole chain from an empty workdir: vae -> base (0) -> adapt (1) -> distill (2) ->
adversarial (3), then the drift report, through ``python -m launch.pipeline``; and the
README's default path, stages 1-3 from pretrained sources (the shipped VAE)."""

import json
import subprocess
import sys

import numpy as np
import pytest

from aapt_jax.io import checkpoint as ckpt
from aapt_jax.io.vae_source import load_vae
from aapt_jax.io.video import read_video

OVERRIDES = ["video.height=32", "video.width=32", "data.height=32", "data.width=32", "data.latent_frames=2",
             "train.steps=3", "train.batch_size=1", "train.checkpoint_every=3", "train.log_every=1",
             "train.sample_every=3", "train.warmup_steps=0", "train.sample_steps=2", "train.distill_steps=4"]


def _pipeline(workdir, *flags):
    cmd = [sys.executable, "-m", "launch.pipeline", f"--workdir={workdir}", "--seconds=1", "--paths=1",
           *flags, *[f"--config.{o}" for o in OVERRIDES]]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=1500)


@pytest.fixture(scope="module")
def scratch(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("scratch")
    return workdir, _pipeline(workdir, "--from_scratch", "--eval_stages=adapt,adversarial")


@pytest.mark.slow
def test_pipeline_runs_every_stage_and_reports_drift(scratch):
    tmp_path, proc = scratch
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    vae_info = ckpt.export_info(str(tmp_path / "vae"))
    assert len(vae_info["latents_mean"]) == len(vae_info["latents_std"]) == 16
    assert all(s > 0 for s in vae_info["latents_std"])
    vcfg, _, _ = load_vae(vae_info["vae_preset"], str(tmp_path / "vae"))
    assert vcfg.std == tuple(vae_info["latents_std"])  # the generator stages train on normalized latents
    for stage in ("base", "adapt", "distill", "adversarial"):
        run = tmp_path / stage
        summary = json.loads((run / "summary.json").read_text())
        assert summary["finished"] and np.isfinite(summary["last_10pct_loss"]), summary
        info = ckpt.export_info(str(run))
        assert info["stage"] == stage and info["model"]["causal"] == (stage != "base")
        video = read_video(str(run / "samples" / "step_3.mp4"), 32, 64)  # real | generated
        assert video.shape == (1 + 4 * 2, 32, 64, 3)
        assert (run / "tb").exists() and any((run / "tb").iterdir())
    assert set(report["drift"]) == {"adapt", "adversarial"}
    for name in ("drift.json", "drift.md", "drift.png", "frames.png", "adversarial_path0.mp4"):
        assert (tmp_path / "drift" / name).exists()


@pytest.mark.slow
def test_pipeline_starts_from_pretrained_sources(scratch, tmp_path):
    # The default path: the config's 'pretrained' section (the shipped VAE), a base from
    # another run; only stages 1-3 train here.
    base = scratch[0] / "base"
    proc = _pipeline(tmp_path, "--eval_stages=adversarial", f"--config.pretrained.base={base}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report["pretrained"] == {"vae": "builtin:tiny_world/vae", "base": str(base)}
    assert sorted(p.name for p in tmp_path.iterdir() if (p / "summary.json").exists()) == [
        "adapt", "adversarial", "distill"]
    assert ckpt.export_info(str(tmp_path / "adapt"))["stage"] == "adapt"
    assert (tmp_path / "drift" / "adversarial_path0.mp4").exists()
