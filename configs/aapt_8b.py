"""The paper's scale: an ~8B, 36-block AAPT generator at 736x416 with a window of 30.

The paper's DiT is MMDiT-like; ours keeps Wan's block (cross-attention to umT5 text) at
dim 4096 = 32 heads x 128 and ffn 10752, which gives 8.1B parameters in 36 blocks. 32 heads
divide by 8, so Ulysses context parallelism over 8 GPUs splits heads evenly.

``--config=configs/aapt_8b.py:STAGE`` for ``adapt``, ``distill`` and ``adversarial`` (student
forcing), and the long phases ``adapt_long`` and ``adversarial_long``, with the paper's hyper-parameters (App. F; ``/work/shared/REFERENCE.md``): bf16
compute over fp32 master weights, remat per block, the Pallas attention kernels. The paper
trains on 256 clips per step (``train.batch_size`` is the global batch over all devices and
processes); the data are latents cached by ``launch.encode`` (``data.folder``: its ``--out``),
so the VAE is not in the training step. ``configs/aapt_8b_720p.py`` is the 1280x720 variant
(N = 15). Size a cluster before renting it:

    python -m launch.plan --config=configs/aapt_8b.py:adapt --config.mesh.fsdp=8 --config.train.batch_size=8
    python -m launch.plan --config=configs/aapt_8b.py:adversarial --config.train.batch_size=1

Parallelism (paper App. "Parallelism"): stages 1 and 2 shard params, gradients and AdamW
state over all devices (ZeRO-3 over ``fsdp``); stage 3 runs one sample across 8 devices
(Ulysses, ``context=8``), the generator ZeRO-2 and the discriminator ZeRO-3 over the
devices of the sample (``train.generator_sharding='auto'``).
"""

from ml_collections import ConfigDict

from aapt_jax.train.config import train_fields
from configs import wan2_1_t2v_1_3b

WINDOW = 30  # N latent frames = 5 s at 24 fps (4 video frames per latent frame)

STAGE_DEFAULTS = {
    # Stage 1, diffusion adaptation: teacher forcing, flow matching with shift 24, AdamW lr 1e-5,
    # wd 0.01; clips of 1 + N latent frames.
    "adapt": dict(steps=20_000, lr=1e-5, optimizer="adamw", weight_decay=0.01, shift=24.0),
    # The last adaptation phase, continuing from 'adapt': clips of 3N latent frames (15 s), past the window.
    "adapt_long": dict(stage="adapt", steps=4_000, lr=1e-5, optimizer="adamw", weight_decay=0.01, shift=24.0,
                       latent_frames=3 * WINDOW),
    # Stage 2, consistency distillation: 32 shifted steps (shift 24), no CFG, no EMA target, 5k iterations.
    "distill": dict(steps=5_000, lr=1e-5, optimizer="adamw", weight_decay=0.01, shift=24.0, distill_steps=32),
    # Stage 3, adversarial, student forcing: RMSProp alpha 0.9 (PyTorch eps), lr 3e-6, no gradient
    # clipping; aR1/aR2 sigma 0.1, lambda 1000; one logit per frame from three depths.
    "adversarial": dict(steps=500, lr=3e-6, optimizer="rmsprop", weight_decay=0.0, grad_clip=0.0, rms_decay=0.9,
                        r_sigma=0.1, r_lambda=1000.0, forcing="student", disc_layers=(11, 23, 35),
                        disc_head_dim=256),
    # Long-video training, continuing from 'adversarial': 5 extension segments overlapping by 1 s
    # (6 latent frames), lr 1e-5 at batch 64 (the paper's).
    "adversarial_long": dict(stage="adversarial", steps=500, lr=1e-5, optimizer="rmsprop", weight_decay=0.0,
                             grad_clip=0.0, rms_decay=0.9, r_sigma=0.1, r_lambda=1000.0, forcing="student",
                             disc_layers=(11, 23, 35), disc_head_dim=256, extensions=5, overlap=6, batch_size=64),
}
# Stage 3 runs one sample across 8 devices (context parallel); stages 1-2 spread samples over fsdp.
STAGE_MESH = {"adversarial": dict(data=1, fsdp=-1, context=8, tensor=1)}


def get_config(stage: str = "adapt") -> ConfigDict:
    """``--config=configs/aapt_8b.py:STAGE`` picks the stage and its defaults."""
    if stage not in STAGE_DEFAULTS:
        raise ValueError(f"config stage: expected one of {sorted(STAGE_DEFAULTS)}, got {stage!r}")
    c = wan2_1_t2v_1_3b.get_config()  # Wan's block, text encoder and patch
    c.name = "aapt-8B"
    c.model.update(dict(num_layers=36, num_heads=32, ffn_dim=10752, causal=True, window=WINDOW, remat=True,
                        dtype="bfloat16", param_dtype="float32", attention_impl="pallas"))
    c.video = ConfigDict(dict(height=416, width=736, fps=24, vae_spatial=8, vae_temporal=4))
    c.vae = ConfigDict(dict(preset="wan2.1-light-decoder", checkpoint=""))
    # data.folder: the latent shards of launch.encode (the VAE leaves the training step).
    c.data = ConfigDict(dict(source="latents", height=c.video.height, width=c.video.width, latent_frames=WINDOW,
                             num_examples=1_000_000, seed=0, folder="", text_len=c.model.text_len,
                             text_dim=c.model.text_dim, text_embedding="zeros"))
    c.sample = ConfigDict(dict(num_frames=360, batch=1, seed=0))
    phase = dict(STAGE_DEFAULTS[stage])
    c.data.latent_frames = phase.pop("latent_frames", c.data.latent_frames)
    c.train = train_fields(**{"stage": stage, "batch_size": 256, "warmup_steps": 0, "checkpoint_every": 500,
                              "sample_every": 0, **phase})
    c.mesh = ConfigDict(STAGE_MESH.get(c.train.stage, dict(data=1, fsdp=-1, context=1, tensor=1)))
    return c
