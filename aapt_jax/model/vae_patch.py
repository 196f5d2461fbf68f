"""The patch VAE (``VAEConfig.arch == "patch"``): space-time patches refined by Wan's
causal residual blocks at latent resolution.

Each latent position holds one ``r x s x s`` patch of video (``r`` frames of ``s x s``
pixels; the first latent frame holds frame 0 alone, repeated ``r`` times, Wan's "first frame
alone" rule). The encoder maps a patch's ``r s^2 3`` values to ``width`` channels with one
linear map, refines them with causal 3x3x3 :class:`ResidualBlock` s over the latent grid and
reads out the posterior moments with another linear map; the decoder mirrors it. The heads
are linear on the residual stream (no norm or nonlinearity in between), so the model holds a
linear patch code (a PCA of patches reaches ~26 dB on the procedural world at ``s = r = 4``,
``z = 16``) from which the residual blocks only have to learn corrections.

Why it exists: at 64x64 pixels the world's textures repeat every 1-3 pixels, and Wan's
full-resolution conv stack at CPU widths (8-16 channels) learns them far too slowly (19 dB
after an hour); every conv here runs on the 16x16 latent grid, at 96 channels, for less
compute. The streaming contract is Wan's: the residual blocks' causal caches carry the
previous latent frames, so chunk-by-chunk encode and decode equal the whole-video pass.
"""

from __future__ import annotations

import jax.numpy as jnp
from flax import nnx

from aapt_jax.model.vae_config import VAEConfig
from aapt_jax.model.vae_layers import Pointwise, ResidualBlock


def patchify(video, s: int, r: int, first: bool):
    """Frames ``[B, n, H, W, 3]`` -> patches ``[B, n', H/s, W/s, r s s 3]``.

    ``first``: frame 0 is a patch of its own, repeated ``r`` times (``n = 1 + r k``,
    ``n' = 1 + k``); otherwise ``n = r n'``.
    """
    b, n, height, width, c = video.shape
    if first:
        video = jnp.concatenate([jnp.repeat(video[:, :1], r, axis=1), video[:, 1:]], axis=1)
        n += r - 1
    x = video.reshape(b, n // r, r, height // s, s, width // s, s, c)
    x = x.transpose(0, 1, 3, 5, 2, 4, 6, 7)
    return x.reshape(b, n // r, height // s, width // s, r * s * s * c)


def unpatchify(patches, s: int, r: int, first: bool):
    """Inverse of :func:`patchify`; the first patch's ``r`` copies of frame 0 are averaged."""
    b, m, h, w, _ = patches.shape
    x = patches.reshape(b, m, h, w, r, s, s, 3).transpose(0, 1, 4, 2, 5, 3, 6, 7)
    x = x.reshape(b, m, r, h * s, w * s, 3)
    if first:
        head = jnp.mean(x[:, :1], axis=2)
        return jnp.concatenate([head, x[:, 1:].reshape(b, -1, h * s, w * s, 3)], axis=1)
    return x.reshape(b, m * r, h * s, w * s, 3)


def _size_cache(batch, height, width, channels, dtype):
    # Zero frames: records the frame size the streaming state was made for, which the
    # functional API checks every step (Wan's conv_in cache plays that part there).
    return jnp.zeros((batch, 0, height, width, channels), dtype)


class PatchEncoder(nnx.Module):
    """Video ``[B, T, H, W, 3]`` -> posterior moments ``[B, T', H/s, W/s, 2 z_dim]``."""

    def __init__(self, config: VAEConfig, *, rngs: nnx.Rngs):
        kw = dict(rngs=rngs, param_dtype=jnp.dtype(config.param_dtype))
        s, r, width = config.spatial_ratio, config.temporal_ratio, config.base_dim
        self.s, self.r = s, r
        self.patch_in = Pointwise(r * s * s * 3, width, **kw)
        self.blocks = nnx.List([ResidualBlock(width, width, conv_impl=config.conv_impl, **kw)
                                for _ in range(config.num_res_blocks)])
        self.patch_out = Pointwise(width, 2 * config.z_dim, **kw)

    def init_cache(self, batch, height, width, dtype):
        h, w = height // self.s, width // self.s
        return {"conv_in": _size_cache(batch, height, width, 3, dtype),
                "blocks": [block.init_cache(batch, h, w, dtype) for block in self.blocks]}

    def __call__(self, x, cache, first: bool):
        x = self.patch_in(patchify(x, self.s, self.r, first))
        c_blocks = []
        for block, c in zip(self.blocks, cache["blocks"]):
            x, c = block(x, c)
            c_blocks.append(c)
        return self.patch_out(x), {"conv_in": cache["conv_in"], "blocks": c_blocks}


class PatchDecoder(nnx.Module):
    """Latents ``[B, T', h, w, z_dim]`` -> video ``[B, T, h s, w s, 3]`` (not clamped)."""

    def __init__(self, config: VAEConfig, *, rngs: nnx.Rngs):
        kw = dict(rngs=rngs, param_dtype=jnp.dtype(config.param_dtype))
        s, r, width = config.spatial_ratio, config.temporal_ratio, config.dec_base_dim
        self.s, self.r = s, r
        self.patch_in = Pointwise(config.z_dim, width, **kw)
        self.blocks = nnx.List([ResidualBlock(width, width, conv_impl=config.conv_impl, **kw)
                                for _ in range(config.dec_num_res_blocks)])
        self.patch_out = Pointwise(width, r * s * s * 3, **kw)

    def init_cache(self, batch, height, width, dtype):
        return {"conv_in": _size_cache(batch, height, width, self.patch_in.kernel.shape[0], dtype),
                "blocks": [block.init_cache(batch, height, width, dtype) for block in self.blocks]}

    def __call__(self, z, cache, first: bool):
        x = self.patch_in(z)
        c_blocks = []
        for block, c in zip(self.blocks, cache["blocks"]):
            x, c = block(x, c)
            c_blocks.append(c)
        frames = unpatchify(self.patch_out(x), self.s, self.r, first)
        return frames, {"conv_in": cache["conv_in"], "blocks": c_blocks}
