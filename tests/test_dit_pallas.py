"""The generator gives the same outputs with the Pallas attention kernels as with xla."""

import jax
import jax.numpy as jnp
import pytest
from flax import nnx

from aapt_jax.model.config import DiTConfig
from aapt_jax.model.dit import create
from aapt_jax.sample.streaming import init_state, rollout_frames

# Kernels support head dims 64 and 128.
CFG = DiTConfig(num_layers=1, num_heads=2, head_dim=64, ffn_dim=64, latent_channels=4, text_dim=16,
                causal=True, window=2, latent_height=4, latent_width=6)


@pytest.fixture(scope="module")
def setup():
    graphdef, params = create(CFG, seed=0)
    graphdef_p, _ = create(CFG.replace(attention_impl="pallas"), seed=0)
    ks = jax.random.split(jax.random.key(0), 4)
    x = jax.random.normal(ks[0], (1, 5, 4, 6, 4))
    rec = jax.random.normal(ks[1], x.shape)
    text = jax.random.normal(ks[2], (1, 3, 16))
    return graphdef, graphdef_p, params, x, rec, text


def test_parallel_forward_pallas_equals_xla(setup):
    graphdef, graphdef_p, params, x, rec, text = setup
    t = jnp.array([400.0])
    ref = nnx.merge(graphdef, params)(x, t, text, recycled=rec)
    out = nnx.merge(graphdef_p, params)(x, t, text, recycled=rec)
    assert float(jnp.abs(out - ref).max() / jnp.abs(ref).max()) < 1e-5


def test_streaming_pallas_equals_xla(setup):
    graphdef, graphdef_p, params, x, rec, text = setup
    outs = []
    for g in (graphdef, graphdef_p):
        model = nnx.merge(g, params)
        _, frames = rollout_frames(model, init_state(model, rec[:, :1], text), x)
        outs.append(frames)
    assert float(jnp.abs(outs[0] - outs[1]).max() / jnp.abs(outs[0]).max()) < 1e-5
