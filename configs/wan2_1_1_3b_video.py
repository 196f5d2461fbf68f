"""Wan2.1-T2V-1.3B post-trained with AAPT on a folder of your videos, at 480x832 (Wan's 480p).

``--config=configs/wan2_1_1_3b_video.py:STAGE``; Wan is the pretrained model, so the chain
starts at stage 1 (no ``vae`` or ``base`` stage). ``WAN`` below is a diffusers download of
Wan-AI/Wan2.1-T2V-1.3B-Diffusers (``WAN/transformer`` and ``WAN/vae``); each video
``clip.mp4`` may have ``clip.npy`` beside it, its umT5 text embedding float ``[512, 4096]``
(zeros without one):

    python -m launch.encode --config=configs/wan2_1_1_3b_video.py:adapt --vae=WAN/vae --out=cache/wan480 \
        --config.data.folder=VIDEOS --batch_size=1                                      # optional
    python -m launch.train --config=configs/wan2_1_1_3b_video.py:adapt --workdir=runs/adapt \
        --config.vae.checkpoint=WAN/vae --config.train.init_from=WAN/transformer --config.data.folder=VIDEOS
    python -m launch.train --config=configs/wan2_1_1_3b_video.py:adapt_long --workdir=runs/adapt_long \
        --config.vae.checkpoint=WAN/vae --config.train.init_from=runs/adapt --config.data.folder=VIDEOS
    python -m launch.train --config=configs/wan2_1_1_3b_video.py:distill --workdir=runs/cd \
        --config.vae.checkpoint=WAN/vae --config.train.init_from=runs/adapt_long --config.data.folder=VIDEOS
    python -m launch.train --config=configs/wan2_1_1_3b_video.py:adversarial --workdir=runs/adv \
        --config.vae.checkpoint=WAN/vae --config.train.init_from=runs/cd --config.train.disc_init_from=runs/adapt_long \
        --config.data.folder=VIDEOS
    python -m launch.train --config=configs/wan2_1_1_3b_video.py:adversarial_long --workdir=runs/adv_long \
        --config.vae.checkpoint=WAN/vae --config.train.init_from=runs/adv --config.train.disc_init_from=runs/adapt_long \
        --config.data.folder=VIDEOS

With the latent cache, train with ``--config.data.source=latents --config.data.folder=cache/wan480``
instead: the full-resolution VAE encoder then leaves the training step.

Hyper-parameters are the paper's (App. F, ``/work/shared/REFERENCE.md``) unless a comment says
otherwise; the paper's batch sizes (256) need many GPUs, ``train.batch_size`` is per step here.
"""

from ml_collections import ConfigDict

from aapt_jax.train.config import train_fields
from configs import wan2_1_t2v_1_3b

# The paper attends N = 30 latent frames = 5 s at 24 fps at 736x416 (the 480p class by
# area; it halves N at 1280x720 to fit memory). Wan2.1 runs at 16 fps, where 5 s is
# 20 latent frames, and was pretrained on 81-frame clips = 1 + 20 latent frames: so the
# window is 20 and a training clip (sink + window) fills it exactly, as the paper's 5 s
# clips fill theirs.
WINDOW_SECONDS = 5.0
FPS = 16
VAE_TEMPORAL = 4
WINDOW = round(WINDOW_SECONDS * FPS / VAE_TEMPORAL)  # 20

STAGE_DEFAULTS = {
    # Stage 1, diffusion adaptation: AdamW 1e-5, wd 0.01, shift 24; 20k iterations (the
    # paper's first 736x416 phase).
    "adapt": dict(steps=20_000, lr=1e-5, optimizer="adamw", weight_decay=0.01),
    # The last adaptation phase: clips up to 15 s = 3N latent frames (the paper: 4k
    # iterations at batch 32), continuing from the 'adapt' export.
    "adapt_long": dict(stage="adapt", steps=4_000, lr=1e-5, optimizer="adamw", weight_decay=0.01,
                       latent_frames=3 * WINDOW),
    # Stage 2, consistency distillation: same AdamW, 32 shifted steps, 5k iterations.
    "distill": dict(steps=5_000, lr=1e-5, optimizer="adamw", weight_decay=0.01),
    # Stage 3, adversarial (student forcing, no extension): RMSProp alpha 0.9 with PyTorch's
    # eps, lr 3e-6, 500 generator updates; aR1/aR2 sigma 0.1, lambda 1000; no gradient
    # clipping (the paper states none).
    "adversarial": dict(steps=500, lr=3e-6, optimizer="rmsprop", weight_decay=0.0, grad_clip=0.0),
    # Long-video training, continuing from 'adversarial': 5 extensions overlapping by 1 s,
    # 1 + 20 + 5 x 16 = 101 latent frames (25 s) against the 5 s window; the paper raises the
    # learning rate to 1e-5 (and lowers the batch) here.
    "adversarial_long": dict(stage="adversarial", steps=500, lr=1e-5, optimizer="rmsprop", weight_decay=0.0,
                             grad_clip=0.0, extensions=5),
}


# What differs from the train defaults (aapt_jax/train/config.py, the tiny world's).
TRAIN = dict(
    batch_size=8,
    # Not in the paper: a short warmup so the first updates of the new input channels
    # (random init) do not jolt the pretrained blocks.
    warmup_steps=100,
    # Previews during training (multi-step samples of stage 1): Wan's T2V shift 5.
    sample_steps=20,
    checkpoint_every=500, sample_every=1000,
    # train.init_from: stage 1: the diffusers-format transformer directory (config.json +
    # safetensors shards, e.g. WAN/transformer, converted from Wan's original release by
    # diffusers); stage 2: the adapt workdir; stage 3: the distill workdir.
    kl_weight=0.0,  # the VAE is pretrained; no 'vae' stage here
    # Stage 3: the extension segments overlap by 1 s = 4 latent frames at 16 fps.
    overlap=4,
    # Not in the paper (it says only that logit layers are inserted): three heads spread
    # over the 30 blocks so the discriminator reads features of several depths.
    disc_layers=(12, 21, 29), disc_head_dim=256,
)


def get_config(stage: str = "adapt") -> ConfigDict:
    """``--config=configs/wan2_1_1_3b_video.py:STAGE`` picks the stage and its defaults."""
    if stage not in STAGE_DEFAULTS:
        raise ValueError(f"config stage: expected one of {sorted(STAGE_DEFAULTS)}, got {stage!r}")
    c = wan2_1_t2v_1_3b.get_config()
    c.name = "wan2.1-1.3B-video"
    # The 1.3B architecture made an AAPT generator: block-causal with the sliding window,
    # the recycled previous frame as 16 more input channels (randomly initialised when the
    # diffusers checkpoint loads, App. G), no control (a video folder has none). bf16
    # compute over fp32 master weights; remat per block, as the paper trains.
    c.model.update(dict(causal=True, window=WINDOW, recycle_input=True, remat=True, dtype="bfloat16",
                        param_dtype="float32", attention_impl="auto"))
    c.control = ConfigDict(dict(kind="none"))
    # 480x832: 60x104 latents (VAE /8), 30x52 = 1560 tokens per latent frame (patch 2).
    c.video = ConfigDict(dict(height=480, width=832, fps=FPS, vae_spatial=8, vae_temporal=VAE_TEMPORAL))
    # vae.checkpoint: the diffusers AutoencoderKLWan directory (WAN/vae).
    c.vae = ConfigDict(dict(preset="wan2.1", checkpoint=""))
    # data.folder: your videos (required; or the launch.encode cache with source='latents').
    c.data = ConfigDict(dict(source="folder", height=c.video.height, width=c.video.width, latent_frames=WINDOW,
                             num_examples=100_000, seed=0, folder="", text_len=c.model.text_len,
                             text_dim=c.model.text_dim, text_embedding="zeros"))
    c.sample = ConfigDict(dict(num_frames=4 * WINDOW, batch=1, seed=0))  # 20 s: past the window
    phase = dict(STAGE_DEFAULTS[stage])
    c.data.latent_frames = phase.pop("latent_frames", c.data.latent_frames)
    c.train = train_fields(**{"stage": stage, **phase}, **TRAIN)
    # FSDP over all devices (the paper shards with FSDP/ZeRO).
    c.mesh = ConfigDict(dict(data=1, fsdp=-1, context=1, tensor=1))
    return c
