"""Generator (DiT) hyper-parameters, validated before anything is traced."""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

from aapt_jax.fields import suggestions
from aapt_jax.model.attention import IMPLEMENTATIONS

DTYPES = ("float32", "bfloat16")


@dataclasses.dataclass(frozen=True)
class DiTConfig:
    """A Wan2.1-compatible DiT, optionally transformed for AAPT.

    ``causal=False`` is the base Wan model (bidirectional, input = noisy latent only).
    ``causal=True`` is the AAPT generator: block-causal attention with a sliding window of
    ``window`` latent frames and the first frame as sink, the recycled previous latent frame
    concatenated to the input channels, and ``control_channels`` per-frame control maps.
    """

    num_layers: int = 2
    num_heads: int = 2
    head_dim: int = 24
    ffn_dim: int = 96
    latent_channels: int = 16
    patch_size: tuple[int, int, int] = (1, 2, 2)
    text_dim: int = 32
    freq_dim: int = 256
    eps: float = 1e-6
    cross_attn_norm: bool = True
    rope_theta: float = 10000.0
    # AAPT transform.
    causal: bool = False
    window: int = 30
    recycle_input: bool = True
    control_channels: int = 0
    rope_temporal_interval: float = 1.0
    # Nominal latent size (frames are validated against the patch size; used by benchmarks).
    latent_height: int = 8
    latent_width: int = 8
    text_len: int = 8
    # Execution.
    attention_impl: str = "xla"
    dtype: str = "float32"
    param_dtype: str = "float32"
    remat: bool = False

    def __post_init__(self):
        def need(field, ok, expected):
            if not ok:
                raise ValueError(f"model.{field}: expected {expected}, got {getattr(self, field)!r}")

        for f in ("num_layers", "num_heads", "head_dim", "ffn_dim", "latent_channels", "text_dim",
                  "freq_dim", "latent_height", "latent_width", "text_len"):
            need(f, isinstance(getattr(self, f), int) and getattr(self, f) > 0, "a positive int")
        need("patch_size", len(tuple(self.patch_size)) == 3 and all(int(p) > 0 for p in self.patch_size),
             "three positive ints (t, h, w)")
        need("patch_size", self.patch_size[0] == 1 or not self.causal,
             "temporal patch 1 for the causal model (one latent frame per step)")
        # RoPE rotates channel pairs; below 6 channels the height/width parts are empty (as in diffusers).
        need("head_dim", self.head_dim % 2 == 0, "an even int (RoPE rotates channel pairs)")
        need("window", isinstance(self.window, int) and self.window >= 1, "an int >= 1")
        need("control_channels", isinstance(self.control_channels, int) and self.control_channels >= 0,
             "an int >= 0")
        need("control_channels", self.causal or self.control_channels == 0, "0 for the base model")
        need("attention_impl", self.attention_impl in IMPLEMENTATIONS, f"one of {IMPLEMENTATIONS}")
        need("dtype", self.dtype in DTYPES, f"one of {DTYPES}")
        need("param_dtype", self.param_dtype in DTYPES, f"one of {DTYPES}")
        need("rope_temporal_interval", self.rope_temporal_interval > 0, "a positive float")
        ph, pw = self.patch_size[1], self.patch_size[2]
        need("latent_height", self.latent_height % ph == 0, f"a multiple of patch height {ph}")
        need("latent_width", self.latent_width % pw == 0, f"a multiple of patch width {pw}")

    @property
    def dim(self) -> int:
        return self.num_heads * self.head_dim

    @property
    def in_channels(self) -> int:
        """Noise + recycled frame + control maps, concatenated in that order."""
        recycled = self.latent_channels if (self.causal and self.recycle_input) else 0
        return self.latent_channels + recycled + self.control_channels

    @property
    def tokens_per_frame(self) -> int:
        return (self.latent_height // self.patch_size[1]) * (self.latent_width // self.patch_size[2])

    def replace(self, **changes) -> "DiTConfig":
        return dataclasses.replace(self, **changes)

    @classmethod
    def from_mapping(cls, mapping: Mapping[str, Any]) -> "DiTConfig":
        """Build from a dict or ml_collections ConfigDict; unknown fields are an error."""
        names = {f.name for f in dataclasses.fields(cls)}
        items = dict(mapping)
        unknown = sorted(set(items) - names)
        if unknown:
            raise ValueError(f"model: unknown config field(s) {unknown}{suggestions(unknown, names)}; "
                             f"expected a subset of {sorted(names)}")
        if "patch_size" in items:
            items["patch_size"] = tuple(int(p) for p in items["patch_size"])
        return cls(**items)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)
