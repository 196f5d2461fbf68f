"""Training resumes exactly: kill -9 at a random moment, resume, same params bit for bit."""

import os
import random
import shutil
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from aapt_jax.io import checkpoint as ckpt
from aapt_jax.train.loop import train
from configs import tiny_world

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OVERRIDES = {"video.height": 32, "video.width": 32, "data.height": 32, "data.width": 32, "train.steps": 16,
             "train.checkpoint_every": 2, "train.batch_size": 2, "train.log_every": 2, "train.warmup_steps": 2}


def _config():
    c = tiny_world.get_config("vae")
    for k, v in OVERRIDES.items():
        section, field = k.split(".")
        c[section][field] = v
    return c


def _export(workdir):
    from flax import nnx

    from aapt_jax.model import vae as vae_lib
    from aapt_jax.model.vae_config import get_vae_config

    abstract = nnx.to_pure_dict(nnx.split(vae_lib.abstract_vae(get_vae_config(tiny_world.get_config("vae").vae.preset)))[1])
    return ckpt.load_export(workdir, abstract)


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    """One uninterrupted run, shared by the tests below."""
    workdir = tmp_path_factory.mktemp("straight")
    summary = train(_config(), str(workdir))
    assert summary["finished"] and summary["step"] == 16
    return workdir


def test_kill9_then_resume_is_bit_exact(straight, tmp_path):
    killed = tmp_path / "killed"

    args = [sys.executable, "-m", "launch.train", f"--workdir={killed}", "--config=configs/tiny_world.py:vae"]
    args += [f"--config.{k}={v}" for k, v in OVERRIDES.items()]
    proc = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ckdir = killed / "checkpoints"
    kill_after = random.choice([2, 4, 6, 8])  # a random step; the kill lands mid-step or mid-save
    deadline = time.time() + 300
    while time.time() < deadline and not (ckdir / str(kill_after)).exists():
        time.sleep(0.01)
    time.sleep(random.uniform(0.0, 0.2))
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (killed / "export" / "info.json").exists(), "the run finished before it was killed"
    resumed = train(_config(), str(killed))
    assert resumed["finished"]

    a, b = _export(straight), _export(killed)
    leaves_a, leaves_b = jax.tree.leaves(a), jax.tree.leaves(b)
    assert len(leaves_a) == len(leaves_b) > 0
    for x, y in zip(leaves_a, leaves_b):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_sigterm_saves_and_stops(tmp_path):
    args = [sys.executable, "-m", "launch.train", f"--workdir={tmp_path}", "--config=configs/tiny_world.py:vae"]
    args += [f"--config.{k}={v}" for k, v in OVERRIDES.items()] + ["--config.train.steps=1000",
                                                                   "--config.train.checkpoint_every=500"]
    proc = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    tb = tmp_path / "tb"
    deadline = time.time() + 300
    while time.time() < deadline and not (tb.exists() and any(tb.iterdir())):
        time.sleep(0.05)
    time.sleep(3.0)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 75, err[-2000:]  # unfinished: a status a scheduler can requeue on
    steps = ckpt.Checkpointer(str(tmp_path / "checkpoints")).steps()
    assert len(steps) == 1 and 0 < steps[0] < 500  # saved where it stopped, not at a schedule point


def test_corrupt_checkpoint_is_refused_with_path_and_previous_step(straight, tmp_path):
    shutil.copytree(straight, tmp_path / "run")
    manager = ckpt.Checkpointer(str(tmp_path / "run" / "checkpoints"))
    steps = manager.steps()
    assert steps[-1] == 16 and len(steps) >= 2
    latest = tmp_path / "run" / "checkpoints" / "16"
    for path in latest.rglob("*"):
        if path.is_file() and path.stat().st_size > 0 and "state" in str(path):
            path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(ckpt.CheckpointError) as err:
        manager.restore({"dummy": jax.ShapeDtypeStruct((1,), np.float32)})
    msg = str(err.value)
    assert str(latest) in msg and f"other steps on disk: {steps[:-1]}" in msg
