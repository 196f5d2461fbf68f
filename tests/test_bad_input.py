"""Bad configs and shapes raise a ValueError naming the field, before anything is traced."""

import jax.numpy as jnp
import pytest
from flax import nnx

from aapt_jax import configs
from aapt_jax.model.config import DiTConfig
from aapt_jax.model.dit import create
from aapt_jax.sample.streaming import StreamingSampler
from configs import get as named_config

CFG = DiTConfig(num_layers=1, num_heads=2, head_dim=12, ffn_dim=16, latent_channels=4, text_dim=8,
                causal=True, window=3, control_channels=2, latent_height=4, latent_width=4)


@pytest.fixture(scope="module")
def model():
    graphdef, params = create(CFG)
    return graphdef, params


def test_unknown_config_field():
    with pytest.raises(ValueError, match=r"unknown config field\(s\) \['windw'\]"):
        DiTConfig.from_mapping(dict(windw=3))


@pytest.mark.parametrize("field,value,needle", [
    ("window", 0, "model.window: expected an int >= 1, got 0"),
    ("attention_impl", "flash", "model.attention_impl"),
    ("head_dim", 7, "model.head_dim"),
    ("latent_height", 5, "model.latent_height: expected a multiple of patch height 2, got 5"),
    ("patch_size", (2, 2, 2), "model.patch_size: expected temporal patch 1"),
])
def test_bad_model_fields(field, value, needle):
    with pytest.raises(ValueError, match=needle.replace("(", r"\(").replace(")", r"\)")):
        CFG.replace(**{field: value})


def test_video_not_divisible_by_vae():
    config = named_config("tiny")
    config.video.height = 100
    with pytest.raises(ValueError, match="video.height: expected a multiple of the VAE's spatial factor 8, got 100"):
        configs.model_config(config)


def test_unknown_named_config():
    with pytest.raises(ValueError, match="config: expected one of"):
        named_config("wan3")


def test_wrong_latent_shapes(model):
    graphdef, params = model
    m = nnx.merge(graphdef, params)
    text = jnp.zeros((1, 3, 8))
    ctrl = jnp.zeros((1, 2, 4, 4, 2))
    with pytest.raises(ValueError, match=r"x_t: expected \[B, T, H, W, 4\], got \[1, 2, 4, 4, 5\]"):
        m(jnp.zeros((1, 2, 4, 4, 5)), jnp.zeros(1), text, recycled=jnp.zeros((1, 2, 4, 4, 5)), control=ctrl)
    with pytest.raises(ValueError, match="multiples of the patch size"):
        m(jnp.zeros((1, 2, 5, 4, 4)), jnp.zeros(1), text, recycled=jnp.zeros((1, 2, 5, 4, 4)),
          control=jnp.zeros((1, 2, 5, 4, 2)))
    with pytest.raises(ValueError, match=r"control: expected \[1, 2, 4, 4, 2\], got \[1, 2, 4, 4, 3\]"):
        m(jnp.zeros((1, 2, 4, 4, 4)), jnp.zeros(1), text, recycled=jnp.zeros((1, 2, 4, 4, 4)),
          control=jnp.zeros((1, 2, 4, 4, 3)))
    with pytest.raises(ValueError, match="recycled: expected"):
        m(jnp.zeros((1, 2, 4, 4, 4)), jnp.zeros(1), text, control=ctrl)


def test_streaming_bad_inputs(model):
    graphdef, params = model
    sampler = StreamingSampler(CFG, graphdef)
    text = jnp.zeros((1, 3, 8))
    with pytest.raises(ValueError, match=r"first_frame: expected \[B, 1, h, w, 4\], got \[1, 2, 4, 4, 4\]"):
        sampler.init(params, jnp.zeros((1, 2, 4, 4, 4)), text)
    with pytest.raises(ValueError, match=r"text: expected \[1, Lt, 8\], got \[1, 3, 9\]"):
        sampler.init(params, jnp.zeros((1, 1, 4, 4, 4)), jnp.zeros((1, 3, 9)))
    with pytest.raises(ValueError, match=r"cache_frames: expected >= model.window \(3\), got 2"):
        StreamingSampler(CFG, graphdef, cache_frames=2).init(params, jnp.zeros((1, 1, 4, 4, 4)), text)
    state = sampler.init(params, jnp.zeros((1, 1, 4, 4, 4)), text)
    with pytest.raises(ValueError, match=r"control: expected \[1, 1, 4, 4, 2\], got \[1, 1, 4, 4, 1\]"):
        sampler.step(params, state, jnp.zeros((1, 1, 4, 4, 1)), None)
    with pytest.raises(ValueError, match=r"control: expected \[1, 5, 4, 4, 2\], got None"):
        sampler.rollout(params, state, None, None, num_frames=5)
    with pytest.raises(ValueError, match="model.causal: expected True"):
        StreamingSampler(CFG.replace(causal=False, control_channels=0), graphdef).init(
            params, jnp.zeros((1, 1, 4, 4, 4)), text)
