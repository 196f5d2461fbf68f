"""Cached VAE latents: clips encoded once into ArrayRecord shards, read back as a grain source.

Encoding a clip with the frozen VAE inside every training step is most of a step's cost
at high resolution (the Wan2.1 encoder runs at full pixel resolution over every frame);
the latents of a clip never change, so :func:`aapt_jax.data.encode_latents.encode_to_shards`
computes them once and
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

import grain
import numpy as np
from array_record.python.array_record_module import ArrayRecordWriter

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
