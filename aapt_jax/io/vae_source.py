"""Where a run's VAE comes from: a fresh init, a diffusers directory or a finished 'vae' stage."""

from __future__ import annotations

import os

from flax import nnx

from aapt_jax.io import builtin
from aapt_jax.io import checkpoint as ckpt
from aapt_jax.model import vae as vae_lib
from aapt_jax.model.vae_config import get_vae_config


def load_vae(preset: str, checkpoint: str = "", *, seed: int = 0, allow_random: bool = False):
    """``(VAEConfig, graphdef, params as a pure dict)``.

    checkpoint: ``''`` (random init, only with ``allow_random``), a diffusers VAE directory
    (``config.json`` + safetensors; ``launch.convert``'s ``vae/``), a shipped
    ``builtin:WORLD/vae`` (:mod:`aapt_jax.io.builtin`), or the workdir of a finished ``vae``
    training stage.
    """
    if not checkpoint:
        if not allow_random:
            raise ValueError("vae.checkpoint: expected the workdir of a finished 'vae' stage or a diffusers VAE "
                             "directory, got ''")
        vcfg = get_vae_config(preset)
        graphdef, params = vae_lib.init_vae(vcfg, seed)
        return vcfg, graphdef, nnx.to_pure_dict(params)
    checkpoint = builtin.resolve(checkpoint, "vae.checkpoint")
    if not os.path.exists(checkpoint):
        raise ValueError(f"vae.checkpoint: {checkpoint} does not exist")
    if os.path.isfile(os.path.join(checkpoint, "config.json")):
        from aapt_jax.io.vae_import import import_vae

        vcfg, graphdef, params = import_vae(checkpoint)
        return vcfg, graphdef, nnx.to_pure_dict(params)
    info = ckpt.export_info(checkpoint)
    if info.get("stage") != "vae":
        raise ValueError(f"vae.checkpoint: {checkpoint} holds a {info.get('stage')!r} stage, expected 'vae'")
    stats = {k: tuple(info[k]) for k in ("latents_mean", "latents_std") if k in info}
    vcfg = get_vae_config(info["vae_preset"], **stats)
    graphdef, abstract = nnx.split(vae_lib.abstract_vae(vcfg))
    return vcfg, graphdef, ckpt.load_export(checkpoint, nnx.to_pure_dict(abstract))
