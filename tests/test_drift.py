"""Drift metrics (known answers on synthetic frames) and the long-horizon stage 1 sampler."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from aapt_jax.eval import drift
from aapt_jax.io.wan_transformer import abstract_params
from aapt_jax.model.config import DiTConfig
from aapt_jax.model.dit import abstract_model
from aapt_jax.sample.flow_sampler import sample_autoregressive, sample_long, window_frame_indices


def _texture(seed=0, shape=(6, 32, 32, 3)):
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


# ----- metrics -------------------------------------------------------------------------

def test_identical_videos_give_capped_psnr_unit_ssim_zero_distance():
    video = _texture()
    report = drift.drift_report(video, video.copy(), fps=3)
    assert report["second"] == [1, 2] and report["frames"] == [3, 3]
    assert report["psnr"] == [drift.PSNR_CAP] * 2
    np.testing.assert_allclose(report["ssim"], 1.0, atol=1e-12)
    assert report["color_distance"] == [0.0, 0.0]
    assert report["sharpness"] == report["sharpness_real"]


def test_psnr_of_a_known_offset():
    real = np.full((2, 16, 16, 3), 100, np.uint8)
    # mse = 10^2 -> 10 log10(255^2 / 100)
    np.testing.assert_allclose(drift.psnr(real + 10, real), 10 * np.log10(255.0**2 / 100.0))


def test_ssim_matches_a_direct_windowed_computation():
    a, b = _texture(1, (1, 14, 13, 3)), _texture(2, (1, 14, 13, 3))
    g = drift.gaussian_window()
    w = np.outer(g, g)
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    values = []
    for c in range(3):
        x, y = a[0, :, :, c].astype(float), b[0, :, :, c].astype(float)
        for i in range(14 - 10):
            for j in range(13 - 10):
                px, py = x[i:i + 11, j:j + 11], y[i:i + 11, j:j + 11]
                mx, my = (w * px).sum(), (w * py).sum()
                vx, vy = (w * (px - mx) ** 2).sum(), (w * (py - my) ** 2).sum()
                cov = (w * (px - mx) * (py - my)).sum()
                values.append((2 * mx * my + c1) * (2 * cov + c2) / ((mx**2 + my**2 + c1) * (vx + vy + c2)))
    np.testing.assert_allclose(drift.ssim(a, b), [np.mean(values)], rtol=1e-10)
    assert drift.ssim(a, b)[0] < 0.1  # independent noise: no structure in common


def test_ssim_small_frames_use_a_smaller_window():
    video = _texture(3, (2, 8, 8, 3))
    np.testing.assert_allclose(drift.ssim(video, video), 1.0, atol=1e-12)


def test_blur_lowers_sharpness():
    video = _texture(4).astype(np.float64)
    blurred = (video + np.roll(video, 1, 1) + np.roll(video, -1, 1) + np.roll(video, 1, 2) + np.roll(video, -1, 2)) / 5
    report = drift.drift_report(np.round(blurred).astype(np.uint8), video.astype(np.uint8), fps=6)
    assert report["sharpness"][0] < 0.2 * report["sharpness_real"][0]


def test_colour_shift_raises_the_distance_by_the_shift():
    real = np.random.default_rng(5).integers(0, 200, (4, 16, 16, 3), dtype=np.uint8)
    shifted = real.copy()
    shifted[..., 0] += 24  # red only, no clipping: W1 = 24 on red, 0 on green and blue
    assert drift.color_distance(real, real) == 0.0
    np.testing.assert_allclose(drift.color_distance(shifted, real), 24 / 3)
    # Moving pixels around keeps the distribution: colour distance ignores geometry.
    assert drift.color_distance(real[:, ::-1], real) == 0.0


def test_seconds_split_with_a_partial_last_second():
    video = _texture(6, (7, 16, 16, 3))
    report = drift.drift_report(video, video, fps=3)
    assert report["frames"] == [3, 3, 1] and report["second"] == [1, 2, 3]
    assert drift.second_bounds(10, 2.5) == [(0, 3), (3, 5), (5, 8), (8, 10)]


def test_bad_inputs_name_the_argument():
    video = _texture()
    with pytest.raises(ValueError, match="real: expected the shape of generated"):
        drift.drift_report(video, video[:, :16], fps=3)
    with pytest.raises(ValueError, match="generated: expected uint8"):
        drift.drift_report(video.astype(np.float32), video, fps=3)
    with pytest.raises(ValueError, match=r"real: expected uint8 frames \[T>0, H, W, 3\]"):
        drift.drift_report(video, video[..., 0], fps=3)
    with pytest.raises(ValueError, match="fps: expected a positive number"):
        drift.drift_report(video, video, fps=0)


# ----- the long-horizon stage 1 sampler -----------------------------------------------

N = 3  # attention window
B, H, W, C, CC = 1, 4, 4, 4, 3


@pytest.fixture(scope="module")
def model():
    cfg = DiTConfig(num_layers=1, num_heads=2, head_dim=6, ffn_dim=16, latent_channels=C, text_dim=8, freq_dim=32,
                    causal=True, window=N, control_channels=CC, latent_height=H, latent_width=W, text_len=2)
    # numpy draws: nnx's init compiles a sampler per parameter shape (seconds on CPU).
    rng = np.random.default_rng(0)
    params = jax.tree.map(lambda s: (0.3 * rng.standard_normal(s.shape)).astype(s.dtype),
                          nnx.to_pure_dict(abstract_params(cfg)))
    graphdef, _ = abstract_model(cfg)
    return graphdef, params


def _inputs(K):
    first = jax.random.normal(jax.random.key(1), (B, 1, H, W, C))
    text = jax.random.normal(jax.random.key(2), (B, 2, 8))
    # One draw sliced, so a shorter video's controls are a prefix of a longer one's.
    controls = jax.random.normal(jax.random.key(3), (B, 64 * N, H, W, CC))[:, :K]
    return first, text, controls


def test_window_frame_indices():
    idx, slot = window_frame_indices(0, N)
    assert idx.tolist() == [0, 1, 2, 3, 4] and int(slot) == 0  # position 0 is the sink slot itself
    idx, slot = window_frame_indices(N + 1, N)  # the last position that sees frame 1
    assert idx.tolist() == [0, 1, 2, 3, 4] and int(slot) == N + 1
    idx, slot = window_frame_indices(10, N)
    assert idx.tolist() == [0, 7, 8, 9, 10] and int(slot) == N + 1


def test_sample_long_equals_sample_autoregressive_within_the_window(model):
    graphdef, params = model
    K = N + 1  # the longest video whose every position fits in the window
    first, text, controls = _inputs(K)
    key = jax.random.key(5)

    def autoregressive_noise(key, p, indices):
        """sample_autoregressive's draws for frame p: its key chain split p times, then a
        [B, K] context draw of which the window takes its slots."""
        key = jax.lax.fori_loop(0, p, lambda i, k: jax.random.split(k, 3)[0], key)
        _, k_ctx, k_eps = jax.random.split(key, 3)
        ctx = jax.random.normal(k_ctx, (B, K, H, W, C))[:, jnp.clip(indices, 0, K - 1)]
        return ctx, jax.random.normal(k_eps, (B, 1, H, W, C))

    @jax.jit
    def both(params):
        m = nnx.merge(graphdef, params)
        ref = sample_autoregressive(m, first, text, controls, key, num_frames=K, num_steps=3, shift=3.0)
        long = sample_long(m, first, text, controls, key, num_frames=K, num_steps=3, shift=3.0,
                           noise=autoregressive_noise)
        return ref, long

    ref, long = both(params)
    assert float(jnp.abs(ref).max()) > 0.1
    np.testing.assert_allclose(np.asarray(long), np.asarray(ref), atol=2e-5)


class _Recorder:
    """The model, recording the shapes it is traced with."""

    def __init__(self, model, calls):
        self.model, self.cfg, self.calls = model, model.cfg, calls

    def __call__(self, x_t, t, text, **kw):
        self.calls.append((tuple(x_t.shape), tuple(kw["frame_indices"].shape)))
        return self.model(x_t, t, text, **kw)


def test_sample_long_runs_past_the_window_at_a_fixed_cost(model):
    graphdef, params = model
    calls = []

    def run(params, K, key):
        first, text, controls = _inputs(K)
        m = _Recorder(nnx.merge(graphdef, params), calls)
        return sample_long(m, first, text, controls, key, num_frames=K, num_steps=2, shift=3.0)

    K = 3 * N
    frames = jax.jit(run, static_argnums=1)(params, K, jax.random.key(0))
    assert frames.shape == (B, K, H, W, C) and bool(jnp.isfinite(frames).all())
    assert float(jnp.abs(frames[:, -1]).max()) > 0.1
    # One traced model call, on N + 2 frames, whatever the length (traced, not run, for 20N).
    jax.make_jaxpr(run, static_argnums=1)(params, 20 * N, jax.random.key(0))
    assert calls == [((B, N + 2, H, W, C), (N + 2,))] * 2
