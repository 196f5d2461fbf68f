"""The training stages, each as: initial params, frozen inputs, a loss and a sampler.

:data:`STAGES` (at the end) is the one table of the chain: each stage's builder, what it
starts from and which sampler evaluates it; the pipeline, the loop and the drift
evaluation read it.

=========  ================================================  ===========================
stage      trains                                            starts from
=========  ================================================  ===========================
vae        the (tiny) causal VAE: reconstruction + KL        random init
base       stage 0: bidirectional flow-matching DiT          random init
adapt      stage 1: causal generator, teacher forcing        ``base`` export or diffusers
distill    stage 2: consistency distillation to one step     ``adapt`` export
adversarial stage 3: adversarial post-training (G and D)     G: ``distill`` (or ``adversarial``)
                                                             export; D: ``adapt`` export
=========  ================================================  ===========================

Batches arrive as ``{'video': uint8 [B, 1+4K, H, W, 3], 'text': [B, Lt, D], controls...}``
and are encoded by the frozen VAE inside the jitted step, or (``data.source='latents'``) as
``{'latents': float32 [B, 1+K, h, w, C], ...}`` already encoded by ``launch.encode``.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from ml_collections import ConfigDict

from aapt_jax import configs
from aapt_jax.data.geometry import check_data_geometry
from aapt_jax.data.sources import check_control_source, validate_data_config
from aapt_jax.io import checkpoint as ckpt
from aapt_jax.io.generator_source import load_generator
from aapt_jax.io.vae_source import load_vae
from aapt_jax.io.video import frames_to_unit
from aapt_jax.model import vae as vae_lib
from aapt_jax.model.config import DiTConfig
from aapt_jax.model.controls import control_maps
from aapt_jax.model.discriminator import Discriminator, DiscriminatorConfig
from aapt_jax.model.dit import WanDiT, abstract_model
from aapt_jax.parallel import sharding as shd
from aapt_jax.model.vae_config import get_vae_config
from aapt_jax.sample import flow_sampler
from aapt_jax.sample.streaming import init_state, rollout_frames
from aapt_jax.train import adversarial, objectives, sharded
from aapt_jax.train.config import TrainConfig, train_config
from aapt_jax.train.optim import make_adversarial_optimizer

# How the drift evaluation streams a generator stage's export (aapt_jax.eval.rollout):
# stage 1 is a diffusion model (multi-step, teacher-forced context); the post-trained
# stages generate a latent frame in one forward pass through the KV cache.
MULTISTEP, ONESTEP = "multistep", "onestep"
# Fields that must agree between the generator and a discriminator checkpoint.
ARCHITECTURE = ("num_layers", "num_heads", "head_dim", "ffn_dim", "latent_channels", "patch_size", "text_dim",
                "freq_dim", "causal", "recycle_input", "control_channels")


@dataclasses.dataclass
class Stage:
    name: str
    graphdef: nnx.GraphDef
    params: Any                       # pure dict, trained
    frozen: Any                       # pytree passed to every step, not trained
    loss: Callable                    # (params, frozen, batch, key) -> (loss, metrics)
    sample: Callable                  # (params, frozen, batch, key) -> (real, fake) videos [B,T,H,W,3] in [-1,1]
    info: dict                        # what the export records (stage, model config...)
    finish: Callable | None = None    # (params, batches) -> extra info fields, run before export
    # Stages with more than one player (the adversarial stage) give their gradients
    # directly and bring their own optimizer; the others are value_and_grad of ``loss``.
    grads: Callable | None = None     # (params, frozen, batch, key) -> (grads like params, metrics)
    optimizer: tuple | None = None    # (optax transform, lr schedule) replacing the config's
    clips_per_example: int = 1        # data clips one batch element consumes
    export_params: Callable | None = None  # params -> what the export holds (default: all)
    check_metrics: Callable | None = None  # host metrics -> reason to stop, or None
    # Logical axes of params and frozen (trees of aapt_jax.parallel.sharding.Axes, a leaf of
    # which may stand for a whole subtree; None: replicated) and whether params are
    # {player: params} (the adversarial stage) rather than one generator's: how the train
    # step places them on the mesh (aapt_jax.train.sharded).
    param_axes: Any = None
    frozen_axes: Any = None
    players: bool = False
    player_graphdefs: dict | None = None  # {player: graphdef} where params are {player: params}


def _pure(state):
    return nnx.to_pure_dict(state)


def _vae(config: ConfigDict, tc: TrainConfig, trainable: bool, abstract: bool = False):
    if abstract:  # shapes only (the plan): nothing read or allocated
        vcfg = get_vae_config(config.vae.preset)
        graphdef, params = nnx.split(vae_lib.abstract_vae(vcfg))
        return vcfg, graphdef, _pure(params)
    if trainable or tc.random_init:
        return load_vae(config.vae.preset, "", seed=tc.seed, allow_random=True)
    return load_vae(config.vae.preset, config.vae.checkpoint)


def make_encoder(config: ConfigDict, vcfg, vae_graphdef, check_files: bool = True):
    """(vae_params, batch) -> (latents [B,1+K,h,w,C] normalized, text, controls [B,K,h,w,Cc] | None).

    A batch carries either ``video`` uint8 ``[B,1+4K,H,W,3]`` (encoded here by the frozen VAE)
    or ``latents`` float32 ``[B,1+K,h,w,C]``, the same VAE's raw posterior mean cached by
    ``launch.encode`` (``data.source='latents'``); both are normalized the same way.
    """
    ctrl_cfg = configs.control_config(config)
    hw = (config.video.height, config.video.width)
    data = config.get("data")
    if data is not None and data.get("source") == "latents" and check_files:
        # Fail before the generator loads or anything compiles: the shards must fit the data
        # config, this run's VAE (it normalizes and decodes them) and the control kind.
        from aapt_jax.data.latent_shards import check_for_training
        from aapt_jax.data.sources import validate_data_config

        check_for_training(validate_data_config(data), vcfg, ctrl_cfg.kind)

    def encode(vae_params, batch):
        if "latents" in batch:
            mean = jnp.asarray(batch["latents"], jnp.float32)
        else:
            mean, _ = vae_lib.encode(vae_graphdef, vae_params, frames_to_unit(batch["video"]))
        latents = vae_lib.normalize_latents(vcfg, mean)
        controls = None
        if ctrl_cfg.kind == "camera":
            controls = control_maps(ctrl_cfg, hw, intrinsics=batch["intrinsics"], c2w=batch["c2w"])
        elif ctrl_cfg.kind == "pose":
            controls = control_maps(ctrl_cfg, hw, keypoints=batch["keypoints"], visibility=batch.get("visibility"))
        return jax.lax.stop_gradient(latents), batch["text"], controls

    return encode


def _decode(vcfg, vae_graphdef, vae_params, latents):
    return jnp.clip(vae_lib.decode_unclamped(vae_graphdef, vae_params,
                                             vae_lib.denormalize_latents(vcfg, latents)), -1.0, 1.0)


def check_config(config: ConfigDict) -> TrainConfig:
    """Every check of a stage's config that reads no file: run for each stage of a pipeline
    before the first one trains. ValueError naming the field, what was expected and given.
    Returns the validated train section."""
    configs.check_common(config)
    tc = train_config(config)
    name = tc.stage
    if name not in STAGES:
        raise ValueError(f"train.stage: expected one of {tuple(STAGES)}, got {name!r}")
    check_data_geometry(config, get_vae_config(config.vae.preset))
    data = validate_data_config(config.data)
    if STAGES[name].trains_vae and data["source"] == "latents":
        raise ValueError("data.source: the vae stage trains on pixels; expected a video source, got 'latents'")
    if STAGES[name].trains_vae:
        return tc
    cfg = configs.model_config(config)
    control_kind = configs.control_config(config).kind
    check_control_source(data, control_kind)
    if name == "adversarial":
        adversarial_config(config).check(config.data.latent_frames)
        if tc.control_mismatch and control_kind == "none":
            raise ValueError("train.control_mismatch: pairs real clips with other clips' controls; expected 0 "
                             f"without a control source (control.kind 'none'), got {tc.control_mismatch}")
        if tc.control_mismatch and tc.batch_size < 2:
            raise ValueError("train.control_mismatch: pairs each real clip with another clip's controls; expected "
                             f"train.batch_size >= 2, got {tc.batch_size}")
        DiscriminatorConfig(layers=tc.disc_layers, head_dim=tc.disc_head_dim).resolved_layers(cfg.num_layers)
    return tc


def build(config: ConfigDict, layout: sharded.Layout | None = None, *, abstract: bool = False) -> Stage:
    """Validate the config and build the stage (no compilation happens here). With a
    ``layout`` (the run's mesh and strategies) the players' weights are created or restored
    straight into their shards on its mesh: no device or host holds a whole model. With
    ``abstract`` every weight is a ``jax.ShapeDtypeStruct`` and no file is read (nor data:
    the plan of a run, :mod:`aapt_jax.train.plan`)."""
    tc = check_config(config)
    spec = STAGES[tc.stage]
    vae = _vae(config, tc, trainable=spec.trains_vae, abstract=abstract)
    check_data_geometry(config, vae[0])
    return spec.build(config, tc, vae, layout, abstract)


def init_params(make, layout: sharded.Layout | None, axes=None, player: str = sharded.GENERATOR,
                abstract: bool = False):
    """The pure-dict params of the module ``make()`` builds; with a layout, initialised by one
    jitted call whose outputs are the param shards (nothing whole on any device); with
    ``abstract``, their shapes only."""
    if abstract:
        return _pure(nnx.state(nnx.eval_shape(make)))
    if layout is None:
        return _pure(nnx.split(make())[1])
    shardings = player_shardings(layout, nnx.state(nnx.eval_shape(make)), axes, player)
    return jax.jit(lambda: _pure(nnx.split(make())[1]), out_shardings=shardings)()


def player_shardings(layout: sharded.Layout, shapes, axes=None, player: str = sharded.GENERATOR):
    """The shardings of one player's params (a pure-dict tree like ``shapes``, an nnx state of
    shapes) under ``layout``, from their logical ``axes`` (by default read off ``shapes``)."""
    if axes is None:
        axes = shd.logical_axes(shapes)
    return sharded.param_shardings(layout, {player: axes}, {player: _pure(shapes)}, players=True)[player]


@dataclasses.dataclass(frozen=True)
class _DiTInputs:
    """What every DiT stage is built from: the generator's config, the frozen VAE's encode
    (batch -> latents, text, controls) and decode (latents -> pixels), the export's info."""
    config: ConfigDict
    tc: TrainConfig
    cfg: DiTConfig
    encode: Callable
    decode: Callable
    vae_params: Any
    layout: Any = None  # sharded.Layout | None
    abstract: bool = False

    @property
    def axes(self):
        """The generator's logical axes (pure-dict tree of Axes)."""
        return shd.logical_axes(abstract_model(self.cfg)[1])

    def info(self, name: str, model: DiTConfig) -> dict:
        return dict(stage=name, model=model.to_dict(), vae_preset=self.config.vae.preset,
                    vae_checkpoint=self.config.vae.checkpoint, control=self.config.control.to_dict())

    def generator(self, name: str):
        """(graphdef, params) the stage starts from: the export in ``train.init_from`` (one of
        the stages it may start from), or random weights with ``train.random_init``."""
        graphdef, shapes = abstract_model(self.cfg)
        if self.abstract:
            return graphdef, _pure(shapes)
        if self.tc.random_init:  # throughput benchmarks: no previous stage needed
            return graphdef, init_params(lambda: WanDiT(self.cfg, rngs=nnx.Rngs(self.tc.seed)), self.layout,
                                         shd.logical_axes(shapes))
        shardings = None if self.layout is None else player_shardings(self.layout, shapes)
        params, _ = load_generator(self.tc.init_from, self.cfg, stages=STAGES[name].init_from, seed=self.tc.seed,
                                   field="train.init_from", shardings=shardings)
        return graphdef, params


def _dit_inputs(config: ConfigDict, tc: TrainConfig, vae, layout=None, abstract=False) -> _DiTInputs:
    vcfg, vae_graphdef, vae_params = vae
    return _DiTInputs(config, tc, configs.model_config(config),
                      make_encoder(config, vcfg, vae_graphdef, check_files=not abstract),
                      lambda vp, z: _decode(vcfg, vae_graphdef, vp, z), vae_params, layout, abstract)


# The frozen VAE carries no logical axes: replicated on every device (a leaf for its whole subtree).
_REPLICATED = shd.Axes(())


def _base_stage(config, tc, vae, layout=None, abstract=False) -> Stage:
    """Stage 0: the bidirectional flow-matching DiT, from random weights."""
    d = _dit_inputs(config, tc, vae, layout, abstract)
    base = d.cfg.replace(causal=False, control_channels=0)
    graphdef, shapes = abstract_model(base)
    axes = shd.logical_axes(shapes)
    params = init_params(lambda: WanDiT(base, rngs=nnx.Rngs(tc.seed)), layout, axes, abstract=abstract)
    encode, decode = d.encode, d.decode

    def loss(params, frozen, batch, key):
        latents, text, _ = encode(frozen["vae"], batch)
        return objectives.base_flow_loss(nnx.merge(graphdef, params), latents, text, key, shift=tc.shift)

    def sample(params, frozen, batch, key):
        latents, text, _ = encode(frozen["vae"], batch)
        eps = jax.random.normal(key, latents.shape)
        fake = flow_sampler.sample_clip(nnx.merge(graphdef, params), eps, text, num_steps=tc.sample_steps,
                                        shift=tc.sample_shift)
        return decode(frozen["vae"], latents), decode(frozen["vae"], fake)

    return Stage("base", graphdef, params, {"vae": d.vae_params}, loss, sample, d.info("base", base),
                 param_axes=axes, frozen_axes={"vae": _REPLICATED})


def _adapt_stage(config, tc, vae, layout=None, abstract=False) -> Stage:
    """Stage 1: the causal generator by teacher forcing (multi-step flow matching)."""
    d = _dit_inputs(config, tc, vae, layout, abstract)
    graphdef, params = d.generator("adapt")
    encode, decode = d.encode, d.decode

    def loss(params, frozen, batch, key):
        latents, text, controls = encode(frozen["vae"], batch)
        return objectives.adaptation_loss(nnx.merge(graphdef, params), latents, text, controls, key,
                                          shift=tc.shift)

    def sample(params, frozen, batch, key):
        latents, text, controls = encode(frozen["vae"], batch)
        fake = flow_sampler.sample_autoregressive(
            nnx.merge(graphdef, params), latents[:, :1], text, controls, key, num_frames=latents.shape[1] - 1,
            num_steps=tc.sample_steps, shift=tc.sample_shift)
        return decode(frozen["vae"], latents), decode(frozen["vae"], jnp.concatenate([latents[:, :1], fake], 1))

    return Stage("adapt", graphdef, params, {"vae": d.vae_params}, loss, sample, d.info("adapt", d.cfg),
                 param_axes=d.axes, frozen_axes={"vae": _REPLICATED})


def _distill_stage(config, tc, vae, layout=None, abstract=False) -> Stage:
    """Stage 2: consistency distillation to one step; the student starts as the teacher."""
    d = _dit_inputs(config, tc, vae, layout, abstract)
    graphdef, params = d.generator("distill")
    encode = d.encode

    def loss(params, frozen, batch, key):
        latents, text, controls = encode(frozen["vae"], batch)
        return objectives.consistency_loss(nnx.merge(graphdef, params), nnx.merge(graphdef, frozen["teacher"]),
                                           latents, text, controls, key, num_steps=tc.distill_steps,
                                           shift=tc.shift)

    sample = _one_step_sampler(graphdef, encode, d.decode)
    # The teacher is a copy (in the same shards): the student's buffers are donated to each update.
    teacher = params if abstract else jax.tree.map(jnp.copy, params)
    axes = d.axes
    return Stage("distill", graphdef, params, {"vae": d.vae_params, "teacher": teacher}, loss, sample,
                 d.info("distill", d.cfg), param_axes=axes, frozen_axes={"vae": _REPLICATED, "teacher": axes})


def _one_step_sampler(graphdef, encode, decode, params_of=lambda p: p):
    """(params, frozen, batch, key) -> (real, streamed) videos of a one-step generator."""
    def sample(params, frozen, batch, key):
        latents, text, controls = encode(frozen["vae"], batch)
        model = nnx.merge(graphdef, params_of(params))
        noise = jax.random.normal(key, latents[:, 1:].shape)
        _, fake = rollout_frames(model, init_state(model, latents[:, :1], text), noise, controls)
        return decode(frozen["vae"], latents), decode(frozen["vae"], jnp.concatenate([latents[:, :1], fake], 1))

    return sample


def adversarial_config(config: ConfigDict) -> adversarial.AdversarialConfig:
    tc = train_config(config)
    return adversarial.AdversarialConfig(
        forcing=tc.forcing, segment_frames=tc.segment_frames or config.data.latent_frames, overlap=tc.overlap,
        extensions=tc.extensions, r_sigma=tc.r_sigma, r_lambda=tc.r_lambda, control_mismatch=tc.control_mismatch)


def load_discriminator_backbone(source: str, cfg, seed: int, shardings=None):
    """The stage 1 weights the discriminator starts from; refuses an export whose generator
    architecture differs from ``cfg`` (the generator's), naming the differing fields."""
    info = ckpt.export_info(source) if source and os.path.exists(source) else None
    if info is not None and "model" in info:
        theirs = info["model"]
        mine = cfg.to_dict()
        differ = [f for f in ARCHITECTURE if f in theirs and _norm_field(theirs[f]) != _norm_field(mine[f])]
        if differ:
            raise ValueError("train.disc_init_from: the discriminator checkpoint in " + source + " does not match the "
                             "generator's architecture: " + ", ".join(f"{f}={theirs[f]!r} (generator {mine[f]!r})"
                                                                      for f in differ))
    params, _ = load_generator(source, cfg, stages=STAGES["adversarial"].disc_init_from, seed=seed,
                               field="train.disc_init_from", shardings=shardings)
    return params


def _norm_field(v):
    return tuple(v) if isinstance(v, (list, tuple)) else v


def _adversarial_stage(config, tc, vae, layout=None, abstract=False) -> Stage:
    """Stage 3: the generator against a discriminator started from stage 1 (App. B, D)."""
    d = _dit_inputs(config, tc, vae, layout, abstract)
    cfg, encode = d.cfg, d.encode
    graphdef, g_params = d.generator("adversarial")
    acfg = adversarial_config(config)
    acfg.check(config.data.latent_frames)
    dcfg = DiscriminatorConfig(layers=tc.disc_layers, head_dim=tc.disc_head_dim)
    dcfg.resolved_layers(cfg.num_layers)
    make_disc = lambda: Discriminator(cfg, dcfg, rngs=nnx.Rngs(tc.seed + 1))  # noqa: E731
    d_graphdef, d_abstract = nnx.split(nnx.eval_shape(make_disc))
    d_axes = shd.logical_axes(d_abstract)
    d_params = init_params(make_disc, layout, d_axes, player="discriminator", abstract=abstract)
    if not (tc.random_init or abstract):
        shardings = None
        if layout is not None:
            shardings = player_shardings(layout, d_abstract, d_axes, "discriminator")["backbone"]
        d_params["backbone"] = load_discriminator_backbone(tc.disc_init_from, cfg, tc.seed, shardings)
    params = {"generator": g_params, "discriminator": d_params}

    def grads(params, frozen, batch, key):
        latents, text, controls = encode(frozen["vae"], batch)
        return adversarial.adversarial_grads(acfg, graphdef, d_graphdef, params, latents, text, controls, key)

    def check_metrics(metrics):
        for name in ("logits_real", "logits_fake"):
            value = float(metrics[name])
            if not abs(value) <= tc.max_logit:
                return f"{name} = {value:.4g} exceeds train.max_logit = {tc.max_logit} (the discriminator diverged)"
        return None

    def one_clip(batch):  # samples use the first segment's clips
        n = jax.tree.leaves(batch)[0].shape[0] // acfg.segments
        return jax.tree.map(lambda x: x[:n], batch)

    one_step = _one_step_sampler(graphdef, encode, d.decode, params_of=lambda p: p["generator"])
    optimizer = make_adversarial_optimizer(tc)
    info = dict(d.info("adversarial", cfg), forcing=acfg.forcing, extensions=acfg.extensions, segment_frames=acfg.segment_frames,
                overlap=acfg.overlap, discriminator=dataclasses.asdict(dcfg))
    return Stage("adversarial", graphdef, params, {"vae": d.vae_params},
                 loss=None, sample=lambda p, f, b, k: one_step(p, f, one_clip(b), k), info=info, grads=grads,
                 optimizer=optimizer, clips_per_example=acfg.segments,
                 export_params=lambda p: p["generator"], check_metrics=check_metrics,
                 param_axes={"generator": d.axes, "discriminator": d_axes}, frozen_axes={"vae": _REPLICATED},
                 players=True, player_graphdefs={"generator": graphdef, "discriminator": d_graphdef})


def _vae_stage(config, tc, vae, layout=None, abstract=False) -> Stage:
    """The causal VAE (reconstruction + KL); its export records the latents' statistics."""
    _, graphdef, params = vae

    def loss(params, frozen, batch, key):
        video = frames_to_unit(batch["video"])
        mean, logvar = vae_lib.encode(graphdef, params, video)
        z = mean if tc.vae_posterior == "mean" else vae_lib.sample_latents(mean, logvar, key)
        recon = vae_lib.decode_unclamped(graphdef, params, z)
        rec = jnp.mean(jnp.abs(recon - video)) + jnp.mean(jnp.square(recon - video))
        kl = 0.5 * jnp.mean(jnp.square(mean) + jnp.exp(logvar) - 1.0 - logvar)
        total = rec + tc.kl_weight * kl
        return total, {"loss": total, "recon": rec, "kl": kl}

    def sample(params, frozen, batch, key):
        video = frames_to_unit(batch["video"])
        mean, _ = vae_lib.encode(graphdef, params, video)
        return video, jnp.clip(vae_lib.decode_unclamped(graphdef, params, mean), -1.0, 1.0)

    @jax.jit
    def channel_moments(params, batch):
        mean, _ = vae_lib.encode(graphdef, params, frames_to_unit(batch["video"]))
        return jnp.mean(mean, axis=(0, 1, 2, 3)), jnp.mean(jnp.square(mean), axis=(0, 1, 2, 3))

    def finish(params, batches):
        """Per-channel latent statistics: the generator trains on ``(z - mean) / std`` (as Wan
        does with its published latents_mean/std), so its targets have unit scale."""
        moments = [channel_moments(params, b) for b in batches]
        m1 = np.mean([np.asarray(m) for m, _ in moments], axis=0)
        m2 = np.mean([np.asarray(q) for _, q in moments], axis=0)
        std = np.sqrt(np.maximum(m2 - np.square(m1), 1e-12))
        return {"latents_mean": [float(x) for x in m1], "latents_std": [float(x) for x in std]}

    info = dict(stage="vae", vae_preset=config.vae.preset)
    return Stage("vae", graphdef, params, {}, loss, sample, info, finish)


@dataclasses.dataclass(frozen=True)
class StageSpec:
    """One link of the chain: how the stage is built, which stages' exports its
    ``train.init_from`` (and ``train.disc_init_from``) may name, the first being the one it
    follows in the pipeline, and how the drift evaluation streams its export."""
    name: str
    build: Callable[..., Stage]  # (config, train, (vcfg, graphdef, params), layout or None, abstract)
    init_from: tuple[str, ...] = ()
    disc_init_from: tuple[str, ...] = ()
    sampler: str | None = None  # MULTISTEP, ONESTEP, or None: not a generator
    trains_vae: bool = False    # the others encode with the frozen VAE of vae.checkpoint


# The chain, in pipeline order: the one table of stages every part reads. A generator's
# export may start a later stage; an adversarial run may continue another (long-video
# training after student forcing), and an adapt run another (a later phase of the paper's
# adaptation curriculum, on longer clips).
STAGES = {spec.name: spec for spec in (
    StageSpec("vae", _vae_stage, trains_vae=True),
    StageSpec("base", _base_stage),
    StageSpec("adapt", _adapt_stage, init_from=("base", "adapt"), sampler=MULTISTEP),
    StageSpec("distill", _distill_stage, init_from=("adapt",), sampler=ONESTEP),
    StageSpec("adversarial", _adversarial_stage, init_from=("distill", "adversarial"), disc_init_from=("adapt",),
              sampler=ONESTEP),
)}


def generator_stages() -> tuple[str, ...]:
    """The stages whose exports are streaming generators (they have a sampler)."""
    return tuple(name for name, spec in STAGES.items() if spec.sampler)
