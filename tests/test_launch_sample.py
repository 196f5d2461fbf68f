"""`python -m launch.sample` streams, decodes while it streams, and writes an mp4 people can open;
with no flags it streams the tiny world's shipped generator from a rendered world frame."""

import json
import os
import subprocess
import sys

import numpy as np

from aapt_jax.data.world import make_world, render_path
from aapt_jax.data.world_camera import random_walk
from aapt_jax.eval.metrics import psnr
from aapt_jax.io import builtin
from aapt_jax.io.video import frames_to_unit, read_video
from configs import get as named_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _sample(*flags, timeout=600):
    proc = subprocess.run([sys.executable, "-m", "launch.sample", *flags], cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1]), proc.stderr


def test_sample_binary_writes_video_and_latents(tmp_path):
    out = tmp_path / "s"
    summary, _ = _sample("--config=configs/tiny.py", "--checkpoint=", "--config.sample.num_frames=3", f"--out={out}")
    assert summary["latent_frames"] == 3 and summary["video_frames"] == 1 + 4 * 3
    latents = np.load(out / "latents.npy")
    assert latents.shape == (1, 4, 12, 16, 16) and np.isfinite(latents).all()
    assert np.load(out / "controls.npy").shape == (1, 3, 12, 16, 24)
    frames = read_video(str(out / "video.mp4"), 96, 128)
    assert frames.shape == (13, 96, 128, 3)
    assert oct(os.stat(out / "video.mp4").st_mode & 0o777) == "0o644"


def test_default_streams_the_shipped_world_from_a_rendered_frame(tmp_path):
    out = tmp_path / "w"
    summary, log = _sample("--config.sample.num_frames=2", f"--out={out}")
    assert summary["config"] == "tiny_world" and summary["latents_shape"] == [1, 3, 16, 16, 16]
    # The shipped generator where there is one (random weights, said so, where there is none).
    generator, vae = builtin.sources(named_config("tiny_world"))
    assert summary["generator"] == (generator or "random init") and vae == "builtin:tiny_world/vae"
    assert "random VAE" not in log, log[-3000:]
    # The first frame is world 0's first render (sample.seed 0) through the shipped VAE.
    world = make_world(0)
    path = random_walk(world, 9, 0, (64, 64))
    truth = render_path(world, path.intrinsics[:1], path.c2w[:1], (64, 64))[0]
    frames = read_video(str(out / "video.mp4"), 64, 64)
    assert frames.shape == (9, 64, 64, 3)
    assert psnr(frames_to_unit(frames[:1]), frames_to_unit(truth[None])) >= 20.0
    assert np.load(out / "controls.npy").shape == (1, 2, 16, 16, 24)
