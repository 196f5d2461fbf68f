"""From an experiment config (a ConfigDict, e.g. from ``configs/*.py``) to the validated
library configs.

The library never imports the experiment configs: callers pass a ConfigDict, and the few
functions that need configs by name (the benchmark suites) take a :data:`Named` function
(``configs.get`` of the checkout, handed over by ``launch.bench`` and the tests).
"""

from __future__ import annotations

import math
from typing import Callable

from ml_collections import ConfigDict

from aapt_jax.model.config import DiTConfig
from aapt_jax.model.controls import ControlConfig, control_channels

# ``'NAME'`` or ``'NAME:STAGE'`` -> that experiment config, e.g. ``'tiny_world:adapt'``.
Named = Callable[[str], ConfigDict]


def control_config(config: ConfigDict) -> ControlConfig:
    """The control config; its latent cell is the VAE's spatial factor (``video.vae_spatial``)
    unless ``control.cell`` says otherwise, which must then agree."""
    fields = config.control.to_dict()
    spatial = config.video.vae_spatial
    if fields.setdefault("cell", spatial) != spatial:
        raise ValueError(f"control.cell: expected the VAE's spatial factor video.vae_spatial={spatial}, "
                         f"got {fields['cell']}")
    return ControlConfig(**fields)


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


def check_finite(config: ConfigDict, prefix: str = "") -> None:
    """Every float of ``config`` (nested sections, lists and tuples too) is finite: an
    ``inf`` learning rate would pass every range check and turn the params to NaN."""
    for name, value in config.items():
        field = f"{prefix}{name}"
        if isinstance(value, ConfigDict):
            check_finite(value, field + ".")
            continue
        for i, v in enumerate(value if isinstance(value, (list, tuple)) else [value]):
            if isinstance(v, float) and not math.isfinite(v):
                where = f"{field}[{i}]" if isinstance(value, (list, tuple)) else field
                raise ValueError(f"{where}: expected a finite number, got {v}")


MESH_FIELDS = ("data", "fsdp", "context", "tensor")


def check_mesh(config: ConfigDict, device_count: int | None = None) -> dict:
    """``config.mesh`` resolved on ``device_count`` devices (default: every device of every
    process): ``{data, fsdp, context, tensor}`` sizes, one of them -1 taking the devices left.
    ValueError naming the field when a size is not a positive int or -1, or the sizes do not
    multiply to the device count (the mesh is built from exactly these sizes)."""
    from aapt_jax.parallel.mesh import resolve_sizes

    mesh = config.get("mesh")
    fields = dict(mesh) if mesh is not None else {"data": -1}
    unknown = sorted(set(fields) - set(MESH_FIELDS))
    if unknown:
        raise ValueError(f"mesh: unknown field(s) {unknown}; expected fields {list(MESH_FIELDS)}")
    if device_count is None:
        import jax

        device_count = jax.device_count()
    return resolve_sizes(**{name: fields.get(name, 1) for name in MESH_FIELDS}, device_count=device_count)


def check_common(config: ConfigDict) -> None:
    """The checks every binary runs on its experiment config first: finite numbers, and a
    mesh that resolves on the devices at hand."""
    check_finite(config)
    check_mesh(config)


def check_sample(config: ConfigDict) -> None:
    """``config.sample``: positive ``num_frames`` and ``batch``, an int ``seed``."""
    s = config.sample
    for name in ("num_frames", "batch"):
        if isinstance(s[name], bool) or not isinstance(s[name], int) or s[name] < 1:
            raise ValueError(f"sample.{name}: expected an int >= 1, got {s[name]!r}")
    if isinstance(s.seed, bool) or not isinstance(s.seed, int):
        raise ValueError(f"sample.seed: expected an int, got {s.seed!r}")
