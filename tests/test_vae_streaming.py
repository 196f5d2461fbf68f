"""Streaming (chunk by chunk, explicit caches) equals the whole-video pass; bad inputs fail."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from aapt_jax.model import vae as V
from aapt_jax.model.vae_config import get_vae_config

# The sizes of the benchmark's quick run, so a full test session compiles these once.
B, T, H, W = 1, 9, 32, 48  # 3 latent frames of 4 x 6


@pytest.fixture(scope="module")
def model():
    config = get_vae_config("tiny")
    graphdef, params = V.init_vae(config, seed=3)
    video = jnp.asarray(np.random.RandomState(0).uniform(-1, 1, (B, T, H, W, 3)), jnp.float32)
    mean, logvar = V.encode(graphdef, params, video)
    return dict(config=config, graphdef=graphdef, params=params, video=video, mean=mean, logvar=logvar)


def _assert_close(a, b, what):
    a, b = np.asarray(a), np.asarray(b)
    assert a.shape == b.shape, (what, a.shape, b.shape)
    err = float(np.abs(a - b).max())
    assert err <= 1e-5 * max(float(np.abs(b).max()), 1e-3), f"{what}: max abs err {err:.3g}"


def test_encode_streaming_equals_full(model):
    # First chunk by a plain call, the others under lax.scan: after the first step the
    # state has one fixed structure, so a scan can carry it.
    r = model["config"].temporal_ratio
    state = V.encode_init(model["config"], B, (H, W))
    state, (mean0, logvar0) = V.encode_step(model["graphdef"], model["params"], state, model["video"][:, :1])
    assert not state.first
    chunks = model["video"][:, 1:].reshape(B, -1, r, H, W, 3).swapaxes(0, 1)

    def body(state, chunk):
        return V.encode_step(model["graphdef"], model["params"], state, chunk)

    _, (means, logvars) = jax.lax.scan(body, state, chunks)
    means = jnp.concatenate([mean0, jnp.moveaxis(means[:, :, 0], 0, 1)], 1)
    logvars = jnp.concatenate([logvar0, jnp.moveaxis(logvars[:, :, 0], 0, 1)], 1)
    assert model["mean"].shape == (B, 3, H // 8, W // 8, model["config"].z_dim)
    _assert_close(means, model["mean"], "streaming encode mean")
    _assert_close(logvars, model["logvar"], "streaming encode logvar")


@pytest.fixture(scope="module")
def decoded(model):
    z = model["mean"]
    full = V.decode(model["graphdef"], model["params"], z)
    state = V.decode_init(model["config"], B, z.shape[2:4])
    state, first = V.decode_step(model["graphdef"], model["params"], state, z[:, :1])
    return dict(full=full, first=first, state=state)


def test_decode_streaming_equals_full(model, decoded):
    z, r = model["mean"], model["config"].temporal_ratio
    assert decoded["full"].shape == (B, T, H, W, 3)
    assert decoded["first"].shape == (B, 1, H, W, 3)
    frames, state = [decoded["first"]], decoded["state"]
    for i in range(1, z.shape[1]):
        state, f = V.decode_step(model["graphdef"], model["params"], state, z[:, i:i + 1])
        assert f.shape == (B, r, H, W, 3)
        frames.append(f)
    streamed = jnp.concatenate(frames, 1)
    assert float(jnp.abs(streamed).max()) <= 1.0
    _assert_close(streamed, decoded["full"], "streaming decode")


def test_encode_rejects_bad_frame_count(model):
    with pytest.raises(ValueError, match=r"video frames: expected 1 \+ 4k .*got 6"):
        V.encode(model["graphdef"], model["params"], model["video"][:, :6])


def test_encode_step_rejects_wrong_chunk(model):
    state = V.encode_init(model["config"], B, (H, W))
    with pytest.raises(ValueError, match="expected 1 frames in this step, got 4"):
        V.encode_step(model["graphdef"], model["params"], state, model["video"][:, :4])


def test_encode_rejects_bad_pixels(model):
    with pytest.raises(ValueError, match="multiples of spatial_ratio 8, got 32x44"):
        V.encode(model["graphdef"], model["params"], model["video"][:, :, :, :44])
    with pytest.raises(ValueError, match=r"\[B, T, H, W, 3\]"):
        V.encode(model["graphdef"], model["params"], model["video"][..., :2])


def test_decode_rejects_wrong_channels(model, decoded):
    z = model["mean"][..., :8]
    with pytest.raises(ValueError, match="latent channels: expected z_dim=16, got 8"):
        V.decode(model["graphdef"], model["params"], z)
    with pytest.raises(ValueError, match="latent channels: expected z_dim=16, got 8"):
        V.decode_step(model["graphdef"], model["params"], decoded["state"], z[:, :1])


def test_decode_step_rejects_other_size(model, decoded):
    z = jnp.zeros((B, 1, 4, 4, 16))
    with pytest.raises(ValueError, match=r"latent height/width: expected \(4, 6\)"):
        V.decode_step(model["graphdef"], model["params"], decoded["state"], z)


def test_normalize_round_trip():
    config = get_vae_config("wan2.1")
    z = jnp.asarray(np.random.RandomState(0).normal(size=(1, 2, 3, 3, 16)), jnp.float32)
    n = V.normalize_latents(config, z)
    # Channel 8 of Wan2.1 has mean 0.4134 and std 3.2687.
    np.testing.assert_allclose(n[..., 8], (z[..., 8] - 0.4134) / 3.2687, rtol=1e-6)
    np.testing.assert_allclose(V.denormalize_latents(config, n), z, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="z_dim=16, got 4"):
        V.normalize_latents(config, z[..., :4])
