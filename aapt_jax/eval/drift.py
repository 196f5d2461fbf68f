"""Long-horizon drift metrics, per second of video, in plain numpy.

A generated video is compared with the true video of the same camera path, one second
(``fps`` frames) at a time, so the curves show how fast a generator drifts away from the
scene and from the look of real frames:

* ``psnr``: mean per-frame PSNR in dB (peak 255), capped at :data:`PSNR_CAP` (identical
  frames would give infinity, which JSON cannot hold).
* ``ssim``: mean per-frame SSIM (Wang et al. 2004: 11x11 Gaussian window, sigma 1.5,
  ``K1 = 0.01``, ``K2 = 0.03``, ``L = 255``), computed per RGB channel on the valid region
  and averaged over channels.
* ``sharpness`` / ``sharpness_real``: mean per-frame variance of the 4-neighbour Laplacian of
  the luma (BT.601), of the generated and the true frames; blur lowers it, noise raises it.
* ``color_distance``: per-channel 1-D Wasserstein (earth mover's) distance, in intensity
  levels, between the distribution of the second's generated pixel values and the true
  second's, averaged over R, G, B. Needs no pixel correspondence, so it measures colour
  drift even where the geometry has drifted.
"""

from __future__ import annotations

import math

import numpy as np

PSNR_CAP = 100.0  # dB: the value of identical frames (an MSE floor of 255^2 * 1e-10)
SSIM_WINDOW, SSIM_SIGMA, SSIM_K1, SSIM_K2 = 11, 1.5, 0.01, 0.03
_PEAK = 255.0
_LUMA = np.array([0.299, 0.587, 0.114])


def _check_video(name: str, video, like=None) -> np.ndarray:
    video = np.asarray(video)
    if video.dtype != np.uint8:
        raise ValueError(f"{name}: expected uint8 frames [T, H, W, 3], got dtype {video.dtype}")
    if video.ndim != 4 or video.shape[-1] != 3 or video.shape[0] == 0:
        raise ValueError(f"{name}: expected uint8 frames [T>0, H, W, 3], got shape {list(video.shape)}")
    if like is not None and video.shape != like.shape:
        raise ValueError(f"{name}: expected the shape of generated {list(like.shape)}, got {list(video.shape)}")
    return video


def psnr(generated, real) -> np.ndarray:
    """float64 ``[T]``: per-frame PSNR (dB, peak 255, capped) of uint8 ``[T, H, W, 3]`` frames."""
    a, b = np.asarray(generated, np.float64), np.asarray(real, np.float64)
    mse = np.mean(np.square(a - b), axis=(1, 2, 3))
    floor = _PEAK**2 * 10.0 ** (-PSNR_CAP / 10.0)
    return 10.0 * np.log10(_PEAK**2 / np.maximum(mse, floor))


def gaussian_window(size: int = SSIM_WINDOW, sigma: float = SSIM_SIGMA) -> np.ndarray:
    """float64 ``[size]``, the normalized 1-D Gaussian (the SSIM window is its outer product)."""
    x = np.arange(size, dtype=np.float64) - (size - 1) / 2.0
    g = np.exp(-0.5 * np.square(x / sigma))
    return g / g.sum()


def _filter_valid(x, taps) -> np.ndarray:
    """Separable 'valid' filtering of ``x [T, H, W, C]`` with ``taps [n]`` along H and W."""
    n = len(taps)
    h_out, w_out = x.shape[1] - n + 1, x.shape[2] - n + 1
    rows = sum(taps[i] * x[:, i:i + h_out] for i in range(n))
    return sum(taps[i] * rows[:, :, i:i + w_out] for i in range(n))


def ssim(generated, real) -> np.ndarray:
    """float64 ``[T]``: per-frame SSIM of uint8 ``[T, H, W, 3]`` frames, mean over channels.

    Frames smaller than the 11-pixel window use the largest odd window that fits.
    """
    a, b = np.asarray(generated, np.float64), np.asarray(real, np.float64)
    size = min(SSIM_WINDOW, a.shape[1], a.shape[2])
    size -= 1 - size % 2
    taps = gaussian_window(size)
    c1, c2 = (SSIM_K1 * _PEAK) ** 2, (SSIM_K2 * _PEAK) ** 2
    mu_a, mu_b = _filter_valid(a, taps), _filter_valid(b, taps)
    var_a = _filter_valid(a * a, taps) - mu_a**2
    var_b = _filter_valid(b * b, taps) - mu_b**2
    cov = _filter_valid(a * b, taps) - mu_a * mu_b
    ssim_map = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2))
    return ssim_map.mean(axis=(1, 2, 3))


def sharpness(frames) -> np.ndarray:
    """float64 ``[T]``: variance of the 4-neighbour Laplacian of each frame's luma (0-255 scale)."""
    y = np.asarray(frames, np.float64) @ _LUMA  # [T, H, W]
    lap = (y[:, :-2, 1:-1] + y[:, 2:, 1:-1] + y[:, 1:-1, :-2] + y[:, 1:-1, 2:] - 4.0 * y[:, 1:-1, 1:-1])
    return lap.reshape(len(y), -1).var(axis=1)


def color_distance(generated, real) -> float:
    """Mean over R, G, B of the 1-D Wasserstein distance (intensity levels, 0-255) between
    the pixel values of uint8 ``generated [..., 3]`` and ``real [..., 3]``.

    For distributions on the integers the distance is exactly the L1 distance between the
    cumulative histograms.
    """
    a = np.asarray(generated).reshape(-1, 3)
    b = np.asarray(real).reshape(-1, 3)
    dists = []
    for c in range(3):
        cdf_a = np.cumsum(np.bincount(a[:, c], minlength=256)) / len(a)
        cdf_b = np.cumsum(np.bincount(b[:, c], minlength=256)) / len(b)
        dists.append(np.abs(cdf_a - cdf_b).sum())
    return float(np.mean(dists))


def second_bounds(num_frames: int, fps: float) -> list[tuple[int, int]]:
    """Frame ranges ``[start, stop)`` of the seconds of ``num_frames`` frames at ``fps``;
    the last one may be partial."""
    seconds = math.ceil(num_frames / fps - 1e-9)
    edges = [min(num_frames, math.floor(s * fps + 0.5)) for s in range(seconds + 1)]
    return [(lo, hi) for lo, hi in zip(edges[:-1], edges[1:]) if hi > lo]


METRICS = ("psnr", "ssim", "sharpness", "sharpness_real", "color_distance")


def drift_report(generated, real, fps: float) -> dict:
    """Per-second drift metrics of ``generated`` against ``real`` (module docstring).

    Args:
      generated: uint8 ``[T, H, W, 3]``.
      real: uint8 ``[T, H, W, 3]``, the true frames at the same times.
      fps: frames per second; second ``s`` is frames ``[round(s fps), round((s + 1) fps))``,
        the last second may be partial.
    Returns:
      dict of lists, one entry per second: ``second`` (1, 2, ...), ``frames`` (frames in
      it) and every name in :data:`METRICS`.
    """
    generated = _check_video("generated", generated)
    real = _check_video("real", real, like=generated)
    if isinstance(fps, bool) or not isinstance(fps, (int, float)) or not math.isfinite(fps) or fps <= 0:
        raise ValueError(f"fps: expected a positive number, got {fps!r}")
    report = {"second": [], "frames": [], **{m: [] for m in METRICS}}
    # One second at a time keeps the float64 temporaries of SSIM bounded for large frames.
    for s, (lo, hi) in enumerate(second_bounds(len(generated), fps)):
        g, r = generated[lo:hi], real[lo:hi]
        report["second"].append(s + 1)
        report["frames"].append(hi - lo)
        report["psnr"].append(float(psnr(g, r).mean()))
        report["ssim"].append(float(ssim(g, r).mean()))
        report["sharpness"].append(float(sharpness(g).mean()))
        report["sharpness_real"].append(float(sharpness(r).mean()))
        report["color_distance"].append(color_distance(g, r))
    return report
