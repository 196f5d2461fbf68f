"""Cached latents: launch.encode writes ArrayRecord shards that the 'latents' source reads back
as the VAE's latents of the same clips; the training step gives the same loss on them."""

import dataclasses
import json
import os
import pickle
import shutil
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from ml_collections import ConfigDict

from aapt_jax.data import encode_latents as E
from aapt_jax.data import latent_shards as L
from aapt_jax.data import sources as S
from aapt_jax.io.vae_source import load_vae
from aapt_jax.model import vae as vae_lib
from configs import tiny_world

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COUNT, SHARD_SIZE = 6, 4
GEOMETRY = dict(height=32, width=32, latent_frames=2)


PRESET = tiny_world.get_config("adapt").vae.preset
CELL = tiny_world.get_config("adapt").video.vae_spatial


def _config(**data):
    """tiny_world's adapt stage at 32x32, 1 + 2 latent frames, random init (VAE seed 0)."""
    c = tiny_world.get_config("adapt")
    c.video.height = c.video.width = 32
    c.data.update(dict(GEOMETRY, **data))
    c.train.random_init = True
    return c


@pytest.fixture(scope="module")
def encoded(tmp_path_factory):
    """The CLI's output for the first COUNT clips of the tiny world with a random tiny VAE, and
    (computed here while the CLI runs) the clips and their one-pass VAE encoding."""
    out = str(tmp_path_factory.mktemp("cache") / "world")
    overrides = [f"--config.data.{k}={v}" for k, v in GEOMETRY.items()]
    proc = subprocess.Popen(
        [sys.executable, "-m", "launch.encode", "--config=configs/tiny_world.py:adapt", "--vae=", f"--out={out}",
         f"--num_examples={COUNT}", f"--shard_size={SHARD_SIZE}", "--batch_size=4", *overrides],
        cwd=ROOT, env=dict(os.environ, JAX_PLATFORMS="cpu"), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True)
    try:
        world = S.make_source(_config().data)
        items = [world[i] for i in range(COUNT)]
        _, graphdef, params = load_vae(PRESET, "", seed=0, allow_random=True)  # what --vae= encodes with
        video = jnp.asarray(np.stack([it["video"] for it in items]), jnp.float32) / 127.5 - 1.0
        expected = np.asarray(vae_lib.encode(graphdef, params, video)[0])
        stdout, stderr = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, stderr[-3000:]
    assert json.loads(stdout.strip().splitlines()[-1])["count"] == COUNT
    return out, items, expected


@pytest.fixture(scope="module")
def shards(encoded):
    return encoded[0]


def _equal(a, b):
    return a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


def test_shards_hold_the_vae_latents_and_exact_controls(encoded):
    shards, items, expected = encoded
    meta = json.load(open(os.path.join(shards, L.META_FILE)))
    assert meta["count"] == COUNT and len(meta["shards"]) == 2 and meta["latent_shape"] == [3, 32 // CELL, 32 // CELL, 16]
    assert meta["vae"]["preset"] == PRESET and meta["vae"]["checkpoint"] == ""
    assert meta["vae"]["latents_std"] == [1.0] * 16 and meta["source"]["source"] == "world"
    assert sorted(os.listdir(shards)) == sorted(meta["shards"] + [L.META_FILE])

    loader = S.make_loader(S.make_source(_config(source="latents", folder=shards).data), batch_size=2, seed=0,
                           shuffle=False, num_epochs=1)
    got = list(loader)
    assert len(got) == 3 and set(got[0]) == {"latents", "text", "intrinsics", "c2w"}
    assert got[0]["latents"].shape == (2, 3, 32 // CELL, 32 // CELL, 16) and got[0]["latents"].dtype == np.float32
    for key in ("intrinsics", "c2w", "text"):
        np.testing.assert_array_equal(np.concatenate([b[key] for b in got]), np.stack([it[key] for it in items]))
    latents = np.concatenate([b["latents"] for b in got])
    np.testing.assert_allclose(latents, expected, atol=2e-5 * float(np.abs(expected).max()))


def test_loader_is_deterministic_and_resumes_exactly(shards):
    source = S.make_source(_config(source="latents", folder=shards).data)
    loader = S.make_loader(source, batch_size=2, seed=3)
    first = [next(loader) for _ in range(2)]
    state = loader.get_state()
    after = [next(loader) for _ in range(4)]  # crosses an epoch boundary (3 batches per epoch)
    resumed = S.make_loader(source, batch_size=2, seed=3)
    resumed.set_state(state)
    assert all(_equal(a, next(resumed)) for a in after)
    replay = S.make_loader(source, batch_size=2, seed=3)
    assert all(_equal(a, next(replay)) for a in first)
    assert not _equal(first[0], next(S.make_loader(source, batch_size=2, seed=4)))
    # Grain's worker processes get a pickled copy, which opens its own readers.
    assert _equal(pickle.loads(pickle.dumps(source))[5], source[5])
    # num_examples caps the cache: the first records only.
    assert len(S.make_source(_config(source="latents", folder=shards, num_examples=4).data)) == 4
    assert len(source) == COUNT


def test_an_existing_out_dir_is_refused_and_left_alone(tmp_path, shards):
    out = tmp_path / "busy"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    vae = load_vae(PRESET, "", seed=0, allow_random=True)
    with pytest.raises(ValueError, match=r"--out: expected a new or empty directory.*refusing to overwrite"):
        E.encode_to_shards(str(out), _config().data, vae, vae_preset=PRESET, vae_checkpoint="", num_examples=2)
    assert os.listdir(out) == ["keep.txt"] and (out / "keep.txt").read_text() == "mine"
    assert sorted(os.listdir(tmp_path)) == ["busy"]  # no temporary directory left behind
    with pytest.raises(ValueError, match="data.source: expected a video source"):
        E.encode_to_shards(str(tmp_path / "new"), _config(source="latents", folder=shards).data, vae,
                           vae_preset=PRESET, vae_checkpoint="")


def test_mismatches_name_the_field(tmp_path, shards):
    def source(**data):
        return S.make_source(_config(**{"source": "latents", "folder": shards, **data}).data)

    for field, value, held in (("latent_frames", 3, 2), ("height", 64, 32), ("width", 40, 32), ("text_dim", 8, 16)):
        with pytest.raises(ValueError, match=rf"data\.{field}: expected {held} .*got {value}"):
            source(**{field: value})
    with pytest.raises(ValueError, match="data.folder: expected a directory of latent shards"):
        source(folder="")
    with pytest.raises(ValueError, match="data.folder: .* is not a directory"):
        source(folder=str(tmp_path / "nowhere"))
    with pytest.raises(ValueError, match="data.folder: .* has no meta.json"):
        source(folder=str(tmp_path))

    # A meta.json that disagrees with the data config, and one whose shards are gone.
    edited = tmp_path / "edited"
    shutil.copytree(shards, edited)
    meta = json.loads((edited / L.META_FILE).read_text())
    (edited / L.META_FILE).write_text(json.dumps(dict(meta, latent_frames=5)))
    with pytest.raises(ValueError, match=r"data\.latent_frames: expected 5 \(the latent shards in .* were encoded"):
        source(folder=str(edited))
    os.remove(edited / meta["shards"][1])
    (edited / L.META_FILE).write_text(json.dumps(meta))
    with pytest.raises(ValueError, match=r"data\.folder: .* lacks the shards \['latents-00001-of-00002"):
        source(folder=str(edited))

    # A run whose VAE or control kind does not fit the shards fails before any compile.
    data = S.validate_data_config(_config(source="latents", folder=shards).data)
    vcfg, _, _ = load_vae(PRESET, "", allow_random=True)
    with pytest.raises(ValueError, match="vae.checkpoint: the latent shards .* latents_std"):
        L.check_for_training(data, dataclasses.replace(vcfg, latents_std=(2.0,) * vcfg.z_dim), "camera")
    with pytest.raises(ValueError, match=r"control.kind: 'pose' needs \['keypoints'\].*source 'world'"):
        L.check_for_training(data, vcfg, "pose")


def test_training_loss_on_cached_latents_equals_loss_on_video(encoded):
    from aapt_jax.train import stages

    shards, items, _ = encoded
    config = _config(source="latents", folder=shards)
    stage = stages.build(config)
    cached = next(S.make_loader(S.make_source(config.data), batch_size=2, seed=0, shuffle=False))
    video = {k: np.stack([it[k] for it in items[:2]]) for k in items[0]}
    key = jax.random.key(7)
    loss = jax.jit(stage.loss)
    on_latents, _ = loss(stage.params, stage.frozen, cached, key)
    on_video, _ = loss(stage.params, stage.frozen, video, key)
    assert np.isfinite(float(on_video))
    np.testing.assert_allclose(float(on_latents), float(on_video), rtol=1e-5)

    pose = _config(source="latents", folder=shards)
    pose.control = ConfigDict(dict(kind="pose", fold=1))
    with pytest.raises(ValueError, match="control.kind"):
        stages.build(pose)
