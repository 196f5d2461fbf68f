"""The decode Pallas kernel (interpret mode): one frame against [sink | ring | current]."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from aapt_jax.model.attention import attention
from aapt_jax.kernels.decode_attention import decode_attention, decode_attention_reference
from aapt_jax.kernels._flash import BlockSizes
from numerics import rel_err

SMALL = BlockSizes(block_q=16, block_k=16, block_q_dq=16, block_k_dq=16, block_q_dkv=16,
                   block_k_dkv=16)
S, RING, WINDOW = 20, 4, 3


def _inputs(key, heads, kv_heads, head_dim, dtype, batch=1):
    kq, kk, kv, kd = jax.random.split(key, 4)
    lk = (RING + 2) * S
    q = jax.random.normal(kq, (batch, S, heads, head_dim), jnp.float32).astype(dtype)
    k = jax.random.normal(kk, (batch, lk, kv_heads, head_dim), jnp.float32).astype(dtype)
    v = jax.random.normal(kv, (batch, lk, kv_heads, head_dim), jnp.float32).astype(dtype)
    do = jax.random.normal(kd, (batch, S, heads, head_dim), jnp.float32).astype(dtype)
    return q, k, v, do


def _out_and_grads(fn, blocks=None):
    """jit of (q, k, v, slot_frames, query_frame, do) -> (out, dq, dk, dv); ids traced."""

    def run(q, k, v, ids, cur, do):
        f = lambda q, k, v: fn(q, k, v, ids, cur, tokens_per_frame=S, window=WINDOW,
                               **({} if blocks is None else {"block_sizes": blocks}))
        out, vjp = jax.vjp(f, q, k, v)
        return (out, *vjp(do))

    return jax.jit(run)


# slot ids [sink | 4 ring slots | current] and the query frame.
CACHES = {
    "first_frame": ([-1, -1, -1, -1, -1, 0], 0),          # nothing cached yet
    "partly_filled": ([0, 1, 2, -1, -1, 3], 3),          # two ring slots still empty
    "full": ([0, 5, 6, 7, 4, 8], 8),                      # frame 4 fell out of the window
    "full_wrapped": ([0, 9, 10, 7, 8, 11], 11),           # ring order is not frame order
}


@pytest.mark.parametrize("heads,kv_heads,head_dim,dtype,blocks", [
    (2, 2, 64, jnp.float32, SMALL),
    (4, 1, 128, jnp.float32, None),
    (4, 2, 64, jnp.bfloat16, SMALL),
], ids=["fp32", "fp32,gqa,d128,default_tiles", "bf16,gqa"])
def test_decode_matches_reference_for_every_cache_state(heads, kv_heads, head_dim, dtype, blocks):
    q, k, v, do = _inputs(jax.random.key(heads * 7 + head_dim), heads, kv_heads, head_dim, dtype)
    kernel = _out_and_grads(decode_attention, blocks)
    reference = _out_and_grads(decode_attention_reference)
    tol = 1e-5 if dtype == jnp.float32 else 2e-2
    for name, (ids, cur) in CACHES.items():
        ids, cur = jnp.asarray(ids, jnp.int32), jnp.int32(cur)
        got, want = kernel(q, k, v, ids, cur, do), reference(q, k, v, ids, cur, do)
        for label, g, w in zip(("out", "dq", "dk", "dv"), got, want):
            assert g.shape == w.shape and g.dtype == w.dtype, (name, label)
            assert rel_err(g, w) <= tol, (name, label, rel_err(g, w))


def test_blocks_of_empty_and_out_of_window_slots_are_never_read():
    # NaN in every key block that lies wholly inside an empty or out-of-window slot: the
    # kernel skips those blocks, so nothing leaks. (Blocks straddling a visible slot are read
    # and masked, as in the reference, so empty slots must hold finite values.)
    q, k, v, do = _inputs(jax.random.key(11), 2, 2, 64, jnp.float32)
    ids, cur = jnp.asarray([0, 5, -1, 7, 4, 8], jnp.int32), jnp.int32(8)
    hidden_tokens = np.repeat(np.asarray([False, False, True, False, True, False]), S)
    # The kernel pads the keys to a whole number of 16-token blocks with empty (-1) frames.
    padded = np.pad(hidden_tokens, (0, -len(hidden_tokens) % 16), constant_values=True)
    hidden_blocks = padded.reshape(-1, 16).all(axis=1)
    assert hidden_blocks[:-1].sum() == 1  # tokens 80..95 of slot 4 (frame 4 < 8 - WINDOW)
    poison_rows = np.repeat(hidden_blocks, 16)[:len(hidden_tokens)]
    poison_rows = jnp.asarray(poison_rows)[None, :, None, None]
    poison = lambda x: jnp.where(poison_rows, jnp.nan, x)
    kernel = _out_and_grads(decode_attention, SMALL)
    clean = kernel(q, k, v, ids, cur, do)
    dirty = kernel(q, poison(k), poison(v), ids, cur, do)
    for label, c, d in zip(("out", "dq"), clean[:2], dirty[:2]):
        np.testing.assert_array_equal(np.asarray(d), np.asarray(c), err_msg=label)
    # Control: the dense reference reads them.
    assert np.isnan(np.asarray(decode_attention_reference(
        q, poison(k), poison(v), ids, cur, tokens_per_frame=S, window=WINDOW))).any()


def test_decode_through_the_attention_api():
    q, k, v, _ = _inputs(jax.random.key(5), 2, 2, 64, jnp.float32)
    ids = jnp.asarray([0, 1, 2, -1, -1, 3], jnp.int32)
    k_frames, q_frames = jnp.repeat(ids, S), jnp.full((S,), 3, jnp.int32)
    kw = dict(window=WINDOW, tokens_per_frame=S, layout="decode")
    want = attention(q, k, v, q_frames, k_frames, impl="xla", **kw)
    got = jax.jit(lambda q, k, v, qf, kf: attention(q, k, v, qf, kf, impl="pallas", **kw))(
        q, k, v, q_frames, k_frames)
    assert rel_err(got, want) <= 1e-5
    with pytest.raises(ValueError, match="one frame of tokens_per_frame"):
        attention(q[:, :10], k, v, q_frames[:10], k_frames, impl="pallas", **kw)


@pytest.mark.parametrize("q_len,k_len,head_dim,dtype,match", [
    (S, 6 * S, 96, jnp.float32, "head dim must be one of"),
    (S, 6 * S, 64, jnp.float16, "dtype must be bfloat16 or float32"),
    (S - 1, 6 * S, 64, jnp.float32, "one frame of tokens_per_frame"),
    (S, 6 * S + 3, 64, jnp.float32, r"\[sink \| ring slots \| current\]"),
    (S, S, 64, jnp.float32, r"\[sink \| ring slots \| current\]"),
])
def test_decode_bad_input_raises_naming_the_constraint(q_len, k_len, head_dim, dtype, match):
    q = jnp.zeros((1, q_len, 2, head_dim), dtype)
    k = jnp.zeros((1, k_len, 2, head_dim), dtype)
    with pytest.raises(ValueError, match=match):
        decode_attention(q, k, k, jnp.zeros(max(k_len // S, 1), jnp.int32), 0,
                         tokens_per_frame=S, window=WINDOW)


def test_decode_slot_ids_shape_is_checked():
    q, k, v, _ = _inputs(jax.random.key(0), 2, 2, 64, jnp.float32)
    with pytest.raises(ValueError, match=r"slot_frames must have shape \(6,\)"):
        decode_attention(q, k, v, jnp.zeros(5, jnp.int32), 0, tokens_per_frame=S, window=WINDOW)


@pytest.mark.parametrize("kv_heads", [32, 8])
def test_decode_lowers_for_cuda_through_triton(kv_heads):
    s, ring = 40, 3
    q = jax.ShapeDtypeStruct((1, s, 32, 128), jnp.bfloat16)
    k = jax.ShapeDtypeStruct((1, (ring + 2) * s, kv_heads, 128), jnp.bfloat16)
    ids = jax.ShapeDtypeStruct((ring + 2,), jnp.int32)
    cur = jax.ShapeDtypeStruct((), jnp.int32)
    fwd = lambda q, k, v, i, c: decode_attention(q, k, v, i, c, tokens_per_frame=s, window=2,
                                                 interpret=False)
    lower = lambda f: jax.jit(f).trace(q, k, k, ids, cur).lower(lowering_platforms=("cuda",)).as_text()
    assert lower(fwd).count("__gpu$xla.gpu.triton") == 1
    grads = jax.grad(lambda q, k, v, i, c: jnp.sum(fwd(q, k, v, i, c).astype(jnp.float32)),
                     argnums=(0, 1, 2))
    text = lower(grads)
    assert text.count("__gpu$xla.gpu.triton") == 3
    assert "stablehlo.exponential" not in text
