"""The Wan2.1 diffusion transformer in Flax NNX, with the AAPT causal transform.

Two ways to run the same weights:

* :meth:`WanDiT.__call__`: all frames at once. Bidirectional for the base model
  (``cfg.causal=False``, numerically the diffusers ``WanTransformer3DModel``), block-causal
  with the sliding window for the AAPT generator (teacher-forced training, discriminator,
  recompute baselines).
* :meth:`WanDiT.cached_forward`: the next frame(s) only, attending to a
  :class:`~aapt_jax.model.kv_cache.KVCache` (streaming inference, student forcing).

Inside the trunk the hidden states are ``[B, T, P, dim]``: ``T`` frames of ``P`` token
slots. ``P`` is the frame's token count ``S``, except under a mesh whose ``context`` axis
(size ``C > 1``) does not divide ``S``: then every frame carries ``P = ceil(S / C) * C``
slots, the pad at its end, so that the tokens split evenly over ``context`` (Ulysses
context parallelism, :mod:`aapt_jax.parallel.ulysses`). Every op but self-attention is per
token, self-attention never sees a pad slot, and the pad is dropped before the output head
and from returned features. Under such a mesh self-attention trades the token split for a
head split with all-to-alls, and the KV cache is split by heads.

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
from aapt_jax.parallel import ulysses
from aapt_jax.parallel.sharding import constrain

# RoPE of [B, T, P, H, Dh] with angles [T, P, Dh/2]: the flat rotation, frame by frame.
_rope_frames = jax.vmap(apply_rope, in_axes=(1, 0), out_axes=1)


class _Projections(nnx.Module):
    """Wan's attention weights under diffusers' names: q/k/v/out projections ``dim -> dim`` and
    RMS norms over the whole of q and k (before the split into heads)."""

    def __init__(self, cfg: DiTConfig, rngs, dtype, pdtype):
        d = cfg.dim
        self.num_heads = cfg.num_heads
        self.to_q = dense(d, d, ("embed", "qkv"), rngs, dtype=dtype, param_dtype=pdtype)
        self.to_k = dense(d, d, ("embed", "qkv"), rngs, dtype=dtype, param_dtype=pdtype)
        self.to_v = dense(d, d, ("embed", "qkv"), rngs, dtype=dtype, param_dtype=pdtype)
        self.to_out = dense(d, d, ("qkv", "embed"), rngs, dtype=dtype, param_dtype=pdtype)
        self.norm_q = RMSNorm(d, cfg.eps, "qkv")
        self.norm_k = RMSNorm(d, cfg.eps, "qkv")


class SelfAttention(_Projections):
    def qkv(self, x, angles):
        """x ``[B, T, P, dim]`` -> rotated q, k and v, each ``[B, T, P, H, Dh]``
        (angles ``[T, P, Dh/2]``; no reshape across the token axis, which may be split)."""
        heads = lambda y: y.reshape(*y.shape[:-1], self.num_heads, -1)
        q = _rope_frames(heads(self.norm_q(self.to_q(x))), angles)
        k = _rope_frames(heads(self.norm_k(self.to_k(x))), angles)
        return q, k, heads(self.to_v(x))

    def out(self, o):
        """o ``[B, T, P, H, Dh]`` -> ``[B, T, P, dim]``."""
        return self.to_out(o.reshape(*o.shape[:-2], -1))


class CrossAttention(_Projections):
    def __init__(self, cfg: DiTConfig, rngs, dtype, pdtype):
        super().__init__(cfg, rngs, dtype, pdtype)
        # The Pallas kernels are the video's windowed self-attention; the text runs on XLA or cuDNN.
        self.impl = cfg.attention_impl if cfg.attention_impl in ("xla", "cudnn") else "xla"

    def text_kv(self, text):
        """Projected text keys/values ``[B, Lt, H, Dh]``; computed once per video when streaming."""
        B, Lt, _ = text.shape
        k = self.norm_k(self.to_k(text)).reshape(B, Lt, self.num_heads, -1)
        v = self.to_v(text).reshape(B, Lt, self.num_heads, -1)
        return k, v

    def __call__(self, x, k, v):
        """x ``[B, T, P, dim]``, k/v ``[B, Lt, H, Dh]`` -> ``[B, T, P, dim]``."""
        q = self.norm_q(self.to_q(x))
        q = q.reshape(*q.shape[:-1], self.num_heads, -1)
        k, v = k.astype(q.dtype), v.astype(q.dtype)
        if ulysses.context_size() > 1:
            # Token-split queries: each device attends its own tokens to the whole text.
            o = ulysses.local_cross_attention(q, k, v, impl=self.impl)
        else:
            B = q.shape[0]
            o = full_attention(q.reshape(B, -1, *q.shape[-2:]), k, v, impl=self.impl).reshape(q.shape)
        return self.to_out(o.reshape(*o.shape[:-2], -1))


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

    def __call__(self, x, mod, text_k, text_v, angles, attend, carry=None):
        """One block.

        Args:
          x: ``[B, T, P, dim]`` hidden states of T frames of P token slots (see the module
            docstring).
          mod: fp32 ``[B, T or 1, 6, dim]`` timestep projection.
          text_k, text_v: ``[B, Lt, H, Dh]`` this block's text keys/values.
          angles: ``[T, P, Dh/2]`` RoPE angles of the token slots.
          attend: ``(q, k, v, carry) -> (o, out)`` over ``[B, T, P, H, Dh]``: the masked
            self-attention (it sees the cache when streaming); ``out`` is whatever it returns
            besides ``o`` (the new keys/values, or the updated cache).
          carry: a pytree handed to ``attend`` (the cache arrays of the Ulysses step), an
            explicit argument so that no traced value crosses ``jax.checkpoint`` by closure
            on its way out.
        Returns:
          (x ``[B, T, P, dim]``, ``attend``'s ``out``).
        """
        shift, scale, gate, c_shift, c_scale, c_gate = jnp.split(
            self.scale_shift_table[...][:, None] + mod, 6, axis=2)  # each [B, T, 1, dim]
        h = (layer_norm(x, self.eps) * (1 + scale) + shift).astype(self.dtype)
        q, k, v = self.attn1.qkv(h, angles)
        o, out = attend(q, k, v, carry)
        x = (x.astype(jnp.float32) + self.attn1.out(o) * gate).astype(x.dtype)

        h = x if self.norm2 is None else self.norm2(x).astype(self.dtype)
        x = x + self.attn2(h, text_k, text_v)

        h = (layer_norm(x, self.eps) * (1 + c_scale) + c_shift).astype(self.dtype)
        y = self.ffn(h)
        x = (x.astype(jnp.float32) + y.astype(jnp.float32) * c_gate).astype(x.dtype)
        return constrain(x, ("batch", "frames", "tokens", "embed")), out


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
        """Embedded tokens ``[B, T, P, dim]`` and ``S``, the real tokens per frame: ``P = S``,
        or ``S`` rounded up to a multiple of the mesh's context size (zero pad slots at the
        end of every frame; see the module docstring)."""
        self.check_inputs(x_t, recycled, control)
        parts = [x_t]
        if self.cfg.causal and self.cfg.recycle_input:
            parts.append(recycled)
        if self.cfg.control_channels:
            parts.append(control)
        x = jnp.concatenate([p.astype(jnp.dtype(self.cfg.dtype)) for p in parts], axis=-1)
        x = self._patchify(x)
        S = x.shape[2]
        slots = ulysses.padded_tokens_per_frame(S, ulysses.context_size())
        if slots != S:
            x = jnp.pad(x, ((0, 0), (0, 0), (0, slots - S), (0, 0)))
        return constrain(self.patch_embedding(x), ("batch", "frames", "tokens", "embed")), S

    def _head(self, x, temb, H, W):
        """Hidden ``[B, T, P, dim]`` -> velocity ``[B, T, H, W, C]``; pad slots dropped after the
        (per-token) projection, so only the small output moves if the token split changes."""
        shift, scale = jnp.split(self.scale_shift_table[...][:, None] + temb[:, :, None], 2, axis=2)
        h = (layer_norm(x, self.cfg.eps) * (1 + scale) + shift).astype(jnp.dtype(self.cfg.dtype))
        S = (H // self.cfg.patch_size[1]) * (W // self.cfg.patch_size[2])
        return self._unpatchify(self.proj_out(h)[:, :, :S], H, W)

    def _angles(self, frames, H, W, slots):
        """RoPE angles ``[T, slots, Dh/2]`` of the given frames' tokens (zeros for pad slots)."""
        cfg = self.cfg
        pos = jnp.asarray(frames, jnp.float32) * cfg.rope_temporal_interval
        hp, wp = H // cfg.patch_size[1], W // cfg.patch_size[2]
        angles = rope_angles(pos, hp, wp, cfg.head_dim, cfg.rope_theta).reshape(pos.shape[0], hp * wp, -1)
        return jnp.pad(angles, ((0, 0), (0, slots - hp * wp), (0, 0)))

    # ----- forward passes ---------------------------------------------------------------

    def _run_block(self, blk, x, mod, text_k, text_v, angles, attend, carry=None):
        """One block, rematerialized in the backward pass when ``cfg.remat`` (activation
        memory then grows with one block's worth, not the whole stack's). Everything the
        block computes leaves through its return value."""
        if not self.cfg.remat:
            return blk(x, mod, text_k, text_v, angles, attend, carry)
        # A pure function of the block's params: the block may belong to a model merged
        # inside an outer trace (jit/grad/scan), whose Variables remat must not mutate.
        graphdef, state = nnx.split(blk)
        run = jax.checkpoint(lambda st, x, mod, tk, tv, angles, carry:
                             nnx.merge(graphdef, st)(x, mod, tk, tv, angles, attend, carry))
        return run(state, x, mod, text_k, text_v, angles, carry)

    @staticmethod
    def _real(x, S):
        """``[B, T, P, dim]`` -> the ``S`` real token slots of every frame."""
        return x if x.shape[2] == S else x[:, :, :S]

    def _parallel_trunk(self, x_t, t, text, recycled, control, frame_indices, layers=()):
        """(final hidden ``[B, T, P, dim]``, temb, hidden states ``[B, T, S, dim]`` after each
        block in ``layers``)."""
        cfg = self.cfg
        self.check_inputs(x_t, recycled, control, t)
        B, T, H, W, _ = x_t.shape
        x, S = self._input_tokens(x_t, recycled, control)
        Tp, slots = x.shape[1], x.shape[2]
        contiguous = frame_indices is None
        frames = jnp.arange(Tp, dtype=jnp.int32) if contiguous else jnp.asarray(frame_indices, jnp.int32)
        angles = self._angles(frames, H, W, slots)
        window = cfg.window if cfg.causal else None
        impl = cfg.attention_impl

        if ulysses.context_size() > 1:
            def attend(q, k, v, carry):
                return ulysses.ulysses_attention(q, k, v, tokens_per_frame=S, window=window, impl=impl,
                                                 frame_indices=None if contiguous else frames), None
        else:
            token_frames = jnp.repeat(frames, S)

            def attend(q, k, v, carry):
                flat = lambda y: y.reshape(B, Tp * S, *y.shape[-2:])
                o = attention(flat(q), flat(k), flat(v), token_frames, token_frames, window=window, impl=impl,
                              tokens_per_frame=S, layout="parallel" if contiguous else None)
                return o.reshape(q.shape), None

        temb, mod = self.embed_time(t)
        text_k, text_v = self.text_kv(text)
        collected = []
        for i, blk in enumerate(self.blocks):
            x, _ = self._run_block(blk, x, mod, text_k[i], text_v[i], angles, attend)
            if i in layers:
                collected.append(self._real(x, S))
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
        x, S = self._input_tokens(x_t, recycled, control)
        slots = x.shape[2]
        R = cache.ring_frames
        position = jnp.asarray(position, jnp.int32)
        new_frames = position + jnp.arange(F, dtype=jnp.int32)
        angles = self._angles(new_frames, H, W, slots)
        temb, mod = self.embed_time(t)
        ks, vs = cache.k, cache.v
        collected = []
        if ulysses.context_size() > 1:
            # Head-sharded cache: each device attends and writes its own heads; the block takes
            # the cache arrays in and returns them updated.
            for i, blk in enumerate(self.blocks):
                def attend(q, k, v, carry, layer=i):
                    o, ck, cv = ulysses.ulysses_cached_attention(
                        q, k, v, *carry, position, layer=layer, tokens_per_frame=S, window=cfg.window,
                        impl=cfg.attention_impl)
                    return o, (ck, cv)

                x, (ks, vs) = self._run_block(blk, x, mod, cache.text_k[i], cache.text_v[i], angles, attend,
                                              (ks, vs))
                if i in layers:
                    collected.append(self._real(x, S))
            return cache.replace(k=ks, v=vs), x, temb, collected
        q_frames = jnp.repeat(new_frames, S)
        k_frames = jnp.concatenate([jnp.repeat(kvc.slot_frames(position, R), S), q_frames])
        layout = "decode" if F == 1 else None
        # No kernel covers several new frames against a cache (long-video training segments):
        # those calls take the dense path rather than failing under attention_impl='pallas'.
        impl = "auto" if layout is None and cfg.attention_impl == "pallas" else cfg.attention_impl
        for i, blk in enumerate(self.blocks):
            past_k = cache.k[i].reshape(B, (1 + R) * S, *cache.k.shape[-2:])
            past_v = cache.v[i].reshape(B, (1 + R) * S, *cache.v.shape[-2:])

            def attend(q, k, v, carry, past_k=past_k, past_v=past_v):
                flat = lambda y: y.reshape(B, F * S, *y.shape[-2:])
                keys = jnp.concatenate([past_k.astype(k.dtype), flat(k)], axis=1)
                vals = jnp.concatenate([past_v.astype(v.dtype), flat(v)], axis=1)
                o = attention(flat(q), keys, vals, q_frames, k_frames, window=cfg.window,
                              impl=impl, tokens_per_frame=S, layout=layout)
                return o.reshape(q.shape), (k, v)

            x, (k_new, v_new) = self._run_block(blk, x, mod, cache.text_k[i], cache.text_v[i], angles, attend)
            if i in layers:
                collected.append(x)
            for f in range(F):
                ks = kvc.write_frame(ks, i, position + f, R, k_new[:, f])
                vs = kvc.write_frame(vs, i, position + f, R, v_new[:, f])
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
