"""Tiny camera-controlled AAPT generator: CPU tests, benchmarks and the default run."""

from ml_collections import ConfigDict


def get_config() -> ConfigDict:
    c = ConfigDict()
    c.name = "tiny"
    c.model = ConfigDict(dict(
        num_layers=4, num_heads=4, head_dim=24, ffn_dim=256, latent_channels=16, patch_size=(1, 2, 2),
        text_dim=64, text_len=16, freq_dim=256, causal=True, window=30, recycle_input=True,
        attention_impl="xla", dtype="float32", param_dtype="float32",
    ))
    # fold 1: one ray sample per latent cell and video frame (24 channels); fold 8 is full res.
    c.control = ConfigDict(dict(kind="camera", fold=1, origin_scale=0.05, rotation_scale=0.01))
    c.video = ConfigDict(dict(height=96, width=128, fps=24, vae_spatial=8, vae_temporal=4))
    c.vae = ConfigDict(dict(preset="tiny", checkpoint=""))
    c.sample = ConfigDict(dict(num_frames=48, batch=1, seed=0))
    c.mesh = ConfigDict(dict(data=-1, fsdp=1, context=1, tensor=1))
    return c
