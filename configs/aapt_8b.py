"""The paper's scale: an ~8B, 36-block AAPT generator at 736x416 with a window of 30.

The paper's DiT is MMDiT-like; ours keeps Wan's block (cross-attention to umT5 text) at
dim 4096 = 32 heads x 128 and ffn 10752, which gives 8.1B parameters in 36 blocks. 32 heads
divide by 8, so Ulysses context parallelism over 8 GPUs splits heads evenly.
"""

from ml_collections import ConfigDict

from configs import wan2_1_t2v_1_3b


def get_config() -> ConfigDict:
    c = wan2_1_t2v_1_3b.get_config()  # Wan's block, text encoder and patch
    c.name = "aapt-8B"
    c.model.update(dict(num_layers=36, num_heads=32, ffn_dim=10752, causal=True))
    c.video = ConfigDict(dict(height=416, width=736, fps=24, vae_spatial=8, vae_temporal=4))
    c.vae = ConfigDict(dict(preset="wan2.1-light-decoder", checkpoint=""))
    c.sample = ConfigDict(dict(num_frames=360, batch=1, seed=0))
    c.mesh = ConfigDict(dict(data=1, fsdp=-1, context=1, tensor=1))
    return c
