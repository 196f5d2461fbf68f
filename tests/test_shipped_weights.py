"""The built-in tiny-world weights: present, small, loadable by name, and they reproduce the
held-out figures recorded when ``launch.pretrain`` made them."""

import os

import pytest

from aapt_jax.eval import shipped
from aapt_jax.io import builtin
from aapt_jax.io.generator_source import generator_info
from aapt_jax.io.vae_source import load_vae
from configs import tiny_world

WORLD = "tiny_world"
BUDGET_BYTES = 25 * 2**20
VAE_BAR_DB = 24.0  # held-out reconstruction PSNR a shipped VAE must keep


def _pieces():
    return builtin.figures(WORLD).get("pieces", {})


def test_the_shipped_weights_are_there_and_small():
    pieces = _pieces()
    assert "vae" in pieces and set(pieces) <= set(shipped.PIECES), pieces
    assert all("launch.pretrain" in run["command"] for run in builtin.made_by(WORLD).values())
    assert {f"builtin:{WORLD}/{p}" for p in pieces} == set(builtin.shipped())
    root = builtin.path(WORLD)
    sizes = [os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(root) for f in files]
    assert 0 < sum(sizes) <= BUDGET_BYTES
    assert max(sizes) <= shipped.SHARD_BYTES  # no large blob in the repository
    for piece, stage in (("base", "base"), ("aapt", "adversarial")):
        if piece in pieces:
            assert generator_info(f"builtin:{WORLD}/{piece}")["stage"] == stage


def test_the_default_config_starts_from_the_shipped_vae_and_base():
    config = tiny_world.get_config("base")
    assert config.pretrained.vae == f"builtin:{WORLD}/vae"
    assert config.pretrained.base == f"builtin:{WORLD}/base"
    assert generator_info(config.pretrained.base)["model"]["causal"] is False
    vcfg, _, _ = load_vae(config.vae.preset, config.pretrained.vae)
    assert (vcfg.arch, vcfg.spatial_ratio, vcfg.temporal_ratio) == ("patch", config.video.vae_spatial, 4)


def test_builtin_names_are_checked():
    with pytest.raises(ValueError, match=r"vae.checkpoint: expected one of the shipped weights .*got 'builtin:nope/vae'"):
        load_vae("world", "builtin:nope/vae")
    with pytest.raises(ValueError, match=r"generator: expected one of the shipped weights"):
        generator_info("builtin:tiny_world/../tiny_world", "generator")


@pytest.mark.slow
def test_shipped_weights_reproduce_their_recorded_figures():
    figures = shipped.check(tiny_world.get_config("adversarial"), WORLD)
    assert set(figures) == set(_pieces())
    for piece, (recorded, measured) in figures.items():
        assert abs(recorded - measured) <= 0.5, (piece, recorded, measured)
    assert figures["vae"][1] >= VAE_BAR_DB, figures["vae"]


def test_sampling_defaults_to_the_worlds_shipped_pieces(tmp_path, monkeypatch):
    # launch.sample and launch.serve: what the config's world ships, unless told otherwise.
    config = tiny_world.get_config("adversarial")
    monkeypatch.setattr(builtin, "WEIGHTS_DIR", str(tmp_path))
    assert builtin.sources(config) == ("", "")
    (tmp_path / WORLD / "vae").mkdir(parents=True)
    assert builtin.sources(config) == ("", f"builtin:{WORLD}/vae")
    (tmp_path / WORLD / "aapt").mkdir()
    assert builtin.sources(config) == (f"builtin:{WORLD}/aapt", f"builtin:{WORLD}/vae")
    assert builtin.sources(config, "", "") == ("", "")  # '' asks for random weights
    assert builtin.sources(config, "runs/adv", "runs/vae") == ("runs/adv", "runs/vae")
    config.vae.checkpoint = "runs/vae2"
    assert builtin.sources(config)[1] == "runs/vae2"
    config.name = "tiny"
    assert builtin.sources(config)[0] == ""


def test_teacher_forced_control_figure_separates_using_the_camera_from_ignoring_it(monkeypatch):
    """The shipped generator's frames from true context move with their camera (the figure is
    positive); the same weights with the camera's input weights zeroed score exactly 0."""
    import dataclasses

    import numpy as np

    from aapt_jax.eval import world_figures as wf

    config = tiny_world.get_config("adversarial")
    vae = load_vae(config.vae.preset, f"builtin:{WORLD}/vae")
    source = f"builtin:{WORLD}/aapt"
    uses = wf.teacher_forced_following(config, vae, source, paths=2, seconds=(1.0, 2.0))
    assert min(uses) > 0.1, uses  # 0.28 and 0.48 dB when written
    gen = wf.load_generator_export(source, config, field="generator")
    kernel = np.array(gen.params["patch_embedding"]["kernel"])
    channels = gen.cfg.in_channels  # noise + recycled + control, innermost in a patch vector
    rows = np.arange(kernel.shape[0]) % channels >= channels - gen.cfg.control_channels
    kernel[rows] = 0
    deaf = dataclasses.replace(gen, params={**gen.params, "patch_embedding": {**gen.params["patch_embedding"],
                                                                             "kernel": kernel}}, _compiled={})
    monkeypatch.setattr(wf, "load_generator_export", lambda *a, **k: deaf)
    assert wf.teacher_forced_following(config, vae, source, paths=2, seconds=(1.0, 2.0)) == [0.0, 0.0]
