"""Ulysses context parallelism in the model and the streaming sampler equals one device.

One subprocess (8 virtual CPU devices need XLA_FLAGS before jax starts) runs every case
once, each compiled once, and prints one JSON line; the tests below check its parts. The
model is configs/tiny_world.py's generator (4 layers, 4 heads, window N = 4, fp32): 8x8
latents are 16 tokens per frame, which context=4 divides; 6x6 latents (9 tokens) make the
model carry 12 token slots per frame, 3 of them padding.
"""

import pytest
from virtual_devices import run_on_devices

SCRIPT = r"""
import json, re, time
import jax, jax.numpy as jnp, numpy as np
jax.config.update("jax_default_matmul_precision", "highest")
from flax import nnx
from aapt_jax.model.config import DiTConfig
from aapt_jax.model.dit import create
from aapt_jax.parallel.mesh import make_mesh
from aapt_jax.parallel.sharding import array_sharding, shard_params, use_mesh
from aapt_jax.sample.streaming import StreamingSampler

assert jax.device_count() == 8, jax.devices()
devices = jax.devices()
out = {}

# configs/tiny_world.py's generator (model_config of that file).
CFG = DiTConfig(num_layers=4, num_heads=4, head_dim=24, ffn_dim=256, latent_channels=16, text_dim=16,
                causal=True, window=4, control_channels=24, latent_height=8, latent_width=8, text_len=4)
N = CFG.window
graphdef, params = create(CFG, seed=0)

def collectives(compiled):
    text = compiled.as_text()
    return {c: len(re.findall(r" %s(?:-start)?\(" % c, text))
            for c in ("all-to-all", "all-gather", "all-reduce", "collective-permute", "reduce-scatter")}

def rand(key, shape):
    return jax.random.normal(jax.random.key(key), shape, jnp.float32)

def diff(a, b):
    a, b = np.asarray(a), np.asarray(b)
    return float(np.abs(a - b).max() / max(1.0, np.abs(b).max()))

def shards(x):
    return sorted({tuple(s.data.shape) for s in x.addressable_shards})

def stream_case(name, mesh, B, hw, frames, use_rollout):
    t0 = time.time()
    first, text = rand(1, (B, 1, hw, hw, 16)), rand(2, (B, 4, 16))
    ctrl = rand(3, (B, frames, hw, hw, 24))
    keys = jax.random.split(jax.random.key(4), frames)

    def run(sampler):
        state = sampler.init(params, first, text)
        if use_rollout:
            return sampler.rollout(params, state, ctrl, keys[0], frames)
        got = []
        for i in range(frames):
            state, f = sampler.step(params, state, ctrl[:, i:i + 1], keys[i])
            got.append(f)
        return state, jnp.concatenate(got, 1)

    _, ref = run(StreamingSampler(CFG, graphdef))  # a mesh of the one default device
    sampler = StreamingSampler(CFG, graphdef, mesh=mesh)
    state, got = run(sampler)
    if use_rollout:
        lowered = sampler.lower("rollout", params, state, ctrl, keys[0], num_frames=frames)
    else:
        lowered = sampler.lower("step", params, state, ctrl[:, :1], keys[0])
    hlo = collectives(lowered.compile())
    out[name] = dict(frames=diff(got, ref), scale=float(np.abs(np.asarray(ref)).max()), shape=list(got.shape),
                     position=int(state.position), cache_shape=list(state.cache.k.shape),
                     cache_spec=str(state.cache.k.sharding.spec), cache_shards=shards(state.cache.k),
                     n_cache_shards=len(state.cache.k.addressable_shards),
                     text_shards=shards(state.cache.text_k), frame_devices=len(got.sharding.device_set),
                     collectives=hlo, seconds=round(time.time() - t0, 1))

def train_case(name, mesh, B, hw, T, remat=False, fsdp=False):
    # The parallel (teacher-forcing) forward, the discriminator's features, and the gradient
    # of a loss of both w.r.t. every param.
    t0 = time.time()
    cfg = CFG.replace(remat=remat)
    x, rec = rand(5, (B, T, hw, hw, 16)), rand(6, (B, T, hw, hw, 16))
    ctrl, text, t = rand(7, (B, T, hw, hw, 24)), rand(8, (B, 4, 16)), jnp.linspace(100.0, 900.0, B)

    def loss(p, x, rec, ctrl, text, t):
        model = nnx.merge(graphdef, p)
        v = model(x, t, text, recycled=rec, control=ctrl)
        (feat,) = model.features(x, t, text, recycled=rec, control=ctrl, layers=(1,))
        return jnp.sum(v * jnp.cos(v)) + jnp.mean(feat ** 2), (v, feat)

    grad = jax.value_and_grad(loss, has_aux=True)
    (l_ref, (v_ref, f_ref)), g_ref = jax.jit(grad)(*jax.device_put((params, x, rec, ctrl, text, t), devices[0]))
    with use_mesh(mesh):
        f = jax.jit(grad)
        p = shard_params(params, mesh) if fsdp else params
        batch = lambda y: jax.device_put(y, array_sharding(y.shape, ("batch",) + (None,) * (y.ndim - 1), mesh))
        args = (p,) + tuple(batch(y) for y in (x, rec, ctrl, text, t))
        hlo = collectives(f.lower(*args).compile())
        (l, (v, feat)), g = f(*args)
    kernel = p["blocks"][0]["ffn"]["proj_in"]["kernel"][...]
    grads = jax.tree.leaves(jax.tree.map(diff, g, g_ref))
    out[name] = dict(out=diff(v, v_ref), features=diff(feat, f_ref), loss=diff(l, l_ref), grads=max(grads),
                     n_grads=len(grads), feature_shape=list(feat.shape), kernel_shards=shards(kernel),
                     collectives=hlo, seconds=round(time.time() - t0, 1))

ctx4 = make_mesh(data=1, context=4, devices=devices[:4])
# 3N = 12 streamed frames, one jitted step each; batch 2 over data=2, one stream over context=4.
stream_case("stream_data2_ctx4", make_mesh(data=2, context=4), B=2, hw=8, frames=3 * N, use_rollout=False)
# 9 tokens per frame in 12 slots; the rollout's scan.
stream_case("stream_ctx4_pad", ctx4, B=1, hw=6, frames=3 * N, use_rollout=True)
train_case("train_ctx4", ctx4, B=2, hw=8, T=6)
# FSDP over 2 (params sharded), context 4, padded tokens, remat per block.
train_case("train_fsdp2_ctx4_pad_remat", make_mesh(data=1, fsdp=2, context=4), B=2, hw=6, T=5, remat=True,
           fsdp=True)
try:
    StreamingSampler(CFG.replace(num_heads=6, head_dim=16), graphdef, mesh=make_mesh(data=2, context=4))
    out["heads_error"] = None
except ValueError as e:
    out["heads_error"] = str(e)
print(json.dumps(out))
"""

TOL = 1e-5


@pytest.fixture(scope="module")
def results():
    return run_on_devices(SCRIPT, timeout=1200)["result"]


@pytest.mark.parametrize("case", ["stream_data2_ctx4", "stream_ctx4_pad"])
def test_streamed_frames_match_one_device(results, case):
    r = results[case]
    assert r["position"] == 12 and r["shape"][1] == 12, r  # 3N frames, N = 4
    assert r["frames"] <= TOL, r
    assert r["scale"] > 0.1, r  # real frames, not zeros


def test_cache_is_sharded_by_heads(results):
    # k/v [layers=4, B=2, 1 + R=5, S=16, H=4, Dh=24] on data=2 x context=4: one sample's every
    # token of one head per device; the text keys/values [4, 2, Lt=4, 4, 24] only by batch.
    r = results["stream_data2_ctx4"]
    assert r["cache_shape"] == [4, 2, 5, 16, 4, 24], r
    assert r["cache_shards"] == [[4, 1, 5, 16, 1, 24]] and r["n_cache_shards"] == 8, r
    assert "context" in r["cache_spec"], r
    assert r["text_shards"] == [[4, 1, 4, 4, 24]], r
    assert r["frame_devices"] == 8, r
    # 9 tokens per frame: the cache holds the 9 real ones (no padding), one head per device
    r = results["stream_ctx4_pad"]
    assert r["cache_shards"] == [[4, 1, 5, 9, 1, 24]] and r["n_cache_shards"] == 4, r


@pytest.mark.parametrize("case", ["stream_data2_ctx4", "stream_ctx4_pad"])
def test_compiled_step_moves_tokens_by_all_to_all(results, case):
    c = results[case]["collectives"]
    # per layer: q, k, v to heads and the output back
    assert c["all-to-all"] >= 2 * 4, c
    # nothing moves whole activations between the context devices
    assert c["all-gather"] <= 2 and c["reduce-scatter"] == 0, c


@pytest.mark.parametrize("case", ["train_ctx4", "train_fsdp2_ctx4_pad_remat"])
def test_parallel_forward_and_gradient_match_one_device(results, case):
    r = results[case]
    assert r["out"] <= TOL and r["features"] <= TOL and r["loss"] <= TOL, r
    assert r["grads"] <= TOL, r
    assert r["n_grads"] > 40, r
    assert r["collectives"]["all-to-all"] >= 2 * 4, r


def test_training_collectives_and_shards(results):
    # context only, 16 tokens per frame: the forward and backward move activations only by
    # all-to-all; the all-reduces sum the replicated params' gradients
    c = results["train_ctx4"]["collectives"]
    assert c["all-gather"] == 0 and c["collective-permute"] == 0, c
    # fsdp=2: ffn proj_in kernel [96, 256] split over fsdp on its embed dim
    r = results["train_fsdp2_ctx4_pad_remat"]
    assert r["kernel_shards"] == [[48, 256]], r
    # 9 real tokens of every frame come back (the 3 pad slots dropped)
    assert r["feature_shape"] == [2, 5, 9, 96], r


def test_heads_must_divide_context(results):
    e = results["heads_error"]
    assert e and e.startswith("model.num_heads: expected a multiple of the mesh's context=4"), e
    assert "got 6" in e, e
