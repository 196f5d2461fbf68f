"""Bad training inputs fail fast, naming what is wrong, and leave the workdir alone."""

import os

import pytest

from aapt_jax.data.sources import make_source
from aapt_jax.train import stages
from aapt_jax.train.loop import train
from configs import tiny_world


def test_stage_needs_an_existing_init(tmp_path):
    c = tiny_world.get_config("adapt")
    c.vae.checkpoint = ""
    with pytest.raises(ValueError, match="vae.checkpoint: expected"):
        stages.build(c)


def test_init_from_missing_workdir(tmp_path):
    c = tiny_world.get_config("distill")
    c.train.init_from = str(tmp_path / "nope")
    # the VAE check comes first; give it an unfinished workdir to see that error too
    c.vae.checkpoint = str(tmp_path)
    with pytest.raises(ValueError, match="holds no finished stage"):
        stages.build(c)


def test_unknown_stage_and_bad_resolution():
    c = tiny_world.get_config("vae")
    c.train.stage = "pretrain"
    with pytest.raises(ValueError, match="train.stage: expected one of"):
        stages.build(c)
    c = tiny_world.get_config("vae")
    c.video.height = c.data.height = 62
    with pytest.raises(ValueError, match="video.height: expected a multiple of the VAE's spatial ratio 4, got 62"):
        stages.build(c)


def test_empty_video_folder(tmp_path):
    c = tiny_world.get_config("vae")
    c.data.source = "folder"
    c.data.folder = str(tmp_path)
    with pytest.raises(ValueError, match=str(tmp_path)):
        make_source(c.data)


def test_finished_workdir_is_not_overwritten(tmp_path):
    (tmp_path / "export").mkdir()
    (tmp_path / "export" / "info.json").write_text("{}")
    with pytest.raises(ValueError, match="already holds a finished stage"):
        train(tiny_world.get_config("vae"), str(tmp_path))
    assert os.listdir(tmp_path) == ["export"]
