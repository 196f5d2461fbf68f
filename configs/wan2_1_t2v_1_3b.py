"""Wan2.1 text-to-video 1.3B (diffusers Wan-AI/Wan2.1-T2V-1.3B-Diffusers), base model.

Set ``model.causal=True`` (and a control) for its AAPT generator.
"""

from ml_collections import ConfigDict


def get_config() -> ConfigDict:
    c = ConfigDict()
    c.name = "wan2.1-t2v-1.3B"
    c.model = ConfigDict(dict(
        num_layers=30, num_heads=12, head_dim=128, ffn_dim=8960, latent_channels=16, patch_size=(1, 2, 2),
        text_dim=4096, text_len=512, freq_dim=256, causal=False, window=30, recycle_input=True,
        attention_impl="xla", dtype="bfloat16", param_dtype="float32",
    ))
    c.control = ConfigDict(dict(kind="none"))
    c.video = ConfigDict(dict(height=480, width=832, fps=16, vae_spatial=8, vae_temporal=4))
    c.vae = ConfigDict(dict(preset="wan2.1", checkpoint=""))
    c.sample = ConfigDict(dict(num_frames=21, batch=1, seed=0))
    c.mesh = ConfigDict(dict(data=-1, fsdp=1, context=1, tensor=1))
    return c
