"""Encoding a clip source once into latent shards (see :mod:`aapt_jax.data.latent_shards`):
the frozen VAE's causal encoder runs chunk by chunk over every clip and the records go to
ArrayRecord shards with their ``meta.json``. The writer lives apart from the reader because
it reads the other sources, which serve the shards back through the reader."""

from __future__ import annotations

import os
import time

import grain
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from tqdm import tqdm

from aapt_jax.data.latent_shards import FORMAT, VERSION, check_out_dir, write_shards
from aapt_jax.data.sources import make_source, validate_data_config
from aapt_jax.io.video import frames_to_unit
from aapt_jax.model.camera import TEMPORAL_FACTOR


def make_clip_encoder(vcfg, graphdef):
    """A jitted ``(vae_params, video uint8 [B, 1+rK, H, W, 3]) -> mean float32 [B, 1+K, h, w, C]``.

    Runs the VAE's causal encoder chunk by chunk (frame 0 alone, then ``r`` frames at a
    time, in a ``lax.scan``) like Wan's own encoder: memory stays that of one chunk however
    long the clip, and the result equals the one-pass :func:`aapt_jax.model.vae.encode` to
    float rounding.
    """
    r = vcfg.temporal_ratio

    @jax.jit
    def encode(vae_params, video):
        model = nnx.merge(graphdef, vae_params)
        x = frames_to_unit(video)  # as the training step maps uint8 video
        b, t, h, w, _ = x.shape
        cache = model.encoder.init_cache(b, h, w, jnp.dtype(vcfg.dtype))
        first, _, cache = model.encode_chunk(x[:, :1], cache, True)
        chunks = jnp.moveaxis(x[:, 1:].reshape(b, (t - 1) // r, r, h, w, 3), 1, 0)

        def step(cache, chunk):
            mean, _, cache = model.encode_chunk(chunk, cache, False)
            return cache, mean[:, 0]

        _, rest = jax.lax.scan(step, cache, chunks)
        return jnp.concatenate([first, jnp.moveaxis(rest, 0, 1)], axis=1)

    return encode


def encode_to_shards(out: str, data_cfg, vae, *, vae_preset: str, vae_checkpoint: str,
                     num_examples: int | None = None, shard_size: int = 256, batch_size: int = 4,
                     progress: bool = True) -> dict:
    """Encode the first ``num_examples`` clips of the source ``data_cfg`` into shards in ``out``.

    Args:
      out: a new (or empty) directory; refused if it holds anything.
      data_cfg: a data config (see :func:`aapt_jax.data.sources.data_config`) of a video
        source ('world', 'pose' or 'folder').
      vae: ``(VAEConfig, graphdef, params)`` as :func:`aapt_jax.io.vae_source.load_vae`
        returns; its ``latents_mean/std`` are recorded in ``meta.json``.
      vae_preset, vae_checkpoint: where the VAE came from, recorded in ``meta.json``
        (``''``: a random init).
      num_examples: clips to encode (default: ``data.num_examples``); record ``i`` is
        source item ``i``.
      shard_size: records per shard.
      batch_size: clips per encoder call (the last batch is padded, so one program runs).
      progress: show a tqdm bar.

    Returns:
      The ``meta.json`` contents.
    """
    data = validate_data_config(data_cfg)
    if data["source"] == "latents":
        raise ValueError("data.source: expected a video source to encode ('world', 'pose' or "
                         "'folder'), got 'latents'")
    for name, value in (("num_examples", num_examples), ("shard_size", shard_size),
                        ("batch_size", batch_size)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise ValueError(f"{name}: expected a positive int, got {value!r}")
    count = data["num_examples"] if num_examples is None else num_examples
    data["num_examples"] = count  # item i does not depend on it; the source then has `count`
    out = check_out_dir(out)      # before any work
    vcfg, graphdef, params = vae
    if vcfg.temporal_ratio != TEMPORAL_FACTOR:
        raise ValueError(f"vae: expected a temporal ratio of {TEMPORAL_FACTOR} (clips of 1 + "
                         f"{TEMPORAL_FACTOR}K frames), got {vcfg.temporal_ratio}")
    for side in ("height", "width"):
        if data[side] % vcfg.spatial_ratio:
            raise ValueError(f"data.{side}: expected a multiple of the VAE's spatial ratio "
                             f"{vcfg.spatial_ratio}, got {data[side]}")
    source = make_source(data)
    meta = _meta(data, vcfg, source[0], vae_preset, vae_checkpoint)
    records = _records(source, make_clip_encoder(vcfg, graphdef), params, count, batch_size, progress)
    return write_shards(out, records, count, shard_size, meta)


def _meta(data: dict, vcfg, probe: dict, vae_preset: str, vae_checkpoint: str) -> dict:
    """``meta.json``: the shapes of every record array (from the source's first clip
    ``probe``), the VAE's provenance and latent statistics, the data config."""
    latent_shape = [1 + data["latent_frames"], data["height"] // vcfg.spatial_ratio,
                    data["width"] // vcfg.spatial_ratio, vcfg.z_dim]
    arrays = {"latents": {"shape": latent_shape, "dtype": "float32"}}
    arrays.update({k: {"shape": list(v.shape), "dtype": str(v.dtype)}
                   for k, v in probe.items() if k != "video"})
    return dict(
        format=FORMAT, version=VERSION, created_unix=time.time(),
        latent_frames=data["latent_frames"], height=data["height"], width=data["width"],
        latent_shape=latent_shape, text_shape=list(probe["text"].shape), arrays=arrays,
        vae=dict(preset=vae_preset, checkpoint=os.path.abspath(vae_checkpoint) if vae_checkpoint else "",
                 latents_mean=[float(v) for v in vcfg.mean], latents_std=[float(v) for v in vcfg.std],
                 spatial_ratio=vcfg.spatial_ratio, temporal_ratio=vcfg.temporal_ratio, z_dim=vcfg.z_dim),
        source=data)


def _records(source, encode, params, count: int, batch_size: int, progress: bool):
    """One record per clip, in order: its latents and every other array of the clip but the
    video. Clips are rendered / decoded by grain's reader threads while the VAE runs."""
    read = grain.ReadOptions(num_threads=2, prefetch_buffer_size=2 * batch_size)
    batches = (grain.MapDataset.source(source).to_iter_dataset(read)
               .batch(batch_size, drop_remainder=False))
    with tqdm(total=count, desc="encode", unit="clip", disable=not progress) as bar:
        for batch in batches:
            n = len(batch["video"])
            video = batch["video"]
            if n < batch_size:  # pad with copies of the last clip: one compiled shape
                video = np.concatenate([video, np.repeat(video[-1:], batch_size - n, 0)])
            latents = np.asarray(encode(params, video), np.float32)[:n]
            for i in range(n):
                record = {k: v[i] for k, v in batch.items() if k != "video"}
                yield {"latents": latents[i], **record}
            bar.update(n)
