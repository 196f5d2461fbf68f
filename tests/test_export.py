"""Orbax -> diffusers conversion: round trips, diffusers loading, refusals, importers of
what diffusers saves, and the export suite (PyTorch streaming reference vs JAX)."""

import json
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from aapt_jax.bench.export import make_exports
from aapt_jax.io import checkpoint as ckpt
from aapt_jax.io.convert import convert
from aapt_jax.io.generator_source import load_generator
from aapt_jax.io.vae_import import import_vae
from aapt_jax.io.wan_transformer import load_wan_transformer
from aapt_jax.model.config import DiTConfig
from aapt_jax.model.discriminator import Discriminator, DiscriminatorConfig
from aapt_jax.model.dit import create

try:
    import diffusers
    import torch
except ImportError:  # the JAX library runs without them; CI installs both
    torch = diffusers = None
needs_torch = pytest.mark.skipif(torch is None, reason="torch and diffusers (the PyTorch side of the export) "
                                 "are not installed")

CAUSAL = DiTConfig(num_layers=2, num_heads=2, head_dim=12, ffn_dim=32, latent_channels=16, text_dim=8, text_len=5,
                   causal=True, window=2, control_channels=3, latent_height=4, latent_width=4)
CONTROL = {"kind": "camera", "fold": 1, "origin_scale": 0.05, "rotation_scale": 0.01}


def _leaves(tree):
    return [np.asarray(x) for x in jax.tree.leaves(nnx.to_pure_dict(tree) if isinstance(tree, nnx.State) else tree)]


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("exports"))
    workdir, vcfg, _, vae_params, _, params = make_exports(root, CAUSAL, CONTROL)
    out = os.path.join(root, "converted")
    summary = convert(workdir, out, dtype="float32", max_shard_bytes=40_000)
    return dict(root=root, workdir=workdir, out=out, summary=summary, vcfg=vcfg, vae_params=vae_params,
                params=params)


def test_round_trip_is_bit_identical(exported):
    out = exported["out"]
    names = sorted(os.listdir(os.path.join(out, "transformer")))
    assert "diffusion_pytorch_model.safetensors.index.json" in names and "config.json" in names
    assert sum(n.endswith(".safetensors") for n in names) > 1  # sharded at this shard size
    with open(os.path.join(out, "transformer", "config.json")) as f:
        assert json.load(f)["in_channels"] == 16 + 16 + 3
    with open(os.path.join(out, "aapt.json")) as f:
        aapt = json.load(f)
    assert aapt["input_channels"] == {"noise": [0, 16], "recycled": [16, 32], "control": [32, 35]}
    assert aapt["window"] == 2 and aapt["control"]["kind"] == "camera"
    assert aapt["latents"]["mean"] == list(exported["vcfg"].latents_mean)

    # No cfg given: the causal config comes from aapt.json beside the transformer folder.
    cfg, _, params = load_wan_transformer(os.path.join(out, "transformer"))
    assert cfg == CAUSAL
    for a, b in zip(_leaves(exported["params"]), _leaves(params), strict=True):
        assert a.dtype == b.dtype and np.array_equal(a, b)
    # launch.sample / the stages take the converted folder itself as a generator source.
    again, _ = load_generator(out, CAUSAL)
    for a, b in zip(_leaves(exported["params"]), _leaves(again), strict=True):
        assert np.array_equal(a, b)
    vcfg, _, vae_params = import_vae(os.path.join(out, "vae"))
    assert vcfg.latents_std == exported["vcfg"].latents_std
    for a, b in zip(_leaves(exported["vae_params"]), _leaves(vae_params), strict=True):
        assert np.array_equal(a, b)


def test_refuses_existing_out_untouched(exported, tmp_path):
    out = tmp_path / "taken"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(ValueError, match="already exists"):
        convert(exported["workdir"], str(out), dtype="float32")
    assert os.listdir(out) == ["keep.txt"] and (out / "keep.txt").read_text() == "mine"
    assert os.listdir(tmp_path) == ["taken"]  # no temporary folder left behind


def test_truncated_checkpoint_names_its_path(exported, tmp_path):
    workdir = str(tmp_path / "gen")
    shutil.copytree(exported["workdir"], workdir)
    params_dir = os.path.join(workdir, "export", "params")
    files = [os.path.join(d, f) for d, _, fs in os.walk(params_dir) for f in fs]
    biggest = max(files, key=os.path.getsize)
    with open(biggest, "r+b") as f:
        f.truncate(os.path.getsize(biggest) // 2)
    out = tmp_path / "out"
    with pytest.raises(ValueError, match=params_dir):
        convert(workdir, str(out), what="generator")
    assert os.listdir(tmp_path) == ["gen"]


_SHARDED_SAVE = """
import sys, jax, numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
from aapt_jax.bench.export import random_params
from aapt_jax.io import checkpoint as ckpt
from aapt_jax.model.config import DiTConfig
cfg = DiTConfig.from_mapping(eval(sys.argv[2]))
params = nnx.to_pure_dict(random_params(cfg, 5)[1])
mesh = Mesh(np.array(jax.devices()).reshape(8), ("x",))
def place(x):
    spec = P(None, "x") if x.ndim == 2 and x.shape[1] % 8 == 0 else P()
    return jax.device_put(x, NamedSharding(mesh, spec))
sharded = jax.tree.map(place, params)
assert len(jax.tree.leaves(sharded)[-1].sharding.device_set) == 8
manager = ckpt.Checkpointer(sys.argv[1], async_save=False)
manager.save(3, {"step": np.int32(3), "params": sharded}, {"config": {}, "data_state": "", "stage": "adapt",
             "info": {"stage": "adapt", "model": cfg.to_dict()}})
manager.close()
leaves = jax.tree_util.tree_flatten_with_path(params)[0]
flat = {"/".join(str(k.key) for k in path): np.asarray(v) for path, v in leaves}
np.savez(sys.argv[1] + ".npz", **flat)
"""


def test_sharded_training_checkpoint(tmp_path):
    """A step saved from 8 devices with sharded kernels converts in a one-device process."""
    import subprocess
    import sys

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    ckpt_dir = str(tmp_path / "run" / "checkpoints")
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu",
               PYTHONPATH=root)
    subprocess.run([sys.executable, "-c", _SHARDED_SAVE, ckpt_dir, repr(CAUSAL.to_dict())], check=True, env=env,
                   cwd=root, timeout=300)
    out = str(tmp_path / "out")
    assert convert(os.path.join(ckpt_dir, "3"), out, dtype="float32", what="generator")["step"] == 3
    _, _, params = load_wan_transformer(os.path.join(out, "transformer"))
    saved = np.load(ckpt_dir + ".npz")
    flat = {"/".join(str(k.key) for k in path): np.asarray(v)
            for path, v in jax.tree_util.tree_flatten_with_path(nnx.to_pure_dict(params))[0]}
    assert sorted(flat) == sorted(saved.files)
    for name in saved.files:
        assert np.array_equal(saved[name], flat[name]), name


def test_binary_refuses_existing_out_with_one_line(exported, tmp_path):
    import subprocess
    import sys

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    proc = subprocess.run([sys.executable, "-m", "launch.convert", f"--checkpoint={exported['workdir']}",
                           f"--out={exported['out']}"], cwd=root, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr
    assert f"error: out: {exported['out']} already exists" in proc.stderr


def test_missing_pieces_and_bad_arguments_are_named(exported, tmp_path):
    out = str(tmp_path / "out")
    with pytest.raises(ValueError, match="discriminator: .* holds no discriminator"):
        convert(exported["workdir"], out, what="generator,discriminator")
    with pytest.raises(ValueError, match="generator: .* 'vae' stage"):
        convert(os.path.join(exported["root"], "vae"), out, what="generator")
    with pytest.raises(ValueError, match="dtype: expected"):
        convert(exported["workdir"], out, dtype="float16")
    with pytest.raises(ValueError, match="what: expected"):
        convert(exported["workdir"], out, what="generator,weights")
    with pytest.raises(ValueError, match="checkpoint: .* does not exist"):
        convert(str(tmp_path / "nowhere"), out)
    assert not os.path.exists(out)


def test_discriminator_from_a_training_checkpoint(exported, tmp_path):
    dcfg = DiscriminatorConfig(layers=(-1,), head_dim=8)
    d_params = nnx.to_pure_dict(nnx.split(Discriminator(CAUSAL, dcfg, rngs=nnx.Rngs(1)))[1])
    info = dict(stage="adversarial", model=CAUSAL.to_dict(), control=CONTROL, discriminator={"layers": [-1],
                                                                                             "head_dim": 8})
    state = {"step": jnp.int32(7), "params": {"generator": nnx.to_pure_dict(exported["params"]),
                                             "discriminator": d_params}}
    manager = ckpt.Checkpointer(str(tmp_path / "run" / "checkpoints"), async_save=False)
    manager.save(7, state, {"config": {}, "data_state": "", "stage": "adversarial", "info": info})
    manager.close()
    out = str(tmp_path / "out")
    summary = convert(str(tmp_path / "run"), out, dtype="float32", what="generator,discriminator")
    assert summary["step"] == 7 and sorted(os.listdir(out)) == ["aapt.json", "discriminator", "transformer"]
    _, _, backbone = load_wan_transformer(os.path.join(out, "discriminator", "backbone"), CAUSAL)
    for a, b in zip(_leaves(d_params["backbone"]), _leaves(backbone), strict=True):
        assert np.array_equal(a, b)
    from safetensors.numpy import load_file

    heads = load_file(os.path.join(out, "discriminator", "heads.safetensors"))
    np.testing.assert_array_equal(heads["heads.0.proj.weight"], np.asarray(d_params["heads"][0]["proj"]["kernel"]).T)
    with open(os.path.join(out, "discriminator", "discriminator.json")) as f:
        assert json.load(f) == {"layers": [1], "head_dim": 8, "num_heads": 1}


@needs_torch
def test_from_pretrained_forward_matches_ours(tmp_path):
    base = DiTConfig(num_layers=2, num_heads=2, head_dim=10, ffn_dim=24, latent_channels=4, text_dim=8)
    graphdef, params = create(base, 3)
    ckpt.save_export(str(tmp_path / "base"), nnx.to_pure_dict(params), dict(stage="base", model=base.to_dict()))
    convert(str(tmp_path / "base"), str(tmp_path / "fp32"), dtype="float32", what="generator")
    convert(str(tmp_path / "base"), str(tmp_path / "bf16"), dtype="bfloat16", what="generator")
    model = diffusers.WanTransformer3DModel.from_pretrained(str(tmp_path / "fp32" / "transformer")).eval()
    rng = np.random.default_rng(0)
    x = rng.standard_normal((1, 3, 4, 6, 4)).astype(np.float32)  # ours: [B, T, H, W, C]
    text = rng.standard_normal((1, 6, 8)).astype(np.float32)
    t = np.array([321.0], np.float32)
    ours = np.asarray(nnx.merge(graphdef, params)(jnp.asarray(x), jnp.asarray(t), jnp.asarray(text)))
    with torch.no_grad():
        ref = model(torch.from_numpy(x.transpose(0, 4, 1, 2, 3).copy()), torch.from_numpy(t),
                    torch.from_numpy(text), return_dict=False)[0].numpy().transpose(0, 2, 3, 4, 1)
    assert np.abs(ours - ref).max() / np.abs(ref).max() < 1e-5
    half = diffusers.WanTransformer3DModel.from_pretrained(str(tmp_path / "bf16" / "transformer"),
                                                           torch_dtype=torch.bfloat16)
    assert half.blocks[0].attn1.to_q.weight.dtype == torch.bfloat16
    assert half.condition_embedder.time_embedder.linear_1.weight.dtype == torch.float32


@needs_torch
@pytest.mark.parametrize("fields", [
    dict(attention_head_dim=4, freq_dim=15, qk_norm="rms_norm"),
    dict(attention_head_dim=20, out_channels=None, rope_max_seq_len=8, cross_attn_norm=False),
], ids=["head4_oddfreq", "head20_defaults"])
def test_transformer_importer_takes_what_diffusers_saves(fields, tmp_path):
    torch.manual_seed(0)
    kw = dict(num_layers=1, num_attention_heads=2, attention_head_dim=12, ffn_dim=16, in_channels=4,
              out_channels=4, text_dim=8, freq_dim=16, patch_size=(1, 2, 2))
    model = diffusers.WanTransformer3DModel(**{**kw, **fields}).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    model.save_pretrained(str(tmp_path))
    cfg, graphdef, params = load_wan_transformer(str(tmp_path))
    rng = np.random.default_rng(1)
    x = rng.standard_normal((1, 4, 2, 4, 4)).astype(np.float32)
    text = rng.standard_normal((1, 3, 8)).astype(np.float32)  # any text length
    t = rng.uniform(0, 1000, (1, 2)).astype(np.float32)  # per frame: diffusers' per-token path
    with torch.no_grad():
        ref = model(torch.from_numpy(x), torch.from_numpy(np.repeat(t, 4, axis=1)), torch.from_numpy(text),
                    return_dict=False)[0].numpy()
    ours = nnx.merge(graphdef, params)(jnp.asarray(x.transpose(0, 2, 3, 4, 1)), jnp.asarray(t), jnp.asarray(text))
    ours = np.asarray(ours).transpose(0, 4, 1, 2, 3)
    assert np.abs(ours - ref).max() / np.abs(ref).max() < 1e-5


@needs_torch
def test_vae_importer_takes_any_z_dim(tmp_path):
    vae = diffusers.AutoencoderKLWan(base_dim=8, z_dim=4, dim_mult=[1, 2], num_res_blocks=1,
                                     temperal_downsample=[True])
    vae.save_pretrained(str(tmp_path))
    with open(tmp_path / "config.json") as f:
        assert len(json.load(f)["latents_mean"]) == 16  # what diffusers writes for any z_dim
    vcfg, _, params = import_vae(str(tmp_path))
    assert vcfg.z_dim == 4 and vcfg.latents_mean is None and vcfg.latents_std is None
    torch_params = dict(vae.state_dict())
    assert np.array_equal(np.asarray(params["decoder"]["conv_in"]["bias"][...]),
                          torch_params["decoder.conv_in.bias"].numpy())


@needs_torch
def test_export_suite_quick():
    from aapt_jax.bench import export as export_bench
    from configs import get as named_config

    records = {r["name"]: r for r in export_bench.run(named_config, quick=True)}
    assert list(records) == ["torch_vs_jax_stream_max_rel_err", "torch_vs_jax_decoded_max_abs_err",
                             "convert_peak_rss_gib"]
    assert records["torch_vs_jax_stream_max_rel_err"]["value"] <= 1e-5
    stream = records["torch_vs_jax_stream_max_rel_err"]
    assert stream["frames"] == 3 * stream["window"]
    assert records["torch_vs_jax_decoded_max_abs_err"]["value"] <= 1e-4
    assert 0 < records["convert_peak_rss_gib"]["value"] < 1.5
