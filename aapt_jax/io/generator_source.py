"""Where generator weights come from: a finished training stage's workdir or a diffusers dir."""

from __future__ import annotations

import dataclasses
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from aapt_jax.io import builtin
from aapt_jax.io import checkpoint as ckpt
from aapt_jax.io.wan_transformer import abstract_params, load_wan_transformer, widen_patch_kernel
from aapt_jax.model.config import DiTConfig

# Fields that change how a model runs but not its params' shapes.
RUNTIME_FIELDS = ("window", "attention_impl", "dtype", "param_dtype", "latent_height", "latent_width", "causal",
                  "remat", "eps", "rope_theta", "rope_temporal_interval", "text_len")


def load_generator(source: str, cfg: DiTConfig, *, stages: tuple[str, ...] | None = None, seed: int = 0,
                   field: str = "checkpoint", shardings=None):
    """Params (a pure dict) of ``cfg`` from ``source``, and the stage that produced them.

    source: a diffusers transformer directory (``config.json`` + safetensors), a folder
      written by ``launch.convert`` (its ``transformer/``; the stage its ``aapt.json``
      records), a shipped ``builtin:WORLD/PIECE`` (:mod:`aapt_jax.io.builtin`) or the
      workdir of a finished stage (its ``export/``). A base (bidirectional) checkpoint loaded into a
      causal ``cfg`` gets its new input channels randomly initialised (paper App. G).
    stages: stages accepted as the source (None: any).
    field: the config field or flag named in errors.
    shardings: NamedShardings like the params (None: default placement). Given, every param
      goes straight into its shards: an export is restored by Orbax into sharded targets (each
      process reads only its shards) and diffusers weights are read and placed tensor by
      tensor; no host or device holds the whole model.
    """
    if not source:
        raise ValueError(f"{field}: expected a finished stage's workdir or a diffusers transformer directory, got ''")
    source = builtin.resolve(source, field)
    if not os.path.exists(source):
        raise ValueError(f"{field}: {source} does not exist")
    if os.path.isfile(os.path.join(source, "aapt.json")):  # a folder written by launch.convert
        return _load_converted(source, cfg, stages, seed, field, shardings)
    if os.path.isfile(os.path.join(source, "config.json")):
        _, _, params = load_wan_transformer(source, cfg, seed=seed, shardings=shardings)
        return nnx.to_pure_dict(params), "diffusers"
    info = ckpt.export_info(source)
    if stages is not None and info.get("stage") not in stages:
        raise ValueError(f"{field}: {source} holds a {info.get('stage')!r} stage, expected one of {stages}")
    if "model" not in info:
        raise ValueError(f"{field}: {source} holds a {info.get('stage')!r} stage, which has no generator")
    src_cfg = DiTConfig.from_mapping(info["model"])
    target = nnx.to_pure_dict(abstract_params(src_cfg))
    want = jax.tree.map(lambda x: x.shape, nnx.to_pure_dict(abstract_params(cfg)))
    widen = src_cfg.in_channels != cfg.in_channels and not src_cfg.causal
    if widen:
        want["patch_embedding"]["kernel"] = target["patch_embedding"]["kernel"].shape
    got = jax.tree.map(lambda x: x.shape, target)
    if want != got:
        raise ValueError(f"{field}: the generator in {source} does not fit the model config: "
                         f"{_shape_differences(src_cfg, cfg, got, want)}")
    if shardings is not None:
        # Each param restored into its shards; the patch kernel to be widened (small) whole
        # on every device, widened on the host and then placed.
        target = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), target, shardings)
        if widen:
            kernel = target["patch_embedding"]["kernel"]
            target["patch_embedding"]["kernel"] = jax.ShapeDtypeStruct(
                kernel.shape, kernel.dtype, sharding=replicated(kernel.sharding))
    params = ckpt.load_export(source, target)
    if widen:
        kernel = widen_patch_kernel(np.asarray(params["patch_embedding"]["kernel"]), cfg, src_cfg.in_channels,
                                    "random", seed)
        params["patch_embedding"]["kernel"] = (jnp.asarray(kernel) if shardings is None else
                                               place(kernel, shardings["patch_embedding"]["kernel"]))
    return params, info["stage"]


def replicated(sharding):
    """The replicated sharding on ``sharding``'s mesh."""
    from jax.sharding import NamedSharding, PartitionSpec

    return NamedSharding(sharding.mesh, PartitionSpec())


def place(host, sharding):
    """A host array as a global array split by ``sharding``: each device receives only its
    slice, in one or many processes (every process holds the same ``host``)."""
    return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])


def _load_converted(source: str, cfg: DiTConfig, stages, seed: int, field: str, shardings=None):
    """A ``launch.convert`` folder's generator (its ``transformer/``) and the stage its
    ``aapt.json`` records."""
    with open(os.path.join(source, "aapt.json")) as f:
        stage = json.load(f).get("stage")
    if stages is not None and stage not in stages:
        raise ValueError(f"{field}: {source} holds a {stage!r} stage, expected one of {stages}")
    _, _, params = load_wan_transformer(os.path.join(source, "transformer"), cfg, seed=seed, shardings=shardings)
    return nnx.to_pure_dict(params), stage


def generator_info(source: str, field: str = "checkpoint") -> dict:
    """What a generator source records (its ``stage``, ``model`` config and more), read
    without loading any array: a stage's workdir (``export/info.json``), a folder written by
    ``launch.convert`` (``aapt.json``) or a shipped ``builtin:WORLD/PIECE``.

    Raises ValueError naming ``field`` when ``source`` is none of these."""
    folder = builtin.resolve(source, field)
    if not folder or not os.path.isdir(folder):
        raise ValueError(f"{field}: {source!r} is not a directory (expected a finished stage's workdir, a "
                         f"launch.convert folder or one of {builtin.shipped()})")
    if os.path.isfile(os.path.join(folder, "aapt.json")):
        with open(os.path.join(folder, "aapt.json")) as f:
            return json.load(f)
    try:
        return ckpt.export_info(folder)
    except ckpt.CheckpointError as e:
        raise ValueError(f"{field}: {e}") from e


def _shape_differences(saved: DiTConfig, given: DiTConfig, got, want) -> str:
    """The config fields that differ (saved vs given) and the first param whose shape differs."""
    fields = [f.name for f in dataclasses.fields(DiTConfig)
              if f.name not in RUNTIME_FIELDS and getattr(saved, f.name) != getattr(given, f.name)]
    leaves_got = dict(jax.tree_util.tree_flatten_with_path(got, is_leaf=lambda x: isinstance(x, tuple))[0])
    leaves_want = dict(jax.tree_util.tree_flatten_with_path(want, is_leaf=lambda x: isinstance(x, tuple))[0])
    param = next((f"{jax.tree_util.keystr(k)} saved {leaves_got.get(k)}, expected {leaves_want.get(k)}"
                  for k in sorted(set(leaves_got) | set(leaves_want), key=str)
                  if leaves_got.get(k) != leaves_want.get(k)), "")
    named = ", ".join(f"model.{f}: saved {getattr(saved, f)!r}, given {getattr(given, f)!r}" for f in fields)
    return f"{named or 'no config field differs'}; first differing param {param}"
