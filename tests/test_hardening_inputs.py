"""Inputs and configs that used to pass silently are refused up front, naming the field."""

import jax.numpy as jnp
import numpy as np
import pytest

from aapt_jax import configs
from aapt_jax.model.config import DiTConfig
from aapt_jax.model.dit import create
from aapt_jax.sample.streaming import StreamingSampler
from configs import get as named_config

CFG = DiTConfig(num_layers=1, num_heads=2, head_dim=12, ffn_dim=16, latent_channels=4, text_dim=8,
                causal=True, window=3, control_channels=0, latent_height=4, latent_width=4)


@pytest.fixture(scope="module")
def sampler():
    graphdef, params = create(CFG)
    return StreamingSampler(CFG, graphdef), params


def test_nan_first_frame_is_refused(sampler):
    s, params = sampler
    first = jnp.zeros((1, 1, 4, 4, 4)).at[0, 0, 1, 2, 3].set(jnp.nan)
    with pytest.raises(ValueError, match="first_frame: expected finite values, got 1 NaN/Inf of 64"):
        s.init(params, first, jnp.zeros((1, 3, 8)))
    with pytest.raises(ValueError, match="text: expected finite values"):
        s.init(params, jnp.zeros((1, 1, 4, 4, 4)), jnp.full((1, 3, 8), jnp.inf))


def test_float16_first_frame_is_refused(sampler):
    s, params = sampler
    with pytest.raises(ValueError, match="first_frame: expected dtype float32 or bfloat16, got float16"):
        s.init(params, jnp.zeros((1, 1, 4, 4, 4), jnp.float16), jnp.zeros((1, 3, 8)))
    state = s.init(params, jnp.zeros((1, 1, 4, 4, 4), jnp.bfloat16), jnp.zeros((1, 3, 8)))
    with pytest.raises(ValueError, match="num_frames: expected an int >= 1, got -2"):
        s.rollout(params, state, None, None, num_frames=-2)


@pytest.mark.parametrize("field,value", [("train.lr", float("inf")), ("train.grad_clip", float("nan")),
                                         ("model.rope_theta", float("-inf"))])
def test_non_finite_numbers_are_refused(field, value):
    from configs import tiny_world

    c = tiny_world.get_config("base")
    section, name = field.split(".")
    c[section][name] = value
    with pytest.raises(ValueError, match=rf"{field}: expected a finite number, got {value}"):
        configs.check_finite(c)


@pytest.mark.parametrize("field,value,needle", [
    ("tensor", 2, r"mesh: axes \{'data': 1, 'fsdp': 1, 'context': 1, 'tensor': 2\} need 2 devices, have 8"),
    ("fsdp", 3, r"mesh: 8 devices do not divide by the fixed axes \{'fsdp': 3, 'context': 1, 'tensor': 1\} \(product 3\)"),
    ("context", 0, "mesh.context: expected a positive int or -1, got 0"),
    ("tensor", True, "mesh.tensor: expected a positive int or -1, got True"),
])
def test_mesh_that_does_not_resolve_is_refused(field, value, needle):
    c = named_config("tiny")
    c.mesh.data = 1 if field == "tensor" else -1
    c.mesh[field] = value
    with pytest.raises(ValueError, match=needle):
        configs.check_mesh(c, device_count=8)


def test_mesh_resolves_on_the_devices_at_hand():
    assert configs.check_mesh(named_config("tiny"), device_count=1) == dict(data=1, fsdp=1, context=1, tensor=1)
    assert configs.check_mesh(named_config("wan2.1-t2v-14B"), device_count=8) == dict(data=1, fsdp=8, context=1,
                                                                                       tensor=1)
    c = named_config("tiny")
    c.mesh.update(dict(data=2, fsdp=-1, context=2))
    assert configs.check_mesh(c, device_count=8) == dict(data=2, fsdp=2, context=2, tensor=1)


@pytest.mark.parametrize("field,value", [("batch", 0), ("num_frames", -1)])
def test_sample_fields(field, value):
    c = named_config("tiny")
    c.sample[field] = value
    with pytest.raises(ValueError, match=f"sample.{field}: expected an int >= 1, got {value}"):
        configs.check_sample(c)


def test_pickled_npy_names_the_flag(tmp_path):
    np.save(tmp_path / "first.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    from launch import sample

    sample.flags.FLAGS(["sample", f"--first_frame={tmp_path / 'first.npy'}", f"--out={tmp_path / 'out'}"])
    try:
        with pytest.raises(ValueError, match=r"--first_frame: expected a .npy float array, cannot read .*first.npy"):
            sample.main(["sample"])
    finally:
        sample.flags.FLAGS.unparse_flags()


def test_unknown_fields_suggest_the_nearest_name():
    from aapt_jax.data.sources import data_config, validate_data_config
    from aapt_jax.train.pipeline import stage_config
    from configs import tiny_world

    with pytest.raises(ValueError, match=r"unknown config field\(s\) \['windw'\] \(did you mean 'window'\?\)"):
        DiTConfig.from_mapping(dict(windw=3))
    with pytest.raises(ValueError, match=r"data: unknown fields \['latent_frame'\] \(did you mean 'latent_frames'"):
        validate_data_config(dict(data_config(), latent_frame=3))
    with pytest.raises(ValueError, match=r"override train.stepz: the vae config has no field 'stepz' "
                                         r"\(did you mean 'steps'\?\)"):
        stage_config(tiny_world.get_config, "vae", "/tmp/p", {"train.stepz": 3})


def test_generator_that_does_not_fit_names_the_field(tmp_path, sampler):
    from flax import nnx

    from aapt_jax.io import checkpoint as ckpt
    from aapt_jax.io.generator_source import load_generator

    _, params = sampler
    ckpt.save_export(str(tmp_path), nnx.to_pure_dict(params), {"stage": "distill", "model": CFG.to_dict()})
    loaded, stage = load_generator(str(tmp_path), CFG)
    assert stage == "distill"
    with pytest.raises(ValueError, match=r"checkpoint: the generator in .* does not fit the model config: "
                                         r"model.ffn_dim: saved 16, given 32; first differing param .*ffn"):
        load_generator(str(tmp_path), CFG.replace(ffn_dim=32))


def test_truncated_safetensors_names_the_file(tmp_path):
    from safetensors.numpy import save_file

    from aapt_jax.io.safetensors_io import load_state_dict

    path = tmp_path / "model.safetensors"
    save_file({"w": np.ones((64, 64), np.float32)}, str(path))
    path.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(ValueError, match=f"{path}: cannot read as safetensors .* truncated"):
        load_state_dict(str(path))
    with pytest.raises(ValueError, match=f"{path}: cannot read as safetensors"):
        load_state_dict(str(tmp_path))
