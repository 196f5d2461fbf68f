"""A PyTorch streaming reference for AAPT generators converted by ``launch.convert``.

Depends on torch, diffusers and safetensors only (not on JAX or the ``aapt_jax`` library):

    from aapt_torch import StreamingDecoder, StreamingGenerator
    gen = StreamingGenerator.from_pretrained("OUT")          # OUT/transformer + OUT/aapt.json
    dec = StreamingDecoder.from_pretrained("OUT/vae")
    gen.init(first_latent, text)                             # [B, C, 1, h, w], [B, Lt, text_dim]
    frame = gen.step(control)                                # [B, C, 1, h, w], one forward pass
    pixels = dec.step(frame)                                 # [B, 3, 4, H, W] in [-1, 1]
"""

from aapt_torch.generator import StreamingGenerator
from aapt_torch.vae_decoder import StreamingDecoder

__all__ = ["StreamingGenerator", "StreamingDecoder"]
