"""The Wan2.1 diffusion transformer in Flax NNX, with the AAPT causal transform.

Two ways to run the same weights:

* :meth:`WanDiT.__call__`: all frames at once. Bidirectional for the base model
  (``cfg.causal=False``, numerically the diffusers ``WanTransformer3DModel``), block-causal
  with the sliding window for the AAPT generator (teacher-forced training, discriminator,
  recompute baselines).
* :meth:`WanDiT.cached_forward`: the next frame(s) only, attending to a
  :class:`~aapt_jax.model.kv_cache.KVCache` (streaming inference, student forcing).

Latents are channels-last ``[B, T, H, W, C]``. The model input of the AAPT generator at
position ``p`` is ``concat([x_t of frame p+1, recycled frame p, control of frame p+1])``
along channels; its output is the flow velocity ``v = eps - x0`` of frame ``p+1``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from aapt_jax.model import kv_cache as kvc
from aapt_jax.model.attention import attention, full_attention
from aapt_jax.model.config import DiTConfig
from aapt_jax.model.layers import (AffineLayerNorm, RMSNorm, dense, gelu_tanh, layer_norm,
                                   logical, timestep_sinusoid)
from aapt_jax.model.rope import apply_rope, rope_angles
from aapt_jax.parallel.sharding import constrain


class SelfAttention(nnx.Module):
    def __init__(self, cfg: DiTConfig, rngs, dtype, pdtype):
        d, inner = cfg.dim, cfg.dim
        self.num_heads = cfg.num_heads
        self.to_q = dense(d, inner, ("embed", "qkv"), rngs, dtype=dtype, param_dtype=pdtype)
        self.to_k = dense(d, inner, ("embed", "qkv"), rngs, dtype=dtype, param_dtype=pdtype)
        self.to_v = dense(d, inner, ("embed", "qkv"), rngs, dtype=dtype, param_dtype=pdtype)
        self.to_out = dense(inner, d, ("qkv", "embed"), rngs, dtype=dtype, param_dtype=pdtype)
        self.norm_q = RMSNorm(inner, cfg.eps, "qkv")
        self.norm_k = RMSNorm(inner, cfg.eps, "qkv")

    def qkv(self, x, angles):
        """x ``[B, L, dim]`` -> rotated q, k and v, each ``[B, L, H, Dh]``."""
        B, L, _ = x.shape
        heads = lambda y: y.reshape(B, L, self.num_heads, -1)
        q = apply_rope(heads(self.norm_q(self.to_q(x))), angles)
        k = apply_rope(heads(self.norm_k(self.to_k(x))), angles)
        return q, k, heads(self.to_v(x))

    def out(self, o):
        B, L = o.shape[:2]
        return self.to_out(o.reshape(B, L, -1))


class CrossAttention(nnx.Module):
    def __init__(self, cfg: DiTConfig, rngs, dtype, pdtype):
        d = cfg.dim
        self.num_heads = cfg.num_heads
        self.impl = cfg.attention_impl if cfg.attention_impl in ("xla", "cudnn") else "xla"
        self.to_q = dense(d, d, ("embed", "qkv"), rngs, dtype=dtype, param_dtype=pdtype)
        self.to_k = dense(d, d, ("embed", "qkv"), rngs, dtype=dtype, param_dtype=pdtype)
        self.to_v = dense(d, d, ("embed", "qkv"), rngs, dtype=dtype, param_dtype=pdtype)
        self.to_out = dense(d, d, ("qkv", "embed"), rngs, dtype=dtype, param_dtype=pdtype)
        self.norm_q = RMSNorm(d, cfg.eps, "qkv")
        self.norm_k = RMSNorm(d, cfg.eps, "qkv")

    def text_kv(self, text):
        """Projected text keys/values ``[B, Lt, H, Dh]``; computed once per video when streaming."""
        B, Lt, _ = text.shape
        k = self.norm_k(self.to_k(text)).reshape(B, Lt, self.num_heads, -1)
        v = self.to_v(text).reshape(B, Lt, self.num_heads, -1)
        return k, v

    def __call__(self, x, k, v):
        B, L, _ = x.shape
        q = self.norm_q(self.to_q(x)).reshape(B, L, self.num_heads, -1)
        o = full_attention(q, k.astype(q.dtype), v.astype(q.dtype), impl=self.impl)
        return self.to_out(o.reshape(B, L, -1))


class FeedForward(nnx.Module):
    def __init__(self, cfg: DiTConfig, rngs, dtype, pdtype):
        self.proj_in = dense(cfg.dim, cfg.ffn_dim, ("embed", "mlp"), rngs, dtype=dtype, param_dtype=pdtype)
        self.proj_out = dense(cfg.ffn_dim, cfg.dim, ("mlp", "embed"), rngs, dtype=dtype, param_dtype=pdtype)

    def __call__(self, x):
        return self.proj_out(gelu_tanh(self.proj_in(x)))


class WanBlock(nnx.Module):
    """Self-attention, cross-attention to text, FFN; 6-way modulation from the timestep."""

    def __init__(self, cfg: DiTConfig, rngs, dtype, pdtype):
        self.eps = cfg.eps
        self.dtype = dtype
        self.attn1 = SelfAttention(cfg, rngs, dtype, pdtype)
        self.attn2 = CrossAttention(cfg, rngs, dtype, pdtype)
        self.norm2 = AffineLayerNorm(cfg.dim, cfg.eps) if cfg.cross_attn_norm else None
        self.ffn = FeedForward(cfg, rngs, dtype, pdtype)
        self.scale_shift_table = nnx.Param(
            jax.random.normal(rngs.params(), (1, 6, cfg.dim), jnp.float32) / cfg.dim**0.5,
            **logical((None, None, "embed")))

    def __call__(self, x, mod, text_k, text_v, angles, attend):
        """One block.

        Args:
          x: ``[B, T, S, dim]`` hidden states of T frames of S tokens.
          mod: fp32 ``[B, T or 1, 6, dim]`` timestep projection.
          text_k, text_v: ``[B, Lt, H, Dh]`` this block's text keys/values.
          angles: ``[T*S, Dh/2]`` RoPE angles of the tokens.
          attend: ``(q, k, v) -> o`` over ``[B, T*S, H, Dh]``: the masked self-attention
            (it sees the cache when streaming).
        Returns:
          (x ``[B, T, S, dim]``, (k, v) of these tokens ``[B, T*S, H, Dh]`` for the cache).
        """
        B, T, S, D = x.shape
        shift, scale, gate, c_shift, c_scale, c_gate = jnp.split(
            self.scale_shift_table[...][:, None] + mod, 6, axis=2)  # each [B, T, 1, dim]
        h = (layer_norm(x, self.eps) * (1 + scale) + shift).astype(self.dtype)
        q, k, v = self.attn1.qkv(h.reshape(B, T * S, D), angles)
        o = self.attn1.out(attend(q, k, v)).reshape(B, T, S, D)
        x = (x.astype(jnp.float32) + o * gate).astype(x.dtype)

        h = x if self.norm2 is None else self.norm2(x).astype(self.dtype)
        x = x + self.attn2(h.reshape(B, T * S, D), text_k, text_v).reshape(B, T, S, D)

        h = (layer_norm(x, self.eps) * (1 + c_scale) + c_shift).astype(self.dtype)
        y = self.ffn(h)
        x = (x.astype(jnp.float32) + y.astype(jnp.float32) * c_gate).astype(x.dtype)
        return constrain(x, ("batch", "frames", "tokens", "embed")), (k, v)


class WanDiT(nnx.Module):
    """Wan2.1 transformer; see the module docstring for the two forward modes."""

    def __init__(self, cfg: DiTConfig, *, rngs: nnx.Rngs):
        self.cfg = cfg
        dtype = jnp.dtype(cfg.dtype)
        pdtype = jnp.dtype(cfg.param_dtype)
        d = cfg.dim
        patch_in = cfg.in_channels * cfg.patch_size[0] * cfg.patch_size[1] * cfg.patch_size[2]
        self.patch_embedding = dense(patch_in, d, ("patch", "embed"), rngs, dtype=dtype, param_dtype=pdtype)
        f32 = jnp.float32  # Wan keeps the time embedder in fp32
        self.time_linear_1 = dense(cfg.freq_dim, d, (None, "embed"), rngs, dtype=f32, param_dtype=f32)
        self.time_linear_2 = dense(d, d, ("embed", "embed_out"), rngs, dtype=f32, param_dtype=f32)
        self.time_proj = dense(d, 6 * d, ("embed", "modulation"), rngs, dtype=f32, param_dtype=f32)
        self.text_linear_1 = dense(cfg.text_dim, d, ("text_embed", "embed"), rngs, dtype=dtype, param_dtype=pdtype)
        self.text_linear_2 = dense(d, d, ("embed", "embed_out"), rngs, dtype=dtype, param_dtype=pdtype)
        self.blocks = nnx.List([WanBlock(cfg, rngs, dtype, pdtype) for _ in range(cfg.num_layers)])
        self.scale_shift_table = nnx.Param(
            jax.random.normal(rngs.params(), (1, 2, d), jnp.float32) / d**0.5,
            **logical((None, None, "embed")))
        patch_out = cfg.latent_channels * cfg.patch_size[0] * cfg.patch_size[1] * cfg.patch_size[2]
        self.proj_out = dense(d, patch_out, ("embed", "patch"), rngs, dtype=dtype, param_dtype=pdtype)

    # ----- embeddings -------------------------------------------------------------------

    def embed_text(self, text):
        """text ``[B, Lt, text_dim]`` (umT5 states) -> ``[B, Lt, dim]``."""
        return self.text_linear_2(gelu_tanh(self.text_linear_1(text.astype(jnp.dtype(self.cfg.dtype)))))

    def text_kv(self, text):
        """Per-block text keys/values, stacked: two ``[layers, B, Lt, H, Dh]`` arrays."""
        emb = self.embed_text(text)
        kvs = [blk.attn2.text_kv(emb) for blk in self.blocks]
        return jnp.stack([k for k, _ in kvs]), jnp.stack([v for _, v in kvs])

    def embed_time(self, t):
        """t ``[B]`` or per-frame ``[B, T]`` in [0, 1000] -> (temb, mod) fp32.

        temb ``[B, T', dim]`` and mod ``[B, T', 6, dim]`` with ``T' = 1`` for a per-clip t.
        """
        t = jnp.asarray(t, jnp.float32)
        if t.ndim == 1:
            t = t[:, None]
        temb = self.time_linear_2(jax.nn.silu(self.time_linear_1(timestep_sinusoid(t, self.cfg.freq_dim))))
        mod = self.time_proj(jax.nn.silu(temb))
        return temb, mod.reshape(*mod.shape[:-1], 6, self.cfg.dim)

    def _patchify(self, x):
        """``[B, T, H, W, C]`` -> tokens ``[B, T/pt, (H/ph)(W/pw), pt*ph*pw*C]``."""
        B, T, H, W, C = x.shape
        pt, ph, pw = self.cfg.patch_size
        x = x.reshape(B, T // pt, pt, H // ph, ph, W // pw, pw, C)
        x = x.transpose(0, 1, 3, 5, 2, 4, 6, 7)
        return x.reshape(B, T // pt, (H // ph) * (W // pw), pt * ph * pw * C)

    def _unpatchify(self, y, H, W):
        B, Tp, S, _ = y.shape
        pt, ph, pw = self.cfg.patch_size
        C = self.cfg.latent_channels
        y = y.reshape(B, Tp, H // ph, W // pw, pt, ph, pw, C).transpose(0, 1, 4, 2, 5, 3, 6, 7)
        return y.reshape(B, Tp * pt, H, W, C)

    def check_inputs(self, x_t, recycled, control, t=None):
        """Shape checks (static shapes, so they run before any compile)."""
        cfg = self.cfg
        shape = tuple(x_t.shape)
        if len(shape) != 5 or shape[-1] != cfg.latent_channels:
            raise ValueError(f"x_t: expected [B, T, H, W, {cfg.latent_channels}], got {list(shape)}")
        pt, ph, pw = cfg.patch_size
        if shape[1] % pt or shape[2] % ph or shape[3] % pw:
            raise ValueError(f"x_t: frames/height/width {shape[1:4]} must be multiples of the patch size "
                             f"{cfg.patch_size}")
        if cfg.causal and cfg.recycle_input:
            if recycled is None or tuple(recycled.shape) != shape:
                raise ValueError(f"recycled: expected {list(shape)}, got "
                                 f"{None if recycled is None else list(recycled.shape)}")
        if cfg.control_channels:
            expected = list(shape[:4]) + [cfg.control_channels]
            if control is None or list(control.shape) != expected:
                raise ValueError(f"control: expected {expected}, got "
                                 f"{None if control is None else list(control.shape)}")
        elif control is not None:
            raise ValueError(f"control: the model has control_channels=0, got shape {list(control.shape)}")
        if t is not None and jnp.ndim(t) == 2 and (jnp.shape(t)[1] != shape[1] or pt != 1):
            raise ValueError(f"t: per-frame timesteps need shape [B, {shape[1]}] and temporal patch 1, "
                             f"got {list(jnp.shape(t))}")

    def _input_tokens(self, x_t, recycled, control):
        self.check_inputs(x_t, recycled, control)
        parts = [x_t]
        if self.cfg.causal and self.cfg.recycle_input:
            parts.append(recycled)
        if self.cfg.control_channels:
            parts.append(control)
        x = jnp.concatenate([p.astype(jnp.dtype(self.cfg.dtype)) for p in parts], axis=-1)
        return constrain(self.patch_embedding(self._patchify(x)), ("batch", "frames", "tokens", "embed"))

    def _head(self, x, temb, H, W):
        shift, scale = jnp.split(self.scale_shift_table[...][:, None] + temb[:, :, None], 2, axis=2)
        h = (layer_norm(x, self.cfg.eps) * (1 + scale) + shift).astype(jnp.dtype(self.cfg.dtype))
        return self._unpatchify(self.proj_out(h), H, W)

    def _angles(self, frames, H, W):
        cfg = self.cfg
        pos = jnp.asarray(frames, jnp.float32) * cfg.rope_temporal_interval
        return rope_angles(pos, H // cfg.patch_size[1], W // cfg.patch_size[2], cfg.head_dim, cfg.rope_theta)

    # ----- forward passes ---------------------------------------------------------------

    def _run_block(self, blk, x, mod, text_k, text_v, angles, attend):
        """One block, rematerialized in the backward pass when ``cfg.remat`` (activation
        memory then grows with one block's worth, not the whole stack's)."""
        if not self.cfg.remat:
            return blk(x, mod, text_k, text_v, angles, attend)
        # A pure function of the block's params: the block may belong to a model merged
        # inside an outer trace (jit/grad/scan), whose Variables remat must not mutate.
        graphdef, state = nnx.split(blk)
        run = jax.checkpoint(lambda st, *a: nnx.merge(graphdef, st)(*a, attend))
        return run(state, x, mod, text_k, text_v, angles)

    def _parallel_trunk(self, x_t, t, text, recycled, control, frame_indices, layers=()):
        """(final hidden ``[B, T, S, dim]``, temb, hidden states after each block in ``layers``)."""
        cfg = self.cfg
        self.check_inputs(x_t, recycled, control, t)
        B, T, H, W, _ = x_t.shape
        x = self._input_tokens(x_t, recycled, control)
        Tp, S = x.shape[1], x.shape[2]
        contiguous = frame_indices is None
        frames = jnp.arange(Tp, dtype=jnp.int32) if contiguous else jnp.asarray(frame_indices, jnp.int32)
        angles = self._angles(frames, H, W)
        token_frames = jnp.repeat(frames, S)
        window = cfg.window if cfg.causal else None
        impl = cfg.attention_impl

        def attend(q, k, v):
            return attention(q, k, v, token_frames, token_frames, window=window, impl=impl,
                             tokens_per_frame=S, layout="parallel" if contiguous else None)

        temb, mod = self.embed_time(t)
        text_k, text_v = self.text_kv(text)
        collected = []
        for i, blk in enumerate(self.blocks):
            x, _ = self._run_block(blk, x, mod, text_k[i], text_v[i], angles, attend)
            if i in layers:
                collected.append(x)
        return x, temb, collected

    def __call__(self, x_t, t, text, *, recycled=None, control=None, frame_indices=None):
        """All frames in one pass.

        Args:
          x_t: noisy latents ``[B, T, H, W, C]``.
          t: timesteps in [0, 1000], ``[B]`` or per frame ``[B, T]`` (temporal patch 1).
          text: ``[B, Lt, text_dim]``.
          recycled: ``[B, T, H, W, C]`` previous frames (AAPT generator).
          control: ``[B, T, H, W, control_channels]``.
          frame_indices: int ``[T]`` latent-frame index of each input frame (default
            ``0..T-1``); sets temporal RoPE positions and, for the causal model, the mask.
        Returns:
          velocity ``[B, T, H, W, C]``.
        """
        x, temb, _ = self._parallel_trunk(x_t, t, text, recycled, control, frame_indices)
        return self._head(x, temb, x_t.shape[2], x_t.shape[3])

    def features(self, x_t, t, text, *, recycled=None, control=None, layers: tuple[int, ...]):
        """Hidden states ``[B, T, S, dim]`` after each block in ``layers`` (the discriminator's
        inputs to its logit heads); arguments as in :meth:`__call__`."""
        self._check_layers(layers)
        _, _, collected = self._parallel_trunk(x_t, t, text, recycled, control, None, layers)
        return collected

    def _check_layers(self, layers):
        if not layers or any(not 0 <= i < self.cfg.num_layers for i in layers):
            raise ValueError(f"layers: expected block indices in [0, {self.cfg.num_layers}), got {list(layers)}")

    def _cached_trunk(self, cache: kvc.KVCache, position, x_t, t, recycled, control, layers=()):
        cfg = self.cfg
        B, F, H, W, _ = x_t.shape
        x = self._input_tokens(x_t, recycled, control)
        S = x.shape[2]
        R = cache.ring_frames
        position = jnp.asarray(position, jnp.int32)
        new_frames = position + jnp.arange(F, dtype=jnp.int32)
        angles = self._angles(new_frames, H, W)
        q_frames = jnp.repeat(new_frames, S)
        k_frames = jnp.concatenate([jnp.repeat(kvc.slot_frames(position, R), S), q_frames])
        layout = "decode" if F == 1 else None
        # No kernel covers several new frames against a cache (long-video training segments):
        # those calls take the dense path rather than failing under attention_impl='pallas'.
        impl = "auto" if layout is None and cfg.attention_impl == "pallas" else cfg.attention_impl
        temb, mod = self.embed_time(t)
        ks, vs = cache.k, cache.v
        collected = []
        for i, blk in enumerate(self.blocks):
            past_k = cache.k[i].reshape(B, (1 + R) * S, *cache.k.shape[-2:])
            past_v = cache.v[i].reshape(B, (1 + R) * S, *cache.v.shape[-2:])

            def attend(q, k, v, past_k=past_k, past_v=past_v):
                keys = jnp.concatenate([past_k.astype(k.dtype), k], axis=1)
                vals = jnp.concatenate([past_v.astype(v.dtype), v], axis=1)
                return attention(q, keys, vals, q_frames, k_frames, window=cfg.window,
                                 impl=impl, tokens_per_frame=S, layout=layout)

            x, (k_new, v_new) = self._run_block(blk, x, mod, cache.text_k[i], cache.text_v[i], angles, attend)
            if i in layers:
                collected.append(x)
            for f in range(F):
                ks = kvc.write_frame(ks, i, position + f, R, k_new[:, f * S:(f + 1) * S])
                vs = kvc.write_frame(vs, i, position + f, R, v_new[:, f * S:(f + 1) * S])
        return cache.replace(k=ks, v=vs), x, temb, collected

    def cached_forward(self, cache: kvc.KVCache, position, x_t, t, *, recycled=None, control=None):
        """The next ``F`` frames against the cache, writing their keys/values into it.

        Args:
          cache: :class:`KVCache` holding frames before ``position``.
          position: int32 scalar, latent-frame index of the first new frame.
          x_t: ``[B, F, H, W, C]``; t: ``[B]`` or ``[B, F]``; recycled/control as in
            :meth:`__call__` for these F frames.
        Returns:
          (updated cache, velocity ``[B, F, H, W, C]``).
        """
        cache, x, temb, _ = self._cached_trunk(cache, position, x_t, t, recycled, control)
        return cache, self._head(x, temb, x_t.shape[2], x_t.shape[3])

    def cached_features(self, cache: kvc.KVCache, position, x_t, t, *, recycled=None, control=None,
                        layers: tuple[int, ...]):
        """:meth:`cached_forward`'s hidden states after each block in ``layers``.

        Returns (updated cache, list of ``[B, F, S, dim]``)."""
        self._check_layers(layers)
        cache, _, _, collected = self._cached_trunk(cache, position, x_t, t, recycled, control, layers)
        return cache, collected


def abstract_model(cfg: DiTConfig, seed: int = 0):
    """``(graphdef, params)`` with every param a ``jax.ShapeDtypeStruct``: nothing allocated."""
    return nnx.split(nnx.eval_shape(lambda: WanDiT(cfg, rngs=nnx.Rngs(seed))))


def create(cfg: DiTConfig, seed: int = 0):
    """Random-initialised model, split for functional use: ``(graphdef, params)``."""
    return nnx.split(WanDiT(cfg, rngs=nnx.Rngs(seed)))
