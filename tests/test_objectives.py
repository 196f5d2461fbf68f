"""The training objectives and stage 3's optimizer, value by value."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from aapt_jax.model import flow
from aapt_jax.train import adversarial, objectives
from aapt_jax.train.optim import make_optimizer

B, K = 3, 5
SHAPE = (B, 1 + K, 2, 2, 4)


def _latents(seed=0):
    return jax.random.normal(jax.random.key(seed), SHAPE)


class Recorder:
    """A stand-in model that records what it is fed and returns a fixed velocity."""

    def __init__(self, velocity=0.0):
        self.velocity, self.calls = velocity, []

    def __call__(self, x_t, t, text, *, recycled=None, control=None):
        self.calls.append(dict(x_t=x_t, t=t, recycled=recycled, control=control))
        return jnp.zeros_like(x_t) + self.velocity


def test_adaptation_targets_the_next_frame_and_recycles_only_the_previous_one():
    latents, controls = _latents(), jax.random.normal(jax.random.key(1), (B, K, 2, 2, 3))
    model, key = Recorder(), jax.random.key(2)
    loss, _ = objectives.adaptation_loss(model, latents, None, controls, key, shift=24.0)
    (call,) = model.calls
    k_t, k_eps = jax.random.split(key)
    t = flow.sample_t(k_t, B, 24.0)
    eps = jax.random.normal(k_eps, (B, K, 2, 2, 4))
    # position p: noisy frame p + 1, recycled ground-truth frame p, control of frame p + 1
    np.testing.assert_allclose(call["x_t"], flow.noisy(latents[:, 1:], eps, t), atol=1e-6)
    np.testing.assert_array_equal(call["recycled"], latents[:, :-1])
    np.testing.assert_array_equal(call["control"], controls)
    np.testing.assert_allclose(call["t"], 1000.0 * t, rtol=1e-6)
    np.testing.assert_allclose(loss, jnp.mean(jnp.square(eps - latents[:, 1:])), rtol=1e-6)  # v = 0
    # no leak: the target frame K never enters the recycled channel
    model2 = Recorder()
    objectives.adaptation_loss(model2, latents.at[:, K].add(5.0), None, controls, key, shift=24.0)
    np.testing.assert_array_equal(model2.calls[0]["recycled"], call["recycled"])


def _oracle(x0, offset=0.0):
    """The exact velocity of the straight path through ``x0``: ``v = (x_t - x0) / t``, plus
    ``offset`` (a student that is wrong by a constant)."""
    def model(x_t, t, text, *, recycled=None, control=None):
        s = (t / 1000.0).reshape(-1, 1, 1, 1, 1)
        return (x_t - x0) / s + offset
    return model


def test_consistency_loss_values_and_stop_gradient():
    latents, key, steps = _latents(3), jax.random.key(4), 32
    x0 = latents[:, 1:]
    exact, _ = objectives.consistency_loss(_oracle(x0), _oracle(x0), latents, None, None, key, num_steps=steps,
                                           shift=24.0)
    assert float(exact) < 1e-8  # the exact flow is its own consistency target
    grid = flow.distillation_grid(steps, 24.0)
    n = jax.random.randint(jax.random.split(key)[0], (B,), 1, steps + 1)
    gap = (grid[n] - grid[n - 1]).reshape(-1, 1, 1, 1, 1)
    tn = grid[n].reshape(-1, 1, 1, 1, 1)

    def loss_of(b):  # a student off by b: f = x0 - t b, so pred - target = -(t_n - t_{n-1}) b
        return objectives.consistency_loss(_oracle(x0, b), _oracle(x0), latents, None, None, key,
                                           num_steps=steps, shift=24.0)[0]

    b = 0.7
    np.testing.assert_allclose(loss_of(b), jnp.mean(jnp.square(gap * b) * jnp.ones_like(x0)), rtol=1e-4)
    # the target is stop-gradient: d/db = 2 b mean(gap * t_n), not 2 b mean(gap^2)
    np.testing.assert_allclose(jax.grad(loss_of)(b), 2 * b * jnp.mean(gap * tn * jnp.ones_like(x0)), rtol=1e-4)


def test_relativistic_losses_pair_frame_by_frame():
    fake, real = jnp.array([[1.0, -2.0]]), jnp.array([[0.5, 1.0]])
    # f_G(x) = -log(1 + e^-x), f_D(x) = -log(1 + e^x) of x = D(fake) - D(real), each maximized
    sp = lambda x: np.log1p(np.exp(x))  # noqa: E731
    np.testing.assert_allclose(adversarial.generator_loss(fake, real), (sp(-0.5) + sp(3.0)) / 2, rtol=1e-6)
    np.testing.assert_allclose(adversarial.discriminator_loss(fake, real), (sp(0.5) + sp(-3.0)) / 2, rtol=1e-6)
    # pairs are frame by frame: swapping the real frames changes the loss
    assert float(adversarial.generator_loss(fake, real[:, ::-1])) != pytest.approx(
        float(adversarial.generator_loss(fake, real)))


@pytest.mark.parametrize("scale", [1e-5, 1e-4, 1e-3, 1e-2, 1e-1])
def test_rmsprop_is_pytorchs(scale):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(0)
    p0 = rng.standard_normal(256).astype(np.float32)
    grads = (scale * rng.standard_normal((50, 256))).astype(np.float32)
    lr = 1e-3
    tx, _ = make_optimizer("rmsprop", lr, rms_decay=0.9, grad_clip=None)
    params, state = jnp.asarray(p0), None
    state = tx.init(params)
    for g in grads:
        updates, state = tx.update(jnp.asarray(g), state, params)
        params = optax.apply_updates(params, updates)
    tp = torch.tensor(p0.copy(), requires_grad=True)
    opt = torch.optim.RMSprop([tp], lr=lr, alpha=0.9, eps=1e-8)
    for g in grads:
        tp.grad = torch.tensor(g)
        opt.step()
    moved = np.abs(tp.detach().numpy() - p0).max()
    assert moved > 10 * lr  # steps of ~lr each, whatever the gradient's scale
    np.testing.assert_allclose(np.asarray(params), tp.detach().numpy(), rtol=0, atol=1e-6)


def test_disc_warmup_holds_the_generator_then_releases_it():
    from aapt_jax.train.config import TrainConfig
    from aapt_jax.train.optim import make_adversarial_optimizer

    tc = TrainConfig(stage="adversarial", optimizer="rmsprop", lr=1e-3, disc_lr=2e-3, weight_decay=0.0,
                     grad_clip=0.0, warmup_steps=2, disc_warmup=3)
    tx, schedule = make_adversarial_optimizer(tc)
    params = {"generator": jnp.zeros(4), "discriminator": jnp.zeros(4)}
    grads = {"generator": jnp.ones(4), "discriminator": jnp.ones(4)}
    state, moved = tx.init(params), []
    for _ in range(6):
        updates, state = tx.update(grads, state, params)
        new = optax.apply_updates(params, updates)
        moved.append((float(jnp.abs(new["generator"] - params["generator"]).max()),
                      float(jnp.abs(new["discriminator"] - params["discriminator"]).max())))
        params = new
    assert [g for g, _ in moved[:4]] == [0.0] * 4  # 3 held updates, then the warmup's first (rate 0)
    assert all(d > 0 for _, d in moved[1:])  # the discriminator learns from its warmup's second update
    assert moved[4][0] > 0 and moved[5][0] > 0
    assert [float(schedule(i)) for i in (0, 2, 3, 4, 5)] == pytest.approx([0.0, 0.0, 0.0, 5e-4, 1e-3])
    with pytest.raises(ValueError, match="disc_warmup"):
        TrainConfig(disc_warmup=-1)
