"""Image metrics on videos in [-1, 1]."""

from __future__ import annotations

import numpy as np


def psnr(a, b, axis=(-4, -3, -2, -1)) -> np.ndarray:
    """PSNR in dB of ``a`` against ``b`` (both ``[..., T, H, W, 3]`` in [-1, 1], peak 2)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    mse = np.mean(np.square(a - b), axis=axis)
    return 10.0 * np.log10(4.0 / np.maximum(mse, 1e-12))
