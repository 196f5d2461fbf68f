"""Causal 3D VAE hyper-parameters (Wan2.1-compatible), validated on construction.

The field names follow diffusers' ``AutoencoderKLWan`` config where one exists
(``temperal_downsample`` is spelt correctly here as ``temporal_downsample``). Three
``decoder_*`` fields let the decoder differ from the encoder, which is what the lightweight
decoder of the AAPT paper (App. C) needs; left as ``None`` they copy the encoder's value,
and the model is then exactly diffusers' architecture.

Geometry: ``spatial_ratio = 2 ** (len(dim_mult) - 1)`` and
``temporal_ratio = 2 ** sum(temporal_downsample)``; a video of ``1 + temporal_ratio * k``
frames of ``H x W`` pixels has ``1 + k`` latent frames of ``H/ratio x W/ratio`` positions.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any, Mapping

DTYPES = ("float32", "bfloat16")
CONV_IMPLS = ("auto", "conv3d", "taps")
ARCHS = ("wan", "patch")
PATCH_CLASS_NAME = "AAPTPatchVAE"

# diffusers' AutoencoderKLWan defaults, in its channel order.
WAN21_LATENTS_MEAN = (
    -0.7571, -0.7089, -0.9113, 0.1075, -0.1745, 0.9653, -0.1517, 1.5508,
    0.4134, -0.0715, 0.5517, -0.3632, -0.1922, -0.9497, 0.2503, -0.2921,
)
WAN21_LATENTS_STD = (
    2.8184, 1.4541, 2.3275, 2.6558, 1.2196, 1.7708, 2.6052, 2.0743,
    3.2687, 2.1526, 2.8652, 1.5579, 1.6382, 1.1253, 2.8251, 1.9160,
)


@dataclasses.dataclass(frozen=True)
class VAEConfig:
    """A Wan2.1-style causal video VAE.

    ``num_res_blocks`` is diffusers' count: the encoder has that many residual blocks per
    scale and the decoder one more (Wan2.1: 2, i.e. 3 per decoder scale).
    ``decoder_num_res_blocks`` uses the same convention, so the paper's light decoder
    (2 blocks per scale) is ``decoder_num_res_blocks=1``.

    ``latents_mean`` / ``latents_std`` (``z_dim`` values each, ``None`` = 0 and 1) define
    the normalized latent space the generator works in: ``(z - mean) / std`` per channel.
    """

    base_dim: int = 16
    z_dim: int = 16
    dim_mult: tuple[int, ...] = (1, 2, 2, 2)
    num_res_blocks: int = 1
    temporal_downsample: tuple[bool, ...] = (False, True, True)
    decoder_base_dim: int | None = None
    decoder_dim_mult: tuple[int, ...] | None = None
    decoder_num_res_blocks: int | None = None
    latents_mean: tuple[float, ...] | None = None
    latents_std: tuple[float, ...] | None = None
    dtype: str = "float32"
    param_dtype: str = "float32"
    # How the 3D convs run: "conv3d" (one XLA conv), "taps" (2D convs summed over the time
    # taps; several times faster on XLA:CPU) or "auto" (taps on CPU, conv3d elsewhere).
    conv_impl: str = "auto"
    arch: str = "wan"

    def __post_init__(self):
        # Lists from JSON or ml_collections become tuples so the config stays hashable
        # (it is static data of the module graph).
        for name in ("dim_mult", "temporal_downsample", "decoder_dim_mult", "latents_mean", "latents_std"):
            value = getattr(self, name)
            if isinstance(value, list):
                object.__setattr__(self, name, tuple(value))

        def need(field, ok, expected):
            if not ok:
                raise ValueError(f"vae.{field}: expected {expected}, got {getattr(self, field)!r}")

        def positive_int(v):
            return isinstance(v, int) and not isinstance(v, bool) and v > 0

        need("base_dim", positive_int(self.base_dim), "a positive int")
        need("z_dim", positive_int(self.z_dim), "a positive int")
        need("dim_mult", isinstance(self.dim_mult, tuple) and len(self.dim_mult) >= 1
             and all(positive_int(m) for m in self.dim_mult), "a non-empty tuple of positive ints")
        need("num_res_blocks", positive_int(self.num_res_blocks), "a positive int")
        need("temporal_downsample", isinstance(self.temporal_downsample, tuple)
             and len(self.temporal_downsample) == len(self.dim_mult) - 1
             and all(isinstance(t, bool) for t in self.temporal_downsample),
             f"a tuple of {len(self.dim_mult) - 1} bools (one per spatial downsample)")
        need("decoder_base_dim", self.decoder_base_dim is None or positive_int(self.decoder_base_dim),
             "None or a positive int")
        need("decoder_dim_mult", self.decoder_dim_mult is None or (
            isinstance(self.decoder_dim_mult, tuple) and len(self.decoder_dim_mult) == len(self.dim_mult)
            and all(positive_int(m) for m in self.decoder_dim_mult)),
            f"None or a tuple of {len(self.dim_mult)} positive ints (same number of scales as the encoder)")
        need("decoder_num_res_blocks", self.decoder_num_res_blocks is None or (
            isinstance(self.decoder_num_res_blocks, int) and self.decoder_num_res_blocks >= 0),
            "None or an int >= 0")
        # Each decoder upsampler halves its width (Wan2.1), so odd widths would drop a channel.
        odd = [w for w in self.decoder_widths if w % 2]
        need("decoder_base_dim" if self.decoder_base_dim is not None else "base_dim", not odd,
             f"decoder widths (base x mult) that are even, not {odd}")
        for name in ("latents_mean", "latents_std"):
            value = getattr(self, name)
            need(name, value is None or (isinstance(value, tuple) and len(value) == self.z_dim
                                         and all(isinstance(v, (int, float)) for v in value)),
                 f"None or {self.z_dim} floats (z_dim)")
        need("latents_std", self.latents_std is None or all(v > 0 for v in self.latents_std),
             "positive values")
        need("dtype", self.dtype in DTYPES, f"one of {DTYPES}")
        need("param_dtype", self.param_dtype in DTYPES, f"one of {DTYPES}")
        need("conv_impl", self.conv_impl in CONV_IMPLS, f"one of {CONV_IMPLS}")
        need("arch", self.arch in ARCHS, f"one of {ARCHS}")
        if self.arch == "patch":
            need("dim_mult", set(self.dim_mult) | set(self.dec_dim_mult) == {1},
                 "all ones for arch 'patch' (its length sets the patch size)")

    # Derived geometry ---------------------------------------------------------------------

    @property
    def spatial_ratio(self) -> int:
        return 2 ** (len(self.dim_mult) - 1)

    @property
    def temporal_ratio(self) -> int:
        return 2 ** sum(self.temporal_downsample)

    @property
    def dec_base_dim(self) -> int:
        return self.base_dim if self.decoder_base_dim is None else self.decoder_base_dim

    @property
    def dec_dim_mult(self) -> tuple[int, ...]:
        return self.dim_mult if self.decoder_dim_mult is None else self.decoder_dim_mult

    @property
    def dec_num_res_blocks(self) -> int:
        return self.num_res_blocks if self.decoder_num_res_blocks is None else self.decoder_num_res_blocks

    @property
    def decoder_widths(self) -> tuple[int, ...]:
        """Decoder channels per scale, finest first (the App. C numbers)."""
        return tuple(self.dec_base_dim * m for m in self.dec_dim_mult)

    @property
    def mean(self) -> tuple[float, ...]:
        return self.latents_mean if self.latents_mean is not None else (0.0,) * self.z_dim

    @property
    def std(self) -> tuple[float, ...]:
        return self.latents_std if self.latents_std is not None else (1.0,) * self.z_dim

    def num_latent_frames(self, num_frames: int) -> int:
        """Latent frames for a video of ``num_frames = 1 + temporal_ratio * k`` frames."""
        return 1 + (num_frames - 1) // self.temporal_ratio

    def num_video_frames(self, num_latent_frames: int) -> int:
        return 1 + self.temporal_ratio * (num_latent_frames - 1)

    # diffusers interchange ----------------------------------------------------------------

    @classmethod
    def from_diffusers(cls, config: Mapping[str, Any], **overrides) -> "VAEConfig":
        """From an ``AutoencoderKLWan`` ``config.json``; refuses the variants not built here."""
        unsupported = []
        if config.get("is_residual", False):
            unsupported.append("is_residual=True (Wan2.2 VAE)")
        if config.get("patch_size") not in (None, 1):
            unsupported.append(f"patch_size={config['patch_size']}")
        if config.get("attn_scales"):
            unsupported.append(f"attn_scales={config['attn_scales']}")
        for key in ("in_channels", "out_channels"):
            if config.get(key, 3) != 3:
                unsupported.append(f"{key}={config[key]} (RGB only)")
        if unsupported:
            raise ValueError("AutoencoderKLWan config: unsupported " + ", ".join(unsupported))
        known = {"base_dim", "decoder_base_dim", "z_dim", "dim_mult", "num_res_blocks", "attn_scales",
                 "temperal_downsample", "dropout", "latents_mean", "latents_std", "is_residual",
                 "in_channels", "out_channels", "patch_size", "scale_factor_temporal",
                 "scale_factor_spatial", "clip_output", "decoder_dim_mult", "decoder_num_res_blocks", "arch"}
        ignored = sorted(k for k in config if k not in known and not k.startswith("_"))
        if ignored:
            logging.warning("AutoencoderKLWan config: ignoring unknown fields %s", ignored)
        defaults = {"base_dim": 96, "z_dim": 16, "dim_mult": (1, 2, 4, 4), "num_res_blocks": 2,
                    "temperal_downsample": (False, True, True),
                    "latents_mean": WAN21_LATENTS_MEAN, "latents_std": WAN21_LATENTS_STD}

        def get(key):
            value = config.get(key, defaults.get(key))
            return tuple(value) if isinstance(value, list) else value

        z_dim = get("z_dim")
        stats = {}
        for key, wan21 in (("latents_mean", WAN21_LATENTS_MEAN), ("latents_std", WAN21_LATENTS_STD)):
            value = get(key)
            if value is not None and len(value) != z_dim:
                # diffusers' save_pretrained writes its 16 Wan2.1 defaults whatever z_dim is.
                if tuple(float(v) for v in value) != wan21:
                    raise ValueError(f"AutoencoderKLWan config {key}: expected {z_dim} values (z_dim), got {len(value)}")
                logging.info("AutoencoderKLWan config: %s holds diffusers' 16 defaults, not %d values "
                             "(z_dim); using no latent normalization", key, z_dim)
                value = None
            stats[key] = value
        fields = dict(
            base_dim=get("base_dim"), z_dim=z_dim, dim_mult=get("dim_mult"),
            num_res_blocks=get("num_res_blocks"),
            temporal_downsample=tuple(bool(t) for t in get("temperal_downsample")),
            decoder_base_dim=get("decoder_base_dim"), decoder_dim_mult=get("decoder_dim_mult"),
            decoder_num_res_blocks=get("decoder_num_res_blocks"), arch=config.get("arch", "wan"),
            **stats)
        fields.update(overrides)
        return cls(**fields)

    def to_diffusers(self) -> dict[str, Any]:
        """A ``config.json`` dict; the decoder-only extensions are written only when used. The
        patch arch is written in the same form under its own class name (no diffusers class
        loads it)."""
        out = {"_class_name": "AutoencoderKLWan" if self.arch == "wan" else PATCH_CLASS_NAME, "base_dim": self.base_dim, "z_dim": self.z_dim,
               "dim_mult": list(self.dim_mult), "num_res_blocks": self.num_res_blocks,
               "attn_scales": [], "temperal_downsample": list(self.temporal_downsample),
               "dropout": 0.0, "latents_mean": list(self.mean), "latents_std": list(self.std),
               "is_residual": False, "in_channels": 3, "out_channels": 3,
               "scale_factor_temporal": self.temporal_ratio, "scale_factor_spatial": self.spatial_ratio}
        if self.decoder_base_dim is not None:
            out["decoder_base_dim"] = self.decoder_base_dim
        if self.decoder_dim_mult is not None:
            out["decoder_dim_mult"] = list(self.decoder_dim_mult)
        if self.decoder_num_res_blocks is not None:
            out["decoder_num_res_blocks"] = self.decoder_num_res_blocks
        if self.arch != "wan":
            out["arch"] = self.arch
        return out


def light_decoder(config: VAEConfig) -> VAEConfig:
    """The App. C lightweight decoder for ``config``'s encoder.

    The paper goes from widths [128, 256, 512, 512] with 3 residual blocks per scale to
    [64, 128, 256, 512] with 2: every scale but the coarsest at half width, one block fewer.
    The same ratio is applied to ``config``'s decoder, so the latent space is unchanged.
    """
    mult = config.dec_dim_mult
    base = config.dec_base_dim
    if base % 4:
        raise ValueError(f"vae.base_dim: expected a multiple of 4 for a light decoder, got {base}")
    return dataclasses.replace(
        config,
        decoder_base_dim=base // 2,
        decoder_dim_mult=tuple(mult[:-1]) + (2 * mult[-1],),
        decoder_num_res_blocks=max(config.dec_num_res_blocks - 1, 0),
    )


_WAN21 = VAEConfig(base_dim=96, z_dim=16, dim_mult=(1, 2, 4, 4), num_res_blocks=2,
                   temporal_downsample=(False, True, True),
                   latents_mean=WAN21_LATENTS_MEAN, latents_std=WAN21_LATENTS_STD)

PRESETS: dict[str, VAEConfig] = {
    # 8x spatial and 4x temporal like Wan, at a width a 2-core CPU trains in minutes.
    "tiny": VAEConfig(base_dim=8, z_dim=16, dim_mult=(1, 2, 2, 2), num_res_blocks=1,
                      temporal_downsample=(False, True, True)),
    # The tiny world's VAE (64x64 video): 4x4-pixel, 4-frame patches refined at latent
    # resolution (see aapt_jax/model/vae_patch.py for why not Wan's conv stack at this size).
    "world": VAEConfig(arch="patch", base_dim=96, z_dim=16, dim_mult=(1, 1, 1), num_res_blocks=2,
                       temporal_downsample=(True, True)),
    "wan2.1": _WAN21,
    "wan2.1-light-decoder": light_decoder(_WAN21),
}


def get_vae_config(name: str, **overrides) -> VAEConfig:
    """A named preset (``tiny``, ``world``, ``wan2.1``, ``wan2.1-light-decoder``), fields overridable."""
    if name not in PRESETS:
        raise ValueError(f"vae preset: expected one of {sorted(PRESETS)}, got {name!r}")
    return dataclasses.replace(PRESETS[name], **overrides)
