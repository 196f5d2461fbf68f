"""A short light-decoder distillation learns: its loss falls well below where it started."""

import dataclasses

import numpy as np
import pytest
from flax import nnx

from aapt_jax.io.vae_import import import_vae, save_vae
from aapt_jax.model import vae as V
from aapt_jax.model.vae_config import VAEConfig
from aapt_jax.train.light_decoder import DistillConfig, distill_light_decoder, moving_patterns

TEACHER = VAEConfig(base_dim=8, z_dim=4, dim_mult=(1, 2, 2), num_res_blocks=1, temporal_downsample=(False, True))


@pytest.fixture(scope="module")
def result():
    graphdef, params = V.init_vae(TEACHER, seed=0)
    videos = moving_patterns(8, 5, 16, 16, seed=1)
    out = distill_light_decoder(graphdef, params, videos,
                                distill=DistillConfig(steps=150, batch_size=4, learning_rate=3e-3))
    return dict(teacher=(graphdef, params), videos=videos, out=out)


def test_loss_falls(result):
    losses = result["out"].losses
    assert losses.shape == (150,) and np.all(np.isfinite(losses))
    first, last = losses[:5].mean(), losses[-10:].mean()
    assert last < 0.5 * first, (first, last)


def test_student_is_the_light_shape_with_the_teachers_encoder(result):
    config = result["out"].config
    assert config.decoder_widths == (4, 8, 16)
    assert config.dec_num_res_blocks == 0 and config.z_dim == TEACHER.z_dim
    teacher_graphdef, teacher_params = result["teacher"]
    np.testing.assert_array_equal(result["out"].params["encoder"]["conv_in"]["kernel"][...],
                                  teacher_params["encoder"]["conv_in"]["kernel"][...])


def test_student_saves_and_loads(result, tmp_path):
    out = result["out"]
    save_vae(str(tmp_path), out.config, out.params)
    config, _, params = import_vae(str(tmp_path))
    # None (identity) statistics are written out as explicit zeros and ones.
    assert config == dataclasses.replace(out.config, latents_mean=out.config.mean, latents_std=out.config.std)
    for (path, a), (_, b) in zip(nnx.to_flat_state(out.params), nnx.to_flat_state(params)):
        np.testing.assert_array_equal(a.get_value(), b.get_value(), err_msg=str(path))
