"""The AAPT one-step streaming generator on diffusers' ``WanTransformer3DModel`` blocks.

Each step is one forward pass over one latent frame at position ``p`` (``p = 0`` for the
first step): the input channels are ``[noise | recycled frame p | control of frame p+1]``
(the ranges in ``aapt.json``), the timestep is 1000 and the output is the velocity ``v``;
the new frame is ``noise - v``. Self-attention of frame ``p`` sees the keys/values of

    frame 0 (the sink, kept forever) and frames p - N .. p (N = aapt.json "window"),

as in ``aapt_jax.model.window``: a cache of those frames' keys/values per block, so each
step costs the same however long the stream runs. Keys are cached after RoPE at their
absolute temporal position ``p * rope_temporal_interval``. Diffusers' blocks run as they
are; only their attention processors are replaced (:class:`CachedSelfAttention`, and
:class:`CachedCrossAttention`, which projects the text keys/values once per stream).

Layouts are diffusers': latents ``[B, C, 1, h, w]``, control maps ``[B, Cc, 1, h, w]``.
"""

from __future__ import annotations

import json
import os

import torch
import torch.nn.functional as F

FORMAT = "aapt-diffusers/1"


def rope_angles(position: float, height: int, width: int, head_dim: int, theta: float) -> torch.Tensor:
    """fp32 ``[height * width, head_dim // 2]`` rotation angles of one frame's tokens.

    Wan's 3D split: temporal ``d - 4(d//6)``, height and width ``2(d//6)`` channels each;
    pair ``i`` of a part of size ``n`` turns by ``pos * theta**(-2i/n)``."""
    hw = 2 * (head_dim // 6)

    def inv_freq(n):
        return 1.0 / (theta ** (torch.arange(0, n, 2, dtype=torch.float32) / n))

    ft = torch.tensor(position, dtype=torch.float32) * inv_freq(head_dim - 2 * hw)
    fh = torch.arange(height, dtype=torch.float32)[:, None] * inv_freq(hw)
    fw = torch.arange(width, dtype=torch.float32)[:, None] * inv_freq(hw)
    ft = ft.expand(height, width, -1)
    fh = fh[:, None, :].expand(height, width, -1)
    fw = fw[None, :, :].expand(height, width, -1)
    return torch.cat([ft, fh, fw], dim=-1).reshape(height * width, head_dim // 2)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate interleaved channel pairs of ``x`` ``[B, L, H, D]`` (fp32 math, x's dtype out)."""
    x32 = x.float()
    x1, x2 = x32[..., 0::2], x32[..., 1::2]
    out = torch.stack([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)
    return out.reshape(x.shape).type_as(x)


class CachedSelfAttention:
    """Self-attention processor of one block: the new frame's queries against the cached
    keys/values of the visible frames and its own (module docstring)."""

    def __init__(self, window: int):
        self.window = window
        self.frames: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        self.position = 0
        self.cos = self.sin = None

    def reset(self):
        self.frames.clear()
        self.position = 0

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, rotary_emb=None):
        heads = lambda y: y.unflatten(2, (attn.heads, -1))  # noqa: E731
        q = apply_rope(heads(attn.norm_q(attn.to_q(hidden_states))), self.cos, self.sin)
        k = apply_rope(heads(attn.norm_k(attn.to_k(hidden_states))), self.cos, self.sin)
        v = heads(attn.to_v(hidden_states))
        p = self.position
        visible = sorted(j for j in self.frames if j == 0 or j >= p - self.window)
        keys = torch.cat([self.frames[j][0] for j in visible] + [k], dim=1)
        values = torch.cat([self.frames[j][1] for j in visible] + [v], dim=1)
        o = F.scaled_dot_product_attention(q.transpose(1, 2), keys.transpose(1, 2).type_as(q),
                                           values.transpose(1, 2).type_as(q))
        # Remember this frame; forget the frames the next position can no longer see.
        self.frames[p] = (k, v)
        for j in [j for j in self.frames if j != 0 and j < p + 1 - self.window]:
            del self.frames[j]
        o = o.transpose(1, 2).flatten(2).type_as(q)
        return attn.to_out[1](attn.to_out[0](o))


class CachedCrossAttention:
    """Cross-attention processor of one block: the text keys/values are projected at the
    first step after ``reset`` and reused (the text is fixed for the whole stream)."""

    def __init__(self):
        self.kv = None

    def reset(self):
        self.kv = None

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, rotary_emb=None):
        heads = lambda y: y.unflatten(2, (attn.heads, -1))  # noqa: E731
        if self.kv is None:
            self.kv = (heads(attn.norm_k(attn.to_k(encoder_hidden_states))), heads(attn.to_v(encoder_hidden_states)))
        q = heads(attn.norm_q(attn.to_q(hidden_states)))
        k, v = self.kv
        o = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2).type_as(q),
                                           v.transpose(1, 2).type_as(q))
        return attn.to_out[1](attn.to_out[0](o.transpose(1, 2).flatten(2).type_as(q)))


class StreamingGenerator:
    """``init`` once, then ``step`` per latent frame (module docstring)."""

    def __init__(self, transformer, aapt: dict):
        if aapt.get("format") != FORMAT:
            raise ValueError(f"aapt.json format: expected {FORMAT!r}, got {aapt.get('format')!r}")
        if not aapt.get("causal"):
            raise ValueError("aapt.json causal: expected true (a streaming AAPT generator), got false")
        self.model = transformer.eval()
        self.aapt = aapt
        self.channels = aapt["input_channels"]
        self.processors = [CachedSelfAttention(aapt["window"]) for _ in self.model.blocks]
        self.text_processors = [CachedCrossAttention() for _ in self.model.blocks]
        for block, proc, text_proc in zip(self.model.blocks, self.processors, self.text_processors):
            block.attn1.set_processor(proc)
            block.attn2.set_processor(text_proc)
        self._ready = False

    @classmethod
    def from_pretrained(cls, folder: str, torch_dtype=torch.float32, device="cpu") -> "StreamingGenerator":
        """Load ``folder/transformer`` and ``folder/aapt.json`` written by ``launch.convert``."""
        from diffusers import WanTransformer3DModel

        path = os.path.join(folder, "aapt.json")
        if not os.path.isfile(path):
            raise ValueError(f"folder: {path} not found; expected a folder written by launch.convert")
        with open(path) as f:
            aapt = json.load(f)
        model = WanTransformer3DModel.from_pretrained(os.path.join(folder, "transformer"), torch_dtype=torch_dtype)
        return cls(model.to(device), aapt)

    @property
    def dtype(self):
        return self.model.patch_embedding.weight.dtype

    @torch.no_grad()
    def init(self, first_frame: torch.Tensor, text: torch.Tensor) -> None:
        """first_frame ``[B, C, 1, h, w]`` (normalized latent), text ``[B, Lt, text_dim]``."""
        C = self.aapt["latent_channels"]
        if first_frame.ndim != 5 or first_frame.shape[1] != C or first_frame.shape[2] != 1:
            raise ValueError(f"first_frame: expected [B, {C}, 1, h, w], got {list(first_frame.shape)}")
        _, _, ph, pw = [1] + list(self.aapt["patch_size"])
        if first_frame.shape[3] % ph or first_frame.shape[4] % pw:
            raise ValueError(f"first_frame: h, w must be multiples of the patch size {(ph, pw)}, "
                             f"got {tuple(first_frame.shape[3:])}")
        dim = self.aapt["text"]["dim"]
        if text.ndim != 3 or text.shape[0] != first_frame.shape[0] or text.shape[2] != dim:
            raise ValueError(f"text: expected [{first_frame.shape[0]}, Lt, {dim}], got {list(text.shape)}")
        for proc in self.processors + self.text_processors:
            proc.reset()
        B = first_frame.shape[0]
        t = torch.full((B,), float(self.aapt["timestep"]), device=first_frame.device)
        temb, proj, self._text, _ = self.model.condition_embedder(t, text.to(self.dtype))
        self._temb, self._proj = temb, proj.unflatten(1, (6, -1))
        self.prev = first_frame
        self.position = 0
        self._ready = True

    @torch.no_grad()
    def step(self, control: torch.Tensor | None = None, noise: torch.Tensor | None = None,
             generator: torch.Generator | None = None) -> torch.Tensor:
        """The next latent frame ``[B, C, 1, h, w]`` from ``noise`` (default: a standard
        normal draw) and ``control`` ``[B, Cc, 1, h, w]`` (None without controls)."""
        if not self._ready:
            raise ValueError("init: call init(first_frame, text) before step")
        B, C, _, h, w = self.prev.shape
        Cc = self.aapt["control_channels"]
        if noise is None:
            noise = torch.randn(self.prev.shape, generator=generator, dtype=torch.float32).to(self.prev.device)
        if tuple(noise.shape) != tuple(self.prev.shape):
            raise ValueError(f"noise: expected {list(self.prev.shape)}, got {list(noise.shape)}")
        if Cc and (control is None or tuple(control.shape) != (B, Cc, 1, h, w)):
            raise ValueError(f"control: expected [{B}, {Cc}, 1, {h}, {w}], got "
                             f"{None if control is None else list(control.shape)}")
        if not Cc and control is not None:
            raise ValueError(f"control: the generator takes none (control_channels=0), got {list(control.shape)}")
        parts = [noise]
        if self.channels["recycled"][1] > self.channels["recycled"][0]:
            parts.append(self.prev)
        if Cc:
            parts.append(control)
        x = torch.cat([p.to(self.dtype) for p in parts], dim=1)
        velocity = self._forward(x, h, w)
        frame = (noise.float() - velocity.float()).to(self.prev.dtype)
        self.prev = frame
        self.position += 1
        return frame

    def _forward(self, x, h, w):
        model, a = self.model, self.aapt
        _, ph, pw = a["patch_size"]
        hp, wp = h // ph, w // pw
        angles = rope_angles(self.position * a["rope_temporal_interval"], hp, wp,
                             model.config.attention_head_dim, a["rope_theta"]).to(x.device)
        cos, sin = torch.cos(angles)[None, :, None, :], torch.sin(angles)[None, :, None, :]
        for proc in self.processors:
            proc.cos, proc.sin, proc.position = cos, sin, self.position
        hidden = model.patch_embedding(x).flatten(2).transpose(1, 2).contiguous()
        for block in model.blocks:
            hidden = block(hidden, self._text, self._proj, None)
        shift, scale = (model.scale_shift_table + self._temb.unsqueeze(1)).chunk(2, dim=1)
        hidden = (model.norm_out(hidden.float()) * (1 + scale) + shift).type_as(hidden)
        out = model.proj_out(hidden)
        B = out.shape[0]
        out = out.reshape(B, 1, hp, wp, 1, ph, pw, -1).permute(0, 7, 1, 4, 2, 5, 3, 6)
        return out.flatten(6, 7).flatten(4, 5).flatten(2, 3)
