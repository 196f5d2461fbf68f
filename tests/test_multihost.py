"""Two processes on 127.0.0.1 (4 virtual CPU devices each, ``jax.distributed``) train as one
8-device mesh, survive a SIGKILL by resuming from their checkpoint, and end with the params of
one process with 8 devices.

``launch.train`` with ``--coordinator_address/--num_processes/--process_id``: the mesh
``data=2, fsdp=4`` spans both processes, each loads only its 4 rows of every batch of 8
(grain, ``make_loader(shard_index, shard_count)``) and writes its shards of the Orbax
checkpoints. The run (6 steps, a checkpoint every 3) is killed once step 3's checkpoint is on
disk: process 1 by SIGKILL, then process 0, left waiting in a collective for it, the same
way (as a scheduler tears down a job). Both restart with the same command and resume at
step 3. The config is configs/tiny_world.py's adapt stage at 32x32, 2 blocks, random
weights; the XLA CPU backend compiles at -O0 (these programs run for milliseconds).
"""

import json
import os
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FLAGS = ["--config=configs/tiny_world.py:adapt", "--config.video.height=32", "--config.video.width=32",
         "--config.data.height=32", "--config.data.width=32", "--config.data.latent_frames=2",
         "--config.model.num_layers=2", "--config.train.random_init=True", "--config.train.batch_size=8",
         "--config.train.steps=6", "--config.train.checkpoint_every=3", "--config.mesh.data=2",
         "--config.mesh.fsdp=4"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch(workdir, devices, log, extra=()):
    env = dict(os.environ, JAX_PLATFORMS="cpu",
               XLA_FLAGS=f"--xla_force_host_platform_device_count={devices} --xla_backend_optimization_level=0")
    return subprocess.Popen([sys.executable, "-m", "launch.train", *FLAGS, f"--workdir={workdir}", *extra], cwd=ROOT,
                            env=env, stdout=open(log, "w"), stderr=subprocess.STDOUT)


def _pair(workdir, logs):
    port = _free_port()
    return [_launch(workdir, 4, logs[i], [f"--coordinator_address=127.0.0.1:{port}", "--num_processes=2",
                                          f"--process_id={i}"]) for i in range(2)]


def _wait(procs, timeout=600):
    deadline = time.time() + timeout
    for p in procs:
        p.wait(timeout=max(1, deadline - time.time()))
    return [p.returncode for p in procs]


def _export(workdir):
    from aapt_jax.io import checkpoint as ckpt
    from aapt_jax.model.config import DiTConfig
    from aapt_jax.model.dit import abstract_model
    from flax import nnx

    info = ckpt.export_info(workdir)
    abstract = nnx.to_pure_dict(abstract_model(DiTConfig.from_mapping(info["model"]))[1])
    return ckpt.load_export(workdir, abstract), info


def _summary(log):
    return json.loads([line for line in open(log).read().splitlines() if line.startswith("{")][-1])


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("multihost")
    one, two = str(tmp / "one"), str(tmp / "two")
    # One process with 8 devices: the reference.
    ref = _launch(one, 8, str(tmp / "one.log"))
    assert _wait([ref]) == [0], open(tmp / "one.log").read()[-3000:]

    # Two processes, killed once step 3's checkpoint is on disk.
    first = _pair(two, [str(tmp / "first0.log"), str(tmp / "first1.log")])
    step3 = os.path.join(two, "checkpoints", "3")
    deadline = time.time() + 600
    while not os.path.isdir(step3) and time.time() < deadline and all(p.poll() is None for p in first):
        time.sleep(0.05)
    killed_at = sorted(os.listdir(os.path.join(two, "checkpoints"))) if os.path.isdir(step3) else None
    first[1].send_signal(signal.SIGKILL)
    time.sleep(1.0)
    if first[0].poll() is None:
        first[0].send_signal(signal.SIGKILL)
    codes = _wait(first)
    finished_before_kill = os.path.exists(os.path.join(two, "export", "info.json"))

    # Both restart with the same command and resume.
    second = _pair(two, [str(tmp / "second0.log"), str(tmp / "second1.log")])
    resumed = _wait(second)
    logs = {name: open(tmp / f"{name}.log").read() for name in ("first0", "first1", "second0", "second1")}
    return dict(tmp=tmp, one=one, two=two, killed_at=killed_at, first_codes=codes, resumed_codes=resumed,
                finished_before_kill=finished_before_kill, logs=logs)


def test_a_process_was_killed_after_the_step_3_checkpoint(runs):
    assert runs["killed_at"] is not None and "3" in runs["killed_at"], runs["logs"]["first0"][-3000:]
    assert runs["first_codes"][1] == -signal.SIGKILL, runs["first_codes"]
    assert not runs["finished_before_kill"], "the run ended before the kill: nothing left to resume"


def test_both_restart_and_resume_at_step_3(runs):
    assert runs["resumed_codes"] == [0, 0], {k: v[-2000:] for k, v in runs["logs"].items() if k.startswith("second")}
    for i in range(2):
        summary = _summary(runs["tmp"] / f"second{i}.log")
        assert summary["step"] == 6 and summary["finished"], summary
    # the bar starts at the checkpoint (process 0 draws it): steps 4-6 ran, not 1-6
    assert "3/6 [" in runs["logs"]["second0"] and " 1/6 [" not in runs["logs"]["second0"], runs["logs"]["second0"][-2000:]


def test_final_params_equal_one_process_with_8_devices(runs):
    got, info = _export(runs["two"])
    want, _ = _export(runs["one"])
    import jax

    diffs = [float(np.abs(np.asarray(a) - np.asarray(b)).max()) for a, b in
             zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True)]
    assert max(diffs) <= 1e-6, max(diffs)
    assert info["stage"] == "adapt" and info["steps"] == 6


# ----- how the processes find each other -------------------------------------------------------


def test_cluster_detection_from_the_environment(monkeypatch):
    from aapt_jax.parallel import distributed

    for var in ("SLURM_JOB_ID", "SLURM_NTASKS", "JOB_COMPLETION_INDEX", "AAPT_COORDINATOR_ADDRESS",
                "AAPT_NUM_PROCESSES"):
        monkeypatch.delenv(var, raising=False)
    assert distributed.detect() is None and distributed.initialize() == {"cluster": "single"}
    monkeypatch.setenv("SLURM_JOB_ID", "17")
    monkeypatch.setenv("SLURM_NTASKS", "1")
    assert distributed.detect() is None  # one task: nothing to join
    monkeypatch.setenv("SLURM_NTASKS", "4")
    assert distributed.detect() == {"cluster": "slurm"}  # JAX reads the rest from SLURM
    monkeypatch.delenv("SLURM_JOB_ID")
    monkeypatch.setenv("JOB_COMPLETION_INDEX", "1")
    monkeypatch.setenv("AAPT_COORDINATOR_ADDRESS", "aapt-train-0.aapt-train:12355")
    with pytest.raises(ValueError, match="AAPT_NUM_PROCESSES: expected the number of pods"):
        distributed.detect()
    monkeypatch.setenv("AAPT_NUM_PROCESSES", "2")
    assert distributed.detect() == {"cluster": "kubernetes", "coordinator_address": "aapt-train-0.aapt-train:12355",
                                    "num_processes": 2, "process_id": 1}


def test_incomplete_flags_are_named():
    from aapt_jax.parallel import distributed

    with pytest.raises(ValueError, match="--num_processes: expected it with --coordinator_address"):
        distributed.initialize("127.0.0.1:1234")
    with pytest.raises(ValueError, match="--process_id: expected 0 <= process_id < --num_processes=2, got 2"):
        distributed.initialize("127.0.0.1:1234", 2, 2)


def test_cluster_launch_files():
    import yaml

    subprocess.run(["bash", "-n", os.path.join(ROOT, "launch", "slurm", "train.sbatch")], check=True)
    with open(os.path.join(ROOT, "launch", "k8s", "train-indexed-job.yaml")) as f:
        service, job = list(yaml.safe_load_all(f))
    spec = job["spec"]
    assert service["spec"]["clusterIP"] == "None" and spec["completionMode"] == "Indexed"
    assert spec["completions"] == spec["parallelism"]
    env = {e["name"]: e["value"] for e in spec["template"]["spec"]["containers"][0]["env"]}
    assert int(env["AAPT_NUM_PROCESSES"]) == spec["completions"]
    assert env["AAPT_COORDINATOR_ADDRESS"].startswith(f"{job['metadata']['name']}-0.{service['metadata']['name']}:")
