"""Training never names a bad checkpoint as good, refuses early and in one line, and owns its workdir."""

import os
import subprocess
import sys

import numpy as np
import pytest

from aapt_jax.io import checkpoint as ckpt
from aapt_jax.io.files import WorkdirBusy, WorkdirLock
from aapt_jax.train import loop
from aapt_jax.train.loop import TrainingStopped, train
from configs import tiny_world

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMALL = {"video.height": 32, "video.width": 32, "data.height": 32, "data.width": 32, "train.steps": 2,
         "train.checkpoint_every": 1, "train.batch_size": 2, "train.log_every": 1, "train.warmup_steps": 0}


def _config(**extra):
    c = tiny_world.get_config("vae")
    for k, v in {**SMALL, **extra}.items():
        section, field = k.split(".")
        c[section][field] = v
    return c


def test_inf_lr_is_refused_before_anything(tmp_path):
    workdir = tmp_path / "run"
    with pytest.raises(ValueError, match="train.lr: expected a finite number, got inf"):
        train(_config(**{"train.lr": float("inf")}), str(workdir))
    assert not workdir.exists()  # a refused run leaves no workdir behind


def test_non_finite_update_is_never_saved(tmp_path):
    # 1e39 is a finite Python float but overflows float32: the loss of step 1 (old params)
    # is finite while the updated params are not.
    with pytest.raises(TrainingStopped, match="non-finite params or optimizer state .* at step 1; stopped without "
                                              "saving. No checkpoint was saved"):
        train(_config(**{"train.lr": 1e39}), str(tmp_path))
    assert ckpt.Checkpointer(str(tmp_path / "checkpoints")).steps() == []
    assert not (tmp_path / "export").exists()


def test_second_run_in_a_locked_workdir_is_refused_naming_the_pid(tmp_path):
    with WorkdirLock(str(tmp_path)):
        with pytest.raises(WorkdirBusy, match=f"in use by process {os.getpid()}"):
            train(_config(), str(tmp_path))


def test_resume_with_another_config_names_the_fields(tmp_path):
    saved = _config()
    manager = ckpt.Checkpointer(str(tmp_path / "checkpoints"), async_save=False)
    manager.save(1, {"step": np.zeros((), np.int32)}, {"config": loop._config_fingerprint(saved), "data_state": ""})
    manager.close()
    changed = _config(**{"train.optimizer": "rmsprop", "data.seed": 5})
    with pytest.raises(ValueError, match=r"different config \(data.seed: saved 0, given 5; "
                                         r"train.optimizer: saved 'adamw', given 'rmsprop'\)"):
        train(changed, str(tmp_path))


def _launch(*args):
    return subprocess.run([sys.executable, "-m", "launch.train", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=300)


def test_binary_prints_one_line_and_exits_2(tmp_path):
    workdir = tmp_path / "run"
    args = [f"--workdir={workdir}", "--config=configs/tiny_world.py:vae", "--config.train.lr=inf"]
    quiet = _launch(*args)
    assert quiet.returncode == 2, quiet.stderr
    assert "Traceback" not in quiet.stderr
    assert quiet.stderr.strip().splitlines()[-1].startswith("error: train.lr: expected a finite number, got inf")
    assert not workdir.exists()
    verbose = _launch(*args, "--verbosity=1")
    assert verbose.returncode == 2 and "Traceback" in verbose.stderr
    typo = _launch(f"--workdir={workdir}", "--config=configs/tiny_world.py:vae", "--config.train.lrr=1")
    assert typo.returncode == 2 and typo.stderr.strip().splitlines() == [
        "error: --config.train.lrr: unknown config field 'lrr'; did you mean 'lr'?"]


def test_camera_control_on_a_video_folder_is_refused_before_loading(tmp_path):
    c = _config(**{"train.stage": "adapt", "data.source": "folder", "data.folder": str(tmp_path)})
    c.vae.checkpoint = str(tmp_path / "no_vae_here")  # never read: the check comes first
    with pytest.raises(ValueError, match=r"control.kind: 'camera' needs \['intrinsics', 'c2w'\] per clip, which "
                                         r"data.source='folder' does not give"):
        train(c, str(tmp_path / "run"))
    assert not (tmp_path / "run").exists()


def test_pipeline_checks_every_stage_before_the_first_trains(tmp_path):
    from aapt_jax.train.pipeline import run_stages

    def refuse_training(message):
        assert "training" not in message, message  # nothing may train before the refusal

    # train.segment_frames is read by the adversarial stage alone (the last one).
    with pytest.raises(ValueError, match="train.segment_frames: expected 1..8"):
        run_stages(tiny_world.get_config, str(tmp_path / "p"), overrides={"train.segment_frames": 99},
                   log=refuse_training)
    assert not (tmp_path / "p").exists()


@pytest.mark.parametrize("module", ["tiny_world", "tiny_pose"])
def test_shipped_training_configs_pass_the_checks(module):
    import importlib

    from aapt_jax.train.stages import STAGES, check_config

    get_config = importlib.import_module(f"configs.{module}").get_config
    for stage in STAGES:
        check_config(get_config(stage))


def test_pipeline_binary_takes_config_overrides_and_refuses_unknown_fields(tmp_path):
    def pipeline(*args):
        return subprocess.run([sys.executable, "-m", "launch.pipeline", f"--workdir={tmp_path / 'p'}", *args],
                              cwd=ROOT, capture_output=True, text=True, timeout=300)

    typo = pipeline("--config.train.stepz=3")
    assert typo.returncode == 2 and typo.stderr.strip().splitlines() == [
        "error: --config.train.stepz: unknown config field 'stepz'; did you mean 'steps'?"]
    staged = pipeline("--config=configs/tiny_world.py:adapt")
    assert staged.returncode == 2 and "expected a file without :STAGE" in staged.stderr.strip().splitlines()[-1]
    # A later stage's bad field (stage 3's segment_frames) is refused before the VAE trains.
    late = pipeline("--config.train.segment_frames=99")
    assert late.returncode == 2 and "train.segment_frames: expected 1..8" in late.stderr
    assert not (tmp_path / "p").exists()
