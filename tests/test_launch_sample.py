"""`python -m launch.sample` streams, decodes while it streams, and writes an mp4 people can open."""

import json
import os
import subprocess
import sys

import numpy as np

from aapt_jax.io.video import read_video


def test_sample_binary_writes_video_and_latents(tmp_path):
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    out = tmp_path / "s"
    proc = subprocess.run([sys.executable, "-m", "launch.sample", "--config.sample.num_frames=3",
                           f"--out={out}"], cwd=root, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary["latent_frames"] == 3 and summary["video_frames"] == 1 + 4 * 3
    latents = np.load(out / "latents.npy")
    assert latents.shape == (1, 4, 12, 16, 16) and np.isfinite(latents).all()
    assert np.load(out / "controls.npy").shape == (1, 3, 12, 16, 24)
    frames = read_video(str(out / "video.mp4"), 96, 128)
    assert frames.shape == (13, 96, 128, 3)
    assert oct(os.stat(out / "video.mp4").st_mode & 0o777) == "0o644"
