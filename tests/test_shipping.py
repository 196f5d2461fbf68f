"""Shipping a pipeline's weights as built-in weights: converted, measured, named, swapped in whole."""

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest
from flax import nnx

from aapt_jax import configs as model_configs
from aapt_jax.eval import shipped
from aapt_jax.io import builtin
from aapt_jax.io import checkpoint as ckpt
from aapt_jax.io.vae_source import load_vae
from aapt_jax.io.wan_transformer import abstract_params
from aapt_jax.model import vae as vae_lib
from aapt_jax.model.vae_config import get_vae_config
from configs import tiny_world

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


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


def _save_base(root):
    """A finished stage 0 run in ``root/base`` (random weights of the tiny world's DiT)."""
    config = tiny_world.get_config("base")
    cfg = model_configs.model_config(config).replace(causal=False, control_channels=0)  # as stage 0 trains it
    rng = np.random.default_rng(0)  # numpy draws: nnx's init compiles a sampler per shape
    params = jax.tree.map(lambda s: (0.05 * rng.standard_normal(s.shape)).astype(s.dtype),
                          nnx.to_pure_dict(abstract_params(cfg)))
    ckpt.save_export(str(root / "base"), params, {"stage": "base", "model": cfg.to_dict(),
                                                  "vae_preset": config.vae.preset})


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
    with pytest.raises(ValueError, match=r"pieces: expected consecutive pieces of the chain"):
        shipped.ship(str(pipeline_dir), config, pieces=("vae", "aapt"))
    with pytest.raises(ValueError, match=r"pieces: \['aapt'\] start from the shipped base of tiny_world"):
        shipped.ship(str(pipeline_dir), config, pieces=("aapt",))
    assert sorted(os.listdir(weights_dir)) == ["tiny_world"]


def test_ship_a_later_piece_carries_the_shipped_ones_it_starts_from(pipeline_dir, weights_dir, tmp_path):
    config = tiny_world.get_config("adversarial")
    shipped.ship(str(pipeline_dir), config, pieces=("vae",), command="made the vae", log=lambda _: None)
    folder = weights_dir / "tiny_world"
    vae_files = {f: (folder / "vae" / f).read_bytes() for f in os.listdir(folder / "vae")}
    # The base is post-trained elsewhere on the shipped VAE: that workdir has no vae stage.
    elsewhere = tmp_path / "elsewhere"
    _save_base(elsewhere)
    record = shipped.ship(str(elsewhere), config, pieces=("base",), command="made the base", log=lambda _: None)
    assert sorted(os.listdir(folder)) == sorted([builtin.FIGURES, "base", "vae"])
    assert {f: (folder / "vae" / f).read_bytes() for f in os.listdir(folder / "vae")} == vae_files
    assert record["pieces"]["vae"]["command"] == "made the vae"
    assert record["pieces"]["base"]["command"] == "made the base"
    assert builtin.figures("tiny_world") == record
    with open(folder / "base" / "aapt.json") as f:  # latent statistics of the shipped VAE it trains on
        assert len(json.load(f)["latents"]["mean"]) == get_vae_config(config.vae.preset).z_dim


def test_pretrain_refuses_pieces_that_skip_a_link_before_training(tmp_path):
    workdir = tmp_path / "ship"
    proc = subprocess.run([sys.executable, "-m", "launch.pretrain", f"--workdir={workdir}", "--pieces=vae,aapt"],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(
        "error: pieces: expected consecutive pieces of the chain ['vae', 'base', 'aapt'] (e.g. "
        "['vae', 'base', 'aapt'] or ['aapt']), got ['vae', 'aapt']"), lines
    assert not workdir.exists()
