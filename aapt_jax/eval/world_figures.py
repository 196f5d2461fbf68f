"""Held-out figures of a VAE and a generator on the procedural world, with 95% intervals.

The world renders exactly along any camera path, so three questions have exact answers:

* how close the VAE gets to the true video (reconstruction PSNR, the ceiling of any
  generator in its latent space);
* how close a generator's video stays to the true render over seconds 1-5, next to the
  trivial baseline that repeats the true first frame;
* whether the generator follows the camera (``control_following_db``): PSNR against the
  render of its own path minus PSNR against the render of another path that leaves the
  same first frame along other actions (``random_walk(branch_seed=...)``). A generator that
  ignores its controls is as close to one as to the other and scores about 0 dB.

Every figure is a mean over paths with a 95% interval (Student t over the per-path values),
so two models are distinguishable only where their intervals say so.
"""

from __future__ import annotations

import math

import numpy as np

from aapt_jax.eval.drift import psnr

# Two-sided 95% Student t quantiles for 1 .. 30 degrees of freedom (n - 1 paths); past the
# table, the first Cornish-Fisher term, within 0.002 of the exact value.
_T95 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145,
        2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048,
        2.045, 2.042)


def t95(dof: int) -> float:
    """Two-sided 95% Student t quantile with ``dof`` degrees of freedom."""
    if dof <= len(_T95):
        return _T95[dof - 1]
    z = 1.959964
    return z + (z**3 + z) / (4 * dof)


def mean_ci95(values) -> tuple[float, float]:
    """``(mean, half width of the 95% interval)`` of per-path values (half width 0 for one)."""
    x = np.asarray(values, np.float64)
    if x.ndim != 1 or len(x) == 0:
        raise ValueError(f"values: expected a non-empty 1-D list, got shape {list(x.shape)}")
    if len(x) == 1:
        return float(x[0]), 0.0
    return float(x.mean()), float(t95(len(x) - 1) * x.std(ddof=1) / math.sqrt(len(x)))


def window_psnr(generated, real, fps: float, seconds: tuple[float, float]) -> float:
    """Mean per-frame PSNR (dB) of uint8 ``[T, H, W, 3]`` videos over frames
    ``[round(lo fps), round(hi fps)]`` (both ends included, clipped to the video)."""
    lo, hi = (int(round(s * fps)) for s in seconds)
    hi = min(hi, len(real) - 1)
    if lo > hi:
        raise ValueError(f"seconds: expected a window inside the {len(real)} frames at {fps} fps, got {seconds}")
    return float(np.mean(psnr(generated[lo:hi + 1], real[lo:hi + 1])))


def copy_first_frame(video) -> np.ndarray:
    """The baseline video: ``video[0]`` repeated for every frame, uint8 ``[T, H, W, 3]``."""
    video = np.asarray(video)
    return np.broadcast_to(video[:1], video.shape)


def control_following(generated, own, other, fps: float, seconds: tuple[float, float]) -> float:
    """PSNR(generated, own path's render) - PSNR(generated, other path's render), in dB over
    ``seconds``; both renders start from the same first frame."""
    return window_psnr(generated, own, fps, seconds) - window_psnr(generated, other, fps, seconds)


def summarize(name: str, values, unit: str = "dB", **context) -> dict:
    """One figure ``{'name', 'value', 'ci95', 'unit', 'per_path', ...}`` (values rounded to 0.01)."""
    mean, half = mean_ci95(values)
    return {"name": name, "value": round(mean, 2), "ci95": round(half, 2), "unit": unit,
            "per_path": [round(float(v), 2) for v in values], **context}
