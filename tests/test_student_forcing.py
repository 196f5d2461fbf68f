"""Student forcing in O(K) memory: a rollout without gradient, then one parallel replay.

The reference is what the paper describes literally: the generator rolls out through its
KV cache under ``jax.value_and_grad``, the recycled frame detached, the gradient flowing
through the cache (``lax.scan`` keeps the cache window at every frame). The update must
give the same gradients, for one segment and for a long-video update, with clips past
the attention window and camera controls.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from aapt_jax.model.config import DiTConfig
from aapt_jax.model.controls import ControlConfig, control_maps
from aapt_jax.model.discriminator import Discriminator, DiscriminatorConfig
from aapt_jax.model.dit import create
from aapt_jax.sample.camera_path import walk_path
from aapt_jax.sample.streaming import StreamingSampler, init_state, replay_frames, rollout_frames, rollout_noise
from aapt_jax.train import adversarial

N = 3                      # attention window
K = 3 * N                  # generated frames per segment: past the window
HW = (32, 32)              # video; latents 4 x 4
CTRL = ControlConfig(kind="camera", fold=1)
CFG = DiTConfig(num_layers=2, num_heads=2, head_dim=12, ffn_dim=32, latent_channels=4, text_dim=8, causal=True,
                window=N, control_channels=24, latent_height=4, latent_width=4)


def _camera_controls(clips, latent_frames, seed):
    """Camera maps ``[clips, latent_frames, 4, 4, 24]`` of walks with different sways."""
    maps = []
    for i in range(clips):
        intr, c2w = walk_path(1 + 4 * latent_frames, HW, step=0.05 + 0.02 * i, yaw_amplitude=0.3 + 0.2 * (i + seed),
                              yaw_period=17.0 + 5 * i)
        maps.append(control_maps(CTRL, HW, intrinsics=intr, c2w=c2w)[0])
    return jnp.stack(maps)


@pytest.fixture(scope="module")
def players():
    g_graphdef, g_params = create(CFG, seed=0)
    disc = Discriminator(CFG, DiscriminatorConfig(layers=(0, -1), head_dim=16), rngs=nnx.Rngs(1))
    d_graphdef, d_state = nnx.split(disc)
    params = {"generator": nnx.to_pure_dict(g_params), "discriminator": nnx.to_pure_dict(d_state)}
    return g_graphdef, d_graphdef, params


def _batch(acfg, B=2, seed=0):
    n = acfg.segments * B
    k = jax.random.split(jax.random.key(seed), 2)
    latents = jax.random.normal(k[0], (n, 1 + K, 4, 4, 4))
    text = jax.random.normal(k[1], (n, 3, 8))
    return latents, text, _camera_controls(n, K, seed)


def _scan_through_cache_generator_grads(acfg, g_graphdef, d_graphdef, params, latents, text, controls, key):
    """The generator gradient as the paper states it: rollouts differentiated through the
    cache under ``lax.scan``; same noise, timesteps, captions and controls as the update."""
    first, seg = adversarial.split_segments(acfg, latents, controls)
    S, O = acfg.segments, acfg.overlap
    B = first.shape[0]
    real_text = text.reshape(S, B, *text.shape[1:])
    k_t, k_noise, _, _ = jax.random.split(key, 4)
    t = jax.random.uniform(k_t, (B,))
    disc = nnx.merge(d_graphdef, params["discriminator"])
    sg = jax.lax.stop_gradient
    state, context, context_ctrl, total = None, first, None, None
    for j in range(S):
        new = K if j == 0 else K - O
        noise = jax.random.normal(jax.random.fold_in(k_noise, j), (B, new, *first.shape[2:]), first.dtype)
        ctrl_new = seg.controls[j][:, K - new:]
        seg_ctrl = ctrl_new if j == 0 else jnp.concatenate([context_ctrl, ctrl_new], axis=1)
        lr = sg(disc(seg.real[j], t, real_text[j], seg.controls[j]))

        def loss(gp, state=state, context=context, noise=noise, ctrl_new=ctrl_new, seg_ctrl=seg_ctrl, lr=lr):
            gen = nnx.merge(g_graphdef, gp)
            st = init_state(gen, first, real_text[0]) if state is None else state
            st, frames = rollout_frames(gen, st, noise, ctrl_new, detach_recycled=True)
            video = jnp.concatenate([context, frames], axis=1)
            return adversarial.generator_loss(disc(video, t, real_text[0], seg_ctrl), lr), (st, video)

        (_, (state, video)), grads = jax.value_and_grad(loss, has_aux=True)(params["generator"])
        state, video = sg(state), sg(video)
        total = grads if total is None else jax.tree.map(jnp.add, total, grads)
        context = video[:, video.shape[1] - (O + 1):]
        context_ctrl = seg_ctrl[:, seg_ctrl.shape[1] - O:]
    return jax.tree.map(lambda g: g / S, total)


def _max_rel_err(a, b):
    errs = [float(jnp.max(jnp.abs(x - y))) / (float(jnp.max(jnp.abs(y))) + 1e-30)
            for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b))]
    return max(errs)


@pytest.mark.parametrize("extensions", [0, 2])
def test_update_gradients_equal_the_scan_through_cache(players, extensions):
    g_graphdef, d_graphdef, params = players
    acfg = adversarial.AdversarialConfig(segment_frames=K, overlap=2, extensions=extensions)
    latents, text, controls = _batch(acfg, seed=extensions)
    key = jax.random.key(7)
    grads, metrics, judged = jax.jit(
        lambda p, *a: adversarial.adversarial_update(acfg, g_graphdef, d_graphdef, p, *a))(
        params, latents, text, controls, key)
    # the drift metric: the first segment's streamed frames against its own clip's true latents
    B = latents.shape[0] // acfg.segments
    np.testing.assert_allclose(metrics["rollout_mse"], jnp.mean(jnp.square(judged.fake[:B, 1:] - latents[:B, 1:])),
                               rtol=1e-5)
    ref = jax.jit(lambda p, *a: _scan_through_cache_generator_grads(acfg, g_graphdef, d_graphdef, p, *a))(
        params, latents, text, controls, key)
    err = _max_rel_err(grads["generator"], ref)
    print(f"extensions={extensions}: max relative gradient error {err:.2e}, replay error "
          f"{float(metrics['replay_max_abs_err']):.2e}")
    assert err <= 1e-5, err
    assert float(metrics["replay_max_abs_err"]) <= 1e-5
    # the gradient reaches the keys of past frames (through the cache) at all
    assert float(jnp.max(jnp.abs(grads["generator"]["blocks"][0]["attn1"]["to_k"]["kernel"]))) > 0


def test_teacher_forcing_reports_the_drift_metric_of_its_frames(players):
    """Teacher forcing: every generated frame continues its clip; ``rollout_mse`` is their
    distance to the clip's true latents."""
    g_graphdef, d_graphdef, params = players
    acfg = adversarial.AdversarialConfig(segment_frames=K, forcing="teacher")
    latents, text, controls = _batch(acfg, seed=1)
    _, metrics, judged = jax.jit(lambda p, *a: adversarial.adversarial_update(acfg, g_graphdef, d_graphdef, p, *a))(
        params, latents, text, controls, jax.random.key(2))
    want = jnp.mean(jnp.square(judged.fake[:, 1:] - latents[:, 1:]))
    assert float(want) > 0
    np.testing.assert_allclose(metrics["rollout_mse"], want, rtol=1e-5)


def test_replay_gives_the_streaming_samplers_frames(players):
    """Same noise -> the frames of ``StreamingSampler.rollout``, for a fresh stream and for a
    stream continued past the window from the sampler's own state."""
    g_graphdef, _, params = players
    gp = params["generator"]
    latents, text, controls = _batch(adversarial.AdversarialConfig(segment_frames=K))
    first, text = latents[:2, :1], text[:2]
    controls = jnp.concatenate([controls[:2], controls[:2, ::-1]], axis=1)     # 2K frames of control
    sampler = StreamingSampler(CFG, g_graphdef)
    model = nnx.merge(g_graphdef, gp)
    state = sampler.init(gp, first, text)
    for segment in range(2):
        key = jax.random.key(segment)
        noise = rollout_noise(key, state, K)
        ctrl = controls[:, segment * K:(segment + 1) * K]
        new_state, frames = sampler.rollout(gp, state, ctrl, key, K)
        replayed = replay_frames(model, None if segment == 0 else state, first, noise, frames, ctrl, text)
        err = float(jnp.max(jnp.abs(replayed - frames)) / jnp.max(jnp.abs(frames)))
        assert err <= 1e-5, (segment, err)
        state = new_state


@pytest.fixture(scope="module")
def long_update(players):
    """One long-video update (2 extensions) with its judged videos; B = 2 clips per group."""
    g_graphdef, d_graphdef, params = players
    acfg = adversarial.AdversarialConfig(segment_frames=K, overlap=2, extensions=2)
    latents, text, controls = _batch(acfg, seed=3)
    update = jax.jit(lambda p, *a: adversarial.adversarial_update(acfg, g_graphdef, d_graphdef, p, *a))
    grads, metrics, judged = update(params, latents, text, controls, jax.random.key(5))
    return acfg, latents, text, controls, grads, metrics, judged, update


def test_discriminator_judges_the_streamed_frames_with_overlap_context(players, long_update):
    """Segment j's fake video = the last ``overlap`` frames of segment j-1 (and the frame
    before them) + what StreamingSampler.rollout streams from the continued state with the
    same noise: the discriminator sees exactly what inference would produce."""
    g_graphdef, _, params = players
    acfg, latents, text, controls, _, _, judged, _ = long_update
    S, B, O = acfg.segments, 2, acfg.overlap
    gp = params["generator"]
    sampler = StreamingSampler(CFG, g_graphdef)
    state = sampler.init(gp, latents[:B, :1], text[:B])
    fake = judged.fake.reshape(S, B, *judged.fake.shape[1:])
    for j in range(S):
        new = K if j == 0 else K - O
        ctrl = controls[j * B:(j + 1) * B, K - new:K]
        state, frames = sampler.rollout(gp, state, ctrl, judged.noise_keys[j], new)
        np.testing.assert_allclose(fake[j][:, 1 + K - new:], frames, rtol=0, atol=1e-5)
        if j:  # the overlap context: the frames judged before the new ones
            np.testing.assert_array_equal(fake[j][:, :O + 1], fake[j - 1][:, K - O:])
        else:
            np.testing.assert_array_equal(fake[0][:, :1], latents[:B, :1])


def test_captions_and_controls_pair_per_segment(long_update):
    acfg, latents, text, controls, _, metrics, judged, update = long_update
    S, B, O = acfg.segments, 2, acfg.overlap
    # each real segment keeps its own clip's caption and controls
    np.testing.assert_array_equal(judged.real_text, text)
    np.testing.assert_array_equal(judged.real_controls, controls[:, :K])
    np.testing.assert_array_equal(judged.real, latents[:, :1 + K])
    # the generated video follows group 0's caption; segment j follows group j's path
    np.testing.assert_array_equal(judged.fake_text, jnp.tile(text[:B], (S, 1, 1)))
    fc = judged.fake_controls.reshape(S, B, *judged.fake_controls.shape[1:])
    for j in range(1, S):
        np.testing.assert_array_equal(fc[j][:, O:], controls[j * B:(j + 1) * B, O:K])
        np.testing.assert_array_equal(fc[j][:, :O], fc[j - 1][:, K - O:])


def test_real_logits_use_each_segments_caption(players, long_update):
    """A new caption for clip group 1 (a real segment only) moves the real logits and
    leaves the generated video's logits alone."""
    _, _, params = players
    _, latents, text, controls, _, base, _, update = long_update
    B = 2
    _, moved, _ = update(params, latents, text.at[B:2 * B].multiply(-3.0), controls, jax.random.key(5))
    assert abs(float(moved["logits_real"]) - float(base["logits_real"])) > 1e-6
    assert float(moved["logits_fake"]) == pytest.approx(float(base["logits_fake"]), abs=1e-6)


def test_regularizer_noise_perturbs_only_the_judged_frames():
    video = jnp.zeros((3, 1 + 40, 4, 4, 4))
    out = adversarial.perturb_judged(video, jax.random.key(0), 0.1)
    np.testing.assert_array_equal(out[:, 0], video[:, 0])      # the shared condition frame
    assert float(jnp.std(out[:, 1:])) == pytest.approx(0.1, rel=0.05)


def test_memory_figures_run_at_quick_size():
    """The adversarial suite's saved-activation figures (abstract shapes): the update keeps
    what a teacher-forcing pass keeps, the scan through the cache keeps more."""
    from aapt_jax.bench.adversarial import student_forcing_memory
    from configs import get as named_config

    figures = {r["name"]: r for r in student_forcing_memory(named_config, quick=True)}
    student = figures["student_forcing_saved_bytes_vs_parallel"]
    scan = figures["scan_through_cache_saved_bytes_vs_parallel"]
    assert student["unit"] == scan["unit"] == "ratio"
    assert student["value"] <= 1.5 < scan["value"]
