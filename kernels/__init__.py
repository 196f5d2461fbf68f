"""Pallas kernels for AAPT attention, each with its jnp reference and a benchmark entry.

* :mod:`kernels.block_causal_attention`: training / prefill, frames ``0..T-1`` at once.
* :mod:`kernels.decode_attention`: one streaming step against the ring-buffer KV cache.
* :mod:`kernels._flash`: the forward, dq and dk/dv kernels both share.

Importing this package (or any module in it) registers :func:`kernels.registry.pallas_attention`
as the ``"pallas"`` implementation of :func:`aapt_jax.model.attention.attention`.
"""

from aapt_jax.model.attention import register_kernel
from kernels.registry import pallas_attention

register_kernel("pallas", pallas_attention)
