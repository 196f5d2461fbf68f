"""Stage 3: the discriminator, the adversarial losses and the training stage."""

import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from aapt_jax.io import checkpoint as ckpt
from aapt_jax.io.generator_source import load_generator
from aapt_jax.io.vae_source import load_vae
from aapt_jax.model.config import DiTConfig
from aapt_jax.model.discriminator import Discriminator, DiscriminatorConfig
from aapt_jax.model.dit import create
from aapt_jax.train import adversarial, stages
from aapt_jax.train.loop import TrainingStopped, train
from configs import tiny_world

CFG = DiTConfig(num_layers=2, num_heads=2, head_dim=12, ffn_dim=32, latent_channels=4, text_dim=8, causal=True,
                window=3, control_channels=3, latent_height=4, latent_width=4)


def _disc():
    return Discriminator(CFG, DiscriminatorConfig(layers=(0, -1), head_dim=16), rngs=nnx.Rngs(0))


def _inputs(K=5, B=2, seed=0):
    k = jax.random.split(jax.random.key(seed), 4)
    video = jax.random.normal(k[0], (B, 1 + K, 4, 4, 4))
    fake = jax.random.normal(k[1], (B, K, 4, 4, 4))
    controls = jax.random.normal(k[2], (B, K, 4, 4, 3))
    text = jax.random.normal(k[3], (B, 3, 8))
    return video, fake, controls, text, jnp.array([0.3, 0.8])


def test_logits_are_per_frame_and_causal():
    disc = _disc()
    video, _, controls, text, t = _inputs()
    logits = disc(video, t, text, controls)
    assert logits.shape == (2, 5)
    changed = disc(video.at[:, 4:].add(1.0), t, text, controls.at[:, 4:].add(1.0))
    np.testing.assert_allclose(changed[:, :3], logits[:, :3], atol=1e-5)  # prefixes judged alone
    assert np.max(np.abs(changed[:, 3:] - logits[:, 3:])) > 1e-3


def test_teacher_forced_logits_use_real_context():
    disc = _disc()
    real, fake, controls, text, t = _inputs()
    lf, lr = adversarial.teacher_forced_logits(disc, real, fake, t, text, controls)
    np.testing.assert_allclose(lr, disc(real, t, text, controls), atol=1e-5)
    # generated frame k is judged after real frames 0..k: its logit equals the parallel
    # logit of the real video with frame k+1 swapped for it
    for k in (0, 3):
        swapped = disc(real.at[:, k + 1].set(fake[:, k]), t, text, controls)
        np.testing.assert_allclose(lf[:, k], swapped[:, k], atol=1e-5)
    # and it does not see the other generated frames
    lf2, _ = adversarial.teacher_forced_logits(disc, real, fake.at[:, 0].add(1.0), t, text, controls)
    np.testing.assert_allclose(lf2[:, 1:], lf[:, 1:], atol=1e-5)


def test_relativistic_losses():
    zero = jnp.zeros((2, 3))
    np.testing.assert_allclose(adversarial.generator_loss(zero, zero), np.log(2.0), rtol=1e-6)
    np.testing.assert_allclose(adversarial.discriminator_loss(zero, zero), np.log(2.0), rtol=1e-6)
    # the generator wants fake above real; the discriminator wants it below
    g = jax.grad(adversarial.generator_loss)(zero, zero)
    d = jax.grad(adversarial.discriminator_loss)(zero, zero)
    assert np.all(g < 0) and np.all(d > 0)


@pytest.mark.parametrize("forcing", ["student", "teacher"])
def test_control_mismatch_judges_real_clips_with_other_clips_controls_as_fake(forcing):
    disc = _disc()
    graphdef, params = nnx.split(disc)
    real, fake, controls, text, t = _inputs()
    fake = jnp.concatenate([real[:, :1], fake], axis=1)
    judged = adversarial.Judged(fake, controls, text, real, controls, text, jnp.zeros((1,), jnp.uint32))
    teacher = (real, text) if forcing == "teacher" else None

    def objective(weight):
        acfg = adversarial.AdversarialConfig(segment_frames=5, forcing=forcing, control_mismatch=weight)
        return adversarial.discriminator_objective(acfg, graphdef, judged, t, jax.random.split(jax.random.key(1)),
                                                   params, teacher=teacher)

    total0, (adv0, r1, r2, mis0, lr, _) = objective(0.0)
    total, (adv, *_, mis, _, _) = objective(0.5)
    assert float(mis0) == 0.0 and np.isclose(total0, adv0 + r1 + r2, rtol=1e-6)
    # each real clip with the other clip's controls, judged as generated against itself
    wrong = disc(real, t, text, controls[::-1])
    np.testing.assert_allclose(mis, 0.5 * adversarial.discriminator_loss(wrong, lr), rtol=1e-5)
    np.testing.assert_allclose(total, total0 + mis, rtol=1e-5)
    np.testing.assert_allclose(adv, adv0, rtol=1e-6)
    # and the discriminator gets a gradient from it
    grad = jax.grad(lambda p: adversarial.discriminator_objective(
        adversarial.AdversarialConfig(segment_frames=5, forcing=forcing, control_mismatch=1.0, r_lambda=0.0),
        graphdef, judged, t, jax.random.split(jax.random.key(1)), p, teacher=teacher)[1][3])(params)
    assert sum(float(jnp.sum(jnp.abs(g))) for g in jax.tree.leaves(grad)) > 0


def test_segments_layout():
    acfg = adversarial.AdversarialConfig(segment_frames=4, overlap=1, extensions=2)
    assert acfg.video_frames() == 1 + 4 + 2 * 3
    latents = jnp.arange(6 * 6).reshape(6, 6, 1, 1, 1).astype(jnp.float32)  # 3 segments x B=2, 1+5 frames
    first, seg = adversarial.split_segments(acfg, latents, None)
    assert first.shape == (2, 1, 1, 1, 1) and seg.real.shape == (3, 2, 5, 1, 1, 1)
    np.testing.assert_array_equal(seg.real[1, 0, :, 0, 0, 0], latents[2, :5, 0, 0, 0])


@pytest.mark.parametrize("fields, match", [
    (dict(overlap=3, extensions=1, segment_frames=3), "train.overlap"),
    (dict(segment_frames=4), "train.segment_frames"),
    (dict(forcing="teacher", extensions=1), "train.extensions"),
    (dict(forcing="both"), "train.forcing"),
    (dict(disc_layers=(7,)), "discriminator.layers"),
    (dict(control_mismatch=1.0), r"train.control_mismatch.*batch_size >= 2, got 1"),
    (dict(control_mismatch=-1.0), "train.control_mismatch"),
])
def test_bad_stage_config(fields, match):
    c = _config(**fields)
    with pytest.raises(ValueError, match=match):
        stages.build(c)


def _config(**train_fields):
    c = tiny_world.get_config("adversarial")
    c.video.height = c.video.width = c.data.height = c.data.width = 32
    c.model.num_layers = 2
    c.data.latent_frames = 3
    c.train.update(dict(steps=2, batch_size=1, checkpoint_every=1, log_every=1, sample_every=0, warmup_steps=0,
                        random_init=True, overlap=1, disc_layers=(0, 1), disc_head_dim=16))
    c.train.update(train_fields)
    return c


def test_discriminator_checkpoint_must_match_generator(tmp_path):
    c = _config(random_init=False)
    gen_cfg = stages.configs.model_config(c)
    _, g = create(gen_cfg, 0)
    ckpt.save_export(str(tmp_path / "cd"), nnx.to_pure_dict(g), {"stage": "distill", "model": gen_cfg.to_dict()})
    other = gen_cfg.replace(num_layers=3)
    _, d = create(other, 0)
    ckpt.save_export(str(tmp_path / "adapt"), nnx.to_pure_dict(d), {"stage": "adapt", "model": other.to_dict()})
    _, _, vae = load_vae(c.vae.preset, "", allow_random=True)
    ckpt.save_export(str(tmp_path / "vae"), vae, {"stage": "vae", "vae_preset": c.vae.preset})
    c.vae.checkpoint = str(tmp_path / "vae")
    c.train.init_from, c.train.disc_init_from = str(tmp_path / "cd"), str(tmp_path / "adapt")
    with pytest.raises(ValueError, match=r"train.disc_init_from.*num_layers=3"):
        stages.build(c)


def test_long_video_training_exports_the_generator_and_stops_on_exploding_logits(tmp_path):
    c = _config(extensions=1)
    summary = train(c, str(tmp_path / "adv"))
    assert summary["finished"] and np.isfinite(summary["last_10pct_loss"])
    info = ckpt.export_info(str(tmp_path / "adv"))
    assert info["stage"] == "adversarial" and info["extensions"] == 1
    params, stage = load_generator(str(tmp_path / "adv"), stages.configs.model_config(c))  # G only
    assert stage == "adversarial"
    # resumed past its end, a diverging run stops with the reason and keeps the last good checkpoint
    run = tmp_path / "diverge"
    shutil.copytree(tmp_path / "adv" / "checkpoints", run / "checkpoints")
    with pytest.raises(TrainingStopped, match="logits_.*max_logit.*step 3.*Last good checkpoint: step 2"):
        train(_config(extensions=1, steps=4, max_logit=1e-12), str(run))
    assert ckpt.Checkpointer(str(run / "checkpoints")).steps() == [1, 2]
    assert not (run / "export").exists()


def test_remat_per_block_gives_the_same_gradients_through_the_cache():
    from aapt_jax.sample.streaming import init_state, rollout_frames

    grads = []
    for remat in (False, True):
        cfg = CFG.replace(remat=remat, control_channels=0)
        graphdef, params = create(cfg, 0)
        video, _, _, text, _ = _inputs(K=3, B=1)

        def loss(p):
            model = nnx.merge(graphdef, p)
            _, frames = rollout_frames(model, init_state(model, video[:, :1], text), video[:, 1:],
                                       detach_recycled=True)
            return jnp.sum(jnp.square(frames))

        grads.append(jax.jit(jax.grad(loss))(nnx.to_pure_dict(params)))
    for a, b in zip(jax.tree.leaves(grads[0]), jax.tree.leaves(grads[1])):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
