"""Wan2.1-compatible causal 3D VAE with streaming encode and decode.

Layout is channels-last: videos ``[B, T, H, W, 3]`` in ``[-1, 1]``, latents
``[B, T', H/s, W/s, z_dim]`` with ``s = config.spatial_ratio``, ``r = config.temporal_ratio``
and ``T = 1 + r (T' - 1)``. Latents here are the VAE's own (the posterior mean); the
generator works on normalized latents, see :func:`normalize_latents`.

Functional use, at the jit boundary::

    graphdef, params = init_vae(config, seed)          # or io.vae_import.import_vae(...)
    state = decode_init(config, batch, (h, w))
    state, frames = decode_step(graphdef, params, state, z[:, :1])    # 1 frame
    state, frames = decode_step(graphdef, params, state, z[:, 1:2])   # r frames, and so on

The streaming state (:class:`StreamState`) is a pytree of static shapes: the causal conv
caches plus a *static* ``first`` flag. The first step of a video differs from the others
(one frame in or out instead of ``r``), so ``first`` lives in the pytree structure: the
first call compiles one program, every later call another, and ``lax.scan`` can carry the
state once the first step is done. :func:`encode` / :func:`decode` run a whole video in
one parallel pass (every causal conv over all frames at once) and equal the step-by-step
path to float rounding.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx, struct

from aapt_jax.model.vae_config import VAEConfig
from aapt_jax.model.vae_layers import (CausalConv3d, Downsample, MidBlock, Pointwise, RMSNorm,
                                       ResidualBlock, Upsample, init_value)
from aapt_jax.model.vae_patch import PatchDecoder, PatchEncoder

LOGVAR_RANGE = (-30.0, 20.0)  # diffusers' DiagonalGaussianDistribution clamp


class Encoder(nnx.Module):
    """Video ``[B, T, H, W, 3]`` -> posterior moments ``[B, T', H/s, W/s, 2 z_dim]``."""

    def __init__(self, config: VAEConfig, *, rngs: nnx.Rngs):
        kw = dict(rngs=rngs, param_dtype=jnp.dtype(config.param_dtype), conv_impl=config.conv_impl)
        dims = [config.base_dim * m for m in (1, *config.dim_mult)]
        self.conv_in = CausalConv3d(3, dims[0], **kw)
        blocks = []
        for i, (in_dim, out_dim) in enumerate(zip(dims[:-1], dims[1:])):
            for _ in range(config.num_res_blocks):
                blocks.append(ResidualBlock(in_dim, out_dim, **kw))
                in_dim = out_dim
            if i < len(config.dim_mult) - 1:
                blocks.append(Downsample(out_dim, config.temporal_downsample[i], **kw))
        self.down_blocks = nnx.List(blocks)
        self.mid_block = MidBlock(dims[-1], **kw)
        self.norm_out = RMSNorm(dims[-1], param_dtype=kw["param_dtype"])
        self.conv_out = CausalConv3d(dims[-1], 2 * config.z_dim, **kw)

    def init_cache(self, batch, height, width, dtype):
        cache = {"conv_in": self.conv_in.init_cache(batch, height, width, dtype), "down_blocks": []}
        for block in self.down_blocks:
            cache["down_blocks"].append(block.init_cache(batch, height, width, dtype))
            if isinstance(block, Downsample):
                height, width = height // 2, width // 2
        cache["mid_block"] = self.mid_block.init_cache(batch, height, width, dtype)
        cache["conv_out"] = self.conv_out.init_cache(batch, height, width, dtype)
        return cache

    def __call__(self, x, cache, first: bool):
        x, c_in = self.conv_in(x, cache["conv_in"])
        c_down = []
        for block, c in zip(self.down_blocks, cache["down_blocks"]):
            x, c = block(x, c, first)
            c_down.append(c)
        x, c_mid = self.mid_block(x, cache["mid_block"])
        x, c_out = self.conv_out(jax.nn.silu(self.norm_out(x)), cache["conv_out"])
        return x, {"conv_in": c_in, "down_blocks": c_down, "mid_block": c_mid, "conv_out": c_out}


class UpBlock(nnx.Module):
    """``num_res_blocks + 1`` residual blocks, then an optional :class:`Upsample`."""

    def __init__(self, in_dim, out_dim, num_res_blocks, upsample: str | None, *, rngs, param_dtype,
                 conv_impl):
        kw = dict(rngs=rngs, param_dtype=param_dtype, conv_impl=conv_impl)
        dims = [in_dim] + [out_dim] * (num_res_blocks + 1)
        self.resnets = nnx.List([ResidualBlock(a, b, **kw) for a, b in zip(dims[:-1], dims[1:])])
        self.upsampler = (None if upsample is None
                          else Upsample(out_dim, out_dim // 2, upsample == "3d", **kw))

    def init_cache(self, batch, height, width, dtype):
        return {"resnets": [r.init_cache(batch, height, width, dtype) for r in self.resnets],
                "upsampler": None if self.upsampler is None
                else self.upsampler.init_cache(batch, height, width, dtype)}

    def __call__(self, x, cache, first: bool):
        c_res = []
        for resnet, c in zip(self.resnets, cache["resnets"]):
            x, c = resnet(x, c)
            c_res.append(c)
        c_up = cache["upsampler"]
        if self.upsampler is not None:
            x, c_up = self.upsampler(x, c_up, first)
        return x, {"resnets": c_res, "upsampler": c_up}


class Decoder(nnx.Module):
    """Latents ``[B, T', h, w, z_dim]`` -> video ``[B, T, h s, w s, 3]`` (not clamped).

    Widths come from ``decoder_*`` config fields: the mid block runs at
    ``dec_base_dim * dec_dim_mult[-1]``; each upsampler halves the width it produces.
    """

    def __init__(self, config: VAEConfig, *, rngs: nnx.Rngs):
        param_dtype = jnp.dtype(config.param_dtype)
        kw = dict(rngs=rngs, param_dtype=param_dtype, conv_impl=config.conv_impl)
        mult = config.dec_dim_mult
        dims = [config.dec_base_dim * m for m in (mult[-1], *mult[::-1])]
        temporal_up = config.temporal_downsample[::-1]
        self.conv_in = CausalConv3d(config.z_dim, dims[0], **kw)
        self.mid_block = MidBlock(dims[0], **kw)
        blocks = []
        for i, out_dim in enumerate(dims[1:]):
            in_dim = dims[0] if i == 0 else dims[i] // 2
            upsample = None
            if i < len(mult) - 1:
                upsample = "3d" if temporal_up[i] else "2d"
            blocks.append(UpBlock(in_dim, out_dim, config.dec_num_res_blocks, upsample, **kw))
        self.up_blocks = nnx.List(blocks)
        self.norm_out = RMSNorm(dims[-1], param_dtype=param_dtype)
        self.conv_out = CausalConv3d(dims[-1], 3, **kw)

    def init_cache(self, batch, height, width, dtype):
        cache = {"conv_in": self.conv_in.init_cache(batch, height, width, dtype),
                 "mid_block": self.mid_block.init_cache(batch, height, width, dtype), "up_blocks": []}
        for block in self.up_blocks:
            cache["up_blocks"].append(block.init_cache(batch, height, width, dtype))
            if block.upsampler is not None:
                height, width = 2 * height, 2 * width
        cache["conv_out"] = self.conv_out.init_cache(batch, height, width, dtype)
        return cache

    def __call__(self, z, cache, first: bool):
        x, c_in = self.conv_in(z, cache["conv_in"])
        x, c_mid = self.mid_block(x, cache["mid_block"])
        c_up = []
        for block, c in zip(self.up_blocks, cache["up_blocks"]):
            x, c = block(x, c, first)
            c_up.append(c)
        x, c_out = self.conv_out(jax.nn.silu(self.norm_out(x)), cache["conv_out"])
        return x, {"conv_in": c_in, "mid_block": c_mid, "up_blocks": c_up, "conv_out": c_out}


class VAE(nnx.Module):
    """Encoder, the two 1x1x1 quant convs and decoder, named as in ``AutoencoderKLWan``
    (the encoder and decoder of :mod:`aapt_jax.model.vae_patch` for ``arch="patch"``)."""

    def __init__(self, config: VAEConfig, *, rngs: nnx.Rngs):
        self.config = config
        kw = dict(rngs=rngs, param_dtype=jnp.dtype(config.param_dtype))
        patch = config.arch == "patch"
        self.encoder = (PatchEncoder if patch else Encoder)(config, rngs=rngs)
        self.quant_conv = Pointwise(2 * config.z_dim, 2 * config.z_dim, **kw)
        self.post_quant_conv = Pointwise(config.z_dim, config.z_dim, **kw)
        self.decoder = (PatchDecoder if patch else Decoder)(config, rngs=rngs)

    def encode_chunk(self, video, cache, first: bool):
        """``[B, n, H, W, 3]`` -> (mean, logvar) ``[B, n', h, w, z]``, new cache."""
        moments, cache = self.encoder(video.astype(jnp.dtype(self.config.dtype)), cache, first)
        moments = self.quant_conv(moments).astype(jnp.float32)
        mean, logvar = jnp.split(moments, 2, axis=-1)
        return mean, jnp.clip(logvar, *LOGVAR_RANGE), cache

    def decode_video(self, latents):
        """A whole latent video ``[B, T', h, w, z]`` -> unclamped frames, in one pass."""
        b, _, h, w, _ = latents.shape
        frames, _ = self.decode_chunk(latents, self.decoder.init_cache(b, h, w, jnp.dtype(self.config.dtype)),
                                      True)
        return frames

    def decode_chunk(self, latents, cache, first: bool):
        """``[B, n', h, w, z]`` -> unclamped frames ``[B, n, H, W, 3]`` (fp32), new cache."""
        x = self.post_quant_conv(latents.astype(jnp.dtype(self.config.dtype)))
        frames, cache = self.decoder(x, cache, first)
        return frames.astype(jnp.float32), cache


@struct.dataclass
class StreamState:
    """Causal-conv caches of one streaming encode or decode (static shapes).

    ``first`` is static (part of the pytree structure): ``True`` until the first chunk of
    the video has gone through.
    """

    cache: Any
    first: bool = struct.field(pytree_node=False, default=True)


def init_vae(config: VAEConfig, seed: int = 0) -> tuple[nnx.GraphDef, nnx.State]:
    """A randomly initialized VAE, split into ``(graphdef, params)``.

    Drawn on the host with numpy from the modules' own rule (:func:`init_value`): XLA's
    CPU compile of threefry sampling takes seconds per parameter shape, numpy microseconds.
    """
    graphdef, abstract = nnx.split(_shared_abstract(config))
    rng = np.random.default_rng(seed)
    flat = []
    for path, var in nnx.to_flat_state(abstract):
        spec = var.get_value()
        value = init_value(str(path[-1]), spec.shape, lambda lo, hi, shape: rng.uniform(lo, hi, shape))
        flat.append((path, var.replace(jnp.asarray(value, spec.dtype))))
    return graphdef, nnx.from_flat_state(flat)


def abstract_vae(config: VAEConfig) -> VAE:
    """The module with shape-only parameters: for graphdefs, cache shapes and key tables."""
    return nnx.eval_shape(lambda: VAE(config, rngs=nnx.Rngs(0)))


@functools.lru_cache(maxsize=32)
def _shared_abstract(config: VAEConfig) -> VAE:
    # Tracing the constructor takes a noticeable fraction of a second; only read from this.
    return abstract_vae(config)


def _config_of(config_or_model) -> VAEConfig:
    if isinstance(config_or_model, VAEConfig):
        return config_or_model
    if isinstance(config_or_model, VAE):
        return config_or_model.config
    raise ValueError(f"expected a VAEConfig or a VAE module, got {type(config_or_model).__name__}")


def decode_init(config_or_model, batch: int, latent_hw: tuple[int, int]) -> StreamState:
    """Zero caches for decoding ``batch`` videos whose latents are ``latent_hw`` in size."""
    config = _config_of(config_or_model)
    model = config_or_model if isinstance(config_or_model, VAE) else _shared_abstract(config)
    _check_batch(batch)
    h, w = _positive_hw("latent_hw", latent_hw)
    return StreamState(model.decoder.init_cache(batch, h, w, jnp.dtype(config.dtype)), first=True)


def encode_init(config_or_model, batch: int, video_hw: tuple[int, int]) -> StreamState:
    """Zero caches for encoding ``batch`` videos of ``video_hw`` pixels."""
    config = _config_of(config_or_model)
    model = config_or_model if isinstance(config_or_model, VAE) else _shared_abstract(config)
    _check_batch(batch)
    h, w = _positive_hw("video_hw", video_hw)
    _check_pixels(config, h, w)
    return StreamState(model.encoder.init_cache(batch, h, w, jnp.dtype(config.dtype)), first=True)


def _check_batch(batch):
    if not isinstance(batch, int) or batch < 1:
        raise ValueError(f"batch: expected a positive int, got {batch!r}")


def _positive_hw(name, hw):
    if len(tuple(hw)) != 2 or not all(int(v) > 0 for v in hw):
        raise ValueError(f"{name}: expected (height, width) of positive ints, got {hw!r}")
    return int(hw[0]), int(hw[1])


def _check_pixels(config: VAEConfig, h: int, w: int):
    s = config.spatial_ratio
    if h % s or w % s:
        raise ValueError(f"video height/width: expected multiples of spatial_ratio {s}, got {h}x{w}")


def _check_video(config: VAEConfig, video, frames: int | None = None):
    if video.ndim != 5 or video.shape[-1] != 3:
        raise ValueError(f"video: expected [B, T, H, W, 3], got shape {tuple(video.shape)}")
    t = video.shape[1]
    r = config.temporal_ratio
    if frames is None and (t - 1) % r:
        raise ValueError(f"video frames: expected 1 + {r}k frames (temporal_ratio {r}), got {t}")
    if frames is not None and t != frames:
        raise ValueError(f"video frames: expected {frames} frames in this step, got {t}")
    _check_pixels(config, video.shape[2], video.shape[3])


def _check_latents(config: VAEConfig, latents, frames: int | None = None):
    if latents.ndim != 5:
        raise ValueError(f"latents: expected [B, T, h, w, z_dim], got shape {tuple(latents.shape)}")
    if latents.shape[-1] != config.z_dim:
        raise ValueError(f"latent channels: expected z_dim={config.z_dim}, got {latents.shape[-1]}")
    if frames is not None and latents.shape[1] != frames:
        raise ValueError(f"latent frames: expected {frames} per step, got {latents.shape[1]}")


def _check_state_hw(state: StreamState, key: str, x, what: str):
    expected = state.cache[key].shape[2:4]
    if tuple(x.shape[2:4]) != tuple(expected):
        raise ValueError(f"{what} height/width: expected {tuple(expected)} (from the state), "
                         f"got {tuple(x.shape[2:4])}")
    if x.shape[0] != state.cache[key].shape[0]:
        raise ValueError(f"{what} batch: expected {state.cache[key].shape[0]} (from the state), "
                         f"got {x.shape[0]}")


@functools.partial(jax.jit, static_argnums=0)
def encode_step(graphdef, params, state: StreamState, frames):
    """One streaming encode step.

    frames: ``[B, 1, H, W, 3]`` on the first step, ``[B, r, H, W, 3]`` after.
    Returns ``(state, (mean, logvar))``, each ``[B, 1, H/s, W/s, z_dim]``.
    """
    model = nnx.merge(graphdef, params)
    config = model.config
    _check_video(config, frames, 1 if state.first else config.temporal_ratio)
    _check_state_hw(state, "conv_in", frames, "video")
    mean, logvar, cache = model.encode_chunk(frames, state.cache, state.first)
    return StreamState(cache, first=False), (mean, logvar)


@functools.partial(jax.jit, static_argnums=0)
def decode_step(graphdef, params, state: StreamState, latent_frame):
    """One streaming decode step.

    latent_frame: ``[B, 1, h, w, z_dim]`` (un-normalized). Returns ``(state, frames)``,
    frames ``[B, n, h s, w s, 3]`` in ``[-1, 1]`` with ``n = 1`` on the first step, ``r`` after.
    """
    model = nnx.merge(graphdef, params)
    _check_latents(model.config, latent_frame, 1)
    _check_state_hw(state, "conv_in", latent_frame, "latent")
    frames, cache = model.decode_chunk(latent_frame, state.cache, state.first)
    return StreamState(cache, first=False), jnp.clip(frames, -1.0, 1.0)


@functools.partial(jax.jit, static_argnums=0)
def encode(graphdef, params, video):
    """Whole video ``[B, 1 + r k, H, W, 3]`` -> (mean, logvar) ``[B, 1 + k, H/s, W/s, z_dim]``."""
    model = nnx.merge(graphdef, params)
    _check_video(model.config, video)
    b, _, h, w, _ = video.shape
    cache = model.encoder.init_cache(b, h, w, jnp.dtype(model.config.dtype))
    mean, logvar, _ = model.encode_chunk(video, cache, True)
    return mean, logvar


def decode_unclamped(graphdef, params, latents):
    """:func:`decode` without the final clamp (for training a decoder: no dead gradients)."""
    model = nnx.merge(graphdef, params)
    _check_latents(model.config, latents)
    return model.decode_video(latents)


@functools.partial(jax.jit, static_argnums=0)
def decode(graphdef, params, latents):
    """Whole latent video ``[B, T', h, w, z_dim]`` -> frames ``[B, 1 + r (T'-1), h s, w s, 3]``
    in ``[-1, 1]``."""
    return jnp.clip(decode_unclamped(graphdef, params, latents), -1.0, 1.0)


def sample_latents(mean, logvar, key):
    """A draw from the diagonal Gaussian posterior (``mean`` itself is its mode)."""
    return mean + jnp.exp(0.5 * logvar) * jax.random.normal(key, mean.shape, mean.dtype)


def normalize_latents(config: VAEConfig, latents):
    """VAE latents -> the generator's space: ``(z - latents_mean) / latents_std`` per channel
    (last axis), as Wan's pipelines do."""
    _check_latents(config, latents)
    mean = jnp.asarray(config.mean, latents.dtype)
    std = jnp.asarray(config.std, latents.dtype)
    return (latents - mean) / std


def denormalize_latents(config: VAEConfig, latents):
    """Inverse of :func:`normalize_latents`: ``z * latents_std + latents_mean``."""
    _check_latents(config, latents)
    mean = jnp.asarray(config.mean, latents.dtype)
    std = jnp.asarray(config.std, latents.dtype)
    return latents * std + mean
