"""VAEConfig validation, presets and the App. C light decoder rule (no tracing here)."""

import dataclasses

import pytest

from aapt_jax.model.vae_config import (PRESETS, VAEConfig, WAN21_LATENTS_MEAN, get_vae_config,
                                       light_decoder)


def test_presets():
    wan = get_vae_config("wan2.1")
    assert (wan.base_dim, wan.z_dim, wan.dim_mult, wan.num_res_blocks) == (96, 16, (1, 2, 4, 4), 2)
    assert wan.temporal_downsample == (False, True, True)
    assert (wan.spatial_ratio, wan.temporal_ratio) == (8, 4)
    assert len(wan.latents_mean) == len(wan.latents_std) == 16
    assert wan.latents_mean[0] == -0.7571 and wan.latents_std[-1] == 1.9160
    tiny = get_vae_config("tiny")
    assert (tiny.spatial_ratio, tiny.temporal_ratio) == (8, 4)
    assert set(PRESETS) == {"tiny", "world", "wan2.1", "wan2.1-light-decoder"}
    with pytest.raises(ValueError, match="vae preset: expected one of"):
        get_vae_config("wan9")


def test_light_decoder_has_the_paper_ratio():
    light = get_vae_config("wan2.1-light-decoder")
    full = get_vae_config("wan2.1")
    # Paper: [128, 256, 512, 512] x 3 blocks -> [64, 128, 256, 512] x 2 blocks.
    assert [w / full.decoder_widths[-1] for w in full.decoder_widths] == [0.25, 0.5, 1, 1]
    assert [w / light.decoder_widths[-1] for w in light.decoder_widths] == [0.125, 0.25, 0.5, 1]
    assert light.decoder_widths[-1] == full.decoder_widths[-1]
    assert (full.dec_num_res_blocks + 1, light.dec_num_res_blocks + 1) == (3, 2)
    # The encoder and the latent space are untouched.
    assert dataclasses.replace(light, decoder_base_dim=None, decoder_dim_mult=None,
                               decoder_num_res_blocks=None) == full
    assert light_decoder(get_vae_config("tiny", base_dim=16)).decoder_widths == (8, 16, 16, 32)


@pytest.mark.parametrize("fields, message", [
    (dict(base_dim=0), "vae.base_dim: expected a positive int, got 0"),
    (dict(dim_mult=(1, 2), temporal_downsample=(True, True)),
     "vae.temporal_downsample: expected a tuple of 1 bools"),
    (dict(decoder_dim_mult=(1, 2)), "vae.decoder_dim_mult: expected None or a tuple of 4 positive ints"),
    (dict(z_dim=8, latents_mean=WAN21_LATENTS_MEAN), "vae.latents_mean: expected None or 8 floats"),
    (dict(latents_std=(0.0,) * 16), "vae.latents_std: expected positive values"),
    (dict(base_dim=9), "vae.base_dim: expected decoder widths"),
    (dict(dtype="float16"), "vae.dtype: expected one of"),
])
def test_bad_fields_are_named(fields, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        VAEConfig(**fields)


def test_from_diffusers_refuses_other_variants():
    with pytest.raises(ValueError, match="is_residual"):
        VAEConfig.from_diffusers({"is_residual": True})
    with pytest.raises(ValueError, match="patch_size"):
        VAEConfig.from_diffusers({"patch_size": 2})
    assert VAEConfig.from_diffusers({}) == get_vae_config("wan2.1")
    light = get_vae_config("wan2.1-light-decoder")
    assert VAEConfig.from_diffusers(light.to_diffusers()) == light
