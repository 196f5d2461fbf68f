"""From an experiment config (``configs/*.py``) to the validated library configs."""

from __future__ import annotations

import importlib

from ml_collections import ConfigDict

from aapt_jax.model.config import DiTConfig
from aapt_jax.model.controls import ControlConfig, control_channels

NAMED = {
    "tiny": "configs.tiny",
    "wan2.1-t2v-1.3B": "configs.wan2_1_t2v_1_3b",
    "wan2.1-t2v-14B": "configs.wan2_1_t2v_14b",
    "aapt-8B": "configs.aapt_8b",
}


def get(name: str) -> ConfigDict:
    """A named config: one of :data:`NAMED`."""
    if name not in NAMED:
        raise ValueError(f"config: expected one of {sorted(NAMED)}, got {name!r}")
    return importlib.import_module(NAMED[name]).get_config()


def control_config(config: ConfigDict) -> ControlConfig:
    return ControlConfig(**config.control.to_dict())


def model_config(config: ConfigDict) -> DiTConfig:
    """The DiT config: latent size from ``video`` and the VAE factors, control channels from
    ``control``; every field validated (ValueError naming it)."""
    video = config.video
    for side in ("height", "width"):
        value = video[side]
        if value % video.vae_spatial:
            raise ValueError(f"video.{side}: expected a multiple of the VAE's spatial factor "
                             f"{video.vae_spatial}, got {value}")
    fields = dict(config.model.to_dict())
    for derived in ("control_channels", "latent_height", "latent_width"):
        if derived in fields:
            raise ValueError(f"model.{derived}: derived from the video/control config; do not set it")
    fields.update(latent_height=video.height // video.vae_spatial, latent_width=video.width // video.vae_spatial,
                  control_channels=control_channels(control_config(config)))
    return DiTConfig.from_mapping(fields)
