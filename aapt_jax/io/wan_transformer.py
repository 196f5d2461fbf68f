"""Diffusers ``WanTransformer3DModel`` weights <-> our :class:`~aapt_jax.model.dit.WanDiT`.

The key map is data: one row per parameter, ``(diffusers key, our path, hook)``, where a
hook says how a tensor is laid out on each side. The same table drives import, export
and the key check, so the two directions cannot drift apart.

Converting a base (bidirectional) checkpoint into the AAPT generator: the base
``patch_embedding`` covers only the noise channels; the recycled-frame and control
channels are new. They keep a random initialisation (paper App. G: random, not zero, makes
the model adapt to new inputs faster) unless ``new_channels='zero'``.
"""

from __future__ import annotations

import json
import math
import os
from typing import Any, Mapping

import jax
import numpy as np
from flax import nnx

from aapt_jax.io.safetensors_io import LazyStateDict, check_keys, load_config, load_state_dict
from aapt_jax.model.config import DiTConfig
from aapt_jax.model.dit import abstract_model

# Hooks: how a tensor is stored in diffusers relative to ours.
LINEAR = "linear"        # torch [out, in]  <-> ours [in, out]
PATCH_CONV = "patch"     # torch Conv3d [dim, C, pt, ph, pw] <-> ours [pt*ph*pw*C, dim]
SAME = "same"

_TOP_LEVEL = [
    ("condition_embedder.time_embedder.linear_1", "time_linear_1"),
    ("condition_embedder.time_embedder.linear_2", "time_linear_2"),
    ("condition_embedder.time_proj", "time_proj"),
    ("condition_embedder.text_embedder.linear_1", "text_linear_1"),
    ("condition_embedder.text_embedder.linear_2", "text_linear_2"),
    ("proj_out", "proj_out"),
]
_BLOCK_LINEARS = [
    ("attn1.to_q", "attn1.to_q"), ("attn1.to_k", "attn1.to_k"), ("attn1.to_v", "attn1.to_v"),
    ("attn1.to_out.0", "attn1.to_out"),
    ("attn2.to_q", "attn2.to_q"), ("attn2.to_k", "attn2.to_k"), ("attn2.to_v", "attn2.to_v"),
    ("attn2.to_out.0", "attn2.to_out"),
    ("ffn.net.0.proj", "ffn.proj_in"), ("ffn.net.2", "ffn.proj_out"),
]
_BLOCK_VECTORS = ["attn1.norm_q.weight", "attn1.norm_k.weight", "attn2.norm_q.weight",
                  "attn2.norm_k.weight", "scale_shift_table"]


def key_map(cfg: DiTConfig) -> list[tuple[str, str, str]]:
    """``[(diffusers key, our dotted path, hook)]`` for every parameter of ``cfg``."""
    rows = [("patch_embedding.weight", "patch_embedding.kernel", PATCH_CONV),
            ("patch_embedding.bias", "patch_embedding.bias", SAME),
            ("scale_shift_table", "scale_shift_table", SAME)]
    for theirs, ours in _TOP_LEVEL:
        rows += [(f"{theirs}.weight", f"{ours}.kernel", LINEAR), (f"{theirs}.bias", f"{ours}.bias", SAME)]
    for i in range(cfg.num_layers):
        for theirs, ours in _BLOCK_LINEARS:
            rows += [(f"blocks.{i}.{theirs}.weight", f"blocks.{i}.{ours}.kernel", LINEAR),
                     (f"blocks.{i}.{theirs}.bias", f"blocks.{i}.{ours}.bias", SAME)]
        rows += [(f"blocks.{i}.{name}", f"blocks.{i}.{name}", SAME) for name in _BLOCK_VECTORS]
        if cfg.cross_attn_norm:
            rows += [(f"blocks.{i}.norm2.weight", f"blocks.{i}.norm2.weight", SAME),
                     (f"blocks.{i}.norm2.bias", f"blocks.{i}.norm2.bias", SAME)]
    return rows


def _to_ours(hook, x, cfg: DiTConfig):
    if hook == LINEAR:
        return x.T
    if hook == PATCH_CONV:
        return x.transpose(2, 3, 4, 1, 0).reshape(-1, x.shape[0])
    return x


def _to_theirs(hook, x, cfg: DiTConfig):
    if hook == LINEAR:
        return x.T
    if hook == PATCH_CONV:
        pt, ph, pw = cfg.patch_size
        return x.reshape(pt, ph, pw, -1, x.shape[-1]).transpose(4, 3, 0, 1, 2)
    return x


def _torch_shape(hook, shape, cfg: DiTConfig, in_channels: int):
    if hook == LINEAR:
        return tuple(reversed(shape))
    if hook == PATCH_CONV:
        return (shape[-1], in_channels, *cfg.patch_size)
    return tuple(shape)


def converted_model_fields(source) -> dict[str, Any]:
    """Our model config recorded beside a transformer folder written by ``launch.convert``
    (``../aapt.json``), or ``{}`` for any other source."""
    if isinstance(source, Mapping) or not os.path.isdir(os.fspath(source)):
        return {}
    path = os.path.join(os.path.dirname(os.path.abspath(os.fspath(source))), "aapt.json")
    if not os.path.isfile(path):
        return {}
    with open(path) as f:
        model = json.load(f).get("model") or {}
    return {k: tuple(v) if isinstance(v, list) else v for k, v in model.items()}


def config_from_diffusers(hf: Mapping[str, Any], **overrides) -> DiTConfig:
    """Our config for a diffusers ``config.json`` (text-to-video Wan models).

    Every field diffusers saves is read or has no effect on the weights: ``qk_norm`` (its
    Wan attention always normalizes q and k across heads), ``rope_max_seq_len`` (our RoPE
    has no table), ``pos_embed_seq_len`` (image branch only). Input channels beyond the
    output's are accepted only with ``overrides`` saying what they are (an AAPT generator's
    recycled frame and controls: see ``aapt.json`` of a converted folder)."""
    if hf.get("image_dim") is not None or hf.get("added_kv_proj_dim") is not None:
        raise ValueError("config.json: image_dim/added_kv_proj_dim are set (Wan I2V with a CLIP "
                         "image branch); expected a text-to-video transformer")
    out_ch = hf.get("out_channels") or hf.get("in_channels", 16)
    if hf.get("in_channels", 16) != out_ch and not overrides.get("causal"):
        raise ValueError(f"config.json in_channels: expected out_channels ({out_ch}) for a base T2V model, got "
                         f"{hf.get('in_channels')} (extra input channels need their meaning: load a folder "
                         f"written by launch.convert, whose aapt.json gives it, or pass cfg)")
    fields = dict(
        num_layers=hf.get("num_layers", 40), num_heads=hf.get("num_attention_heads", 40),
        head_dim=hf.get("attention_head_dim", 128), ffn_dim=hf.get("ffn_dim", 13824),
        latent_channels=out_ch, patch_size=tuple(hf.get("patch_size", (1, 2, 2))),
        text_dim=hf.get("text_dim", 4096), freq_dim=hf.get("freq_dim", 256), eps=hf.get("eps", 1e-6),
        cross_attn_norm=hf.get("cross_attn_norm", True),
    )
    fields.update(overrides)
    return DiTConfig(**fields)


def _flat(pure: Mapping, prefix="") -> dict[str, Any]:
    out = {}
    for k, v in pure.items():
        path = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out.update(_flat(v, path + "."))
        else:
            out[path] = v
    return out


def _unflat(flat: Mapping[str, Any]) -> dict:
    out: dict = {}
    for path, v in flat.items():
        node = out
        parts = [int(p) if p.isdigit() else p for p in path.split(".")]
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        node[parts[-1]] = v
    return out


def abstract_params(cfg: DiTConfig) -> nnx.State:
    """Parameter shapes of ``cfg`` without allocating anything."""
    return abstract_model(cfg)[1]


def load_wan_transformer(source, cfg: DiTConfig | None = None, *, new_channels: str = "random",
                         seed: int = 0, shardings=None):
    """Load a diffusers Wan transformer into our params.

    Args:
      source: a diffusers model directory (``config.json`` + ``*.safetensors`` shards), a
        ``.safetensors`` file, or a state dict of numpy arrays / torch tensors.
      cfg: our config; default: derived from ``config.json`` (base, bidirectional). A causal
        AAPT config loads a base checkpoint by widening the patch embedding (see module doc).
      new_channels: ``'random'`` or ``'zero'`` init of input channels the checkpoint lacks.
      seed: for the random init of new channels.
      shardings: NamedShardings like the params' pure dict (None: the default device). Given,
        the safetensors are read lazily, tensor by tensor, each placed in its shards
        (every device gets only its slice) before the next is read.
    Returns:
      ``(cfg, graphdef, params)``; params are jax arrays in cfg.param_dtype.
    """
    if new_channels not in ("random", "zero"):
        raise ValueError(f"new_channels: expected 'random' or 'zero', got {new_channels!r}")
    state = load_state_dict(source, lazy=shardings is not None)
    if cfg is None:
        hf = load_config(source)
        if hf is None:
            raise ValueError("cfg: required when loading a state dict or file without config.json")
        cfg = config_from_diffusers(hf, **converted_model_fields(source))
    graphdef, abstract = abstract_model(cfg, seed)
    ours_shapes = {p: tuple(v.shape) for p, v in _flat(nnx.to_pure_dict(abstract)).items()}
    rows = key_map(cfg)

    base_in = cfg.in_channels
    patch = None  # the patch kernel's shape (from the file header when read lazily)
    if "patch_embedding.weight" in state:
        patch = (state.shape_of("patch_embedding.weight") if isinstance(state, LazyStateDict)
                 else tuple(state["patch_embedding.weight"].shape))
    if patch is not None and len(patch) == 5 and patch[1] == cfg.latent_channels < cfg.in_channels:
        base_in = cfg.latent_channels  # a base checkpoint: widen below
    expected = {theirs: _torch_shape(hook, ours_shapes[ours], cfg, base_in) for theirs, ours, hook in rows}
    unused_ok = {k for k in state if k.startswith("rope.")}  # buffers some exporters keep
    kept = (state.without(unused_ok) if isinstance(state, LazyStateDict) else
            {k: v for k, v in state.items() if k not in unused_ok})
    check_keys(expected, kept, f"Wan transformer from {source if not isinstance(source, Mapping) else 'state dict'}")

    dtype = np.dtype(jax.numpy.dtype(cfg.param_dtype))
    targets = None if shardings is None else _flat(shardings)
    flat = {}
    for theirs, ours, hook in rows:
        value = _to_ours(hook, np.asarray(state[theirs], np.float32), cfg)
        if base_in != cfg.in_channels and ours == "patch_embedding.kernel":
            value = widen_patch_kernel(value, cfg, base_in, new_channels, seed)
        value = value.astype(dtype)
        if targets is None:
            flat[ours] = jax.numpy.asarray(value)
        else:  # only this tensor is on the host; each device receives its slice
            flat[ours] = jax.make_array_from_callback(value.shape, targets[ours], lambda index, v=value: v[index])
    params = abstract
    nnx.replace_by_pure_dict(params, _unflat(flat))
    return cfg, graphdef, params


def widen_patch_kernel(base_kernel, cfg: DiTConfig, base_in: int, new_channels: str, seed: int):
    """``[P*base_in, dim]`` -> ``[P*in_channels, dim]``: base weights on the noise channels,
    the new channels random (fan-in scaled like a fresh layer) or zero."""
    P = math.prod(cfg.patch_size)
    dim = base_kernel.shape[-1]
    full = np.zeros((P, cfg.in_channels, dim), np.float32)
    if new_channels == "random":
        rng = np.random.default_rng(seed)
        full[:] = rng.standard_normal(full.shape).astype(np.float32) / math.sqrt(P * cfg.in_channels)
    full[:, :base_in] = base_kernel.reshape(P, base_in, dim)
    return full.reshape(P * cfg.in_channels, dim)


def to_diffusers_state_dict(cfg: DiTConfig, params: nnx.State) -> dict[str, np.ndarray]:
    """Our params as a diffusers-layout state dict of fp32 numpy arrays."""
    flat = _flat(nnx.to_pure_dict(params))
    return {theirs: np.ascontiguousarray(_to_theirs(hook, np.asarray(flat[ours], np.float32), cfg))
            for theirs, ours, hook in key_map(cfg)}


def diffusers_config(cfg: DiTConfig) -> dict[str, Any]:
    """The diffusers ``config.json`` fields for ``cfg`` (in_channels includes AAPT inputs)."""
    return dict(_class_name="WanTransformer3DModel", patch_size=list(cfg.patch_size),
                num_attention_heads=cfg.num_heads, attention_head_dim=cfg.head_dim,
                in_channels=cfg.in_channels, out_channels=cfg.latent_channels, text_dim=cfg.text_dim,
                freq_dim=cfg.freq_dim, ffn_dim=cfg.ffn_dim, num_layers=cfg.num_layers,
                cross_attn_norm=cfg.cross_attn_norm, qk_norm="rms_norm_across_heads", eps=cfg.eps,
                image_dim=None, added_kv_proj_dim=None, rope_max_seq_len=1024)
