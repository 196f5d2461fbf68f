"""Shipping a pipeline's weights as built-in weights: converted, measured, named, swapped in whole."""

import os

import numpy as np
import pytest
from flax import nnx

from aapt_jax.eval import shipped
from aapt_jax.io import builtin
from aapt_jax.io import checkpoint as ckpt
from aapt_jax.io.vae_source import load_vae
from aapt_jax.model import vae as vae_lib
from aapt_jax.model.vae_config import get_vae_config
from configs import tiny_world


@pytest.fixture()
def weights_dir(tmp_path, monkeypatch):
    monkeypatch.setattr(builtin, "WEIGHTS_DIR", str(tmp_path / "weights"))
    return tmp_path / "weights"


@pytest.fixture(scope="module")
def pipeline_dir(tmp_path_factory):
    """A pipeline workdir whose VAE stage finished (random tiny VAE, unit latent statistics)."""
    root = tmp_path_factory.mktemp("pipeline")
    preset = tiny_world.get_config("vae").vae.preset
    vcfg = get_vae_config(preset)
    _, params = vae_lib.init_vae(vcfg, 0)
    ckpt.save_export(str(root / "vae"), nnx.to_pure_dict(params),
                     {"stage": "vae", "vae_preset": preset, "latents_mean": [0.0] * vcfg.z_dim,
                      "latents_std": [1.0] * vcfg.z_dim})
    return root


def test_ship_converts_measures_and_replaces_whole(pipeline_dir, weights_dir):
    config = tiny_world.get_config("adversarial")
    record = shipped.ship(str(pipeline_dir), config, pieces=("vae",), command="python -m launch.pretrain --x",
                          log=lambda _: None)
    folder = weights_dir / "tiny_world"
    assert sorted(os.listdir(folder)) == [builtin.FIGURES, "vae"]
    assert os.stat(folder).st_mode & 0o755 == 0o755
    assert builtin.shipped() == ["builtin:tiny_world/vae"]
    assert builtin.figures("tiny_world")["pieces"]["vae"]["value"] == record["pieces"]["vae"]["value"]
    # What a user loads by name is the stage's VAE, bit for bit.
    _, _, loaded = load_vae(config.vae.preset, "builtin:tiny_world/vae")
    _, _, trained = load_vae(config.vae.preset, str(pipeline_dir / "vae"))
    for a, b in zip(nnx.to_flat_state(nnx.State(loaded)), nnx.to_flat_state(nnx.State(trained)), strict=True):
        np.testing.assert_array_equal(np.asarray(a[1]), np.asarray(b[1]))
    recorded, measured = shipped.check(config)["vae"]
    assert abs(recorded - measured) < 1e-6

    # A stage that has not finished is refused before anything is written: the shipped folder stays.
    before = sorted(os.listdir(folder))
    with pytest.raises(ValueError, match="workdir: the base stage has not finished"):
        shipped.ship(str(pipeline_dir), config, pieces=("vae", "base"), log=lambda _: None)
    assert sorted(os.listdir(folder)) == before
    assert sorted(os.listdir(weights_dir)) == ["tiny_world"]  # no staging folder left behind
    with pytest.raises(ValueError, match="pieces: expected 'vae' and a subset of"):
        shipped.ship(str(pipeline_dir), config, pieces=("aapt",))
