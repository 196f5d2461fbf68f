"""Helpers the numerics tests share (not a test module)."""

import numpy as np


def rel_err(got, want) -> float:
    """Max abs error relative to the max abs of ``want`` (float32)."""
    got, want = np.asarray(got, np.float32), np.asarray(want, np.float32)
    return float(np.max(np.abs(got - want)) / max(np.max(np.abs(want)), 1e-30))
