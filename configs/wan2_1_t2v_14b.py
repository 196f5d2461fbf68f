"""Wan2.1 text-to-video 14B (diffusers Wan-AI/Wan2.1-T2V-14B-Diffusers), base model."""

from configs import wan2_1_t2v_1_3b


def get_config():
    c = wan2_1_t2v_1_3b.get_config()
    c.name = "wan2.1-t2v-14B"
    c.model.update(dict(num_layers=40, num_heads=40, head_dim=128, ffn_dim=13824))
    c.video.update(dict(height=720, width=1280))
    c.mesh.update(dict(data=1, fsdp=-1))
    return c
