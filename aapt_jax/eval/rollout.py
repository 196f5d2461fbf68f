"""Long rollouts of trained generators along true camera paths (the drift evaluation's data).

    info = check_generator_export(workdir, config)              # no arrays loaded
    gen = load_generator_export(workdir, config)                 # params + the stage's sampler
    vae = load_vae(config.vae.preset, vae_dir)                   # (vcfg, graphdef, params)
    path = eval_path(config, index, latent_frames=K, seed=1234)  # a walk and its true render
    generated, real = DriftRollout(config, vae)(gen, path, clip_text(config), key)  # uint8 [1+4K, H, W, 3]

``clip_text`` (:mod:`aapt_jax.data.sources`) is the text the training clips carried.
The generator starts from the VAE encoding of the path's first true frame (normalized
latents, as the training stages see them) and follows the path's camera controls for
``K`` latent frames; the latents are decoded by the causal VAE's streaming decoder, one
latent frame at a time, so memory stays bounded however long the video is. Which sampler
runs follows the stage recorded in the export (its ``sampler`` in
:data:`aapt_jax.train.stages.STAGES`, the one table of stages): the stage 1 diffusion model uses the multi-step
:func:`~aapt_jax.sample.flow_sampler.sample_long`, the one-step generators the KV-cache
streaming sampler.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from ml_collections import ConfigDict

from aapt_jax import configs
from aapt_jax.data.sources import make_source, validate_data_config
from aapt_jax.data.world import render_path
from aapt_jax.data.world_camera import random_walk
from aapt_jax.io.generator_source import generator_info, load_generator
from aapt_jax.io.video import frames_to_unit, unit_to_frames
from aapt_jax.model import vae as vae_lib
from aapt_jax.model.config import DiTConfig
from aapt_jax.model.controls import control_maps
from aapt_jax.model.dit import abstract_model
from aapt_jax.sample.flow_sampler import sample_autoregressive, sample_long
from aapt_jax.sample.streaming import check_control, check_inputs, init_state, rollout_frames, rollout_noise
from aapt_jax.train.stages import MULTISTEP, ONESTEP, STAGES, generator_stages

WORLDS = ("heldout", "training")


def sampler_of_stage(stage: str, field: str = "stage") -> str:
    """:data:`MULTISTEP` or :data:`ONESTEP` for a generator stage; ValueError otherwise."""
    if stage not in generator_stages():
        raise ValueError(f"{field}: expected a generator stage, one of {sorted(generator_stages())}, got {stage!r}")
    return STAGES[stage].sampler


def check_generator_export(workdir: str, config: ConfigDict, field: str = "workdir") -> tuple[dict, DiTConfig]:
    """The export's ``info.json`` and the model config to run it with, checked without
    loading any array (so a bad path fails before anything compiles).

    The architecture, window and dtypes are the ones the export records; the latent size and
    attention implementation come from ``config`` (the video being evaluated). The export's
    control channels and text width must match ``config``'s.
    """
    info = generator_info(workdir, field)
    stage = info.get("stage")
    if stage not in generator_stages() or "model" not in info:
        raise ValueError(f"{field}: {workdir} holds a {stage!r} stage, expected a generator stage, one of "
                         f"{sorted(generator_stages())}")
    want = configs.model_config(config)
    recorded = DiTConfig.from_mapping(info["model"])
    if not recorded.causal:
        raise ValueError(f"{field}: {workdir} holds a bidirectional model (causal=False), expected a causal generator")
    for name in ("control_channels", "text_dim", "latent_channels"):
        if getattr(recorded, name) != getattr(want, name):
            raise ValueError(f"{field}: the generator in {workdir} has model.{name}={getattr(recorded, name)}, "
                             f"but the config gives {getattr(want, name)} (pass the --config it was trained with)")
    cfg = recorded.replace(latent_height=want.latent_height, latent_width=want.latent_width,
                           text_len=want.text_len, attention_impl=want.attention_impl)
    return info, cfg


@dataclasses.dataclass
class Generator:
    """A loaded generator export: ``cfg``, ``graphdef``, ``params`` (pure dict), its
    ``stage`` and ``sampler`` (:data:`MULTISTEP` or :data:`ONESTEP`)."""
    workdir: str
    stage: str
    sampler: str
    cfg: DiTConfig
    graphdef: Any
    params: Any
    _compiled: dict = dataclasses.field(default_factory=dict, repr=False)

    def generate(self, first, text, controls, key, *, num_frames: int, num_steps: int, shift: float,
                 full_context: bool = False):
        """``num_frames`` latent frames after ``first`` ``[B, 1, h, w, C]`` (normalized).

        text ``[B, Lt, D]``, controls ``[B, K, h, w, Cc]`` or None. ``num_steps``/``shift``
        set the multi-step sampler's grid (ignored by one-step generators), which runs a
        fixed window per frame (:func:`sample_long`, constant cost) or, with
        ``full_context``, every earlier frame (:func:`sample_autoregressive`, the training
        distribution of a clip, cost growing with K). Returns float32 numpy ``[B, K, h, w, C]``.
        """
        graphdef = self.graphdef
        if self.sampler == ONESTEP:
            B, _, h, w, _ = first.shape
            check_inputs(self.cfg, first, text)
            check_control(self.cfg, controls, B, h, w, frames=num_frames)
            if ONESTEP not in self._compiled:
                # init + rollout as one program: what StreamingSampler.init/rollout run, one compile.
                def stream(params, first, text, controls, key, num_frames):
                    model = nnx.merge(graphdef, params)
                    state = init_state(model, first, text)
                    return rollout_frames(model, state, rollout_noise(key, state, num_frames), controls)[1]

                self._compiled[ONESTEP] = jax.jit(stream, static_argnames=("num_frames",))
            return np.asarray(self._compiled[ONESTEP](self.params, first, text, controls, key, num_frames=num_frames))
        name = (MULTISTEP, full_context)
        if name not in self._compiled:
            sampler = sample_autoregressive if full_context else sample_long

            def multistep(params, first, text, controls, key, num_frames, num_steps, shift):
                return sampler(nnx.merge(graphdef, params), first, text, controls, key,
                               num_frames=num_frames, num_steps=num_steps, shift=shift)

            self._compiled[name] = jax.jit(multistep, static_argnames=("num_frames", "num_steps", "shift"))
        return np.asarray(self._compiled[name](self.params, first, text, controls, key, num_frames=num_frames,
                                               num_steps=num_steps, shift=float(shift)))


def load_generator_export(workdir: str, config: ConfigDict, field: str = "workdir",
                          stages: tuple[str, ...] | None = None) -> Generator:
    """Load a generator export (see :func:`check_generator_export` for the config it runs
    with) of one of ``stages`` (default: any generator stage)."""
    info, cfg = check_generator_export(workdir, config, field)
    params, stage = load_generator(workdir, cfg, stages=stages or generator_stages(), field=field)
    graphdef, _ = abstract_model(cfg)
    return Generator(workdir, stage, sampler_of_stage(stage, field), cfg, graphdef, params)


@dataclasses.dataclass(frozen=True)
class EvalPath:
    """A camera walk and its true render: ``intrinsics [T, 4]``, ``c2w [T, 4, 4]`` (float32)
    and ``video`` uint8 ``[T, H, W, 3]``, ``T = 1 + 4K``; ``world_index`` of its source."""
    world_index: int
    intrinsics: np.ndarray
    c2w: np.ndarray
    video: np.ndarray


def _world_source(config: ConfigDict, seed: int):
    data = validate_data_config(config.data)
    if data["source"] != "world":
        raise ValueError(f"data.source: the drift evaluation walks the procedural world, expected 'world', "
                         f"got {data['source']!r}")
    return make_source({**data, "seed": int(seed)})


def eval_path(config: ConfigDict, index: int, *, latent_frames: int, seed: int, worlds: str = "heldout",
              branch_seed: int | None = None) -> EvalPath:
    """Path ``index`` of the evaluation set: deterministic in ``(seed, index)``.

    A :func:`~aapt_jax.data.world_camera.random_walk` of ``1 + 4 latent_frames`` video frames,
    the same kind of walk :class:`~aapt_jax.data.sources.WorldSource` draws (field of view,
    0 .. max_warmup_frames policy steps before the first frame), rendered with
    :func:`~aapt_jax.data.world.render_path`. ``worlds='heldout'`` walks the worlds of data
    seed ``seed`` (new places), ``'training'`` the training worlds (``config.data.seed``)
    along new walks. A walk of more frames starts with the same frames, so shorter horizons
    are prefixes. ``branch_seed`` gives another walk from the same first frame
    (:func:`~aapt_jax.data.world_camera.random_walk`).
    """
    if worlds not in WORLDS:
        raise ValueError(f"worlds: expected one of {WORLDS}, got {worlds!r}")
    source = _world_source(config, seed if worlds == "heldout" else config.data.seed)
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), 0xD81F7, int(index)]))
    world_index = int(rng.integers(source.num_worlds))
    world = source.world(world_index)
    num_frames = 1 + config.video.vae_temporal * latent_frames
    path = random_walk(world, num_frames, int(rng.integers(2 ** 62)), source.video_hw, fov_deg=source.fov_deg,
                       warmup_frames=int(rng.integers(source.max_warmup_frames + 1)), branch_seed=branch_seed)
    return EvalPath(world_index, path.intrinsics, path.c2w,
                    render_path(world, path.intrinsics, path.c2w, source.video_hw))


def _placed_like(params, x):
    """``x`` on the device (sharding) of ``params``: the VAE's jitted steps then see the same
    input placement from every caller (an uncommitted numpy input would compile them again)."""
    return jax.device_put(np.asarray(x), jax.tree.leaves(params)[0].sharding)


def decode_stream(vae, latents) -> np.ndarray:
    """Normalized latents ``[1, 1 + K, h, w, C]`` -> uint8 video ``[1 + 4K, H, W, 3]``,
    decoded one latent frame at a time by the causal VAE (bounded memory)."""
    vcfg, graphdef, params = vae
    latents = _placed_like(params, latents)
    state = vae_lib.decode_init(vcfg, latents.shape[0], latents.shape[2:4])
    chunks = []
    for i in range(latents.shape[1]):
        state, pixels = vae_lib.decode_step(graphdef, params, state,
                                            vae_lib.denormalize_latents(vcfg, latents[:, i:i + 1]))
        chunks.append(unit_to_frames(pixels[0]))
    return np.concatenate(chunks, axis=0)


def encode_stream(vae, video) -> jax.Array:
    """uint8 video ``[1 + rK, H, W, 3]`` -> normalized latents ``[1, 1 + K, h, w, C]``.

    The posterior mean, normalized as the training stages do (``make_encoder`` in
    :mod:`aapt_jax.train.stages`), encoded one latent frame (1, then ``r`` video frames) at
    a time by the causal VAE, so memory stays bounded; the first latent depends on the
    first frame alone.
    """
    vcfg, graphdef, params = vae
    r = vcfg.temporal_ratio
    video = np.asarray(video)
    if video.dtype != np.uint8 or video.ndim != 4 or (len(video) - 1) % r:
        raise ValueError(f"video: expected uint8 [1 + {r}K, H, W, 3], got {video.dtype} {list(video.shape)}")
    state = vae_lib.encode_init(vcfg, 1, video.shape[1:3])
    means = []
    for lo, hi in [(0, 1)] + [(i, i + r) for i in range(1, len(video), r)]:
        pixels = _placed_like(params, frames_to_unit(video[None, lo:hi]))
        state, (mean, _) = vae_lib.encode_step(graphdef, params, state, pixels)
        means.append(mean)
    return vae_lib.normalize_latents(vcfg, jnp.concatenate(means, axis=1))


def vae_reconstruction(vae, video) -> np.ndarray:
    """uint8 ``[1 + 4K, H, W, 3]`` -> its VAE reconstruction (streaming encode and decode):
    the closest any generator working in this latent space can get to the true video."""
    return decode_stream(vae, encode_stream(vae, video))


class DriftRollout:
    """Rolls generators out along evaluation paths with one VAE and config.

    ``DriftRollout(config, vae)(generator, path, text, key)`` -> ``(generated, real)``,
    uint8 ``[1 + 4K, H, W, 3]`` each. vae: ``(vcfg, graphdef, params)`` from
    :func:`~aapt_jax.io.vae_source.load_vae`. The multi-step sampler's grid is
    ``config.train.sample_steps`` / ``sample_shift`` (what stage 1 samples with) unless
    ``num_steps`` / ``shift`` are given.
    """

    def __init__(self, config: ConfigDict, vae, *, num_steps: int | None = None, shift: float | None = None):
        ctrl_cfg = configs.control_config(config)
        if ctrl_cfg.kind not in ("camera", "none"):
            raise ValueError(f"control.kind: the drift evaluation drives 'camera' or 'none' along a world walk, "
                             f"got {ctrl_cfg.kind!r}")
        self.config, self.vae, self.kind = config, vae, ctrl_cfg.kind
        self.num_steps = int(num_steps if num_steps is not None else config.train.sample_steps)
        self.shift = float(shift if shift is not None else config.train.sample_shift)
        hw = (config.video.height, config.video.width)
        self._controls = jax.jit(lambda intrinsics, c2w: control_maps(ctrl_cfg, hw, intrinsics=intrinsics, c2w=c2w))

    def inputs(self, path: EvalPath, text):
        """(first latent ``[1, 1, h, w, C]``: the normalized encoding of the true first frame,
        text ``[1, Lt, D]``, controls ``[1, K, h, w, Cc]`` of the whole path or None)."""
        first = encode_stream(self.vae, path.video[:1])
        controls = None
        if self.kind == "camera":
            controls = self._controls(path.intrinsics[None], path.c2w[None])
        return first, jnp.asarray(text, jnp.float32)[None], controls

    def __call__(self, generator: Generator, path: EvalPath, text, key):
        r = self.config.video.vae_temporal
        if (len(path.video) - 1) % r:
            raise ValueError(f"path.video: expected 1 + {r}K frames, got {len(path.video)}")
        first, text_b, controls = self.inputs(path, text)
        latents = generator.generate(first, text_b, controls, key, num_frames=(len(path.video) - 1) // r,
                                     num_steps=self.num_steps, shift=self.shift)
        if not np.isfinite(latents).all():
            raise FloatingPointError(f"{generator.workdir}: generated latents contain NaN/Inf")
        generated = decode_stream(self.vae, np.concatenate([np.asarray(first), latents], axis=1))
        return generated, path.video


def rollout(generator: Generator, vae, config: ConfigDict, path: EvalPath, text, key, *,
            num_steps: int | None = None, shift: float | None = None):
    """One rollout: ``(generated, real)`` uint8 ``[1 + 4K, H, W, 3]`` (see :class:`DriftRollout`;
    reuse one of those to share its compiled control maps across paths)."""
    return DriftRollout(config, vae, num_steps=num_steps, shift=shift)(generator, path, text, key)
