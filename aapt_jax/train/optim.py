"""Optimizers per the paper: AdamW for stages 1-2 (lr 1e-5, wd 0.01), RMSProp (alpha 0.9) for
the adversarial stage; optional gradient clipping by global norm.

RMSProp follows PyTorch's ``torch.optim.RMSprop`` (APT and AAPT are PyTorch):
``g / (sqrt(v) + eps)`` with eps 1e-8 outside the root. optax's default puts eps inside
the root, which floors the denominator at 1e-4 and shrinks the step 3-30x at the
gradient sizes of billion-parameter models."""

from __future__ import annotations

import optax

OPTIMIZERS = ("adamw", "rmsprop")
RMSPROP_EPS = 1e-8  # PyTorch's default


# A cosine schedule ends at this fraction of the peak rate.
COSINE_FINAL = 0.05


def make_optimizer(name: str, lr: float, *, weight_decay: float = 0.0, b1: float = 0.9, b2: float = 0.999,
                   rms_decay: float = 0.9, grad_clip: float | None = 1.0, warmup_steps: int = 0,
                   decay_steps: int = 0, hold_steps: int = 0):
    """``(transform, lr schedule)``: linear warmup over ``warmup_steps``, then constant, or with
    ``decay_steps > 0`` a cosine decay to ``COSINE_FINAL * lr`` at step ``decay_steps``.
    ``hold_steps > 0`` first keeps the rate at 0 for that many steps (the schedule starts
    after them; the optimizer's statistics still accumulate)."""
    if name not in OPTIMIZERS:
        raise ValueError(f"train.optimizer: expected one of {OPTIMIZERS}, got {name!r}")
    if not lr > 0:
        raise ValueError(f"train.lr: expected > 0, got {lr}")
    if decay_steps:
        schedule = optax.warmup_cosine_decay_schedule(0.0, lr, warmup_steps, max(decay_steps, warmup_steps + 1),
                                                      COSINE_FINAL * lr)
    elif warmup_steps:
        schedule = optax.linear_schedule(0.0, lr, warmup_steps)
    else:
        schedule = optax.constant_schedule(lr)
    if hold_steps:
        schedule = optax.join_schedules([optax.constant_schedule(0.0), schedule], [hold_steps])
    if name == "adamw":
        opt = optax.adamw(schedule, b1=b1, b2=b2, weight_decay=weight_decay)
    else:
        opt = optax.rmsprop(schedule, decay=rms_decay, eps=RMSPROP_EPS, eps_in_sqrt=False)
    chain = [optax.clip_by_global_norm(grad_clip)] if grad_clip else []
    return optax.chain(*chain, opt), schedule


def make_adversarial_optimizer(tc):
    """Separate RMSProp (alpha = train.rms_decay) for ``params['generator']`` and
    ``params['discriminator']``, each with its own clipping, so one player's gradient
    scale never throttles the other's. lr: ``train.lr`` (generator), ``train.disc_lr``
    (discriminator; 0 = the same); the generator's rate is 0 for the first ``train.disc_warmup``
    updates. Returns (transform, the generator's lr schedule)."""
    g, schedule = make_optimizer(tc.optimizer, tc.lr, weight_decay=tc.weight_decay, rms_decay=tc.rms_decay,
                                 grad_clip=tc.grad_clip, warmup_steps=tc.warmup_steps, hold_steps=tc.disc_warmup)
    d, _ = make_optimizer(tc.optimizer, tc.disc_lr or tc.lr, weight_decay=tc.weight_decay, rms_decay=tc.rms_decay,
                          grad_clip=tc.grad_clip, warmup_steps=tc.warmup_steps)
    labels = lambda params: {k: k for k in params}  # noqa: E731
    return optax.multi_transform({"generator": g, "discriminator": d}, labels), schedule
