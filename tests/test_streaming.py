"""Streaming with the KV cache equals one parallel block-causal forward, values and grads."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from aapt_jax.model.config import DiTConfig
from aapt_jax.model.dit import create
from aapt_jax.sample.streaming import (StreamingSampler, init_state, rollout_frames,
                                       rollout_noise)

CFG = DiTConfig(num_layers=2, num_heads=2, head_dim=12, ffn_dim=40, latent_channels=4, text_dim=16,
                causal=True, window=3, control_channels=3, latent_height=4, latent_width=6)
B, H, W = 2, 4, 6


@pytest.fixture(scope="module")
def model_and_inputs():
    graphdef, params = create(CFG, seed=1)
    key = jax.random.key(0)
    k1, k2, k3 = jax.random.split(key, 3)
    first = jax.random.normal(k1, (B, 1, H, W, CFG.latent_channels))
    text = jax.random.normal(k2, (B, 5, CFG.text_dim))
    controls = jax.random.normal(k3, (B, 9, H, W, CFG.control_channels))
    return graphdef, params, first, text, controls


def _parallel_frames(model, first, text, noise, frames, controls):
    """The same frames from one block-causal forward fed the rollout's recycled inputs."""
    recycled = jnp.concatenate([first, frames[:, :-1]], axis=1)
    K = noise.shape[1]
    v = model(noise, jnp.full((B,), 1000.0), text, recycled=recycled, control=controls[:, :K])
    return noise - v


@pytest.mark.parametrize("num_frames", [2, 9])  # below and above the window N=3
def test_cached_rollout_equals_parallel_forward(model_and_inputs, num_frames):
    graphdef, params, first, text, controls = model_and_inputs
    sampler = StreamingSampler(CFG, graphdef)
    key = jax.random.key(num_frames)
    state = sampler.init(params, first, text)
    noise = rollout_noise(key, state, num_frames)
    _, frames = sampler.rollout(params, state, controls[:, :num_frames], key, num_frames)
    ref = _parallel_frames(nnx.merge(graphdef, params), first, text, noise, frames, controls)
    err = float(jnp.abs(frames - ref).max() / jnp.abs(ref).max())
    assert err < 1e-5, err


def test_window_really_limits_attention(model_and_inputs):
    """Changing a frame outside the window changes nothing; inside it, something."""
    graphdef, params, first, text, controls = model_and_inputs
    model = nnx.merge(graphdef, params)
    x = jax.random.normal(jax.random.key(3), (B, 7, H, W, CFG.latent_channels))
    rec = jax.random.normal(jax.random.key(4), x.shape)
    t = jnp.full((B,), 700.0)
    base = model(x, t, text, recycled=rec, control=controls[:, :7])
    bumped = model(x.at[:, 2].add(1.0), t, text, recycled=rec, control=controls[:, :7])
    diff = jnp.abs(bumped - base).max(axis=(0, 2, 3, 4))
    # frame 2 is visible to frames 2..5 (window 3); frames 0,1 never see it. (Frame 6 still
    # changes through the second layer: stacking layers widens the receptive field.)
    assert float(diff[0]) == 0 and float(diff[1]) == 0
    assert all(float(diff[f]) > 1e-4 for f in (2, 3, 4, 5))
    bumped0 = model(x.at[:, 0].add(1.0), t, text, recycled=rec, control=controls[:, :7])
    assert float(jnp.abs(bumped0 - base)[:, 6].max()) > 1e-4  # the sink is always visible


def test_gradients_flow_through_cache(model_and_inputs):
    """d(loss)/d(params) of a cached rollout (recycled input detached) equals that of the
    parallel forward with the same, detached, recycled frames: the cache carries the
    gradient of every past frame's keys and values."""
    graphdef, params, first, text, controls = model_and_inputs
    K = 5
    noise = jax.random.normal(jax.random.key(9), (B, K, H, W, CFG.latent_channels))
    weights = jax.random.normal(jax.random.key(10), noise.shape)

    def streamed(p):
        model = nnx.merge(graphdef, p)
        _, frames = rollout_frames(model, init_state(model, first, text), noise, controls[:, :K],
                                   detach_recycled=True)
        return jnp.sum(frames * weights), frames

    (_, frames), g_stream = jax.value_and_grad(streamed, has_aux=True)(params)

    def parallel(p):
        model = nnx.merge(graphdef, p)
        out = _parallel_frames(model, first, text, noise, jax.lax.stop_gradient(frames), controls)
        return jnp.sum(out * weights)

    g_par = jax.grad(parallel)(params)
    flat_s, flat_p = jax.tree.leaves(g_stream), jax.tree.leaves(g_par)
    for a, b in zip(flat_s, flat_p):
        scale = float(jnp.abs(b).max()) + 1e-12
        assert float(jnp.abs(a - b).max()) / scale < 1e-4
    # Some parameter's gradient must be nonzero at all (e.g. the first block's key projection).
    assert float(jnp.abs(g_stream["blocks"][0]["attn1"]["to_k"]["kernel"][...]).max()) > 0


def test_long_rollout_stays_finite_and_constant_memory(model_and_inputs):
    graphdef, params, first, text, _ = model_and_inputs
    cfg = CFG.replace(control_channels=0)
    graphdef, params = create(cfg, seed=2)
    sampler = StreamingSampler(cfg, graphdef)
    state = sampler.init(params, first, text)
    shapes = jax.tree.map(lambda x: x.shape, state)
    state, frames = sampler.rollout(params, state, None, jax.random.key(1), num_frames=1440)
    assert frames.shape == (B, 1440, H, W, cfg.latent_channels)
    assert bool(jnp.isfinite(frames).all())
    assert int(state.position) == 1440
    assert jax.tree.map(lambda x: x.shape, state) == shapes


def test_step_matches_rollout(model_and_inputs):
    graphdef, params, first, text, controls = model_and_inputs
    sampler = StreamingSampler(CFG, graphdef)
    key = jax.random.key(5)
    state = sampler.init(params, first, text)
    noise = rollout_noise(key, state, 4)
    _, ref = sampler.rollout(params, state, controls[:, :4], key, 4)
    # step draws its own noise from its key; feed the same noise through generate_frame instead.
    model = nnx.merge(graphdef, params)
    st = init_state(model, first, text)
    from aapt_jax.sample.streaming import generate_frame
    outs = []
    for i in range(4):
        st, f = generate_frame(model, st, noise[:, i:i + 1], controls[:, i:i + 1])
        outs.append(f)
    np.testing.assert_allclose(np.asarray(jnp.concatenate(outs, 1)), np.asarray(ref), atol=1e-5)
    # and the jitted step runs and advances the position
    st2, frame = sampler.step(params, sampler.init(params, first, text), controls[:, :1], key)
    assert frame.shape == (B, 1, H, W, CFG.latent_channels) and int(st2.position) == 1
