"""Ulysses context parallelism on 8 virtual CPU devices equals one-device attention.

One subprocess (8 devices need XLA_FLAGS before jax starts) runs every case once and prints
one JSON line; the tests below check its parts.
"""

import pytest
from virtual_devices import run_on_devices

SCRIPT = r"""
import json, re, time
import jax, jax.numpy as jnp, numpy as np
jax.config.update("jax_default_matmul_precision", "highest")
from jax.sharding import NamedSharding, PartitionSpec as P
from aapt_jax.model import kv_cache as kvc
from aapt_jax.model.attention import attention
from aapt_jax.parallel.mesh import make_mesh
from aapt_jax.parallel.sharding import use_mesh
from aapt_jax.parallel.ulysses import cache_sharding, shard_cache, ulysses_attention, ulysses_cached_attention

assert jax.device_count() == 8, jax.devices()
one = jax.devices()[0]
out = {}

def collectives(compiled):
    # instructions, not mentions (an instruction's name also appears where it is an operand)
    text = compiled.as_text()
    return {c: len(re.findall(r" %s(?:-start)?\(" % c, text))
            for c in ("all-to-all", "all-gather", "all-reduce", "collective-permute", "reduce-scatter")}

def rand(key, shape):
    return jax.random.normal(jax.random.key(key), shape, jnp.float32)

def diff(a, b):
    return float(np.abs(np.asarray(a) - np.asarray(b)).max() / max(1.0, np.abs(np.asarray(b)).max()))

def parallel_case(name, mesh, B, T, S, H, Hkv, D, window, impl, padded_slots=None):
    t0 = time.time()
    q, k, v = rand(1, (B, T * S, H, D)), rand(2, (B, T * S, Hkv, D)), rand(3, (B, T * S, Hkv, D))
    w = rand(4, (B, T * S, H, D))
    ids = jnp.repeat(jnp.arange(T, dtype=jnp.int32), S)

    def ref(q, k, v):
        o = attention(q, k, v, ids, ids, window=window, impl=impl, tokens_per_frame=S, layout="parallel")
        return jnp.sum(o * w), o

    def par(q, k, v):
        o = ulysses_attention(q, k, v, tokens_per_frame=S, window=window, impl=impl)
        return jnp.sum(o * w), o

    grad = lambda f: jax.jit(jax.value_and_grad(f, argnums=(0, 1, 2), has_aux=True))
    (_, o_ref), g_ref = grad(ref)(*jax.device_put((q, k, v), one))
    with use_mesh(mesh):
        # Flat token sharding in: the function reshards to its per-frame split itself.
        flat = NamedSharding(mesh, P(None, "context"))
        args = jax.device_put((q, k, v), flat) if (T * S) % mesh.shape["context"] == 0 else (q, k, v)
        f = grad(par)
        hlo = collectives(f.lower(*args).compile())
        (_, o), g = f(*args)
    out[name] = dict(out=diff(o, o_ref), grads=[diff(a, b) for a, b in zip(g, g_ref)],
                     out_shape=list(o.shape), collectives=hlo, seconds=round(time.time() - t0, 1))
    if padded_slots:
        # Frames as the model would carry them on this mesh: padded by the caller to P slots
        # ([B, T, P, H, D], P > S) and split by tokens, with junk in the pad slots (and in the
        # cotangent's pad rows). The pad must neither be attended to nor get or give gradient,
        # and forward plus backward must move nothing but the all-to-alls.
        def five(x, key):
            x = x.reshape(B, T, S, *x.shape[2:])
            junk = 1e3 * rand(key, (B, T, padded_slots - S) + x.shape[3:])
            return jnp.concatenate([x, junk], 2)
        with use_mesh(mesh):
            ts = NamedSharding(mesh, P(None, None, "context"))
            fwd = lambda q, k, v: ulysses_attention(q, k, v, tokens_per_frame=S, window=window, impl=impl)
            step = jax.jit(lambda q, k, v, ct: (lambda o, vjp: (o,) + vjp(ct))(*jax.vjp(fwd, q, k, v)),
                           out_shardings=(ts,) * 4)
            args = jax.device_put((five(q, 10), five(k, 11), five(v, 12), five(w, 13)), ts)
            hlo5 = collectives(step.lower(*args).compile())
            o5, *g5 = step(*args)
        real = lambda x, like: x[:, :, :S].reshape(like.shape)
        out[name].update(padded_out=diff(real(o5, o_ref), o_ref),
                         padded_grads=[diff(real(a, b), b) for a, b in zip(g5, g_ref)],
                         padded_rows=max(float(np.abs(np.asarray(x[:, :, S:])).max()) for x in [o5] + g5),
                         padded_shape=list(o5.shape), padded_collectives=hlo5)

def cached_case(name, mesh, B, S, H, D, window, R, position, impl, layers=2, layer=1, five_d=False):
    t0 = time.time()
    q, k, v = rand(5, (B, S, H, D)), rand(6, (B, S, H, D)), rand(7, (B, S, H, D))
    ck, cv = rand(8, (layers, B, 1 + R, S, H, D)), rand(9, (layers, B, 1 + R, S, H, D))

    def ref(q, k, v, ck, cv):  # the model's _cached_trunk, one frame, one layer
        past_k = ck[layer].reshape(B, (1 + R) * S, H, D)
        past_v = cv[layer].reshape(B, (1 + R) * S, H, D)
        qf = jnp.full((S,), position, jnp.int32)
        kf = jnp.concatenate([jnp.repeat(kvc.slot_frames(position, R), S), qf])
        o = attention(q, jnp.concatenate([past_k, k], 1), jnp.concatenate([past_v, v], 1), qf, kf,
                      window=window, impl=impl, tokens_per_frame=S, layout="decode")
        return o, kvc.write_frame(ck, layer, position, R, k), kvc.write_frame(cv, layer, position, R, v)

    def par(q, k, v, ck, cv, position):
        o, ck, cv = ulysses_cached_attention(q, k, v, ck, cv, position, layer=layer, tokens_per_frame=S,
                                             window=window, impl=impl)
        return o, ck, cv

    o_ref, ck_ref, cv_ref = jax.jit(ref)(*jax.device_put((q, k, v, ck, cv), one))
    with use_mesh(mesh):
        # The step's own layouts in and out: the new frame split by tokens, the cache by heads.
        # Then the all-to-alls are the only communication.
        cs = cache_sharding(ck.shape)
        th = "tensor" if mesh.shape["tensor"] > 1 else None  # heads split over tensor outside too
        ts = NamedSharding(mesh, P(cs.spec[1], None, "context", th) if five_d else P(cs.spec[1], "context", th))
        Sp = -(-S // mesh.shape["context"]) * mesh.shape["context"]
        # five_d: the frame as the model would carry it on this mesh, padded to Sp slots
        pad = lambda x: jnp.pad(x.reshape(B, 1, S, H, D), ((0, 0), (0, 0), (0, Sp - S), (0, 0), (0, 0)))
        put = lambda x: jax.device_put(pad(x) if five_d else x, ts)
        args = (put(q), put(k), put(v), jax.device_put(ck, cs), jax.device_put(cv, cs), jnp.int32(position))
        f = jax.jit(par, out_shardings=(ts, cs, cs))
        hlo = collectives(f.lower(*args).compile())
        o, ck2, cv2 = f(*args)
        if five_d:
            o = o[:, 0, :S]
    out[name] = dict(out=diff(o, o_ref), cache_k=diff(ck2, ck_ref), cache_v=diff(cv2, cv_ref),
                     cache_spec=str(ck2.sharding.spec), cache_devices=len(ck2.sharding.device_set),
                     cache_shards=sorted({tuple(s.data.shape) for s in ck2.addressable_shards}),
                     n_cache_shards=len(ck2.addressable_shards),
                     collectives=hlo, seconds=round(time.time() - t0, 1))

ctx4 = make_mesh(data=2, context=4)
ctx8 = make_mesh(data=1, context=8)
# context=4: tokens per frame divide; grouped-query heads (8 query, 4 kv); window 1 of 4 frames
# so the mask drops frame 1 for frame 3. Batch 2 split over data=2.
parallel_case("parallel_ctx4", ctx4, B=2, T=4, S=8, H=8, Hkv=4, D=8, window=1, impl="xla")
# position 5 with R=2: the ring has wrapped; window 2 == R: the slot being written holds a visible frame.
cached_case("cached_ctx4", ctx4, B=2, S=8, H=4, D=8, window=2, R=2, position=5, impl="xla")
# context=8 with 6 tokens per frame (padded to 8 inside) and batch 1.
parallel_case("parallel_ctx8_pad", ctx8, B=1, T=3, S=6, H=8, Hkv=8, D=8, window=1, impl="xla", padded_slots=8)
cached_case("cached_ctx8_pad", ctx8, B=1, S=6, H=8, D=8, window=1, R=2, position=3, impl="xla", five_d=True)
# The Pallas kernels (interpreted on CPU) on local heads.
parallel_case("parallel_ctx4_pallas", ctx4, B=2, T=3, S=4, H=4, Hkv=4, D=64, window=1, impl="pallas")
cached_case("cached_ctx4_pallas", ctx4, B=2, S=4, H=4, D=64, window=1, R=2, position=4, impl="pallas")

# Heads split over tensor=2 outside and context=4 inside: one head per device.
cached_case("cached_ctx4_tensor2", make_mesh(data=1, context=4, tensor=2), B=1, S=4, H=8, D=8, window=1, R=2,
            position=2, impl="xla")
cache = shard_cache(kvc.empty_cache(2, 2, 3, 6, 8, 8, jnp.zeros((2, 2, 5, 8, 8)), jnp.zeros((2, 2, 5, 8, 8)),
                                    jnp.float32), mesh=ctx4)
out["shard_cache"] = {n: sorted({tuple(s.data.shape) for s in getattr(cache, n).addressable_shards})
                      for n in ("k", "v", "text_k", "text_v")}

errors = {}
for field, shapes in (("num_heads", ((1, 8, 6, 8), (1, 8, 4, 8))), ("kv_heads", ((1, 8, 8, 8), (1, 8, 2, 8)))):
    try:
        qs, ks = shapes
        ulysses_attention(jnp.zeros(qs), jnp.zeros(ks), jnp.zeros(ks), tokens_per_frame=4, window=1, mesh=ctx4)
        errors[field] = None
    except ValueError as e:
        errors[field] = str(e)
out["errors"] = errors
print(json.dumps(out))
"""

TOL = 1e-5


@pytest.fixture(scope="module")
def results():
    return run_on_devices(SCRIPT, timeout=900)["result"]


@pytest.mark.parametrize("case", ["parallel_ctx4", "parallel_ctx8_pad", "parallel_ctx4_pallas"])
def test_parallel_forward_and_grads_match_one_device(results, case):
    r = results[case]
    assert r["out"] <= TOL, r
    assert max(r["grads"]) <= TOL, r
    # q, k, v to heads and the output back (XLA merges q, k, v into one tuple all-to-all)
    assert r["collectives"]["all-to-all"] >= 2, r


@pytest.mark.parametrize("case", ["cached_ctx4", "cached_ctx8_pad", "cached_ctx4_pallas", "cached_ctx4_tensor2"])
def test_cached_step_matches_one_device(results, case):
    r = results[case]
    assert r["out"] <= TOL and r["cache_k"] <= TOL and r["cache_v"] <= TOL, r
    # tokens -> heads and back; the cache write is local: nothing else moves
    c = r["collectives"]
    assert c["all-to-all"] >= 2 and sum(c.values()) == c["all-to-all"], r


def test_padded_frames_are_ignored_and_only_all_to_alls_move(results):
    # 6 real tokens in 8 slots per frame on context=8, junk in the pad slots
    r = results["parallel_ctx8_pad"]
    assert r["padded_shape"] == [1, 3, 8, 8, 8], r
    assert r["padded_out"] <= TOL and max(r["padded_grads"]) <= TOL, r
    assert r["padded_rows"] == 0.0, r
    c = r["padded_collectives"]
    assert c["all-to-all"] >= 4 and sum(c.values()) == c["all-to-all"], r


def test_cache_is_sharded_by_heads(results):
    # [layers=2, B=2, 1+R=3, S=8, H=4, D=8] on data=2 x context=4: batch over data, one head each.
    r = results["cached_ctx4"]
    assert r["cache_devices"] == 8 and r["n_cache_shards"] == 8, r
    assert r["cache_shards"] == [[2, 1, 3, 8, 1, 8]], r
    assert "context" in r["cache_spec"], r
    # [2, 1, 3, 6, 8, 8] on context=8: every token of one head per device (no token padding in the cache).
    r = results["cached_ctx8_pad"]
    assert r["cache_shards"] == [[2, 1, 3, 6, 1, 8]], r
    # 8 heads over tensor=2 x context=4
    r = results["cached_ctx4_tensor2"]
    assert r["cache_shards"] == [[2, 1, 3, 4, 1, 8]] and r["n_cache_shards"] == 8, r
    # shard_cache on data=2 x context=4: k/v [2, 2, 4, 6, 8, 8] by heads; text only by batch
    r = results["shard_cache"]
    assert r["k"] == r["v"] == [[2, 1, 4, 6, 2, 8]], r
    assert r["text_k"] == r["text_v"] == [[2, 1, 5, 8, 8]], r


def test_heads_that_do_not_divide_are_named(results):
    e = results["errors"]
    assert e["num_heads"] and e["num_heads"].startswith("num_heads: expected a multiple of context=4"), e
    assert "got 6" in e["num_heads"], e
    assert e["kv_heads"] and e["kv_heads"].startswith("kv_heads: expected a multiple of context=4"), e
    assert "got 2" in e["kv_heads"], e
