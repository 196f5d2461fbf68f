"""Saved files are verified at load, and a workdir is written by one process at a time."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from aapt_jax.io import checkpoint as ckpt
from aapt_jax.io.checksums import ChecksumError
from aapt_jax.io.files import LOCK_FILE, WorkdirBusy, WorkdirLock, atomic_write_json


def _params():
    rng = np.random.default_rng(0)
    return {"w": rng.standard_normal((256, 256)).astype(np.float32), "b": np.zeros((256,), np.float32)}


def _abstract(params):
    import jax

    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), params)


def _largest_file(root):
    files = [os.path.join(d, f) for d, _, fs in os.walk(root) for f in fs]
    return max(files, key=os.path.getsize)


def test_garbled_export_is_refused_naming_the_file(tmp_path):
    params = _params()
    ckpt.save_export(str(tmp_path), params, {"stage": "test"})
    restored = ckpt.load_export(str(tmp_path), _abstract(params))
    np.testing.assert_array_equal(np.asarray(restored["w"]), params["w"])

    target = _largest_file(tmp_path / "export" / "params")
    size = os.path.getsize(target)
    with open(target, "r+b") as f:  # 4 KB of garbage in the middle, size unchanged
        f.seek(size // 2)
        f.write(np.random.default_rng(1).bytes(min(4096, size // 2)))
    with pytest.raises(ChecksumError, match=f"{target}: sha256 differs"):
        ckpt.load_export(str(tmp_path), _abstract(params))


def test_truncated_export_file_is_refused(tmp_path):
    params = _params()
    ckpt.save_export(str(tmp_path), params, {"stage": "test"})
    target = _largest_file(tmp_path / "export" / "params")
    os.truncate(target, os.path.getsize(target) // 2)
    with pytest.raises(ValueError, match=f"{target}: .* bytes, expected"):
        ckpt.load_export(str(tmp_path), _abstract(params))


def test_atomic_json_leaves_no_partial_file(tmp_path):
    path = tmp_path / "summary.json"
    atomic_write_json(str(path), {"a": 1})
    with pytest.raises(TypeError):
        atomic_write_json(str(path), {"a": object()})  # not serializable: the old file stays
    assert json.loads(path.read_text()) == {"a": 1}
    assert sorted(os.listdir(tmp_path)) == ["summary.json"]


_HOLD = "import sys, time; from aapt_jax.io.files import WorkdirLock; l = WorkdirLock(sys.argv[1]); " \
        "print('locked', flush=True); time.sleep(60)"


def test_workdir_lock_refuses_a_second_process_naming_its_pid(tmp_path):
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    holder = subprocess.Popen([sys.executable, "-c", _HOLD, str(tmp_path)], cwd=root, stdout=subprocess.PIPE,
                              text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(WorkdirBusy, match=f"in use by process {holder.pid}"):
            WorkdirLock(str(tmp_path))
    finally:
        holder.kill()
        holder.wait()
    with WorkdirLock(str(tmp_path)):  # the kernel dropped the dead holder's lock
        assert (tmp_path / LOCK_FILE).read_text().strip() == str(os.getpid())


def test_refused_run_leaves_no_new_workdir(tmp_path):
    workdir = tmp_path / "new"
    with pytest.raises(ValueError, match="bad field"):
        with WorkdirLock(str(workdir)):
            raise ValueError("bad field")
    assert not workdir.exists()
