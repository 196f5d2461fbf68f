"""The patch VAE (the tiny world's): Wan's geometry and streaming contract, exact patch
layout, its config and file round trip, and the one-line errors of a bad config."""

import dataclasses

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from aapt_jax.io.vae_import import import_vae, save_vae
from aapt_jax.model import vae as V
from aapt_jax.model.vae_config import PATCH_CLASS_NAME, VAEConfig, get_vae_config
from aapt_jax.model.vae_patch import patchify, unpatchify

B, T, H, W = 2, 9, 16, 24  # 3 latent frames of 4 x 6


@pytest.fixture(scope="module")
def model():
    config = get_vae_config("world", base_dim=16)
    graphdef, params = V.init_vae(config, seed=1)
    video = jnp.asarray(np.random.RandomState(0).uniform(-1, 1, (B, T, H, W, 3)), jnp.float32)
    mean, logvar = V.encode(graphdef, params, video)
    return dict(config=config, graphdef=graphdef, params=params, video=video, mean=mean, logvar=logvar)


def test_geometry_is_wans():
    config = get_vae_config("world")
    assert (config.arch, config.spatial_ratio, config.temporal_ratio, config.z_dim) == ("patch", 4, 4, 16)
    assert config.num_latent_frames(25) == 7


def test_patch_layout_is_exact():
    video = jnp.asarray(np.random.RandomState(1).uniform(-1, 1, (1, 9, 8, 12, 3)), jnp.float32)
    patches = patchify(video, 4, 4, first=True)
    assert patches.shape == (1, 3, 2, 3, 4 * 4 * 4 * 3)
    # Latent (1, 1, 2) holds frames 1..4, rows 4..7, columns 8..11, in (frame, row, column, rgb) order.
    expected = np.asarray(video[0, 1:5, 4:8, 8:12]).reshape(-1)
    np.testing.assert_array_equal(np.asarray(patches[0, 1, 1, 2]), expected)
    # Frame 0 fills the first latent frame alone, repeated.
    np.testing.assert_array_equal(np.asarray(patches[0, 0, 0, 0]).reshape(4, 4, 4, 3),
                                  np.broadcast_to(np.asarray(video[0, :1, :4, :4]), (4, 4, 4, 3)))
    np.testing.assert_array_equal(np.asarray(unpatchify(patches, 4, 4, first=True)), np.asarray(video))
    rest = patchify(video[:, 1:], 4, 4, first=False)
    np.testing.assert_array_equal(np.asarray(rest), np.asarray(patches[:, 1:]))
    np.testing.assert_array_equal(np.asarray(unpatchify(rest, 4, 4, first=False)), np.asarray(video[:, 1:]))


def test_streaming_equals_the_whole_video(model):
    cfg, g, p, video = model["config"], model["graphdef"], model["params"], model["video"]
    assert model["mean"].shape == (B, 3, H // 4, W // 4, cfg.z_dim)
    state = V.encode_init(cfg, B, (H, W))
    means = []
    for chunk in (video[:, :1], video[:, 1:5], video[:, 5:9]):
        state, (mean, _) = V.encode_step(g, p, state, chunk)
        means.append(mean)
    np.testing.assert_allclose(np.concatenate(means, 1), model["mean"], atol=1e-5)

    whole = V.decode(g, p, model["mean"])
    assert whole.shape == video.shape
    state = V.decode_init(cfg, B, (H // 4, W // 4))
    frames = []
    for i in range(3):
        state, f = V.decode_step(g, p, state, model["mean"][:, i:i + 1])
        frames.append(f)
    assert [f.shape[1] for f in frames] == [1, 4, 4]
    np.testing.assert_allclose(np.concatenate(frames, 1), whole, atol=1e-5)


def test_a_latent_frame_sees_only_the_past(model):
    # Changing frames 5..8 leaves latent frames 0 and 1 as they were.
    g, p, video = model["graphdef"], model["params"], model["video"]
    changed = video.at[:, 5:].set(-video[:, 5:])
    mean, _ = V.encode(g, p, changed)
    np.testing.assert_array_equal(np.asarray(mean[:, :2]), np.asarray(model["mean"][:, :2]))
    assert not np.allclose(np.asarray(mean[:, 2]), np.asarray(model["mean"][:, 2]))


def test_files_round_trip(model, tmp_path):
    cfg = dataclasses.replace(model["config"], latents_mean=(0.5,) * 16, latents_std=(2.0,) * 16)
    save_vae(str(tmp_path), cfg, model["params"])
    loaded_cfg, _, params = import_vae(str(tmp_path))
    assert loaded_cfg == cfg
    assert cfg.to_diffusers()["_class_name"] == PATCH_CLASS_NAME
    loaded = _flat(params)
    for key, value in _flat(model["params"]).items():
        np.testing.assert_array_equal(np.asarray(loaded[key]), np.asarray(value))


def _flat(params):
    return {path: var.get_value() for path, var in nnx.to_flat_state(params)}


@pytest.mark.parametrize("fields, message", [
    (dict(arch="unet"), r"vae.arch: expected one of \('wan', 'patch'\), got 'unet'"),
    (dict(arch="patch", dim_mult=(1, 2, 2)), r"vae.dim_mult: expected all ones for arch 'patch'"),
])
def test_bad_config_is_one_line(fields, message):
    with pytest.raises(ValueError, match=message):
        VAEConfig(**{"temporal_downsample": (True, True), "dim_mult": (1, 1, 1), **fields})
