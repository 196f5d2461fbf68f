"""Weights load straight into their shards on a mesh of 8 virtual CPU devices.

One subprocess (XLA_FLAGS before jax starts) writes a tiny generator three ways and loads
each with ``load_generator(..., shardings=...)`` (ZeRO-3 over ``fsdp=8``): a finished
stage's export (Orbax, restored into sharded abstract targets), a base export widened into
the causal generator (the new input channels random), and a diffusers folder (safetensors
read tensor by tensor). A train-state checkpoint written on ``data=2, fsdp=4`` is restored
into the shardings of ``fsdp=2, context=4``. Each result is compared with the one-device
load and its shard shapes are printed.
"""

import pytest
from virtual_devices import run_on_devices

SCRIPT = r"""
import json, os, sys, tempfile
import jax, jax.numpy as jnp, numpy as np
from flax import nnx
from aapt_jax.io import checkpoint as ckpt
from aapt_jax.io import safetensors_io
from aapt_jax.io.generator_source import load_generator
from aapt_jax.io.safetensors_writer import write_sharded
from aapt_jax.io.wan_transformer import diffusers_config, to_diffusers_state_dict
from aapt_jax.model.config import DiTConfig
from aapt_jax.model.dit import abstract_model, create
from aapt_jax.parallel import sharding as shd
from aapt_jax.parallel.mesh import make_mesh

assert jax.device_count() == 8
CFG = DiTConfig(num_layers=2, num_heads=4, head_dim=16, ffn_dim=128, latent_channels=4, text_dim=16, causal=True,
                window=3, control_channels=2, latent_height=4, latent_width=4)
BASE = CFG.replace(causal=False, control_channels=0)
mesh = make_mesh(data=1, fsdp=8)
axes = shd.logical_axes(abstract_model(CFG)[1])
abstract = nnx.to_pure_dict(abstract_model(CFG)[1])
shardings = shd.tree_shardings(axes, abstract, mesh)
KERNEL = ("blocks", 0, "ffn", "proj_in", "kernel")   # [embed 64, mlp 128]

def get(tree, path):
    for k in path:
        tree = tree[k]
    return tree

def report(params, ref):
    leaves = jax.tree.leaves(params)
    kernel = get(params, KERNEL)
    return dict(
        max_diff=max(float(np.abs(np.asarray(a) - np.asarray(b)).max()) for a, b in
                     zip(leaves, jax.tree.leaves(ref))),
        same_tree=jax.tree.structure(params) == jax.tree.structure(ref),
        kernel_shards=sorted({tuple(s.data.shape) for s in kernel.addressable_shards}),
        kernel_devices=len(kernel.sharding.device_set),
        placed=all(x.sharding == s or x.sharding.is_equivalent_to(s, x.ndim)
                   for x, s in zip(leaves, jax.tree.leaves(shardings))),
    )

out = {}
root = tempfile.mkdtemp()
_, pstate = create(CFG, seed=3)
params = nnx.to_pure_dict(pstate)

# 1. a finished stage's export, written from one device
ckpt.save_export(os.path.join(root, "adapt"), params, dict(stage="adapt", model=CFG.to_dict()))
ref, _ = load_generator(os.path.join(root, "adapt"), CFG)
got, stage = load_generator(os.path.join(root, "adapt"), CFG, shardings=shardings)
out["export"] = dict(report(got, ref), stage=stage, equals_saved=report(ref, params)["max_diff"])

# 2. a base export widened into the causal generator
_, base = create(BASE, seed=4)
ckpt.save_export(os.path.join(root, "base"), nnx.to_pure_dict(base), dict(stage="base", model=BASE.to_dict()))
ref, _ = load_generator(os.path.join(root, "base"), CFG, seed=5)
got, _ = load_generator(os.path.join(root, "base"), CFG, seed=5, shardings=shardings)
out["widened"] = report(got, ref)

# 3. a diffusers folder, read lazily: count the tensors read and the largest one held
state = to_diffusers_state_dict(CFG, pstate)
folder = os.path.join(root, "diffusers")
os.makedirs(folder)
write_sharded(folder, [(k, v.shape, "float32") for k, v in state.items()], lambda k: state[k],
              max_shard_bytes=64 * 1024)
with open(os.path.join(folder, "config.json"), "w") as f:
    json.dump(dict(diffusers_config(CFG)), f)
reads = []
original = safetensors_io.LazyStateDict.__getitem__
def counting(self, key):
    value = original(self, key)
    reads.append(value.nbytes)
    return value
safetensors_io.LazyStateDict.__getitem__ = counting
ref, _ = load_generator(folder, CFG)
n_eager = len(reads)
got, stage = load_generator(folder, CFG, shardings=shardings)
out["diffusers"] = dict(report(got, ref), stage=stage, lazy_reads=len(reads) - n_eager, tensors=len(state),
                        files=len([f for f in os.listdir(folder) if f.endswith(".safetensors")]),
                        equals_saved=report(ref, params)["max_diff"])

# 4. a train state saved on data=2, fsdp=4, restored into fsdp=2, context=4 shardings
mesh_a, mesh_b = make_mesh(data=2, fsdp=4), make_mesh(data=1, fsdp=2, context=4)
state = {"params": jax.device_put(params, shd.tree_shardings(axes, abstract, mesh_a)), "step": jnp.int32(7)}
manager = ckpt.Checkpointer(os.path.join(root, "checkpoints"), async_save=False)
manager.save(7, state, {"note": "x"})
manager.wait()
target = {"params": jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), abstract,
                                 shd.tree_shardings(axes, abstract, mesh_b)),
          "step": jax.ShapeDtypeStruct((), jnp.int32, sharding=jax.sharding.NamedSharding(mesh_b, jax.P()))}
restored, meta, step = manager.restore(target)
manager.close()
kernel = get(restored["params"], KERNEL)
out["checkpoint"] = dict(max_diff=report(restored["params"], params)["max_diff"], step=step, meta=meta,
                         kernel_shards=sorted({tuple(s.data.shape) for s in kernel.addressable_shards}),
                         kernel_spec=str(kernel.sharding.spec), mesh_b=kernel.sharding.mesh.shape == mesh_b.shape)
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def results():
    return run_on_devices(SCRIPT, timeout=900, xla_flags="--xla_backend_optimization_level=0")["result"]


# blocks[0].ffn.proj_in.kernel is [embed 64, mlp 128]: ZeRO-3 over fsdp=8 puts 8 rows on each device
SHARD = [[8, 128]]


@pytest.mark.parametrize("case", ["export", "widened", "diffusers"])
def test_generator_loads_into_its_shards(results, case):
    r = results[case]
    assert r["same_tree"] and r["max_diff"] == 0.0, r
    assert r["placed"], r  # every param on the shardings asked for
    assert r["kernel_shards"] == SHARD and r["kernel_devices"] == 8, r


def test_export_and_diffusers_hold_the_saved_weights(results):
    assert results["export"]["equals_saved"] == 0.0 and results["export"]["stage"] == "adapt"
    assert results["diffusers"]["equals_saved"] == 0.0 and results["diffusers"]["stage"] == "diffusers"


def test_diffusers_weights_are_read_tensor_by_tensor(results):
    r = results["diffusers"]
    assert r["files"] > 1, r  # several safetensors shards
    # the sharded load read each tensor once, on demand (the eager load reads none this way)
    assert r["lazy_reads"] == r["tensors"], r


def test_checkpoint_restores_into_another_meshs_shards(results):
    r = results["checkpoint"]
    assert r["max_diff"] == 0.0 and r["step"] == 7 and r["meta"] == {"note": "x"}, r
    assert r["mesh_b"] and r["kernel_shards"] == [[32, 128]], r  # fsdp=2 of fsdp=2, context=4
