"""Cached VAE latents: clips encoded once into ArrayRecord shards, read back as a grain source.

Encoding a clip with the frozen VAE inside every training step is most of a step's cost
at high resolution (the Wan2.1 encoder runs at full pixel resolution over every frame);
the latents of a clip never change, so :func:`encode_to_shards` computes them once and
:class:`LatentSource` serves them to :func:`aapt_jax.data.sources.make_loader` in place of
the videos (``data.source='latents'``, ``data.folder`` = the shard directory).

A shard directory holds::

    latents-00000-of-0000S.array_record ...   one record per clip, in source index order
    meta.json                                 what the records are and where they came from

Each record is one clip as ``np.savez`` bytes (numpy's own format, read with
``allow_pickle=False``; never pickle): ``latents`` float32 ``[1+K, h, w, C]``, the VAE's
posterior mean, raw (the generator's normalization by the VAE's ``latents_mean/std``
stays in the training step, so a VAE whose statistics change does not invalidate the
cache silently: the statistics are in ``meta.json`` and checked), ``text`` float32
``[text_len, text_dim]`` and the control inputs the clip's source carries (``world``:
``intrinsics [T, 4]``, ``c2w [T, 4, 4]``; ``pose``: ``keypoints [T, J, 2]``,
``visibility [T, J]``; ``folder``: none), per video frame, ``T = 1 + 4K``.
"""

from __future__ import annotations

import io
import json
import logging
import math
import os
import shutil
import tempfile
import time

import grain
import jax
import jax.numpy as jnp
import numpy as np
from array_record.python.array_record_module import ArrayRecordWriter
from flax import nnx
from tqdm import tqdm

from aapt_jax.io.video import frames_to_unit
from aapt_jax.model.camera import TEMPORAL_FACTOR

FORMAT = "aapt_jax.latent_shards"
VERSION = 1
META_FILE = "meta.json"
SHARD_PREFIX = "latents"
# One record per group: grain reads records in random order, and a larger group would
# decode the whole group for every read.
WRITER_OPTIONS = "group_size:1"
# Control inputs each control kind needs in every record (see aapt_jax.model.controls).
REQUIRED_CONTROL_INPUTS = {"none": (), "camera": ("intrinsics", "c2w"), "pose": ("keypoints",)}


# Records ------------------------------------------------------------------------------------

def serialize(record: dict) -> bytes:
    """A dict of numpy arrays -> ``.npz`` bytes (uncompressed: float latents barely shrink)."""
    buffer = io.BytesIO()
    np.savez(buffer, **{k: np.asarray(v) for k, v in record.items()})
    return buffer.getvalue()


def deserialize(data: bytes) -> dict:
    """Inverse of :func:`serialize`; object arrays are refused (no pickle)."""
    with np.load(io.BytesIO(data), allow_pickle=False) as npz:
        return {k: npz[k] for k in npz.files}


def shard_names(count: int, shard_size: int) -> list[str]:
    """File names of the ``ceil(count / shard_size)`` shards, in record order."""
    n = max(1, math.ceil(count / shard_size))
    return [f"{SHARD_PREFIX}-{i:05d}-of-{n:05d}.array_record" for i in range(n)]


# Writing ------------------------------------------------------------------------------------

def check_out_dir(out: str, field: str = "--out") -> str:
    """``out`` as an absolute path; ValueError if it exists and is not an empty directory
    (nothing is ever overwritten)."""
    out = os.path.abspath(os.fspath(out))
    if os.path.exists(out) and (not os.path.isdir(out) or os.listdir(out)):
        what = "a non-empty directory" if os.path.isdir(out) else "a file"
        raise ValueError(f"{field}: expected a new or empty directory, got {out}, {what}; "
                         "refusing to overwrite it (choose another directory)")
    return out


def write_shards(out: str, records, count: int, shard_size: int, meta: dict) -> dict:
    """Write ``count`` records into ``out`` atomically: all shards and ``meta.json`` go into a
    temporary directory beside ``out`` that is renamed to ``out`` only once complete.

    Args:
      out: a new (or empty) directory.
      records: iterable of record dicts (see the module docstring), in index order.
      count: how many records ``records`` yields.
      shard_size: records per shard (the last shard may hold fewer).
      meta: fields for ``meta.json``; ``count``, ``shards`` and ``shard_size`` are added.

    Returns:
      The meta dict written.
    """
    out = check_out_dir(out)
    names = shard_names(count, shard_size)
    os.makedirs(os.path.dirname(out), exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(out)}.tmp-", dir=os.path.dirname(out))
    writer = None
    try:
        written = 0
        for written, record in enumerate(records, start=1):
            if (written - 1) % shard_size == 0:
                if writer is not None:
                    writer.close()
                path = os.path.join(tmp, names[(written - 1) // shard_size])
                writer = ArrayRecordWriter(path, WRITER_OPTIONS)
            writer.write(serialize(record))
        if writer is not None:
            writer.close()
            writer = None
        if written != count:
            raise RuntimeError(f"expected {count} records, the encoder produced {written}")
        meta = dict(meta, count=count, shard_size=shard_size, shards=names)
        with open(os.path.join(tmp, META_FILE), "w") as f:
            json.dump(meta, f, indent=1)
        os.chmod(tmp, 0o755)  # mkdtemp makes 0700; the cache is for people and other jobs to read
        # A directory renames onto an empty directory, never onto a non-empty one: re-check
        # so a directory filled by someone else meanwhile is refused, not replaced.
        check_out_dir(out)
        os.replace(tmp, out)
        return meta
    except BaseException:
        if writer is not None:
            writer.close()
        shutil.rmtree(tmp, ignore_errors=True)
        raise


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
    # Imported here: sources imports this module for its 'latents' source.
    from aapt_jax.data.sources import make_source, validate_data_config

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
    encode = make_clip_encoder(vcfg, graphdef)
    latent_shape = [1 + data["latent_frames"], data["height"] // vcfg.spatial_ratio,
                    data["width"] // vcfg.spatial_ratio, vcfg.z_dim]
    probe = source[0]
    arrays = {"latents": {"shape": latent_shape, "dtype": "float32"}}
    arrays.update({k: {"shape": list(v.shape), "dtype": str(v.dtype)}
                   for k, v in probe.items() if k != "video"})
    meta = dict(
        format=FORMAT, version=VERSION, created_unix=time.time(),
        latent_frames=data["latent_frames"], height=data["height"], width=data["width"],
        latent_shape=latent_shape, text_shape=list(probe["text"].shape), arrays=arrays,
        vae=dict(preset=vae_preset, checkpoint=os.path.abspath(vae_checkpoint) if vae_checkpoint else "",
                 latents_mean=[float(v) for v in vcfg.mean], latents_std=[float(v) for v in vcfg.std],
                 spatial_ratio=vcfg.spatial_ratio, temporal_ratio=vcfg.temporal_ratio, z_dim=vcfg.z_dim),
        source=data)

    def records():
        # Clips are rendered / decoded by grain's reader threads while the VAE runs.
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

    return write_shards(out, records(), count, shard_size, meta)


# Reading ------------------------------------------------------------------------------------

def read_meta(folder: str, field: str = "data.folder") -> dict:
    """``meta.json`` of a shard directory, with every listed shard present.

    Raises ValueError naming ``field`` for a missing directory, a missing or foreign
    ``meta.json`` or a missing shard.
    """
    if not isinstance(folder, str) or not folder:
        raise ValueError(f"{field}: expected a directory of latent shards (launch.encode --out), got {folder!r}")
    if not os.path.isdir(folder):
        raise ValueError(f"{field}: {folder} is not a directory (expected latent shards from launch.encode)")
    path = os.path.join(folder, META_FILE)
    if not os.path.isfile(path):
        raise ValueError(f"{field}: {folder} has no {META_FILE}; expected the --out directory of launch.encode")
    try:
        with open(path) as f:
            meta = json.load(f)
    except (OSError, ValueError) as err:
        raise ValueError(f"{field}: cannot read {path} as JSON ({err})") from err
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise ValueError(f"{field}: {path} is not a latent shard index (expected format {FORMAT!r}, "
                         f"got {meta.get('format') if isinstance(meta, dict) else type(meta).__name__!r})")
    if meta.get("version") != VERSION:
        raise ValueError(f"{field}: {path} has version {meta.get('version')!r}, this code reads {VERSION}")
    shards = meta.get("shards") or []
    if not shards:
        raise ValueError(f"{field}: {path} lists no shards")
    missing = [s for s in shards if not os.path.isfile(os.path.join(folder, s))]
    if missing:
        raise ValueError(f"{field}: {folder} lacks the shards {missing} that {META_FILE} lists")
    return meta


def check_meta(meta: dict, data: dict, folder: str) -> None:
    """The shards' geometry against the data config: ValueError naming the first field that
    differs (``data.latent_frames``, ``data.height``, ``data.width``, ``data.text_len``,
    ``data.text_dim``), what the shards hold and what the config asks for."""
    held = {"latent_frames": meta["latent_frames"], "height": meta["height"], "width": meta["width"],
            "text_len": meta["text_shape"][0], "text_dim": meta["text_shape"][1]}
    for name, value in held.items():
        if data[name] != value:
            raise ValueError(f"data.{name}: expected {value} (the latent shards in {folder} were encoded "
                             f"with {name}={value}), got {data[name]!r}")


def check_for_training(data: dict, vcfg, control_kind: str) -> dict:
    """Everything a training run on shards needs, checked before anything compiles: the
    shard directory and its geometry (:func:`check_meta`), the run's VAE (the shards' raw
    latents are normalized and decoded with it, so it must be the VAE that encoded them, as
    far as preset, latent size and ``latents_mean/std`` can tell) and the control inputs.
    Returns the meta."""
    folder = data["folder"]
    meta = read_meta(folder)
    check_meta(meta, data, folder)
    vae = meta["vae"]
    if vae["z_dim"] != vcfg.z_dim or vae["spatial_ratio"] != vcfg.spatial_ratio:
        raise ValueError(f"vae.preset: the latent shards in {folder} hold {vae['z_dim']} channels at "
                         f"1/{vae['spatial_ratio']} scale (VAE preset {vae['preset']!r}), this run's VAE makes "
                         f"{vcfg.z_dim} at 1/{vcfg.spatial_ratio}")
    for name, ours in (("latents_mean", vcfg.mean), ("latents_std", vcfg.std)):
        if not np.allclose(vae[name], ours, rtol=1e-6, atol=1e-7):
            raise ValueError(f"vae.checkpoint: the latent shards in {folder} were encoded by the VAE "
                             f"{vae['checkpoint'] or '(random init)'!r} whose {name} is {vae[name]}; this run's VAE "
                             f"has {list(ours)}. Use that VAE or encode the clips again with this one")
    held = sorted(k for k in meta["arrays"] if k not in ("latents", "text"))
    missing = [k for k in REQUIRED_CONTROL_INPUTS.get(control_kind, ()) if k not in held]
    if missing:
        raise ValueError(f"control.kind: {control_kind!r} needs {list(REQUIRED_CONTROL_INPUTS[control_kind])} "
                         f"per clip; the latent shards in {folder} (source {meta['source']['source']!r}) "
                         f"hold {held}")
    return meta


class LatentSource:
    """The clips of a shard directory as a random-access grain source.

    Item ``i`` is record ``i``: ``latents`` float32 ``[1+K, h, w, C]`` (raw VAE mean),
    ``text`` float32 ``[text_len, text_dim]`` and the recorded control inputs. The source
    has ``min(data.num_examples, count)`` items (the first ones), so ``num_examples`` caps
    how much of a cache a run uses.

    Args:
      folder: the shard directory (``data.folder``).
      data: the validated data config (a dict); its geometry must match the shards'.
    """

    def __init__(self, folder: str, data: dict):
        self.folder = os.path.abspath(folder)
        self.meta = read_meta(folder)
        check_meta(self.meta, data, folder)
        count = int(self.meta["count"])
        self.num_examples = min(int(data["num_examples"]), count)
        if self.num_examples < data["num_examples"]:
            logging.info("data.num_examples=%d: %s holds %d clips; using all of them",
                         data["num_examples"], folder, count)
        self.paths = [os.path.join(self.folder, s) for s in self.meta["shards"]]
        self._records = None  # opened lazily, and again in each grain worker process

    def _open(self):
        if self._records is None:
            self._records = grain.sources.ArrayRecordDataSource(self.paths)
            if len(self._records) != self.meta["count"]:
                raise ValueError(f"data.folder: the shards in {self.folder} hold {len(self._records)} records, "
                                 f"{META_FILE} says {self.meta['count']}")
        return self._records

    def __getstate__(self):
        # Readers hold file handles and locks: workers open their own.
        return {k: v for k, v in self.__dict__.items() if k != "_records"} | {"_records": None}

    def __len__(self) -> int:
        return self.num_examples

    def __getitem__(self, index) -> dict:
        index = int(index)
        if not 0 <= index < self.num_examples:
            raise IndexError(f"index {index} out of range for {self.num_examples} examples")
        return deserialize(self._open()[index])
