"""Optimizers per the paper: AdamW for stages 1-2 (lr 1e-5, wd 0.01), RMSProp (alpha 0.9) for
the adversarial stage; gradient clipping by global norm."""

from __future__ import annotations

import optax

OPTIMIZERS = ("adamw", "rmsprop")


def make_optimizer(name: str, lr: float, *, weight_decay: float = 0.0, b1: float = 0.9, b2: float = 0.999,
                   rms_decay: float = 0.9, grad_clip: float | None = 1.0, warmup_steps: int = 0):
    if name not in OPTIMIZERS:
        raise ValueError(f"train.optimizer: expected one of {OPTIMIZERS}, got {name!r}")
    if not lr > 0:
        raise ValueError(f"train.lr: expected > 0, got {lr}")
    schedule = optax.linear_schedule(0.0, lr, warmup_steps) if warmup_steps else optax.constant_schedule(lr)
    if name == "adamw":
        opt = optax.adamw(schedule, b1=b1, b2=b2, weight_decay=weight_decay)
    else:
        opt = optax.rmsprop(schedule, decay=rms_decay)
    chain = [optax.clip_by_global_norm(grad_clip)] if grad_clip else []
    return optax.chain(*chain, opt), schedule
