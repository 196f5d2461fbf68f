"""Stage 3: adversarial post-training (paper 2.2, App. B and D), as pure functions.

One update computes the generator's and the discriminator's gradients from the same
generated videos (the discriminator sees them detached):

* generator: ``softplus(-(D(fake) - D(real)))`` (maximizing ``f_G(x) = -log(1 + e^-x)``),
* discriminator: ``softplus(D(fake) - D(real)) + aR1 + aR2`` (maximizing
  ``f_D(x) = -log(1 + e^x)``), with the approximated R1/R2 of APT:
  ``lambda * ||D(x) - D(x + sigma eps)||^2`` on real and on generated frames (finite
  differences instead of a gradient penalty, so no double backward).
* optionally (``control_mismatch = w > 0``, beyond the paper): ``w * softplus(D(real,
  wrong controls) - D(real))``, each real clip judged again with another clip's controls
  (the batch rolled by one) as if generated: matching-aware discrimination (GAN-CLS,
  Reed et al. 2016). The relativistic pair alone can be won on how frames look; this term
  makes the discriminator, and through it the generator, care whether the frames follow
  their camera.

Besides the losses, each update reports ``rollout_mse``: the mean squared distance between
the generated frames that continue a real clip along that clip's own controls (student
forcing: the first segment's rollout; teacher forcing: every frame) and the clip's true
latents. It is not trained on; it tracks how far the generator's own stream strays from
the video it would ideally reproduce.

Logits are per frame (``[B, K]``); the relativistic pair is formed frame by frame and
averaged. Every logit is computed with the same ``t ~ U(0, 1)`` per sample, so a pair
differs only in the video.

Generation modes (``AdversarialConfig.forcing``):

* ``student``: the generator gets only the ground-truth first frame and rolls out with the
  KV cache exactly as the streaming sampler does (:func:`rollout_frames`), the recycled
  frame detached, gradients flowing through the cache. The rollout itself runs without
  gradient; the gradient comes from :func:`replay_frames`, one parallel block-causal pass
  fed the rollout's own (detached) frames, which equals the gradient through the cache
  (the recycled input being detached) while saving ``O(K)`` activations instead of a
  scan's ``K`` copies of the cache window. The discriminator sees the streamed frames.
  With ``extensions = E > 0`` it then generates ``E`` more segments, each continuing from
  the previous segment's detached state (its cache a fixed prefix of the replay); a
  segment is judged together with the last ``overlap`` frames before it, against a
  different real clip (with that clip's caption), and its generator gradient is taken
  before the next segment runs (gradient accumulation: memory stays that of one
  segment). The extended segments follow the controls of other clips (new camera paths).
* ``teacher`` (App. D ablation): the generator predicts every frame in parallel from the
  ground-truth previous frames; the discriminator judges each generated frame against the
  real frames before it, running over the real video with its KV cache.

Batches hold ``(1 + E) * B`` clips; clip group ``j`` provides segment ``j``'s real video
and controls.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
from flax import nnx, struct

from aapt_jax.model.discriminator import Discriminator
from aapt_jax.sample.streaming import init_state, replay_frames, rollout_frames
from aapt_jax.train.objectives import mse

FORCING = ("student", "teacher")


@dataclasses.dataclass(frozen=True)
class AdversarialConfig:
    """forcing: 'student' | 'teacher'; segment_frames: generated latent frames judged per
    segment (``K``); overlap: frames of the previous segment each extended segment is
    judged with; extensions: extra segments; r_sigma/r_lambda: aR1/aR2 noise and weight;
    control_mismatch: weight of the matching-aware term (0: off, the paper)."""
    segment_frames: int  # no default: the data clips' frames after the first, or fewer
    forcing: str = "student"
    overlap: int = 2
    extensions: int = 0
    r_sigma: float = 0.1
    r_lambda: float = 1000.0
    control_mismatch: float = 0.0

    def check(self, clip_frames: int) -> None:
        """The fields against the data clips (``clip_frames``: the latent frames after the
        first in each clip), before anything compiles; each field alone is checked by
        :class:`aapt_jax.train.config.TrainConfig`. ValueErrors naming the field."""
        if not 1 <= self.segment_frames <= clip_frames:
            raise ValueError(f"train.segment_frames: expected 1..{clip_frames} (the data clips' latent frames after "
                             f"the first, data.latent_frames), got {self.segment_frames}")
        if self.extensions and not 0 <= self.overlap < self.segment_frames:
            raise ValueError(f"train.overlap: expected 0 <= overlap < segment_frames ({self.segment_frames}), "
                             f"got {self.overlap}")

    @property
    def segments(self) -> int:
        return 1 + self.extensions

    def video_frames(self) -> int:
        """Latent frames of the whole generated video (first frame included)."""
        return 1 + self.segment_frames + self.extensions * (self.segment_frames - self.overlap)


def generator_loss(fake_logits, real_logits):
    return jnp.mean(jax.nn.softplus(-(fake_logits - real_logits)))


def discriminator_loss(fake_logits, real_logits):
    return jnp.mean(jax.nn.softplus(fake_logits - real_logits))


def perturb_judged(video, key, sigma):
    """Gaussian perturbation of the judged frames ``1..K`` (frame 0 is the shared condition)."""
    noise = sigma * jax.random.normal(key, video[:, 1:].shape, video.dtype)
    return jnp.concatenate([video[:, :1], video[:, 1:] + noise], axis=1)


def teacher_forced_logits(disc: Discriminator, real, fake, t, text, controls):
    """Logits of generated frames each judged against the real frames before it (App. D).

    real: ``[B, 1 + K, h, w, C]``; fake: ``[B, K, h, w, C]`` (frame ``k`` generated from
    real frame ``k - 1``); controls ``[B, K, h, w, Cc]`` or None.
    Returns (fake logits, real logits), each ``[B, K]``; the real ones equal ``disc(real)``.
    """
    cache = init_state(disc.backbone, real[:, :1], text).cache

    def body(cache, xs):
        p, fake_p, real_p, real_next, ctrl = xs
        ctrl = None if ctrl is None else ctrl[:, None]
        _, lf = disc.step(cache, p, fake_p[:, None], real_p[:, None], t, ctrl, commit=False)
        cache, lr = disc.step(cache, p, real_next[:, None], real_p[:, None], t, ctrl)
        return cache, (lf[:, 0], lr[:, 0])

    K = fake.shape[1]
    move = lambda x: None if x is None else jnp.moveaxis(x, 1, 0)  # noqa: E731
    xs = (jnp.arange(K, dtype=jnp.int32), move(fake), move(real[:, :-1]), move(real[:, 1:]), move(controls))
    _, (lf, lr) = jax.lax.scan(body, cache, xs)
    return jnp.moveaxis(lf, 0, 1), jnp.moveaxis(lr, 0, 1)


def student_generator_loss(g_graphdef, disc: Discriminator, state, first, context, noise, rolled, controls,
                           judged_controls, text, t, real_logits, g_params):
    """The generator loss of one student-forcing segment whose rollout already ran.

    ``rolled`` ``[B, K, h, w, C]``: the segment's frames as :func:`rollout_frames` streamed
    them from ``state`` (None: from ``first``) with ``noise`` and ``controls``; ``context``
    ``[B, c, h, w, C]``: the frames judged before them (the first frame, or the overlap);
    ``judged_controls``: controls of ``context[:, 1:]`` and ``rolled``. Differentiating this
    in ``g_params`` gives the gradient through the KV cache from :func:`replay_frames` (one
    parallel pass). Returns (loss, (fake logits ``[B, c - 1 + K]``, max |replay - rolled|)).
    """
    sg = jax.lax.stop_gradient
    replayed = replay_frames(nnx.merge(g_graphdef, g_params), state, first, noise, rolled, controls, text)
    # The discriminator sees the streamed frames themselves; the replay (equal up to float
    # rounding) carries their gradient.
    frames = rolled + (replayed - sg(replayed))
    lf = disc(jnp.concatenate([context, frames], axis=1), t, text, judged_controls)
    return generator_loss(lf, real_logits), (lf, jnp.max(jnp.abs(replayed - rolled)))


@dataclasses.dataclass(frozen=True)
class Segments:
    """The per-segment data of one update (leading axis: segment)."""
    real: jax.Array          # [S, B, 1 + K, h, w, C]
    controls: object         # [S, B, K, h, w, Cc] or None


def split_segments(acfg: AdversarialConfig, latents, controls) -> tuple[jax.Array, Segments]:
    """Batch of ``S * B`` clips -> (first frame ``[B, 1, h, w, C]``, :class:`Segments`)."""
    S, K = acfg.segments, acfg.segment_frames
    n = latents.shape[0]
    if n % S:
        raise ValueError(f"batch: expected a multiple of {S} clips (1 + train.extensions), got {n}")
    group = lambda x: x.reshape(S, n // S, *x.shape[1:])  # noqa: E731
    real = group(latents[:, :1 + K])
    return real[0, :, :1], Segments(real, None if controls is None else group(controls[:, :K]))


def _tail(x, n):
    return None if x is None else x[:, x.shape[1] - n:]


def _cat(a, b):
    return None if a is None else jnp.concatenate([a, b], axis=1)


@struct.dataclass
class Judged:
    """What the discriminator update judged (leading axis ``S*B``, segment-major) and how
    the generated segments were drawn."""
    fake: jax.Array            # [S*B, 1 + K, h, w, C]: context frames + generated ones
    fake_controls: object      # [S*B, K, h, w, Cc] or None
    fake_text: jax.Array       # [S*B, Lt, D]
    real: jax.Array            # [S*B, 1 + K, h, w, C]
    real_controls: object
    real_text: jax.Array
    noise_keys: jax.Array      # [S] keys (student forcing): segment j's noise is the
                               # StreamingSampler.rollout draw of noise_keys[j]


def adversarial_grads(acfg: AdversarialConfig, g_graphdef, d_graphdef, params, latents, text, controls, key):
    """(gradients like params, metrics) of one update; see :func:`adversarial_update`."""
    grads, metrics, _ = adversarial_update(acfg, g_graphdef, d_graphdef, params, latents, text, controls, key)
    return grads, metrics


def adversarial_update(acfg: AdversarialConfig, g_graphdef, d_graphdef, params, latents, text, controls, key):
    """Gradients of one adversarial update.

    params: ``{'generator': ..., 'discriminator': ...}`` pure dicts; latents
    ``[S*B, 1+Kd, h, w, C]`` normalized; text ``[S*B, Lt, D]``; controls
    ``[S*B, Kd, h, w, Cc]`` or None. Clip group ``j`` (rows ``j*B .. j*B+B-1``) gives
    segment ``j``'s real video, its caption and its controls. The generated video follows
    group 0's caption throughout. Returns (grads like params, metrics, :class:`Judged`).
    """
    first, seg = split_segments(acfg, latents, controls)
    S, K, O = acfg.segments, acfg.segment_frames, acfg.overlap
    B = first.shape[0]
    real_text = text.reshape(S, B, *text.shape[1:])        # each real segment keeps its own caption
    text = real_text[0]                                    # the generated video's caption
    k_t, k_noise, k_r1, k_r2 = jax.random.split(key, 4)
    t = jax.random.uniform(k_t, (B,))
    d_params = params["discriminator"]
    disc = nnx.merge(d_graphdef, d_params)
    sg = jax.lax.stop_gradient

    def real_logits_of(j):
        ctrl = None if seg.controls is None else seg.controls[j]
        return sg(disc(seg.real[j], t, real_text[j], ctrl))

    # ---- generator: segment by segment, gradients accumulated ------------------------------
    fakes, fake_controls, g_losses, real_logits, fake_logits = [], [], [], [], []
    g_grads = None
    replay_err = jnp.zeros((), jnp.float32)
    noise_keys = jnp.stack([jax.random.fold_in(k_noise, j) for j in range(S)])
    if acfg.forcing == "teacher":
        real = seg.real[0]
        ctrl = None if seg.controls is None else seg.controls[0]

        def g_loss(gp):
            gen = nnx.merge(g_graphdef, gp)
            noise = jax.random.normal(k_noise, real[:, 1:].shape, real.dtype)
            v = gen(noise, jnp.full((B,), 1000.0), text, recycled=real[:, :-1], control=ctrl)
            frames = noise - v
            lf, lr = teacher_forced_logits(disc, real, frames, t, text, ctrl)
            return generator_loss(lf, sg(lr)), (frames, lf, lr)

        (loss, (frames, lf, lr)), g_grads = jax.value_and_grad(g_loss, has_aux=True)(params["generator"])
        rollout_mse = mse(frames, real[:, 1:])
        fakes.append(sg(jnp.concatenate([real[:, :1], frames], axis=1)))
        fake_controls.append(ctrl)
        g_losses.append(loss)
        real_logits.append(lr)
        fake_logits.append(lf)
    else:
        state, context, context_ctrl = None, first, None
        for j in range(S):
            new = K if j == 0 else K - O
            noise = jax.random.normal(noise_keys[j], (B, new, *first.shape[2:]), first.dtype)
            # segment 0 follows its clip's path; later ones the tail of another clip's path
            ctrl_new = None if seg.controls is None else seg.controls[j][:, K - new:]
            seg_ctrl = ctrl_new if j == 0 else _cat(context_ctrl, ctrl_new)
            lr = real_logits_of(j)
            # The rollout exactly as the streaming sampler runs it, without gradient ...
            gen = nnx.merge(g_graphdef, sg(params["generator"]))
            start = init_state(gen, first, text) if state is None else state
            next_state, rolled = rollout_frames(gen, start, noise, ctrl_new, detach_recycled=True)
            if j == 0:  # the one segment that continues its own clip along that clip's path
                rollout_mse = mse(rolled, seg.real[0][:, 1:])

            # ... and its gradient through the cache from one parallel pass over its frames.
            g_loss = functools.partial(student_generator_loss, g_graphdef, disc, state, first, context, noise,
                                       rolled, ctrl_new, seg_ctrl, text, t, lr)
            (loss, (lf, err)), grads = jax.value_and_grad(g_loss, has_aux=True)(params["generator"])
            # the next segment continues from this one's cache, detached (paper 2.2)
            state, video = sg(next_state), jnp.concatenate([context, rolled], axis=1)
            g_grads = grads if g_grads is None else jax.tree.map(jnp.add, g_grads, grads)
            replay_err = jnp.maximum(replay_err, err.astype(jnp.float32))
            fakes.append(video)
            fake_controls.append(seg_ctrl)
            g_losses.append(loss)
            real_logits.append(lr)
            fake_logits.append(lf)
            context = video[:, video.shape[1] - (O + 1):]
            context_ctrl = _tail(seg_ctrl, O)
        g_grads = jax.tree.map(lambda g: g / S, g_grads)

    # ---- discriminator: all segments in one batch ----------------------------------------------
    fake_videos = jnp.concatenate(fakes, axis=0)                      # [S*B, 1 + K, ...]
    real_videos = seg.real.reshape(-1, *seg.real.shape[2:])
    real_ctrl = None if seg.controls is None else seg.controls.reshape(-1, *seg.controls.shape[2:])
    fake_ctrl = None if seg.controls is None else jnp.concatenate(fake_controls, axis=0)
    tt = jnp.tile(t, S)
    real_text, fake_text = real_text.reshape(-1, *text.shape[1:]), jnp.tile(text, (S, 1, 1))

    judged = Judged(fake_videos, fake_ctrl, fake_text, real_videos, real_ctrl, real_text, noise_keys)
    d_loss = functools.partial(discriminator_objective, acfg, d_graphdef, judged, tt, (k_r1, k_r2),
                               teacher=(seg.real[0], text) if acfg.forcing == "teacher" else None)
    (d_total, (d_adv, r1, r2, mis, lr_d, lf_d)), d_grads = jax.value_and_grad(d_loss, has_aux=True)(d_params)
    g_loss_mean = jnp.mean(jnp.stack(g_losses))
    metrics = {
        "loss": g_loss_mean + d_total, "g_loss": g_loss_mean, "d_loss": d_adv, "r1": r1, "r2": r2,
        "d_mismatch": mis, "rollout_mse": rollout_mse,
        "logits_real": jnp.mean(lr_d), "logits_fake": jnp.mean(lf_d),
        "logit_gap": jnp.mean(jnp.concatenate(real_logits, 1) - jnp.concatenate(fake_logits, 1)),
        "g_grad_norm": _norm(g_grads), "d_grad_norm": _norm(d_grads),
    }
    if acfg.forcing == "student":
        metrics["replay_max_abs_err"] = replay_err
    return {"generator": g_grads, "discriminator": d_grads}, metrics, judged


def discriminator_objective(acfg: AdversarialConfig, d_graphdef, judged: Judged, t, keys, d_params, *,
                            teacher=None):
    """The discriminator's loss of one update and its parts, ``(total, (adv, r1, r2,
    mismatch, real logits, fake logits))``: the relativistic loss of ``judged.fake`` against
    ``judged.real`` (``t`` ``[S*B]``) plus aR1/aR2 on copies perturbed with ``keys`` = (real
    key, fake key), plus the matching-aware term when ``acfg.control_mismatch > 0``.
    Student forcing judges all the videos in one pass; ``teacher`` = (real clip
    ``[B, 1 + K, ...]``, caption) judges each generated frame against the real frames before
    it (App. D)."""
    d = nnx.merge(d_graphdef, d_params)
    k_r1, k_r2 = keys
    real_p = perturb_judged(judged.real, k_r1, acfg.r_sigma)
    fake_p = perturb_judged(judged.fake, k_r2, acfg.r_sigma)
    mismatch = acfg.control_mismatch > 0 and judged.real_controls is not None
    # each real clip with the next clip's controls (rows are distinct clips: the stage
    # refuses a batch of one)
    wrong = jnp.roll(judged.real_controls, 1, axis=0) if mismatch else None
    if teacher is not None:
        ref, text = teacher
        lf, lr = teacher_forced_logits(d, ref, judged.fake[:, 1:], t, text, judged.real_controls)
        lf_p, _ = teacher_forced_logits(d, ref, fake_p[:, 1:], t, text, judged.real_controls)
        lr_p = d(real_p, t, text, judged.real_controls)
        lm = d(judged.real, t, text, wrong) if mismatch else None
    else:
        # (video, controls, caption) of each judged batch, all in one pass
        parts = [(judged.real, judged.real_controls, judged.real_text), (judged.fake, judged.fake_controls,
                 judged.fake_text), (real_p, judged.real_controls, judged.real_text),
                 (fake_p, judged.fake_controls, judged.fake_text)]
        parts += [(judged.real, wrong, judged.real_text)] if mismatch else []
        videos, ctrls, texts = zip(*parts)
        cat = lambda xs: None if xs[0] is None else jnp.concatenate(xs, axis=0)  # noqa: E731
        logits = d(cat(videos), jnp.tile(t, len(parts)), cat(texts), cat(ctrls))
        lr, lf, lr_p, lf_p, *rest = jnp.split(logits, len(parts), axis=0)
        lm = rest[0] if mismatch else None
    adv = discriminator_loss(lf, lr)
    r1 = acfg.r_lambda * jnp.mean(jnp.square(lr - lr_p))
    r2 = acfg.r_lambda * jnp.mean(jnp.square(lf - lf_p))
    mis = acfg.control_mismatch * discriminator_loss(lm, lr) if mismatch else jnp.zeros((), adv.dtype)
    return adv + r1 + r2 + mis, (adv, r1, r2, mis, lr, lf)


def _norm(tree):
    return jnp.sqrt(sum(jnp.sum(jnp.square(x)) for x in jax.tree.leaves(tree)))
