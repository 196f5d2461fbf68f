"""Layers of the causal video VAE, channels-last ``[B, T, H, W, C]``.

Every temporal layer is causal and streams: ``layer(x, cache, first) -> (y, cache)``.
``cache`` holds the layer's last input frames (zeros before the first chunk), so running
a whole video through a layer with a zero cache gives the same numbers as running it chunk
by chunk and carrying the cache. ``first`` (static) marks the chunk that starts the
video: the temporal resamplers treat frame 0 on its own (Wan's "first frame alone" rule).

Parameter names mirror diffusers' ``AutoencoderKLWan`` so the importer's key table is short.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx



def init_value(name: str, shape, uniform):
    """Initial value of a parameter by its name: the one rule for every layer here.

    Kernels (``[..., in, out]``) follow torch's default conv init, uniform in
    ``+-1/sqrt(fan_in)``, so a fresh model has the activation scale of a fresh diffusers
    one; biases start at 0 and norm gammas at 1. ``uniform(low, high, shape)`` draws.
    """
    if name == "kernel":
        bound = 1.0 / math.sqrt(math.prod(shape[:-1]))
        return uniform(-bound, bound, tuple(shape))
    if name == "gamma":
        return np.ones(shape, np.float32)
    return np.zeros(shape, np.float32)


def _param(rngs: nnx.Rngs, name: str, shape, dtype) -> nnx.Param:
    def uniform(low, high, shape):
        return jax.random.uniform(rngs.params(), shape, jnp.float32, low, high)

    return nnx.Param(jnp.asarray(init_value(name, shape, uniform), dtype))


def _resolve(impl: str) -> str:
    # XLA's CPU conv3d runs ~5-10x slower than the same conv as 2D convs over time taps;
    # on GPUs the single conv3d maps to one cuDNN call.
    if impl == "auto":
        return "taps" if jax.default_backend() == "cpu" else "conv3d"
    return impl


def _conv(x, kernel, strides, padding, impl: str = "conv3d"):
    """Channels-last conv, 2D (``x [N, H, W, C]``) or 3D (``x [N, T, H, W, C]``)."""
    if x.ndim == 5 and _resolve(impl) == "taps":
        return _conv3d_taps(x, kernel, strides, padding)
    spatial = "DHW"[-(x.ndim - 2):]
    dims = ("N" + spatial + "C", spatial + "IO", "N" + spatial + "C")
    return jax.lax.conv_general_dilated(x, kernel.astype(x.dtype), strides, padding,
                                        dimension_numbers=dims)


def _conv3d_taps(x, kernel, strides, padding):
    # A 3D conv as a sum over its time taps of per-frame 2D convs; time must be unpadded.
    assert padding[0] == (0, 0), padding
    kt, st = kernel.shape[0], strides[0]
    b, t = x.shape[:2]
    t_out = (t - kt) // st + 1
    out = 0
    for i in range(kt):
        xi = x[:, i:i + st * (t_out - 1) + 1:st]
        out = out + _conv(xi.reshape(b * t_out, *x.shape[2:]), kernel[i], strides[1:], padding[1:])
    return out.reshape(b, t_out, *out.shape[1:])


class CausalConv3d(nnx.Module):
    """Conv3d, kernel ``(kt, k, k)``, 'same' in space and causal in time.

    ``cache``: ``[B, kt-1, H, W, C_in]`` previous inputs (``None`` for ``kt == 1``).
    ``conv_impl``: one of ``vae_config.CONV_IMPLS`` (same numbers, different speed).
    """

    def __init__(self, in_dim: int, out_dim: int, kernel=(3, 3, 3), *, rngs: nnx.Rngs,
                 param_dtype=jnp.float32, conv_impl: str = "auto"):
        self.kernel_size = tuple(kernel)
        self.conv_impl = conv_impl
        self.kernel = _param(rngs, "kernel", (*self.kernel_size, in_dim, out_dim), param_dtype)
        self.bias = _param(rngs, "bias", (out_dim,), param_dtype)

    @property
    def cache_frames(self) -> int:
        return self.kernel_size[0] - 1

    def init_cache(self, batch: int, height: int, width: int, dtype):
        if self.cache_frames == 0:
            return None
        return jnp.zeros((batch, self.cache_frames, height, width, self.kernel.shape[-2]), dtype)

    def conv(self, x, time_stride: int = 1):
        """The bare conv: no time padding, 'same' spatial padding."""
        ph, pw = self.kernel_size[1] // 2, self.kernel_size[2] // 2
        y = _conv(x, self.kernel[...], (time_stride, 1, 1), [(0, 0), (ph, ph), (pw, pw)], self.conv_impl)
        return y + self.bias[...].astype(y.dtype)

    def __call__(self, x, cache):
        """x ``[B, T, H, W, C_in]`` -> ``[B, T, H, W, C_out]``, new cache."""
        if self.cache_frames:
            x = jnp.concatenate([cache.astype(x.dtype), x], axis=1)
            cache = x[:, -self.cache_frames:]
        return self.conv(x), cache


class Pointwise(nnx.Module):
    """A 1x1 (x1) convolution, i.e. a per-position linear map over channels."""

    def __init__(self, in_dim: int, out_dim: int, *, rngs: nnx.Rngs, param_dtype=jnp.float32):
        self.kernel = _param(rngs, "kernel", (in_dim, out_dim), param_dtype)
        self.bias = _param(rngs, "bias", (out_dim,), param_dtype)

    def __call__(self, x):
        return x @ self.kernel[...].astype(x.dtype) + self.bias[...].astype(x.dtype)


class RMSNorm(nnx.Module):
    """Wan's norm: ``x / max(||x||_2, 1e-12) * sqrt(C) * gamma`` over channels, in fp32."""

    def __init__(self, dim: int, *, param_dtype=jnp.float32):
        self.gamma = nnx.Param(jnp.ones((dim,), param_dtype))  # init_value's rule

    def __call__(self, x):
        x32 = x.astype(jnp.float32)
        norm = jnp.sqrt(jnp.sum(jnp.square(x32), axis=-1, keepdims=True))
        y = x32 / jnp.maximum(norm, 1e-12) * math.sqrt(x.shape[-1])
        return (y * self.gamma[...].astype(jnp.float32)).astype(x.dtype)


class ResidualBlock(nnx.Module):
    """norm -> SiLU -> causal conv 3^3 -> norm -> SiLU -> causal conv 3^3, plus shortcut."""

    def __init__(self, in_dim: int, out_dim: int, *, rngs: nnx.Rngs, param_dtype=jnp.float32,
                 conv_impl: str = "auto"):
        kw = dict(rngs=rngs, param_dtype=param_dtype)
        self.norm1 = RMSNorm(in_dim, param_dtype=param_dtype)
        self.conv1 = CausalConv3d(in_dim, out_dim, conv_impl=conv_impl, **kw)
        self.norm2 = RMSNorm(out_dim, param_dtype=param_dtype)
        self.conv2 = CausalConv3d(out_dim, out_dim, conv_impl=conv_impl, **kw)
        self.conv_shortcut = Pointwise(in_dim, out_dim, **kw) if in_dim != out_dim else None

    def init_cache(self, batch, height, width, dtype):
        return {"conv1": self.conv1.init_cache(batch, height, width, dtype),
                "conv2": self.conv2.init_cache(batch, height, width, dtype)}

    def __call__(self, x, cache, first: bool = False):
        del first
        shortcut = x if self.conv_shortcut is None else self.conv_shortcut(x)
        h, c1 = self.conv1(jax.nn.silu(self.norm1(x)), cache["conv1"])
        h, c2 = self.conv2(jax.nn.silu(self.norm2(h)), cache["conv2"])
        return h + shortcut, {"conv1": c1, "conv2": c2}


class AttentionBlock(nnx.Module):
    """Single-head self-attention over the pixels of each frame (no temporal mixing)."""

    def __init__(self, dim: int, *, rngs: nnx.Rngs, param_dtype=jnp.float32):
        kw = dict(rngs=rngs, param_dtype=param_dtype)
        self.norm = RMSNorm(dim, param_dtype=param_dtype)
        self.to_qkv = Pointwise(dim, 3 * dim, **kw)
        self.proj = Pointwise(dim, dim, **kw)

    def __call__(self, x):
        b, t, h, w, c = x.shape
        qkv = self.to_qkv(self.norm(x)).reshape(b * t, h * w, 3 * c)
        q, k, v = jnp.split(qkv, 3, axis=-1)
        logits = jnp.einsum("bqc,bkc->bqk", q, k, preferred_element_type=jnp.float32) / math.sqrt(c)
        probs = jax.nn.softmax(logits, axis=-1).astype(v.dtype)
        out = jnp.einsum("bqk,bkc->bqc", probs, v).reshape(b, t, h, w, c)
        return x + self.proj(out)


class MidBlock(nnx.Module):
    """Residual block, attention, residual block, at the coarsest scale."""

    def __init__(self, dim: int, *, rngs: nnx.Rngs, param_dtype=jnp.float32, conv_impl: str = "auto"):
        kw = dict(rngs=rngs, param_dtype=param_dtype)
        self.resnets = nnx.List([ResidualBlock(dim, dim, conv_impl=conv_impl, **kw) for _ in range(2)])
        self.attentions = nnx.List([AttentionBlock(dim, **kw)])

    def init_cache(self, batch, height, width, dtype):
        return [r.init_cache(batch, height, width, dtype) for r in self.resnets]

    def __call__(self, x, cache, first: bool = False):
        x, c0 = self.resnets[0](x, cache[0])
        x = self.attentions[0](x)
        x, c1 = self.resnets[1](x, cache[1])
        return x, [c0, c1]


class Conv2d(nnx.Module):
    """A 3x3 Conv2d applied frame by frame (the resamplers' spatial conv)."""

    def __init__(self, in_dim: int, out_dim: int, *, rngs: nnx.Rngs, param_dtype=jnp.float32):
        self.kernel = _param(rngs, "kernel", (3, 3, in_dim, out_dim), param_dtype)
        self.bias = _param(rngs, "bias", (out_dim,), param_dtype)

    def __call__(self, x, stride: int, padding):
        """x ``[B, T, H, W, C]``; ``padding`` ``[(top, bottom), (left, right)]``."""
        b, t = x.shape[:2]
        y = _conv(x.reshape(b * t, *x.shape[2:]), self.kernel[...], (stride, stride), padding)
        y = y + self.bias[...].astype(y.dtype)
        return y.reshape(b, t, *y.shape[1:])


class Downsample(nnx.Module):
    """Stride-2 spatial conv per frame, then (``temporal``) a stride-2 causal time conv.

    Spatial: pad right/bottom by one, 3x3 conv, stride 2. Temporal: frame 0 of the video
    passes through unchanged; the other frames are convolved (kernel 3, stride 2, no
    padding) over ``[previous frame, frames...]``, so a chunk of ``2n`` frames gives ``n``.
    The cache is the last spatially downsampled frame, ``[B, 1, H/2, W/2, C]``.
    """

    def __init__(self, dim: int, temporal: bool, *, rngs: nnx.Rngs, param_dtype=jnp.float32,
                 conv_impl: str = "auto"):
        self.temporal = temporal
        self.resample = Conv2d(dim, dim, rngs=rngs, param_dtype=param_dtype)
        # Strided, so its cache rule is the one below, not CausalConv3d's.
        self.time_conv = (CausalConv3d(dim, dim, (3, 1, 1), rngs=rngs, param_dtype=param_dtype,
                                       conv_impl=conv_impl) if temporal else None)

    def init_cache(self, batch, height, width, dtype):
        if not self.temporal:
            return None
        return jnp.zeros((batch, 1, height // 2, width // 2, self.time_conv.kernel.shape[-2]), dtype)

    def __call__(self, x, cache, first: bool = False):
        x = self.resample(x, 2, [(0, 1), (0, 1)])
        if not self.temporal:
            return x, cache
        if first:
            head, prev, rest = x[:, :1], x[:, :1], x[:, 1:]
        else:
            head, prev, rest = None, cache.astype(x.dtype), x
        if rest.shape[1] % 2:
            raise ValueError(f"temporal downsample: expected an even number of frames after the "
                             f"first, got {rest.shape[1]}")
        new_cache = x[:, -1:]
        if rest.shape[1] == 0:
            return head, new_cache
        y = self.time_conv.conv(jnp.concatenate([prev, rest], axis=1), time_stride=2)
        return (y if head is None else jnp.concatenate([head, y], axis=1)), new_cache


class Upsample(nnx.Module):
    """(``temporal``) causal time conv doubling the frames, then nearest x2 and a 3x3 conv.

    Temporal: frame 0 of the video passes through unchanged; every later frame becomes two
    (a kernel-3 causal conv to ``2C`` channels, split into two frames in order), with the
    cache holding the last two non-first input frames ``[B, 2, H, W, C]``. The spatial conv
    maps ``C`` to ``out_dim`` channels (half of ``C`` in Wan2.1).
    """

    def __init__(self, dim: int, out_dim: int, temporal: bool, *, rngs: nnx.Rngs,
                 param_dtype=jnp.float32, conv_impl: str = "auto"):
        self.temporal = temporal
        self.resample = Conv2d(dim, out_dim, rngs=rngs, param_dtype=param_dtype)
        self.time_conv = (CausalConv3d(dim, 2 * dim, (3, 1, 1), rngs=rngs, param_dtype=param_dtype,
                                       conv_impl=conv_impl) if temporal else None)

    def init_cache(self, batch, height, width, dtype):
        return self.time_conv.init_cache(batch, height, width, dtype) if self.temporal else None

    def __call__(self, x, cache, first: bool = False):
        if self.temporal:
            head, rest = (x[:, :1], x[:, 1:]) if first else (None, x)
            if rest.shape[1]:
                y, cache = self.time_conv(rest, cache)
                b, t, h, w, c2 = y.shape
                y = y.reshape(b, t, h, w, 2, c2 // 2).transpose(0, 1, 4, 2, 3, 5)
                y = y.reshape(b, 2 * t, h, w, c2 // 2)
                x = y if head is None else jnp.concatenate([head, y], axis=1)
        x = jnp.repeat(jnp.repeat(x, 2, axis=2), 2, axis=3)
        return self.resample(x, 1, [(1, 1), (1, 1)]), cache
