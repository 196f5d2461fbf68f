"""The tiny CPU pipeline on the procedural camera world: VAE, stages 0-2 and sampling.

``--config=configs/tiny_world.py:STAGE`` selects the stage; stages chain by workdir:
    python -m launch.train --workdir=runs/vae   --config=configs/tiny_world.py:vae
    python -m launch.train --workdir=runs/base  --config=configs/tiny_world.py:base --config.vae.checkpoint=runs/vae
    python -m launch.train --workdir=runs/adapt --config=configs/tiny_world.py:adapt --config.vae.checkpoint=runs/vae \
        --config.train.init_from=runs/base
    python -m launch.train --workdir=runs/cd    --config=configs/tiny_world.py:distill \
        --config.vae.checkpoint=runs/vae --config.train.init_from=runs/adapt
    python -m launch.train --workdir=runs/adv   --config=configs/tiny_world.py:adversarial \
        --config.vae.checkpoint=runs/vae --config.train.init_from=runs/cd --config.train.disc_init_from=runs/adapt

These recipes are the README's main job, sized to run stages 1-3 in 20 minutes; the shipped
AAPT generator's recipe (a larger stage 1, a lower rate after it) is ``tiny_world_ship.py``.
"""

from ml_collections import ConfigDict

from aapt_jax.train.config import train_fields
from configs import tiny

# Per stage: steps, learning rate (the paper's 1e-5 AdamW is for an 8B model at batch 256;
# a 2M-parameter model on CPU needs larger steps to move in minutes). Stages 1-3 are the
# README's main job, which must finish in 20 minutes on a 2-core CPU alone. That CPU's speed
# varies from day to day by up to 1.5x (same code: stage 1 at 2.75 steps/s one day, 2.0
# another), so the recipe is sized for the slow day: 1500 / 250 / 200 updates took 17.4
# minutes on a fast day and 27.1 on a slow one; these took 17.75 on a slow one (stage 1 at
# 1.8 steps/s). On 8 held-out walks (seconds 1-5), stage 1 at 800 steps instead of 1000 left
# stage 2 the same (paired +0.05 +- 0.18 dB) and its stage 3 0.56 +- 0.30 dB lower; against the
# study's longer recipe, stage 2 -0.02 +- 0.55 and stage 3 -0.70 +- 0.78 dB. Checkpoints every
# few minutes of work: a save costs about a second (~40 s over stage 1 at every 50).
# The drift study's recipes (the longer ones) are ``tiny_world_study.py``.
STAGE_DEFAULTS = {
    # The shipped VAE's recipe (``python -m launch.pretrain``): clips of 1 + 6 latent frames
    # (25 video frames; 9-frame clips let colours drift after the 4th latent frame), the
    # posterior mean (a sampled posterior learns several times slower at this size), cosine
    # decay. ~40 minutes on the 2-core CPU.
    "vae": dict(steps=1000, lr=2e-3, optimizer="adamw", weight_decay=0.0, batch_size=8, latent_frames=6,
                lr_schedule="cosine", vae_posterior="mean"),
    # The shipped base model's recipe (stage 0, ``python -m launch.pretrain``): the bidirectional
    # flow-matching DiT on clips of 1 + 6 latent frames, cosine decay.
    "base": dict(steps=4000, lr=1e-3, optimizer="adamw", weight_decay=0.01, shift=3.0, batch_size=8,
                 lr_schedule="cosine", warmup_steps=100),
    # Stages 1-2 train at the base model's noise shift (3, for 16x16 latents; the paper's 24
    # is for 736x416 video): the base learned that distribution of noise levels.
    "adapt": dict(steps=800, lr=5e-4, optimizer="adamw", weight_decay=0.01, shift=3.0, lr_schedule="cosine",
                  checkpoint_every=250),
    # Stage 2 on a grid of 4 steps at lr 5e-5 (the paper: 32 steps, 5k iterations at batch 32+).
    # Stage 1's denoiser leaves a little noise in its x0 estimate at mid noise levels (~0.05-0.07
    # of eps at t = 0.3-0.6 on held-out walks), and consistency training carries that residue up
    # the grid to t = 1: within a few hundred steps at batch 2 the one-step frame turns to latent
    # noise (0.15-0.2 of eps), and a finer grid or a longer run carries more. On 4 held-out walks,
    # seconds 1-5: 32 steps at lr 2e-4 (400 steps) 12.0 dB; 250 steps: 32 at 5e-5 12.9, 8 at
    # 5e-5 13.3, 4 at 5e-5 13.6 (stage 1 in one step: 14.0; the copied first frame: 11.7).
    "distill": dict(steps=200, lr=5e-5, optimizer="adamw", weight_decay=0.01, shift=3.0, distill_steps=4,
                    checkpoint_every=100),
    # Stage 3: RMSProp (alpha 0.9) as in the paper, no gradient clipping (the paper states
    # none, and RMSProp's per-weight normalisation already bounds the step); 8 generated
    # frames per segment. aR1/aR2 at lambda 100, not the paper's 1000: at 1000 this
    # discriminator never separated real from generated (logit gap ~0.02, d_loss 0.69 for 300
    # updates), so the generator's gradient was noise; at 100 the gap runs 0.1-1.8. The
    # discriminator gets 10x the generator's rate: at equal rates the generator's logits
    # overtook the real ones within 20 updates on this world. Generator lr 2e-5 for 100
    # updates (8 held-out walks, seconds 1-5, from the stage 2 of a chain with a 1000-step
    # stage 1): 12.85 +- 0.38 dB, against 12.06 +- 0.68 at 5e-5 (paired +0.79 +- 0.40) and
    # 12.99 +- 0.86 for the study's 200 updates at 5e-5; the first updates against a young
    # discriminator cost PSNR. From this recipe's 800-step stage 1: 12.29 +- 0.44.
    "adversarial": dict(steps=100, lr=2e-5, disc_lr=5e-4, r_lambda=100.0, optimizer="rmsprop", weight_decay=0.0,
                        grad_clip=0.0, latent_frames=8),
    # Long-video training (paper 2.2): 7 extension segments overlapping by 2 frames,
    # 1 + 8 + 7 x 6 = 51 latent frames (8.5 s) against the window of 4 (0.67 s), the paper's
    # ratio (60 s of training video, a 5 s window); continues from 'adversarial'. An update
    # rolls out 50 frames and takes ~25 s on the 2-core CPU: 100 updates took 46 minutes in the
    # drift study (docs/results.md).
    "adversarial_long": dict(stage="adversarial", steps=100, lr=5e-5, disc_lr=5e-4, r_lambda=100.0,
                             optimizer="rmsprop", weight_decay=0.0, grad_clip=0.0, latent_frames=8, extensions=7),
}

# The attention window N in latent frames. The paper's N = 30 is 5 s; at the tiny world's
# cost a CPU cannot train on clips past 30 latent frames, and a window no training clip
# exceeds never masks anything, so the long-video mechanism would go untested. With N = 4
# every causal stage trains past it: adapt/distill clips are 1 + 6 frames, adversarial
# segments 1 + 8, long-video training 51.
WINDOW = 4


def with_changes(changes: dict) -> dict:
    """:data:`STAGE_DEFAULTS` with ``changes[stage]`` merged into each stage's recipe (the
    recipes of a config that differs from this one in a few fields)."""
    return {stage: {**recipe, **changes.get(stage, {})} for stage, recipe in STAGE_DEFAULTS.items()}


def get_config(stage: str = "base") -> ConfigDict:
    """``--config=configs/tiny_world.py:STAGE`` picks the stage and its defaults."""
    return config_of(stage, STAGE_DEFAULTS)


def config_of(stage: str, recipes: dict) -> ConfigDict:
    """The tiny world's config of ``stage`` with the training recipe ``recipes[stage]``
    (a dict like :data:`STAGE_DEFAULTS`'s values)."""
    if stage not in recipes:
        raise ValueError(f"config stage: expected one of {sorted(recipes)}, got {stage!r}")
    c = tiny.get_config()
    c.name = "tiny_world"
    # 64x64 video, 16x16 latents: the world's textures repeat every 1-3 pixels, and an 8x VAE
    # (8x8 latents) cannot hold them (~12 dB); 4x4-pixel patches keep colour and edges.
    c.video.update(dict(height=64, width=64, vae_spatial=4))
    c.vae.preset = "world"
    # Width 192 (4 heads of 48): a 2x2 token carries 64 noisy and 64 recycled latent values
    # plus the camera rays; at width 96 that stream is the bottleneck (from scratch, 400 steps,
    # the next frame's x0 from pure noise had 35-50% more error than at 192).
    c.model.head_dim = 48
    c.model.ffn_dim = 512
    c.model.text_dim = 16
    c.model.window = WINDOW
    c.model.text_len = 4
    c.data = ConfigDict(dict(source="world", height=c.video.height, width=c.video.width, latent_frames=6,
                             num_examples=4096, seed=0, folder="", text_len=c.model.text_len,
                             text_dim=c.model.text_dim, crop=0))
    # The train defaults (aapt_jax/train/config.py) are this world's; a phase of a stage
    # trains that stage ("stage" in its defaults).
    phase = dict(recipes[stage])
    c.data.latent_frames = phase.pop("latent_frames", c.data.latent_frames)
    c.data.crop = phase.pop("crop", 0)
    c.train = train_fields(**{"stage": stage, **phase})
    # What AAPT post-trains, shipped inside the package and made by ``python -m launch.pretrain``
    # (aapt_jax/weights/tiny_world): the pipeline starts from these instead of training them
    # (``launch.pipeline --from_scratch`` trains them too, with the recipes above).
    c.pretrained = ConfigDict(dict(vae="builtin:tiny_world/vae", base="builtin:tiny_world/base"))
    return c
