"""diffusers ``AutoencoderKLWan`` weights <-> our VAE parameters.

The key map is data: our parameter paths mirror diffusers' module names, so a short table
of renames turns one into the other, and a table of hooks converts each kind of tensor
(PyTorch conv weights ``[out, in, *kernel]`` <-> channels-last kernels ``[*kernel, in, out]``,
norm gammas ``[C, 1, 1(, 1)]`` <-> ``[C]``). Both tables are walked over the parameters of
the model the config describes, so the expected diffusers keys and shapes are exact, and a
state dict with a missing, unexpected or mis-shaped key is refused with all of them listed.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from typing import Callable

import jax.numpy as jnp
import numpy as np
from flax import nnx

from aapt_jax.io.files import atomic_path
from aapt_jax.io.safetensors_io import check_keys, load_config, load_state_dict
from aapt_jax.model.vae import abstract_vae
from aapt_jax.model.vae_config import VAEConfig

WHAT = "AutoencoderKLWan"


@dataclasses.dataclass(frozen=True)
class Hook:
    """How one kind of tensor changes between diffusers and us."""

    torch_shape: Callable[[tuple], tuple]  # our shape -> diffusers shape
    to_ours: Callable[[np.ndarray, tuple], np.ndarray]  # (diffusers array, our shape) -> ours
    to_torch: Callable[[np.ndarray, tuple], np.ndarray]  # (our array, diffusers shape) -> theirs


def _kernel_to_ours(w, shape):
    # [out, in, *k] -> [*k, in, out]
    return np.transpose(w, (*range(2, w.ndim), 1, 0)).reshape(shape)


def _kernel_to_torch(w, torch_shape):
    k = len(torch_shape) - 2
    w = w.reshape(*torch_shape[2:], torch_shape[1], torch_shape[0])
    return np.transpose(w, (k + 1, k, *range(k)))


CONV = Hook(lambda s: (s[-1], s[-2], *s[:-2]), _kernel_to_ours, _kernel_to_torch)
POINTWISE_3D = Hook(lambda s: (s[1], s[0], 1, 1, 1), _kernel_to_ours, _kernel_to_torch)
POINTWISE_2D = Hook(lambda s: (s[1], s[0], 1, 1), _kernel_to_ours, _kernel_to_torch)
GAMMA_3D = Hook(lambda s: (s[0], 1, 1, 1), lambda w, s: w.reshape(s), lambda w, s: w.reshape(s))
GAMMA_2D = Hook(lambda s: (s[0], 1, 1), lambda w, s: w.reshape(s), lambda w, s: w.reshape(s))
SAME = Hook(lambda s: tuple(s), lambda w, s: w, lambda w, s: w)

# Our dotted path -> diffusers key, applied in order.
RENAMES: tuple[tuple[str, str], ...] = (
    (r"\.upsampler\.", ".upsamplers.0."),   # diffusers keeps a one-element ModuleList
    (r"\.resample\.", ".resample.1."),      # nn.Sequential(pad or upsample, Conv2d)
    (r"\.kernel$", ".weight"),
)

# Our dotted path -> hook; the first match wins.
HOOKS: tuple[tuple[str, Hook], ...] = (
    (r"(conv_shortcut|quant_conv|patch_in|patch_out)\.kernel$", POINTWISE_3D),
    (r"attentions\.\d+\.(to_qkv|proj)\.kernel$", POINTWISE_2D),
    (r"\.kernel$", CONV),
    (r"attentions\.\d+\.norm\.gamma$", GAMMA_2D),
    (r"\.gamma$", GAMMA_3D),
    (r"\.bias$", SAME),
)


def diffusers_key(path: str) -> str:
    for pattern, replacement in RENAMES:
        path = re.sub(pattern, replacement, path)
    return path


def hook_for(path: str) -> Hook:
    for pattern, hook in HOOKS:
        if re.search(pattern, path):
            return hook
    raise ValueError(f"{WHAT}: no conversion rule for parameter {path}")


def key_table(config: VAEConfig) -> list[tuple[str, str, tuple, tuple, Hook]]:
    """``(our path, diffusers key, our shape, diffusers shape, hook)`` for every parameter."""
    params = nnx.state(abstract_vae(config), nnx.Param)
    table = []
    for path, var in nnx.to_flat_state(params):
        dotted = ".".join(str(p) for p in path)
        hook = hook_for(dotted)
        shape = tuple(var.get_value().shape)
        table.append((dotted, diffusers_key(dotted), shape, tuple(hook.torch_shape(shape)), hook))
    return table


def import_vae(source, config: VAEConfig | None = None) -> tuple[VAEConfig, nnx.GraphDef, nnx.State]:
    """Load a diffusers ``AutoencoderKLWan`` into ``(config, graphdef, params)``.

    source: a diffusers model directory (``config.json`` + ``*.safetensors``), a
    ``.safetensors`` file or a state dict (numpy arrays or torch tensors). ``config`` is
    required unless ``source`` is a directory with a ``config.json``.
    """
    if config is None:
        raw = load_config(source)
        if raw is None:
            raise ValueError(f"{WHAT}: no config.json with {source!r}; pass config=VAEConfig(...)")
        config = VAEConfig.from_diffusers(raw)
    state = load_state_dict(source)
    table = key_table(config)
    check_keys({key: torch_shape for _, key, _, torch_shape, _ in table}, state, WHAT)
    dtype = jnp.dtype(config.param_dtype)
    model = abstract_vae(config)
    graphdef, params = nnx.split(model)
    values = {path: jnp.asarray(hook.to_ours(np.asarray(state[key], np.float32), shape), dtype)
              for path, key, shape, _, hook in table}
    flat = [(path, var.replace(values[".".join(str(p) for p in path)]))
            for path, var in nnx.to_flat_state(params)]
    return config, graphdef, nnx.from_flat_state(flat)


def export_state_dict(config: VAEConfig, params: nnx.State) -> dict[str, np.ndarray]:
    """Our parameters as a diffusers-named fp32 state dict (inverse of :func:`import_vae`)."""
    by_path = {".".join(str(p) for p in path): var.get_value() for path, var in nnx.to_flat_state(params)}
    out = {}
    for path, key, _, torch_shape, hook in key_table(config):
        out[key] = np.ascontiguousarray(hook.to_torch(np.asarray(by_path[path], np.float32), torch_shape))
    return out


def save_vae(directory: str, config: VAEConfig, params: nnx.State) -> None:
    """Write ``config.json`` and ``diffusion_pytorch_model.safetensors`` (diffusers layout).

    Each file goes through a temporary file and a rename, so a crash leaves no half file.
    A light decoder (``decoder_dim_mult`` / ``decoder_num_res_blocks`` set) loads back here
    but not into diffusers, whose ``AutoencoderKLWan`` has no such fields.
    """
    from safetensors.numpy import save_file

    os.makedirs(directory, exist_ok=True)
    weights = export_state_dict(config, params)

    with atomic_path(os.path.join(directory, "diffusion_pytorch_model.safetensors"), mode=None) as tmp:
        save_file(weights, tmp)
    with atomic_path(os.path.join(directory, "config.json"), mode=None) as tmp, open(tmp, "w") as f:
        json.dump(config.to_diffusers(), f, indent=2)
