"""The training/prefill Pallas kernel (interpret mode) against the dense jnp reference."""

import zlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from aapt_jax import kernels
from aapt_jax.model.attention import attention, frame_ids
from aapt_jax.model.window import EMPTY_FRAME, frame_visible
from aapt_jax.kernels import _flash
from aapt_jax.kernels.block_causal_attention import (block_causal_attention,
                                            block_causal_attention_reference, parallel_spec)
from aapt_jax.kernels._flash import BlockSizes
from numerics import rel_err

SMALL = BlockSizes(block_q=16, block_k=16, block_q_dq=16, block_k_dq=16, block_q_dkv=16,
                   block_k_dkv=16)
MIXED = BlockSizes(block_q=32, block_k=16, block_q_dq=16, block_k_dq=32, block_q_dkv=16,
                   block_k_dkv=32)


def _inputs(key, batch, frames, s, heads, kv_heads, head_dim, dtype):
    kq, kk, kv, kd = jax.random.split(key, 4)
    length = frames * s
    q = jax.random.normal(kq, (batch, length, heads, head_dim), jnp.float32).astype(dtype)
    k = jax.random.normal(kk, (batch, length, kv_heads, head_dim), jnp.float32).astype(dtype)
    v = jax.random.normal(kv, (batch, length, kv_heads, head_dim), jnp.float32).astype(dtype)
    do = jax.random.normal(kd, (batch, length, heads, head_dim), jnp.float32).astype(dtype)
    return q, k, v, do


def _out_and_grads(fn):
    """jit of (q, k, v, do) -> (out, dq, dk, dv)."""

    def run(q, k, v, do):
        out, vjp = jax.vjp(fn, q, k, v)
        return (out, *vjp(do))

    return jax.jit(run)


CASES = [
    # name, batch, frames, S, heads, kv_heads, head_dim, window, blocks, dtype
    ("window<seq,straddle,gqa", 2, 6, 20, 4, 2, 64, 2, SMALL, jnp.float32),
    ("window>seq", 1, 3, 24, 2, 2, 64, 5, MIXED, jnp.float32),
    ("single_frame", 1, 1, 40, 2, 2, 64, 3, SMALL, jnp.float32),
    ("bidirectional,gqa", 1, 3, 20, 2, 1, 64, None, SMALL, jnp.float32),
    ("window0,frames<block,d128", 1, 5, 12, 2, 2, 128, 0, None, jnp.float32),
    ("bf16,window<seq,gqa", 1, 6, 20, 4, 2, 64, 2, SMALL, jnp.bfloat16),
    ("bf16,bidirectional,d128", 1, 4, 30, 2, 2, 128, None, MIXED, jnp.bfloat16),
]


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_forward_and_gradients_match_reference(case):
    name, batch, frames, s, heads, kv_heads, head_dim, window, blocks, dtype = case
    q, k, v, do = _inputs(jax.random.key(zlib.crc32(name.encode())), batch, frames, s, heads,
                          kv_heads, head_dim, dtype)
    kw = dict(tokens_per_frame=s, window=window)
    got = _out_and_grads(lambda q, k, v: block_causal_attention(q, k, v, block_sizes=blocks, **kw))(
        q, k, v, do)
    want = _out_and_grads(lambda q, k, v: block_causal_attention_reference(q, k, v, **kw))(
        q, k, v, do)
    tol = 1e-5 if dtype == jnp.float32 else 2e-2
    for label, g, w in zip(("out", "dq", "dk", "dv"), got, want):
        assert g.shape == w.shape and g.dtype == w.dtype, label
        assert rel_err(g, w) <= tol, (label, rel_err(g, w))


def _tile_occupancy(q_ids, k_ids, window, block_q, block_k):
    """[num_q_blocks, num_k_blocks] bool: tiles of the literal token mask with a visible entry."""
    mask = np.asarray(frame_visible(q_ids, k_ids, window))
    nq, nk = -(-len(q_ids) // block_q), -(-len(k_ids) // block_k)
    padded = np.zeros((nq * block_q, nk * block_k), bool)
    padded[:mask.shape[0], :mask.shape[1]] = mask
    return padded.reshape(nq, block_q, nk, block_k).any(axis=(1, 3))


def _kernel_tiles(frames_obj, nq, nk, block_q, block_k, by_key=False):
    """Tiles the kernels' loop bounds visit, as the same [nq, nk] bool grid."""
    count = np.zeros((nq, nk), int)
    outer = nk if by_key else nq
    ranges = (frames_obj.query_block_ranges if by_key else frames_obj.key_block_ranges)(
        np.arange(outer), block_q, block_k)
    inner = np.arange(nq if by_key else nk)
    for lo, hi in ranges:
        hit = (inner[None, :] >= np.asarray(lo)[:, None]) & (inner[None, :] < np.asarray(hi)[:, None])
        count += hit.T if by_key else hit
    assert count.max() <= 1, "a tile visited twice"
    return count == 1


@pytest.mark.parametrize("frames,s,window,block_q,block_k", [
    (7, 20, 2, 16, 16), (5, 12, 1, 32, 16), (9, 33, 3, 16, 64), (4, 16, None, 16, 32),
    (6, 50, 0, 64, 32), (3, 10, 8, 16, 16)])
def test_loop_bounds_visit_exactly_the_nonempty_tiles(frames, s, window, block_q, block_k):
    from aapt_jax.bench.attention import mask_block_density

    ids = np.repeat(np.arange(frames), s)
    spec = parallel_spec((1, frames * s, 1, 64), tokens_per_frame=s, window=window,
                         block_sizes=BlockSizes(block_q=block_q, block_k=block_k,
                                                block_q_dkv=block_q, block_k_dkv=block_k))
    occupancy = _tile_occupancy(ids, ids, window, block_q, block_k)
    nq, nk = occupancy.shape
    np.testing.assert_array_equal(_kernel_tiles(spec.frames, nq, nk, block_q, block_k), occupancy)
    np.testing.assert_array_equal(
        _kernel_tiles(spec.frames, nq, nk, block_q, block_k, by_key=True), occupancy)
    assert _flash.visited_block_pairs(spec.frames, nq, block_q, block_k) == occupancy.sum()
    assert mask_block_density(frames, s, window, block_q, block_k) == pytest.approx(occupancy.mean())


@pytest.fixture(scope="module")
def poison_setup():
    """6 frames of 20 tokens, window 1: most tiles are invisible to any given block."""
    frames, s, window = 6, 20, 1
    q, k, v, do = _inputs(jax.random.key(7), 1, frames, s, 2, 2, 64, jnp.float32)
    kw = dict(tokens_per_frame=s, window=window)
    kernel = _out_and_grads(lambda q, k, v: block_causal_attention(q, k, v, block_sizes=SMALL, **kw))
    reference = _out_and_grads(lambda q, k, v: block_causal_attention_reference(q, k, v, **kw))
    ids = np.repeat(np.arange(frames), s)
    occupancy = _tile_occupancy(ids, ids, window, 16, 16)
    return q, k, v, do, kernel, reference, occupancy, reference(q, k, v, do)


def _poison_rows(x, blocks, block):
    rows = np.zeros(x.shape[1], bool)
    for b in blocks:
        rows[b * block:(b + 1) * block] = True
    return jnp.where(jnp.asarray(rows)[None, :, None, None], jnp.nan, x)


def _poison_invisible(visible, *xs, block=16):
    """``xs`` with NaN rows in every block of ``block`` tokens that ``visible`` (one row or
    column of the tile occupancy) marks invisible; there must be one."""
    hidden = np.flatnonzero(~visible)
    assert hidden.size > 0
    return [_poison_rows(x, hidden, block) for x in xs]


@pytest.mark.parametrize("q_block", [1, 5, 7])
def test_forward_and_dq_never_read_invisible_key_blocks(poison_setup, q_block):
    q, k, v, do, kernel, reference, occupancy, clean = poison_setup
    k_bad, v_bad = _poison_invisible(occupancy[q_block], k, v)
    rows = slice(q_block * 16, (q_block + 1) * 16)
    # Control: dense attention reads every key, so the poison reaches its output.
    assert np.isnan(np.asarray(reference(q, k_bad, v_bad, do)[0][:, rows])).any()
    out, dq, _, _ = kernel(q, k_bad, v_bad, do)
    assert rel_err(out[:, rows], clean[0][:, rows]) <= 1e-5
    assert rel_err(dq[:, rows], clean[1][:, rows]) <= 1e-5


@pytest.mark.parametrize("k_block", [2, 4, 6])
def test_dkv_never_reads_invisible_query_blocks(poison_setup, k_block):
    q, k, v, do, kernel, reference, occupancy, clean = poison_setup
    q_bad, do_bad = _poison_invisible(occupancy[:, k_block], q, do)
    rows = slice(k_block * 16, (k_block + 1) * 16)
    assert np.isnan(np.asarray(reference(q_bad, k, v, do_bad)[2][:, rows])).any()
    _, _, dk, dv = kernel(q_bad, k, v, do_bad)
    assert rel_err(dk[:, rows], clean[2][:, rows]) <= 1e-5
    assert rel_err(dv[:, rows], clean[3][:, rows]) <= 1e-5


def _cuda_text(fn, *args):
    return jax.jit(fn).trace(*args).lower(lowering_platforms=("cuda",)).as_text()


@pytest.mark.parametrize("kv_heads,dtype,head_dim", [(32, jnp.bfloat16, 128), (8, jnp.bfloat16, 128),
                                                     (4, jnp.float32, 64)])
def test_lowers_for_cuda_through_triton(kv_heads, dtype, head_dim):
    s, frames = 40, 3
    q = jax.ShapeDtypeStruct((1, frames * s, 32, head_dim), dtype)
    k = jax.ShapeDtypeStruct((1, frames * s, kv_heads, head_dim), dtype)
    fwd = lambda q, k, v: block_causal_attention(q, k, v, tokens_per_frame=s, window=1,
                                                 interpret=False)
    text = _cuda_text(fwd, q, k, k)
    assert text.count("__gpu$xla.gpu.triton") == 1
    assert "aapt_flash_forward" in text
    grads = jax.grad(lambda q, k, v: jnp.sum(fwd(q, k, v).astype(jnp.float32)), argnums=(0, 1, 2))
    text = _cuda_text(grads, q, k, k)
    # forward (residuals), dq and dk/dv: all Triton, no dense fallback in the backward.
    assert text.count("__gpu$xla.gpu.triton") == 3
    assert "aapt_flash_dq" in text and "aapt_flash_dkv" in text
    assert "stablehlo.exponential" not in text


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float32])
@pytest.mark.parametrize("head_dim", [64, 128])
def test_shipped_tiles_fit_hopper_shared_memory(dtype, head_dim):
    budget = _flash.shared_memory_bytes(_flash.default_block_sizes(dtype), head_dim, dtype)
    assert set(budget) == {"forward", "dq", "dkv"}
    assert all(0 < b <= _flash.HOPPER_SHARED_MEMORY_BYTES for b in budget.values()), budget


def test_shared_memory_estimate_rejects_oversized_tiles():
    big = BlockSizes(block_q=256, block_k=256, num_stages=3)
    assert _flash.shared_memory_bytes(big, 128, jnp.float32)["forward"] > _flash.HOPPER_SHARED_MEMORY_BYTES


def _zeros(shape, dtype=jnp.float32):
    return jnp.zeros(shape, dtype)


@pytest.mark.parametrize("q_shape,kv_shape,dtype,s,window,match", [
    ((1, 40, 2, 96), (1, 40, 2, 96), jnp.float32, 20, 2, "head dim must be one of"),
    ((1, 40, 2, 32), (1, 40, 2, 32), jnp.float32, 20, 2, "head dim must be one of"),
    ((1, 40, 2, 64), (1, 40, 2, 64), jnp.float16, 20, 2, "dtype must be bfloat16 or float32"),
    ((1, 40, 3, 64), (1, 40, 2, 64), jnp.float32, 20, 2, "must be a multiple of key/value heads"),
    ((1, 40, 2, 64), (1, 40, 2, 64), jnp.float32, 15, 2, "not a whole number of frames"),
    ((1, 40, 2, 64), (1, 60, 2, 64), jnp.float32, 20, 2, "as many keys as queries"),
    ((1, 40, 2, 64), (1, 40, 2, 64), jnp.float32, 20, -1, "window must be None or an int >= 0"),
    ((40, 2, 64), (40, 2, 64), jnp.float32, 20, 2, "rank 4"),
])
def test_bad_input_raises_naming_the_constraint(q_shape, kv_shape, dtype, s, window, match):
    q, k = _zeros(q_shape, dtype), _zeros(kv_shape, dtype)
    with pytest.raises(ValueError, match=match):
        block_causal_attention(q, k, k, tokens_per_frame=s, window=window)
    if len(q_shape) == 4:
        ids_q, ids_k = jnp.zeros(q_shape[1], jnp.int32), jnp.zeros(kv_shape[1], jnp.int32)
        with pytest.raises(ValueError, match=match):
            attention(q, k, k, ids_q, ids_k, window=window, impl="pallas", tokens_per_frame=s,
                      layout="parallel")


def test_bad_block_sizes_raise():
    with pytest.raises(ValueError, match="power of two >= 16"):
        BlockSizes(block_q=48)
    with pytest.raises(ValueError, match="power of two >= 16"):
        BlockSizes(block_k=8)


def test_dispatched_through_the_attention_api():
    s, frames = 12, 4
    q, k, v, _ = _inputs(jax.random.key(3), 1, frames, s, 2, 2, 64, jnp.float32)
    ids = frame_ids(frames, s)
    kw = dict(window=1, tokens_per_frame=s, layout="parallel")
    want = attention(q, k, v, ids, ids, impl="xla", **kw)
    got = attention(q, k, v, ids, ids, impl="pallas", **kw)
    assert rel_err(got, want) <= 1e-5
    # impl='auto' falls back explicitly: unsupported head dim, layout, or a CPU backend
    # (where the kernel would only run interpreted) go to XLA with the same numbers.
    odd = _zeros((1, frames * s, 2, 96))
    assert kernels.pallas_attention(odd, odd, odd, ids, ids, strict=False, **kw) is None
    assert kernels.pallas_attention(q, k, v, ids, ids, window=1, tokens_per_frame=s,
                                    layout=None, strict=False) is None
    assert kernels.pallas_attention(q, k, v, ids, ids, strict=False, **kw) is None
    np.testing.assert_array_equal(attention(q, k, v, ids, ids, impl="auto", **kw), want)
    with pytest.raises(ValueError, match="layout must be 'parallel' or 'decode'"):
        attention(q, k, v, ids, ids, window=1, impl="pallas", tokens_per_frame=s, layout=None)
    with pytest.raises(ValueError, match="k_frames must have shape"):
        attention(q, k, v, ids, ids[:-1], impl="pallas", **kw)


def test_padding_keys_are_masked_by_frame_id():
    # A padded key position carries frame -1, which the window rule never shows.
    spec = parallel_spec((1, 40, 1, 64), tokens_per_frame=20, window=None)
    ids = np.asarray(spec.frames.key_frames(jnp.int32(32), 16))
    np.testing.assert_array_equal(ids, [1] * 8 + [EMPTY_FRAME] * 8)
