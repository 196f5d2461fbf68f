"""Small building blocks of the Wan DiT, each parameter tagged with logical axis names.

Parameter names follow diffusers where that makes the importer a plain table (``weight``
for norms); linear layers use NNX's ``kernel`` ``[in, out]`` and ``bias``.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx


def logical(axes):
    return {"logical_axes": tuple(axes)}


def dense(in_features, out_features, axes, rngs, *, dtype, param_dtype, use_bias: bool = True):
    """``nnx.Linear`` whose kernel carries ``axes`` = (in axis, out axis)."""
    return nnx.Linear(
        in_features, out_features, dtype=dtype, param_dtype=param_dtype, rngs=rngs, use_bias=use_bias,
        kernel_metadata=logical(axes), bias_metadata=logical(axes[1:]),
    )


def layer_norm(x, eps):
    """LayerNorm without affine, computed in fp32 (Wan keeps norms in fp32)."""
    x = x.astype(jnp.float32)
    mean = x.mean(-1, keepdims=True)
    var = jnp.square(x - mean).mean(-1, keepdims=True)
    return (x - mean) * jax.lax.rsqrt(var + eps)


class AffineLayerNorm(nnx.Module):
    """fp32 LayerNorm with ``weight`` and ``bias`` (Wan's ``norm2`` before cross-attention)."""

    def __init__(self, dim, eps, axis_name="embed"):
        self.eps = eps
        self.weight = nnx.Param(jnp.ones((dim,), jnp.float32), **logical((axis_name,)))
        self.bias = nnx.Param(jnp.zeros((dim,), jnp.float32), **logical((axis_name,)))

    def __call__(self, x):
        return layer_norm(x, self.eps) * self.weight[...] + self.bias[...]


class RMSNorm(nnx.Module):
    """RMS norm over the last axis with a learned ``weight`` (q/k norm across all heads)."""

    def __init__(self, dim, eps, axis_name):
        self.eps = eps
        self.weight = nnx.Param(jnp.ones((dim,), jnp.float32), **logical((axis_name,)))

    def __call__(self, x):
        x32 = x.astype(jnp.float32)
        y = x32 * jax.lax.rsqrt(jnp.mean(jnp.square(x32), -1, keepdims=True) + self.eps)
        return (y * self.weight[...]).astype(x.dtype)


def gelu_tanh(x):
    return jax.nn.gelu(x, approximate=True)


def timestep_sinusoid(t, dim, max_period=10000.0):
    """Sinusoidal embedding, cosine half first (diffusers ``flip_sin_to_cos=True``).

    Args:
      t: float array of any shape ``[...]`` (Wan timesteps live in [0, 1000]).
    Returns:
      fp32 ``[..., dim]``; an odd ``dim`` ends with a zero channel, as in diffusers.
    """
    half = dim // 2
    freqs = jnp.exp(-math.log(max_period) * jnp.arange(half, dtype=jnp.float32) / half)
    args = t.astype(jnp.float32)[..., None] * freqs
    parts = [jnp.cos(args), jnp.sin(args)]
    if dim % 2:
        parts.append(jnp.zeros(args.shape[:-1] + (1,), jnp.float32))
    return jnp.concatenate(parts, axis=-1)
