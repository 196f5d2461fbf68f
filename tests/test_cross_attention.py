"""Cross-attention to the text in query blocks equals the dense computation, values and
gradients, and keeps one block's logits instead of all of them."""

import jax
import jax.numpy as jnp
import numpy as np

from aapt_jax.model.attention import full_attention, xla_attention


def _inputs():
    k = jax.random.split(jax.random.key(0), 3)
    return (jax.random.normal(k[0], (2, 50, 2, 8)), jax.random.normal(k[1], (2, 7, 2, 8)),
            jax.random.normal(k[2], (2, 7, 2, 8)))


def test_query_blocks_equal_dense_values_and_gradients():
    q, k, v = _inputs()
    dense = lambda q, k, v: jnp.sum(jnp.sin(xla_attention(q, k, v, None)))  # noqa: E731
    blocked = lambda q, k, v: jnp.sum(jnp.sin(full_attention(q, k, v, query_block=16)))  # noqa: E731
    np.testing.assert_allclose(full_attention(q, k, v, query_block=16), xla_attention(q, k, v, None), atol=1e-6)
    for a, b in zip(jax.grad(blocked, argnums=(0, 1, 2))(q, k, v), jax.grad(dense, argnums=(0, 1, 2))(q, k, v)):
        np.testing.assert_allclose(a, b, atol=1e-5)


def test_blocked_forward_holds_one_blocks_logits():
    q, k, v = (jax.ShapeDtypeStruct((1, 4096 * 4, 4, 64), jnp.float32),
               jax.ShapeDtypeStruct((1, 512, 4, 64), jnp.float32), jax.ShapeDtypeStruct((1, 512, 4, 64), jnp.float32))
    logits_bytes = 4 * 4096 * 4 * 512 * 4  # all queries' fp32 logits
    temp = {}
    for name, block in (("dense", 1 << 30), ("blocked", 2048)):  # 8 blocks
        f = jax.jit(lambda q, k, v, block=block: full_attention(q, k, v, query_block=block))
        temp[name] = f.lower(q, k, v).compile().memory_analysis().temp_size_in_bytes
    assert temp["dense"] >= logits_bytes
    assert temp["blocked"] <= logits_bytes / 2, temp
