"""init/step on a mesh of 8 virtual CPU devices give the frames of one device; a dimension
that its mesh axes do not divide is logged by name or, strictly, an error."""

import logging

import pytest
from jax.sharding import AbstractMesh, PartitionSpec as P

from aapt_jax.model.config import DiTConfig
from aapt_jax.model.dit import abstract_model
from aapt_jax.parallel import sharding as shd
from aapt_jax.parallel.mesh import MESH_AXES, make_mesh
from virtual_devices import run_on_devices

SCRIPT = r"""
import json
import jax, jax.numpy as jnp, numpy as np
from aapt_jax.model.config import DiTConfig
from aapt_jax.model.dit import create
from aapt_jax.parallel.mesh import make_mesh
from aapt_jax.parallel.sharding import array_sharding, shard_params, use_mesh
from aapt_jax.sample.streaming import StreamingSampler

assert jax.device_count() == 8, jax.devices()
cfg = DiTConfig(num_layers=2, num_heads=4, head_dim=12, ffn_dim=64, latent_channels=4, text_dim=16,
                causal=True, window=3, control_channels=2, latent_height=4, latent_width=4)
graphdef, params = create(cfg, seed=0)
B = 8
first = jax.random.normal(jax.random.key(1), (B, 1, 4, 4, 4))
text = jax.random.normal(jax.random.key(2), (B, 5, 16))
ctrl = jax.random.normal(jax.random.key(3), (B, 6, 4, 4, 2))
keys = jax.random.split(jax.random.key(4), 6)

def stream(params, first, text, ctrl):
    sampler = StreamingSampler(cfg, graphdef)
    state = sampler.init(params, first, text)
    out = []
    for i in range(6):
        state, f = sampler.step(params, state, ctrl[:, i:i + 1], keys[i])
        out.append(f)
    return state, jnp.concatenate(out, 1)

_, ref = stream(jax.device_put(params, jax.devices()[0]), first, text, ctrl)

mesh = make_mesh(data=2, fsdp=4)
with use_mesh(mesh):
    p = shard_params(params, mesh)
    batch = lambda x: jax.device_put(x, array_sharding(x.shape, ("batch",) + (None,) * (x.ndim - 1), mesh))
    state, out = stream(p, batch(first), batch(text), batch(ctrl))

kernel = p["blocks"][0]["ffn"]["proj_in"]["kernel"][...]
print(json.dumps(dict(
    max_abs_diff=float(np.abs(np.asarray(out) - np.asarray(ref)).max()), scale=float(np.abs(np.asarray(ref)).max()),
    kernel_spec=str(kernel.sharding.spec), kernel_devices=len(kernel.sharding.device_set),
    kernel_shard_shape=list(kernel.sharding.shard_shape(kernel.shape)),
    out_devices=len(out.sharding.device_set),
    out_shard_shape=list(out.sharding.shard_shape(out.shape)),
    cache_shard_shape=list(state.cache.k.sharding.shard_shape(state.cache.k.shape)),
)))
"""


def test_eight_device_mesh_matches_one_device():
    run = run_on_devices(SCRIPT, timeout=600)
    # every param and activation of this config divides the mesh: no axis was dropped (a
    # dropped one is logged as "sharding: ... does not divide ...")
    assert "does not divide" not in run["stderr"], run["stderr"][-4000:]
    r = run["result"]
    assert r["max_abs_diff"] <= 1e-5 * max(1.0, r["scale"]), r
    # parameters are FSDP-sharded over the 4-way `fsdp` axis (embed dim 48 -> 12 per device)
    assert "fsdp" in r["kernel_spec"] and r["kernel_shard_shape"][0] == 12, r
    # the batch of 8 is split over data x fsdp: one sample per device, cache included
    assert r["out_devices"] == 8 and r["out_shard_shape"][0] == 1, r
    assert r["cache_shard_shape"][1] == 1, r


def test_mesh_bad_sizes_are_named():
    with pytest.raises(ValueError, match="mesh.fsdp"):
        make_mesh(data=1, fsdp=0)
    with pytest.raises(ValueError, match="need 6 devices"):
        make_mesh(data=2, fsdp=3)


# ----- an axis that does not divide is an error or a named warning, never silent -------------

# data=2, fsdp=4 as in the 8-device test, without devices: shardings are computed, nothing placed
MESH = AbstractMesh((2, 4, 1, 1), MESH_AXES)


@pytest.fixture
def fresh_warnings(monkeypatch, caplog):
    monkeypatch.setattr(shd, "_WARNED", set())
    caplog.set_level(logging.WARNING, logger="aapt_jax.parallel.sharding")
    return caplog


@pytest.fixture(scope="module")
def odd_params():
    # dim = 3 heads x 10 = 30: the `embed` axis (fsdp=4) does not divide it
    cfg = DiTConfig(num_layers=1, num_heads=3, head_dim=10, ffn_dim=64, latent_channels=4, text_dim=16,
                    latent_height=4, latent_width=4)
    return abstract_model(cfg)[1]


def test_param_that_does_not_divide_is_logged_by_path(odd_params, fresh_warnings):
    shardings = shd.param_shardings(odd_params, MESH)
    assert shardings["blocks"][0]["attn1"]["to_q"]["kernel"].spec == P(None, None)
    assert shardings["blocks"][0]["ffn"]["proj_out"]["kernel"].spec == P(None, None)
    msgs = [r.getMessage() for r in fresh_warnings.records]
    want = ("sharding: param blocks/0/attn1/to_q/kernel ('embed', 'qkv') dim 0 (size 30) does not divide "
            "by mesh axes (fsdp=4, product 4); replicated over fsdp")
    assert want in msgs, msgs
    # one warning per distinct message, however often the shardings are computed
    shd.param_shardings(odd_params, MESH)
    assert len(fresh_warnings.records) == len(msgs) == len(set(msgs))


def test_strict_makes_it_an_error(odd_params):
    with pytest.raises(ValueError, match=r"param blocks/0/attn1/to_./kernel .* dim 0 \(size 30\) .*fsdp=4"):
        shd.param_shardings(odd_params, MESH, strict=True)
    with pytest.raises(ValueError, match=r"tokens dim 2 \(size 1196\) does not divide by mesh axes \(context=8"):
        shd.array_sharding((1, 2, 1196, 64), ("batch", "frames", "tokens", "embed"),
                           AbstractMesh((1, 1, 8, 1), MESH_AXES), name="tokens", strict=True)


def test_batch_keeps_the_axes_that_divide(fresh_warnings):
    s = shd.array_sharding((2, 3), ("batch", None), MESH)
    assert s.spec == P("data", None)
    assert fresh_warnings.records[0].getMessage().endswith("split over data only, replicated over fsdp")
    # an axis that divides logs nothing
    fresh_warnings.clear()
    assert shd.array_sharding((8, 3), ("batch", None), MESH).spec == P(("data", "fsdp"), None)
    assert not fresh_warnings.records
