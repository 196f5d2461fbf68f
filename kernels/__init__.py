"""Pallas kernels for AAPT attention, each with its jnp reference and a benchmark entry.

* :mod:`aapt_jax.kernels.block_causal_attention`: training / prefill, frames ``0..T-1`` at once.
* :mod:`aapt_jax.kernels.decode_attention`: one streaming step against the ring-buffer KV cache.
* :mod:`aapt_jax.kernels._flash`: the forward, dq and dk/dv kernels both share.

:func:`aapt_jax.kernels.registry.pallas_attention` is the ``"pallas"`` implementation of
:func:`aapt_jax.model.attention.attention`, which calls it. The kernels check themselves
against :mod:`aapt_jax.model.reference_attention`, below the API, so the imports run one way.
"""

from aapt_jax.kernels.registry import pallas_attention

__all__ = ["pallas_attention"]
