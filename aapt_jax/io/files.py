"""Files a run writes: atomic outputs and the per-workdir lock.

Atomic writes go to a temporary file in the same directory and are renamed into place, so
a crash never leaves a half-written output. A workdir lock (``fcntl.flock`` on
``WORKDIR/.lock``) lets one process at a time write a workdir; the kernel drops it when the
process dies, so a killed run never leaves a stale lock behind.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import tempfile

import numpy as np

LOCK_FILE = ".lock"


def _atomic_write(path: str, suffix: str, write) -> None:
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=directory, suffix=suffix)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; outputs are for people to open
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


@contextlib.contextmanager
def atomic_path(path, mode: int | None = 0o644):
    """For writers that open a file by name (safetensors, PyAV): a temporary path beside
    ``path``, renamed to ``path`` when the block ends (``mode`` set first: mkstemp makes
    0600) and removed if the block raises."""
    path = os.fspath(path)
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(os.path.abspath(path)), prefix="." + os.path.basename(path) + ".",
                               suffix=".tmp")
    os.close(fd)
    try:
        yield tmp
        if mode is not None:
            os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def atomic_save_npy(path: str, array) -> None:
    """Write ``array`` to ``path`` via a temporary file in the same directory and a rename."""
    _atomic_write(path, ".npy.tmp", lambda f: np.save(f, np.asarray(array)))


def atomic_write_json(path: str, obj, **dump_kwargs) -> None:
    """Write ``obj`` as JSON to ``path`` atomically (``dump_kwargs`` go to ``json.dumps``)."""
    text = json.dumps(obj, **{"indent": 1, **dump_kwargs})
    _atomic_write(path, ".json.tmp", lambda f: f.write(text.encode()))


class WorkdirBusy(ValueError):
    """Another live process holds the workdir's lock."""


class WorkdirLock:
    """Exclusive use of ``workdir`` for the life of this object (a context manager).

    Creates ``workdir`` if needed; :meth:`release` with ``remove_if_created=True`` removes
    it again if this lock created it and nothing else was written there (a refused run
    leaves no empty workdir behind).

    Raises:
      WorkdirBusy naming the holder's pid when another process holds the lock.
    """

    def __init__(self, workdir: str, field: str = "workdir"):
        self.workdir = os.path.abspath(workdir)
        self.path = os.path.join(self.workdir, LOCK_FILE)
        self.created = not os.path.exists(self.workdir)
        os.makedirs(self.workdir, exist_ok=True)
        self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(self._fd, 64, 0).decode(errors="replace").strip() or "unknown"
            os.close(self._fd)
            self._fd = None
            raise WorkdirBusy(f"{field}: {self.workdir} is in use by process {holder} (lock {self.path}); "
                              f"wait for it to end or use another workdir") from None
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, f"{os.getpid()}\n".encode(), 0)

    def release(self, remove_if_created: bool = False) -> None:
        if self._fd is None:
            return
        if remove_if_created and self.created and os.listdir(self.workdir) == [LOCK_FILE]:
            os.remove(self.path)
            os.rmdir(self.workdir)
        else:
            os.ftruncate(self._fd, 0)
        fcntl.flock(self._fd, fcntl.LOCK_UN)
        os.close(self._fd)
        self._fd = None

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        # A run refused before writing anything (validation) leaves no empty workdir.
        self.release(remove_if_created=exc_type is not None)
        return False
