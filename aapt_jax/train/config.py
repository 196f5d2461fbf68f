"""The ``train`` section of an experiment config, typed and validated in one place.

An experiment config keeps ``train`` as an ml_collections ConfigDict holding every field
below (so ``--config.train.lr=1e-4`` overrides any of them); :func:`train_fields` writes it
from the fields that differ from the defaults, and the library reads it back through
:func:`train_config`. The defaults are the tiny CPU world's.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Mapping

from ml_collections import ConfigDict

from aapt_jax.fields import suggestions
from aapt_jax.parallel.sharding import STRATEGIES
from aapt_jax.train.adversarial import FORCING
from aapt_jax.train.optim import OPTIMIZERS

VAE_POSTERIORS = ("sample", "mean")
GENERATOR_SHARDINGS = ("auto",) + tuple(STRATEGIES)
LR_SCHEDULES = ("constant", "cosine")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """One stage's training run. ``stage`` names an entry of :data:`aapt_jax.train.stages.STAGES`."""

    stage: str = "base"
    steps: int = 300
    batch_size: int = 2
    seed: int = 0
    # Where the weights start: the previous stage's workdir (or a diffusers transformer for
    # stage 1); random_init skips it (throughput benchmarks).
    init_from: str = ""
    random_init: bool = False
    # Checkpoints, logs and sample videos (every N steps; sample_every 0 = none).
    checkpoint_every: int = 50
    keep_checkpoints: int = 3
    restore_step: int = 0  # 0 = the latest
    log_every: int = 10
    # Optimizer: AdamW (stages 0-2) or RMSProp (stage 3); linear warmup; global-norm clipping (0 = off).
    optimizer: str = "adamw"
    lr: float = 1e-3
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    warmup_steps: int = 20
    lr_schedule: str = "constant"  # after warmup: "constant", or "cosine" down to 5% at train.steps
    # Flow matching: timestep shift of the training noise, consistency-distillation grid.
    shift: float = 24.0
    distill_steps: int = 32
    # What the vae stage's decoder learns from: a posterior sample ("sample", a VAE as Wan's)
    # or the posterior mean ("mean": what every generator stage encodes with, and what
    # diffusers' Wan pipelines take, mode/argmax). With a small KL weight the sample's noise
    # (std 1 at init) swamps the latents for hundreds of steps; "mean" learns at once.
    vae_posterior: str = "sample"
    kl_weight: float = 1e-4  # the vae stage's KL term
    # Multi-step previews (stage 0 and 1 samples, every sample_every steps) and the drift
    # evaluation of stage 1.
    sample_every: int = 0
    sample_steps: int = 16
    sample_shift: float = 5.0
    # Stage 3 (aapt_jax/train/adversarial.py): forcing, segments (segment_frames 0 =
    # data.latent_frames) and extension segments.
    forcing: str = "student"
    segment_frames: int = 0
    overlap: int = 2
    extensions: int = 0
    # Stage 3's discriminator: backbone from this stage 1 workdir, the aR1/aR2 regularizer's
    # noise and weight, logit heads after these blocks (negative: from the end), its lr
    # (0 = lr), RMSProp alpha, divergence bound.
    disc_init_from: str = ""
    r_sigma: float = 0.1
    r_lambda: float = 1000.0
    # Weight of a matching-aware discriminator term, beyond the paper (0: off): each real clip
    # is judged again with another clip's controls, as if generated, so the discriminator
    # must check that frames follow their controls (aapt_jax/train/adversarial.py).
    control_mismatch: float = 0.0
    disc_layers: tuple[int, ...] = (-3, -1)
    disc_head_dim: int = 64
    disc_lr: float = 0.0
    # Updates at the start of stage 3 that train the discriminator alone (the generator's rate
    # is 0, then warms up over warmup_steps): its logit heads start random, and the gradient
    # they send the generator before they separate anything is noise.
    disc_warmup: int = 0
    rms_decay: float = 0.9
    max_logit: float = 1e3
    # How each player's params, gradients and optimizer state sit on the mesh's fsdp axis
    # (aapt_jax.parallel.sharding.STRATEGIES; paper App. "Parallelism"): 'zero3' shards all
    # three, 'zero2' keeps the params whole in the group and shards the rest. 'auto': zero2
    # for the generator of the adversarial stage under student forcing (its recurrent
    # forwards would all-gather every weight once per frame), zero3 elsewhere.
    generator_sharding: str = "auto"
    discriminator_sharding: str = "zero3"

    def __post_init__(self):
        for f in dataclasses.fields(self):
            _check_type(f.name, getattr(self, f.name), f.default)
        for name in ("steps", "batch_size", "checkpoint_every", "log_every", "keep_checkpoints", "distill_steps",
                     "sample_steps", "disc_head_dim"):
            _need(name, getattr(self, name) >= 1, "a positive int", getattr(self, name))
        for name in ("seed", "warmup_steps", "restore_step", "sample_every", "segment_frames", "overlap",
                     "extensions", "disc_warmup"):
            _need(name, getattr(self, name) >= 0, "an int >= 0", getattr(self, name))
        for name in ("weight_decay", "grad_clip", "kl_weight", "disc_lr", "control_mismatch"):
            _need(name, getattr(self, name) >= 0, "a finite float >= 0", getattr(self, name))
        for name in ("lr", "shift", "sample_shift", "max_logit"):
            _need(name, getattr(self, name) > 0, "> 0", getattr(self, name))
        _need("optimizer", self.optimizer in OPTIMIZERS, f"one of {OPTIMIZERS}", self.optimizer)
        _need("lr_schedule", self.lr_schedule in LR_SCHEDULES, f"one of {LR_SCHEDULES}", self.lr_schedule)
        _need("vae_posterior", self.vae_posterior in VAE_POSTERIORS, f"one of {VAE_POSTERIORS}", self.vae_posterior)
        _need("rms_decay", 0 < self.rms_decay < 1, "a float in (0, 1)", self.rms_decay)
        _need("forcing", self.forcing in FORCING, f"one of {FORCING}", self.forcing)
        _need("generator_sharding", self.generator_sharding in GENERATOR_SHARDINGS, f"one of {GENERATOR_SHARDINGS}",
              self.generator_sharding)
        _need("discriminator_sharding", self.discriminator_sharding in STRATEGIES, f"one of {tuple(STRATEGIES)}",
              self.discriminator_sharding)
        if self.extensions and self.forcing != "student":
            raise ValueError("train.extensions: long-video training generates autoregressively; it needs "
                             f"forcing='student', got {self.forcing!r}")
        if not (self.r_sigma > 0 and self.r_lambda >= 0):
            raise ValueError(f"train.r_sigma/r_lambda: expected sigma > 0 and lambda >= 0, got "
                             f"{self.r_sigma}, {self.r_lambda}")

    @classmethod
    def from_mapping(cls, mapping: Mapping[str, Any]) -> "TrainConfig":
        """From a dict or ConfigDict; unknown fields are refused, naming the nearest one."""
        items = mapping.to_dict() if hasattr(mapping, "to_dict") else dict(mapping)
        names = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(items) - set(names))
        if unknown:
            raise ValueError(f"train: unknown field(s) {unknown}{suggestions(unknown, names)}; "
                             f"expected a subset of {sorted(names)}")
        if isinstance(items.get("disc_layers"), list):
            items["disc_layers"] = tuple(items["disc_layers"])
        return cls(**items)

    def strategies(self) -> dict[str, str]:
        """``{player: strategy}``: the generator's ('auto' resolved) and the discriminator's."""
        generator = self.generator_sharding
        if generator == "auto":
            generator = "zero2" if self.stage == "adversarial" and self.forcing == "student" else "zero3"
        return {"generator": generator, "discriminator": self.discriminator_sharding}

    def replace(self, **changes) -> "TrainConfig":
        return dataclasses.replace(self, **changes)

    def to_config_dict(self) -> ConfigDict:
        return ConfigDict(dataclasses.asdict(self))


def train_fields(**changes) -> ConfigDict:
    """``config.train`` of an experiment config: every field, the defaults updated by
    ``changes`` (validated now, and again when a run reads it)."""
    return TrainConfig.from_mapping(changes).to_config_dict()


def train_config(config: ConfigDict) -> TrainConfig:
    """The validated ``train`` section of an experiment config."""
    return TrainConfig.from_mapping(config.train)


def _need(name: str, ok: bool, expected: str, value) -> None:
    if not ok:
        raise ValueError(f"train.{name}: expected {expected}, got {value!r}")


def _check_type(name: str, value, default) -> None:
    """Each field has its default's type (an int is a fine float; a bool is no number)."""
    if isinstance(default, bool):
        _need(name, isinstance(value, bool), "a bool", value)
    elif isinstance(default, int):
        _need(name, isinstance(value, int) and not isinstance(value, bool), "an int", value)
    elif isinstance(default, float):
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        _need(name, ok, "a finite number", value)
    elif isinstance(default, str):
        _need(name, isinstance(value, str), "a string", value)
    elif isinstance(default, tuple):
        ok = isinstance(value, tuple) and all(isinstance(v, int) and not isinstance(v, bool) for v in value)
        _need(name, ok and len(value) >= 1, "a tuple of ints", value)
