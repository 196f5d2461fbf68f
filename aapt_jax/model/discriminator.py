"""The AAPT discriminator: the causal generator backbone plus per-frame logit heads.

The backbone is a :class:`~aapt_jax.model.dit.WanDiT` with the generator's architecture,
initialized from the stage 1 (diffusion adaptation) weights. Where the generator gets
noise, the discriminator gets the clean frame being judged (paper Fig. 1, following APT),
with a random timestep ``t ~ U(0, 1)`` as conditioning. Position ``p`` takes
``[frame p+1 | frame p (recycled) | control of frame p+1]`` exactly as in the generator,
so the control is aligned with the frame it describes.

Logit heads read the hidden states after a few blocks (``DiscriminatorConfig.layers``);
each head is LN -> linear -> SiLU applied per token, averaged over the frame's tokens,
then a linear to one logit. The block-causal mask makes the logit of frame ``k`` depend
on frames ``0..k`` only: one parallel pass judges every prefix of the video
(multi-duration discrimination).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx

from aapt_jax.model import kv_cache as kvc
from aapt_jax.model.config import DiTConfig
from aapt_jax.model.dit import WanDiT
from aapt_jax.model.layers import dense, layer_norm


@dataclasses.dataclass(frozen=True)
class DiscriminatorConfig:
    """layers: blocks whose outputs feed a logit head; head_dim: hidden width of a head."""
    layers: tuple[int, ...] = (-1,)
    head_dim: int = 256

    def resolved_layers(self, num_layers: int) -> tuple[int, ...]:
        """Negative indices count from the end, as in Python; checked against the backbone."""
        out = []
        for i in self.layers:
            j = i + num_layers if i < 0 else i
            if not 0 <= j < num_layers:
                raise ValueError(f"discriminator.layers: expected block indices in [-{num_layers}, {num_layers}), "
                                 f"got {list(self.layers)}")
            out.append(j)
        if len(set(out)) != len(out):
            raise ValueError(f"discriminator.layers: expected distinct blocks, got {list(self.layers)}")
        return tuple(sorted(out))


class LogitHead(nnx.Module):
    def __init__(self, dim: int, hidden: int, rngs: nnx.Rngs):
        self.proj = dense(dim, hidden, ("embed", "mlp"), rngs, dtype=jnp.float32, param_dtype=jnp.float32)
        # No bias: every loss of the stage (the relativistic pairs, aR1/aR2) is a difference of
        # two logits of the same head, so a bias would get a zero gradient and integrate only
        # rounding noise (which RMSProp scales up to full-size steps).
        self.out = dense(hidden, 1, ("mlp", None), rngs, dtype=jnp.float32, param_dtype=jnp.float32,
                         use_bias=False)

    def __call__(self, x):
        """x ``[B, T, S, dim]`` -> logits ``[B, T]``."""
        h = jax.nn.silu(self.proj(layer_norm(x.astype(jnp.float32), 1e-6)))
        return self.out(jnp.mean(h, axis=2))[..., 0]


class Discriminator(nnx.Module):
    def __init__(self, cfg: DiTConfig, dcfg: DiscriminatorConfig, *, rngs: nnx.Rngs):
        if not cfg.causal:
            raise ValueError("model.causal: the discriminator uses the causal backbone, got causal=False")
        self.cfg = cfg
        self.layers = dcfg.resolved_layers(cfg.num_layers)
        self.backbone = WanDiT(cfg, rngs=rngs)
        self.heads = nnx.List([LogitHead(cfg.dim, dcfg.head_dim, rngs) for _ in self.layers])

    def _logits(self, feats):
        return sum(head(f) for head, f in zip(self.heads, feats))

    def __call__(self, video, t, text, control=None):
        """Per-frame logits of a whole video in one pass.

        Args:
          video: clean latents ``[B, 1 + K, h, w, C]`` (frame 0 is the conditioning frame).
          t: ``[B]`` in [0, 1) (scaled by 1000 for the time embedding).
          text: ``[B, Lt, text_dim]``; control: ``[B, K, h, w, Cc]`` or None.
        Returns:
          logits ``[B, K]``: entry ``k`` judges frames ``1..k+1`` given frame 0.
        """
        feats = self.backbone.features(video[:, 1:], 1000.0 * t, text, recycled=video[:, :-1], control=control,
                                       layers=self.layers)
        return self._logits(feats)

    def step(self, cache: kvc.KVCache, position, frame, previous, t, control=None, *, commit: bool = True):
        """The logit of one frame against a KV cache of the frames before it.

        frame, previous: ``[B, 1, h, w, C]`` (the judged frame and the one before it);
        control: ``[B, 1, h, w, Cc]`` or None. Returns (cache, logits ``[B, 1]``); with
        ``commit=False`` the cache comes back unchanged (the frame is judged but not
        remembered: teacher-forcing discrimination of generated frames against real context).
        """
        new_cache, feats = self.backbone.cached_features(cache, position, frame, 1000.0 * t, recycled=previous,
                                                         control=control, layers=self.layers)
        return (new_cache if commit else cache), self._logits(feats)
