"""Orbax checkpoints -> diffusers-layout folders a PyTorch user loads (``launch.convert``).

    OUT/
      aapt.json        everything a PyTorch user needs to stream (see :func:`aapt_json`)
      transformer/     WanTransformer3DModel: config.json, sharded *.safetensors + index
      vae/             AutoencoderKLWan: config.json, sharded *.safetensors + index
      discriminator/   backbone/ (a WanTransformer3DModel), heads.safetensors, discriminator.json

Tensors are read from the checkpoint one at a time, converted (the same key table as the
importer, :mod:`aapt_jax.io.wan_transformer`) and streamed into the safetensors files, so
peak host memory is a few tensors, not the model. Everything is written into a temporary
sibling of ``OUT`` and renamed into place at the end: a failed conversion leaves nothing,
and an existing ``OUT`` is refused untouched.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile

import numpy as np

from aapt_jax.io.checkpoint_reader import CheckpointSource
from aapt_jax.io.safetensors_writer import np_dtype, write_file, write_sharded
from aapt_jax.io.wan_transformer import LINEAR, _to_theirs, _torch_shape, abstract_params, diffusers_config, key_map
from aapt_jax.model.config import DiTConfig

PIECES = ("generator", "vae", "discriminator")
DTYPES = ("bfloat16", "float32")
FORMAT = "aapt-diffusers/1"


def _flat_shapes(state) -> dict[str, tuple]:
    from flax import nnx

    out = {}
    for path, var in nnx.to_flat_state(state):
        value = var.get_value()
        out[".".join(str(p) for p in path)] = (tuple(value.shape), np.dtype(value.dtype))
    return out


def transformer_specs(cfg: DiTConfig, dtype: str) -> list[tuple[str, tuple, str, str, str]]:
    """``(diffusers key, torch shape, dtype, our path, hook)`` per parameter.

    Tensors the model keeps in fp32 whatever ``param_dtype`` is (time embedder, modulation
    tables, norms) stay fp32 in a bf16 output, as diffusers keeps them at load time."""
    ours = _flat_shapes(abstract_params(cfg.replace(param_dtype="bfloat16")))
    rows = []
    for theirs, path, hook in key_map(cfg):
        shape, kept = ours[path]
        out_dtype = "float32" if kept == np.float32 else dtype
        rows.append((theirs, _torch_shape(hook, shape, cfg, cfg.in_channels), out_dtype, path, hook))
    return rows


def _check_tree(source: CheckpointSource, prefix: str, expected: dict[str, tuple], what: str) -> None:
    """All of ``expected`` (``{path: shape}``) under ``prefix``, else one error naming the gaps."""
    have = source.tensors.subtree(prefix)
    missing = sorted(set(expected) - set(have))
    wrong = sorted(f"{p}: expected {expected[p]}, got {have[p]}" for p in set(expected) & set(have)
                   if tuple(have[p]) != tuple(expected[p]))
    if missing or wrong:
        listed = "; ".join(missing[:5] + wrong[:5])
        raise ValueError(f"{what}: {source.tensors.directory} does not hold the expected tensors "
                         f"({len(missing)} missing, {len(wrong)} mis-shaped: {listed})")


def write_transformer(directory: str, cfg: DiTConfig, source: CheckpointSource, prefix: str, dtype: str,
                      max_shard_bytes: int) -> None:
    """``config.json`` + sharded safetensors of the WanDiT under ``prefix`` of ``source``."""
    rows = transformer_specs(cfg, dtype)
    by_key = {r[0]: r for r in rows}

    def fetch(key):
        _, _, out_dtype, path, hook = by_key[key]
        value = source.tensors.read(f"{prefix}.{path}" if prefix else path).astype(np.float32)
        return _to_theirs(hook, value, cfg).astype(np_dtype(out_dtype))

    os.makedirs(directory)
    write_sharded(directory, [(k, shape, d) for k, shape, d, _, _ in rows], fetch, max_shard_bytes)
    _write_json(os.path.join(directory, "config.json"), diffusers_config(cfg))


def _write_json(path, obj):
    with open(path, "w") as f:
        json.dump(obj, f, indent=2, sort_keys=True)


# ----- the VAE --------------------------------------------------------------------------------

def _vae_plan(vae: str):
    """``(kind, VAEConfig, CheckpointSource | diffusers dir)`` for a VAE location."""
    from aapt_jax.model.vae_config import VAEConfig, get_vae_config

    path = os.path.abspath(vae)
    if not os.path.exists(path):
        raise ValueError(f"vae: {path} does not exist")
    config_json = os.path.join(path, "config.json")
    if os.path.isfile(config_json):
        with open(config_json) as f:
            return "diffusers", VAEConfig.from_diffusers(json.load(f)), path
    src = CheckpointSource(path, field="vae")
    if src.stage != "vae":
        raise ValueError(f"vae: {path} holds a {src.stage!r} stage, expected a 'vae' stage or a diffusers VAE folder")
    stats = {k: tuple(src.info[k]) for k in ("latents_mean", "latents_std") if k in src.info}
    return "orbax", get_vae_config(src.info["vae_preset"], **stats), src


def write_vae(directory: str, plan, max_shard_bytes: int) -> None:
    """An ``AutoencoderKLWan`` folder (fp32: the decoder's precision sets the pixels), sharded
    as the transformer's."""
    from aapt_jax.io.vae_import import key_table

    kind, config, src = plan
    os.makedirs(directory)
    if kind == "diffusers":
        for name in os.listdir(src):
            if name == "config.json" or name.endswith((".safetensors", ".safetensors.index.json")):
                shutil.copy2(os.path.join(src, name), os.path.join(directory, name))
        return
    table = key_table(config)
    _check_tree(src, src.prefix(), {path: shape for path, _, shape, _, _ in table}, "vae")
    rows = {key: (path, torch_shape, hook) for path, key, _, torch_shape, hook in table}

    def fetch(key):
        path, torch_shape, hook = rows[key]
        return np.asarray(hook.to_torch(src.tensors.read(src.prefix(path)).astype(np.float32), torch_shape),
                          np.float32)

    write_sharded(directory, [(key, torch_shape, "float32") for key, (_, torch_shape, _) in rows.items()], fetch,
                  max_shard_bytes)
    _write_json(os.path.join(directory, "config.json"), config.to_diffusers())


# ----- the discriminator ----------------------------------------------------------------------

def write_discriminator(directory: str, cfg: DiTConfig, source: CheckpointSource, dtype: str,
                        max_shard_bytes: int) -> None:
    """``backbone/`` (a WanTransformer3DModel folder), ``heads.safetensors`` (per head ``i``:
    ``heads.{i}.proj`` and ``heads.{i}.out`` linears, torch layout; ``out`` has no bias) and ``discriminator.json``
    (the blocks feeding the heads, head width)."""
    prefix = source.prefix("discriminator")
    os.makedirs(directory)
    write_transformer(os.path.join(directory, "backbone"), cfg, source, prefix + ".backbone", dtype,
                      max_shard_bytes)
    heads = sorted(p for p in source.tensors.subtree(prefix) if p.startswith("heads."))
    specs = []
    for path in heads:
        shape = source.tensors.shape(f"{prefix}.{path}")
        torch_key = path.replace(".kernel", ".weight")
        specs.append((torch_key, tuple(reversed(shape)) if path.endswith("kernel") else shape, "float32", path))
    by_key = {s[0]: s for s in specs}

    def fetch(key):
        path = by_key[key][3]
        value = source.tensors.read(f"{prefix}.{path}").astype(np.float32)
        return np.ascontiguousarray(_to_theirs(LINEAR, value, cfg) if path.endswith("kernel") else value)

    write_file(os.path.join(directory, "heads.safetensors"), [s[:3] for s in specs], fetch)
    dinfo = dict(source.info.get("discriminator") or {})
    if "layers" in dinfo:
        dinfo["layers"] = sorted((i + cfg.num_layers) % cfg.num_layers for i in dinfo["layers"])
    num_heads = len({path.split(".")[1] for path in heads})
    _write_json(os.path.join(directory, "discriminator.json"), dict(dinfo, num_heads=num_heads))


# ----- aapt.json ------------------------------------------------------------------------------

def aapt_json(cfg: DiTConfig, info: dict, vae_config, dtype: str, source: str) -> dict:
    """The streaming contract of a converted generator, for the PyTorch side.

    ``input_channels`` gives the ``[start, stop)`` channel ranges of the patch embedding's
    input, concatenated in this order: the noise, the recycled previous frame, the control
    maps. ``window``/``sink_frames`` are the attention rule of :mod:`aapt_jax.model.window`;
    temporal RoPE positions are ``frame index * rope_temporal_interval``. ``latents`` holds
    the VAE's per-channel statistics: the generator works on ``(z - mean) / std``.
    """
    C, Cc = cfg.latent_channels, cfg.control_channels
    recycled = C if (cfg.causal and cfg.recycle_input) else 0
    channels = {"noise": [0, C], "recycled": [C, C + recycled], "control": [C + recycled, C + recycled + Cc]}
    control = info.get("control")
    return {
        "format": FORMAT, "stage": info.get("stage"), "source": source, "dtype": dtype,
        "causal": cfg.causal, "window": cfg.window, "sink_frames": 1 if cfg.causal else 0,
        "input_channels": channels, "latent_channels": C, "control_channels": Cc,
        "control": control if control is not None else {"kind": "unknown" if Cc else "none"},
        "patch_size": list(cfg.patch_size), "rope_temporal_interval": cfg.rope_temporal_interval,
        "rope_theta": cfg.rope_theta, "text": {"length": cfg.text_len, "dim": cfg.text_dim},
        "latent_size": [cfg.latent_height, cfg.latent_width],
        "timestep": 1000.0,  # one-step generator: pure noise at t = 1000, frame = noise - velocity
        "latents": None if vae_config is None else {"mean": list(vae_config.mean), "std": list(vae_config.std)},
        "model": cfg.to_dict(),
    }


# ----- the whole conversion -------------------------------------------------------------------

def _parse_what(what) -> tuple[str, ...]:
    items = tuple(w.strip() for w in (what.split(",") if isinstance(what, str) else what) if w.strip())
    bad = [w for w in items if w not in PIECES]
    if not items or bad or len(set(items)) != len(items):
        raise ValueError(f"what: expected distinct items of {PIECES}, got {what!r}")
    return items


def _resolve(source: CheckpointSource, checkpoint: str, pieces, vae: str):
    """Every piece checked before anything is written, naming the first one missing: (the
    generator's config or None, the generator's prefix in the checkpoint, the VAE plan or
    None; a VAE nobody asked for is read for the latent statistics in aapt.json alone)."""
    cfg = None
    if "generator" in pieces or "discriminator" in pieces:
        if "model" not in source.info:
            raise ValueError(f"generator: {source.path} holds a {source.stage!r} stage, which has no generator")
        cfg = DiTConfig.from_mapping(source.info["model"])
    gen_prefix = source.prefix("generator") if source.stage == "adversarial" and source.step is not None \
        else source.prefix()
    if "generator" in pieces:
        _check_tree(source, gen_prefix, {p: s for p, (s, _) in _flat_shapes(abstract_params(cfg)).items()},
                    "generator")
    if "discriminator" in pieces:
        if not source.tensors.subtree(source.prefix("discriminator")):
            raise ValueError(f"discriminator: {source.path} holds no discriminator (only the adversarial stage's "
                             f"training checkpoints do; its export keeps the generator alone)")
        _check_tree(source, source.prefix("discriminator", "backbone"),
                    {p: s for p, (s, _) in _flat_shapes(abstract_params(cfg)).items()}, "discriminator")
    vae_plan = None
    vae_source = vae or (checkpoint if source.stage == "vae" else source.info.get("vae_checkpoint", ""))
    if "vae" in pieces:
        if not vae_source:
            raise ValueError(f"vae: {source.path} records no VAE checkpoint (its stage ran with a random VAE); "
                             f"pass --vae=DIR or leave vae out of --what")
        vae_plan = _vae_plan(vae_source)
    elif vae_source:
        try:
            vae_plan = _vae_plan(vae_source)
        except ValueError:
            vae_plan = None
    return cfg, gen_prefix, vae_plan


def convert(checkpoint: str, out: str, *, dtype: str = "bfloat16", what=("generator", "vae"), vae: str = "",
            max_shard_bytes: int = 2 << 30) -> dict:
    """Convert ``checkpoint`` (a stage workdir or ``WORKDIR/checkpoints/STEP``) into ``out``.

    Args:
      dtype: of the transformer weights (``'bfloat16'`` or ``'float32'``); the VAE stays fp32.
      what: pieces to write, from ``generator``, ``vae``, ``discriminator`` (list or
        comma-separated string).
      vae: a finished ``vae`` stage workdir or a diffusers VAE folder; default: the VAE the
        checkpoint's stage trained with (or the checkpoint itself for a ``vae`` stage).
    Returns:
      a summary dict (out, pieces, stage, step).
    Raises:
      ValueError before anything is written when an argument is bad, ``out`` exists or the
      checkpoint lacks a piece; CheckpointError naming the path when a tensor is unreadable.
    """
    if dtype not in DTYPES:
        raise ValueError(f"dtype: expected one of {DTYPES}, got {dtype!r}")
    pieces = _parse_what(what)
    if not out:
        raise ValueError("out: expected a directory path to create, got ''")
    out = os.path.abspath(out)
    if os.path.lexists(out):
        raise ValueError(f"out: {out} already exists; refusing to overwrite it (choose a new directory)")
    if max_shard_bytes < 1:
        raise ValueError(f"max_shard_bytes: expected a positive int, got {max_shard_bytes}")
    source = CheckpointSource(checkpoint)
    cfg, gen_prefix, vae_plan = _resolve(source, checkpoint, pieces, vae)

    parent = os.path.dirname(out)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(out)}.", suffix=".tmp", dir=parent)
    try:
        if "generator" in pieces:
            write_transformer(os.path.join(tmp, "transformer"), cfg, source, gen_prefix, dtype, max_shard_bytes)
            _write_json(os.path.join(tmp, "aapt.json"),
                        aapt_json(cfg, source.info, None if vae_plan is None else vae_plan[1], dtype, source.path))
        if "vae" in pieces:
            write_vae(os.path.join(tmp, "vae"), vae_plan, max_shard_bytes)
        if "discriminator" in pieces:
            write_discriminator(os.path.join(tmp, "discriminator"), cfg, source, dtype, max_shard_bytes)
        os.chmod(tmp, 0o755)  # mkdtemp makes 0700; outputs are for people to open
        if os.path.lexists(out):
            raise ValueError(f"out: {out} appeared during the conversion; refusing to overwrite it")
        os.rename(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return {"out": out, "pieces": list(pieces), "stage": source.stage, "step": source.step,
            "source": source.path, "dtype": dtype}
