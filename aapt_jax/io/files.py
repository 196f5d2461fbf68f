"""Atomic file writes: a crash never leaves a half-written output in place."""

from __future__ import annotations

import os
import tempfile

import numpy as np


def atomic_save_npy(path: str, array) -> None:
    """Write ``array`` to ``path`` via a temporary file in the same directory and a rename."""
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=directory, suffix=".npy.tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            np.save(f, np.asarray(array))
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; outputs are for people to open
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
