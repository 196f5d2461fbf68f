"""Streaming decode with diffusers' ``AutoencoderKLWan``: one latent frame per call.

The Wan decoder is causal in time: each causal conv keeps the last frames of its input
(diffusers' ``feat_cache``), so decoding latent frame by latent frame, with the caches
carried between calls, gives the frames of a whole-video decode without looking ahead.
The first latent frame gives one video frame, every later one ``scale_factor_temporal``.
"""

from __future__ import annotations

import torch


class StreamingDecoder:
    def __init__(self, vae):
        from diffusers.models.autoencoders.autoencoder_kl_wan import WanCausalConv3d

        self.vae = vae.eval()
        self._num_convs = sum(isinstance(m, WanCausalConv3d) for m in self.vae.decoder.modules())
        c = self.vae.config
        z = c.z_dim
        mean = c.latents_mean if c.latents_mean is not None and len(c.latents_mean) == z else [0.0] * z
        std = c.latents_std if c.latents_std is not None and len(c.latents_std) == z else [1.0] * z
        self.mean = torch.tensor(mean, dtype=torch.float32).view(1, z, 1, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(1, z, 1, 1, 1)
        self.reset()

    @classmethod
    def from_pretrained(cls, folder: str, torch_dtype=torch.float32, device="cpu") -> "StreamingDecoder":
        from diffusers import AutoencoderKLWan

        return cls(AutoencoderKLWan.from_pretrained(folder, torch_dtype=torch_dtype).to(device))

    def reset(self) -> None:
        """Forget the previous frames: the next :meth:`step` starts a new video."""
        self._cache = [None] * self._num_convs
        self._first = True

    @torch.no_grad()
    def step(self, latent: torch.Tensor, normalized: bool = True) -> torch.Tensor:
        """latent ``[B, z, 1, h, w]`` (the generator's normalized space unless
        ``normalized=False``) -> frames ``[B, 3, n, H, W]`` in ``[-1, 1]``."""
        if latent.ndim != 5 or latent.shape[2] != 1 or latent.shape[1] != self.mean.shape[1]:
            raise ValueError(f"latent: expected [B, {self.mean.shape[1]}, 1, h, w], got {list(latent.shape)}")
        z = latent.float()
        if normalized:
            z = z * self.std.to(z.device) + self.mean.to(z.device)
        dtype = self.vae.post_quant_conv.weight.dtype
        x = self.vae.post_quant_conv(z.to(dtype))
        out = self.vae.decoder(x, feat_cache=self._cache, feat_idx=[0], first_chunk=self._first)
        self._first = False
        return out.float().clamp(-1.0, 1.0)
