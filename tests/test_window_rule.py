"""The AAPT window rule pinned on a one-layer model, where nothing widens the receptive field:
frame ``f`` sees exactly the sink, frames ``f - N .. f``, and nothing else, in the parallel
forward and in the KV-cached stream."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from aapt_jax.model.config import DiTConfig
from aapt_jax.model.dit import create
from aapt_jax.sample.streaming import init_state

N, T, B = 3, 9, 1
CFG = DiTConfig(num_layers=1, num_heads=2, head_dim=12, ffn_dim=32, latent_channels=4, text_dim=8, causal=True,
                window=N, latent_height=2, latent_width=4)


def _sees(f, j):
    return j == 0 or f - N <= j <= f


@pytest.fixture(scope="module")
def model():
    graphdef, params = create(CFG, seed=3)
    return nnx.merge(graphdef, params)


@pytest.mark.parametrize("j", [0, 1, 2, 5])
def test_parallel_forward_sees_exactly_the_window_and_the_sink(model, j):
    k = jax.random.split(jax.random.key(0), 3)
    x = jax.random.normal(k[0], (B, T, 2, 4, 4))
    rec = jax.random.normal(k[1], x.shape)
    text = jax.random.normal(k[2], (B, 2, 8))
    t = jnp.full((B,), 1000.0)
    forward = jax.jit(lambda x: model(x, t, text, recycled=rec))
    changed = np.asarray(jnp.abs(forward(x.at[:, j].add(1.0)) - forward(x)).max(axis=(0, 2, 3, 4)))
    expected = np.array([_sees(f, j) for f in range(T)])
    np.testing.assert_array_equal(changed > 1e-6, expected, err_msg=f"frame {j} changed {changed}")
    assert np.all(changed[~expected] == 0.0)


@pytest.mark.parametrize("j", [0, 2])
def test_cached_stream_sees_exactly_the_window_and_the_sink(model, j):
    """Step by step through the ring-buffer cache with fixed recycled inputs: bumping the
    noisy input of frame id ``j`` changes exactly the steps that may see frame ``j``."""
    k = jax.random.split(jax.random.key(1), 3)
    rec = jax.random.normal(k[0], (B, T, 2, 4, 4))
    text = jax.random.normal(k[1], (B, 2, 8))
    noise = jax.random.normal(k[2], (B, T, 2, 4, 4))
    t = jnp.full((B,), 1000.0)
    step = jax.jit(lambda cache, q, n, r: model.cached_forward(cache, q, n, t, recycled=r))

    def stream(noise):
        cache, out = init_state(model, rec[:, :1], text).cache, []
        for q in range(T):
            cache, v = step(cache, q, noise[:, q:q + 1], rec[:, q:q + 1])
            out.append(v)
        return jnp.concatenate(out, axis=1)

    changed = np.asarray(jnp.abs(stream(noise.at[:, j].add(1.0)) - stream(noise)).max(axis=(0, 2, 3, 4)))
    expected = np.array([_sees(f, j) for f in range(T)])
    np.testing.assert_array_equal(changed > 1e-6, expected, err_msg=f"frame {j} changed {changed}")
