"""Training on a mesh of 8 virtual CPU devices equals one device, with params, gradients and
optimizer state really sharded.

One subprocess (XLA_FLAGS before jax starts) runs 3 steps of adapt, distill and
adversarial (student forcing) on one device, on ``data=2, fsdp=4`` and on
``fsdp=2, context=4``, each compiled once, through the same path as ``launch.train``
(``stages.build(config, layout)``, ``TrainStep``: explicit in/out shardings from the logical
rules), and prints one JSON line; the tests check its parts.

The config is configs/tiny_world.py with small overrides: 32x32 video (8x8 latents, 4
tokens per latent frame, which context=4 divides), 2 blocks, 1 + 2 latent frames, batch 8
(one example per device on data x fsdp), random weights (``train.random_init``) and a
random text embedding (with the world's all-zero text every cross-attention key is equal
and the key projection gets no gradient, only rounding noise). Learning rate 3e-5 for
every stage: Adam's and RMSProp's first steps move a weight by about the learning rate
whatever its gradient's size, so a gradient that is zero but for rounding (which differs
between a sum over 8 devices and over one) moves by ~lr in a random direction; with
3 steps at 3e-5 the parameters of the three layouts agree to ~2e-6. The loss and the
gradient norm (which Adam's scale invariance would hide) are compared too. The adversarial
stage's aR1/aR2 weight is 1 rather than 1000: those terms are finite differences of logits
(perturbation 0.1), whose gradients lose about three digits to cancellation, and at
lambda = 1000 they dominate the discriminator's gradient; the comparison is of the
sharding, not of the regularizer's conditioning.

The XLA CPU backend compiles at -O0 here (``--xla_backend_optimization_level=0``): these
programs run for milliseconds, and compiling them optimised would cost three times longer.
"""

import pytest
from virtual_devices import run_on_devices, FAST_COMPILE

from configs import get

SCRIPT = r"""
import json, sys, time
import jax, jax.numpy as jnp, numpy as np
jax.config.update("jax_default_matmul_precision", "highest")
from configs import get
from aapt_jax.data.sources import make_loader, make_source
from aapt_jax.parallel.mesh import make_mesh
from aapt_jax.train import sharded, stages
from aapt_jax.train.config import train_config
from aapt_jax.train.optim import make_optimizer

assert jax.device_count() == 8, jax.devices()
STEPS = 3
MESHES = {"one": dict(devices=jax.devices()[:1]), "data2_fsdp4": dict(data=2, fsdp=4),
          "fsdp2_ctx4": dict(data=1, fsdp=2, context=4)}
KERNEL = "['blocks'][0]['ffn']['proj_in']['kernel']"   # [embed, mlp]

def config(stage):
    c = get(f"tiny_world:{stage}")
    c.video.height = c.video.width = c.data.height = c.data.width = 32
    c.data.latent_frames = 2
    c.data.text_embedding = "random"
    c.model.num_layers = 2
    c.train.update(random_init=True, batch_size=8, disc_layers=(-1,), warmup_steps=0, lr=3e-5, disc_lr=3e-5,
                   r_lambda=1.0)
    return c

def shards(x):
    return dict(n=len(x.addressable_shards), shapes=sorted({tuple(s.data.shape) for s in x.addressable_shards}))

def placement(state, player):
    prefix = "" if player is None else f"['{player}']" + ("['backbone']" if player == "discriminator" else "")
    params = dict(jax.tree_util.tree_flatten_with_path(state["params"])[0])
    kernel = next(v for k, v in params.items() if jax.tree_util.keystr(k) == prefix + KERNEL)
    opt = [shards(v) for k, v in jax.tree_util.tree_flatten_with_path(state["opt_state"])[0]
           if jax.tree_util.keystr(k).endswith(prefix + KERNEL)]
    counts = [shards(v) for k, v in jax.tree_util.tree_flatten_with_path(state["opt_state"])[0] if v.ndim == 0]
    return dict(param=shards(kernel), opt=opt, scalars=counts[:1])

out = {}
for name in ("adapt", "distill", "adversarial"):
    c = config(name)
    tc = train_config(c)
    batches, runs = None, {}
    for mesh_name, kw in MESHES.items():
        t0 = time.time()
        layout = sharded.Layout(make_mesh(**kw), tc.strategies())
        stage = stages.build(c, layout)
        tx, _ = stage.optimizer or make_optimizer(tc.optimizer, tc.lr, weight_decay=tc.weight_decay,
                                                  grad_clip=tc.grad_clip, warmup_steps=tc.warmup_steps)
        rows = tc.batch_size * stage.clips_per_example
        if batches is None:
            loader = make_loader(make_source(c.data), rows, seed=0)
            batches = [next(loader) for _ in range(STEPS)]
        step = sharded.TrainStep(stage, tx, layout, rows)
        state = step.init_state(tc.seed)
        metrics = []
        for b in batches:
            state, m = step(state, stage.frozen, b)
            metrics.append({k: float(m[k]) for k in ("loss", "grad_norm")})
        players = ("generator", "discriminator") if stage.players else (None,)
        info = dict(metrics=metrics, seconds=round(time.time() - t0, 1), strategies=dict(layout.strategies),
                    placement={str(p): placement(state, p) for p in players},
                    batch=list(step.shardings.batch.spec))
        runs[mesh_name] = (jax.tree.map(np.asarray, state["params"]), info)
    ref = runs["one"][0]
    for mesh_name, (p, info) in runs.items():
        diffs = jax.tree_util.tree_flatten_with_path(jax.tree.map(lambda a, b: float(np.abs(a - b).max()), p, ref))[0]
        worst = max(diffs, key=lambda kv: kv[1])
        info.update(max_param_diff=worst[1], worst_param=jax.tree_util.keystr(worst[0]),
                    param_scale=max(float(np.abs(x).max()) for x in jax.tree.leaves(ref)))
        out[f"{name}/{mesh_name}"] = info
    print(json.dumps({k: v for k, v in out.items() if k.startswith(name)}), file=sys.stderr, flush=True)
print(json.dumps(out))
"""

TOL = 1e-5
STAGES = ("adapt", "distill", "adversarial")
MESHES = ("data2_fsdp4", "fsdp2_ctx4")


@pytest.fixture(scope="module")
def results():
    run = run_on_devices(SCRIPT, timeout=1500, xla_flags=FAST_COMPILE)
    return dict(cases=run["result"], stderr=run["stderr"], wall_seconds=run["wall_seconds"])


@pytest.mark.parametrize("mesh", MESHES)
@pytest.mark.parametrize("stage", STAGES)
def test_three_steps_end_with_the_one_device_params(results, stage, mesh):
    r, ref = results["cases"][f"{stage}/{mesh}"], results["cases"][f"{stage}/one"]
    assert r["max_param_diff"] <= TOL, r
    for got, want in zip(r["metrics"], ref["metrics"]):
        for k in ("loss", "grad_norm"):
            assert abs(got[k] - want[k]) <= 1e-5 * max(1.0, abs(want[k])), (k, r["metrics"], ref["metrics"])
    # the weights moved: the comparison is not of untouched initial values
    assert ref["metrics"][0]["loss"] != ref["metrics"][-1]["loss"]


# (rows, columns) of one device's shard of blocks[0].ffn.proj_in.kernel [embed, mlp]:
# `embed` goes over the ZeRO group fsdp x context (ZeRO-3), or stays whole in it (ZeRO-2,
# the params); data replicates.
_MODEL = get("tiny_world:adapt").model
EMBED, MLP = _MODEL.num_heads * _MODEL.head_dim, _MODEL.ffn_dim
SPLIT = {"data2_fsdp4": [EMBED // 4, MLP], "fsdp2_ctx4": [EMBED // 8, MLP]}
WHOLE = [EMBED, MLP]


@pytest.mark.parametrize("mesh", MESHES)
@pytest.mark.parametrize("stage", ("adapt", "distill"))
def test_generator_params_and_optimizer_state_are_zero3_sharded(results, stage, mesh):
    r = results["cases"][f"{stage}/{mesh}"]
    assert r["strategies"]["generator"] == "zero3", r
    place = r["placement"]["None"]
    assert place["param"] == dict(n=8, shapes=[SPLIT[mesh]]), place
    assert len(place["opt"]) == 2 and all(o == dict(n=8, shapes=[SPLIT[mesh]]) for o in place["opt"]), place  # mu, nu
    assert place["scalars"] == [dict(n=8, shapes=[[]])], place  # Adam's step count, replicated


@pytest.mark.parametrize("mesh", MESHES)
def test_adversarial_generator_zero2_discriminator_zero3(results, mesh):
    r = results["cases"][f"adversarial/{mesh}"]
    assert r["strategies"] == {"generator": "zero2", "discriminator": "zero3"}, r
    g, d = r["placement"]["generator"], r["placement"]["discriminator"]
    # generator: params whole within the fsdp group, RMSProp's nu sharded
    assert g["param"] == dict(n=8, shapes=[WHOLE]), g
    assert g["opt"] == [dict(n=8, shapes=[SPLIT[mesh]])], g
    # discriminator: params and nu sharded
    assert d["param"] == dict(n=8, shapes=[SPLIT[mesh]]), d
    assert d["opt"] == [dict(n=8, shapes=[SPLIT[mesh]])], d


def test_one_device_is_a_mesh_of_one(results):
    for stage in STAGES:
        r = results["cases"][f"{stage}/one"]
        for place in r["placement"].values():
            assert place["param"] == dict(n=1, shapes=[WHOLE]), (stage, place)
        assert r["batch"] == [None], r


def test_batches_split_over_data_and_fsdp_and_nothing_is_dropped(results):
    assert results["cases"]["adapt/data2_fsdp4"]["batch"] == [["data", "fsdp"]]
    assert results["cases"]["adapt/fsdp2_ctx4"]["batch"] == ["fsdp"]
    # every dimension divides its mesh axes: no sharding was shrunk (that is logged by name)
    assert "does not divide" not in results["stderr"], results["stderr"][-3000:]
