"""Grain sources of training clips and the loader that batches them.

A source is random access (``len``, ``source[i]``) and item ``i`` is a deterministic
function of the source's seed and ``i``: a dict of numpy arrays for a clip of
``T = 1 + 4K`` video frames (``K = latent_frames``):

- every source: ``video`` uint8 ``[T, H, W, 3]`` and ``text`` float32 ``[text_len, text_dim]``;
- ``world`` (:class:`WorldSource`): ``intrinsics`` float32 ``[T, 4]`` and ``c2w`` float32
  ``[T, 4, 4]``, the exact cameras of the rendered frames;
- ``pose`` (:class:`PoseSource`): ``keypoints`` float32 ``[T, J, 2]`` (pixel x, y) and
  ``visibility`` bool ``[T, J]``;
- ``folder`` (:class:`FolderSource`): nothing more;
- ``latents`` (:class:`aapt_jax.data.latent_shards.LatentSource`): clips of another source
  encoded once by the VAE (``python -m launch.encode``): ``latents`` float32
  ``[1+K, h, w, C]`` (raw VAE posterior mean) *instead of* ``video``, plus the ``text`` and
  control inputs that source carried.

The procedural sources' text is zeros, or with ``text_embedding='random'`` one fixed
random embedding per source (so the text path carries something).

:func:`make_loader` turns a source into a checkpointable grain iterator of batches (the
same arrays with a leading batch axis); its ``get_state()`` can be saved with a training
checkpoint and ``set_state()`` resumes the exact batch sequence.
"""

from __future__ import annotations

import logging

import grain
import numpy as np
from absl import flags

from aapt_jax.data.crop import CroppedSource
from aapt_jax.data.latent_shards import REQUIRED_CONTROL_INPUTS, LatentSource
from aapt_jax.data.pose_figure import pose_clip
from aapt_jax.data.video_folder import VideoFolder
from aapt_jax.data.world import make_world, render_path
from aapt_jax.data.world_camera import random_walk
from aapt_jax.fields import suggestions
from aapt_jax.model.camera import SPATIAL_FACTOR, TEMPORAL_FACTOR

SOURCES = ("world", "pose", "folder", "latents")
TEXT_EMBEDDINGS = ("zeros", "random")
# Rendered world clips kept in memory per source (4096 clips of 25 frames at 64x64 are 1.3 GB).
WORLD_CACHE_BYTES = 2 << 30


def _rng(seed: int, *keys: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([int(seed), *map(int, keys)]))


class _ClipSource:
    """What every source shares: size, clip length, the per-item generator and the text."""

    def __init__(self, height: int, width: int, latent_frames: int, num_examples: int,
                 seed: int, text_len: int, text_dim: int, text_embedding: str = "zeros"):
        self.height, self.width = height, width
        self.num_frames = 1 + TEMPORAL_FACTOR * latent_frames
        self.num_examples, self.seed = num_examples, seed
        if text_embedding == "random":
            self._text = _rng(seed, 0x7E).standard_normal((text_len, text_dim)).astype(np.float32)
        else:
            self._text = np.zeros((text_len, text_dim), np.float32)

    def __len__(self) -> int:
        return self.num_examples

    def _item_rng(self, index) -> np.random.Generator:
        index = int(index)
        if not 0 <= index < self.num_examples:
            raise IndexError(f"index {index} out of range for {self.num_examples} examples")
        return _rng(self.seed, index)

    @property
    def video_hw(self) -> tuple[int, int]:
        return self.height, self.width


class WorldSource(_ClipSource):
    """Walks through procedural mazes (:mod:`aapt_jax.data.world`) with exact cameras.

    Item ``i`` picks one of ``num_worlds`` worlds (so places recur across clips, as in a
    game) and a random walk in it, entered ``0 .. max_warmup_frames`` policy steps after
    its random start so clips begin in motion as often as from rest.
    """

    def __init__(self, *args, num_worlds: int = 16, fov_deg: float = 70.0,
                 max_warmup_frames: int = 48, cache_bytes: int = WORLD_CACHE_BYTES, **kwargs):
        super().__init__(*args, **kwargs)
        self.num_worlds, self.fov_deg = num_worlds, fov_deg
        self.max_warmup_frames = max_warmup_frames
        self._worlds = {}
        # Items are pure functions of their index and training revisits them every epoch, so
        # rendered clips are kept (read-only) up to cache_bytes: ray casting is a real share
        # of a tiny-world training step.
        self._cache, self._cache_left = {}, cache_bytes

    def world(self, world_index: int):
        """The world number ``world_index`` (``0 .. num_worlds - 1``), built once."""
        if world_index not in self._worlds:
            world_seed = np.random.SeedSequence([self.seed, 0xB0, world_index]).generate_state(1)[0]
            self._worlds[world_index] = make_world(int(world_seed))
        return self._worlds[world_index]

    def world_of(self, index):
        """The world that item ``index`` walks through (to re-render any camera path in it,
        e.g. to compare a generated video with the true one)."""
        return self.world(int(self._item_rng(index).integers(self.num_worlds)))

    def __getitem__(self, index) -> dict:
        item = self._cache.get(int(index))
        if item is None:
            item = self._render(index)
            size = sum(v.nbytes for v in item.values())
            if size <= self._cache_left:
                for v in item.values():
                    v.flags.writeable = False
                self._cache[int(index)], self._cache_left = item, self._cache_left - size
        return {**item, "text": self._text.copy()}

    def _render(self, index) -> dict:
        rng = self._item_rng(index)
        world = self.world(int(rng.integers(self.num_worlds)))  # the draw world_of repeats
        path = random_walk(world, self.num_frames, int(rng.integers(2 ** 62)), self.video_hw,
                           fov_deg=self.fov_deg,
                           warmup_frames=int(rng.integers(self.max_warmup_frames + 1)))
        return {"video": render_path(world, path.intrinsics, path.c2w, self.video_hw),
                "intrinsics": path.intrinsics, "c2w": path.c2w}


class PoseSource(_ClipSource):
    """Procedural figures (:mod:`aapt_jax.data.pose_figure`) with exact keypoints; item
    ``i`` is a new figure, entered at a random time of its motion."""

    def __getitem__(self, index) -> dict:
        rng = self._item_rng(index)
        clip = pose_clip(int(rng.integers(2 ** 62)), self.num_frames, self.video_hw,
                         start_frame=int(rng.integers(10_000)))
        return {"video": clip.frames, "keypoints": clip.keypoints,
                "visibility": clip.visibility, "text": self._text.copy()}


class FolderSource(_ClipSource):
    """Clips of the videos in a folder (:class:`aapt_jax.data.video_folder.VideoFolder`).

    Item ``i`` is video ``i mod V`` from a random start frame, so every video is used
    equally often whatever its length; the text comes from the video's ``.npy`` file.
    A clip that fails to read (the file changed or was damaged after the folder was
    listed) is skipped with a warning and counted in ``skipped_clips``; the item is then
    the next video's clip, so the same index always gives the same clip (exact resume).
    """

    def __init__(self, folder, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.videos = VideoFolder(folder, self.height, self.width, self.num_frames,
                                  *self._text.shape)
        self.skipped_clips = 0  # in this process (grain workers count their own)
        self._warned = set()

    def __getitem__(self, index) -> dict:
        rng = self._item_rng(index)
        first = int(index) % len(self.videos)
        errors = []
        for offset in range(len(self.videos)):
            video = (first + offset) % len(self.videos)
            start = int(rng.integers(self.videos.entries[video].num_frames - self.num_frames + 1))
            try:
                return {"video": self.videos.clip(video, start), "text": self.videos.text(video)}
            except ValueError as err:
                self.skipped_clips += 1
                errors.append(str(err))
                path = self.videos.entries[video].path
                if path not in self._warned:  # once per file: a long run would repeat it thousands of times
                    self._warned.add(path)
                    logging.warning("skipping a clip that cannot be read (%s); using the next video", err)
        raise ValueError(f"data.folder: no video of {self.videos.folder} can be read any more ({errors[0]})")


def data_config(**overrides) -> dict:
    """Default data fields (an ml_collections-friendly dict), updated by ``overrides``.

    Fields: ``source`` ('world', 'pose', 'folder' or 'latents'), ``height``, ``width``
    (video pixels, multiples of 8), ``latent_frames`` (K: clips have 1 + 4K frames),
    ``num_examples`` (for 'latents': at most this many of the cached clips), ``seed``,
    ``folder`` (the video folder for source='folder', the shard directory for 'latents'),
    ``text_len``, ``text_dim``, ``text_embedding`` ('zeros' or 'random', procedural
    sources) and ``crop`` (0: whole frames; else random ``crop x crop`` crops, see
    :mod:`aapt_jax.data.crop`; the VAE stage's speed-up).
    """
    cfg = {"source": "world", "height": 96, "width": 128, "latent_frames": 4,
           "num_examples": 4096, "seed": 0, "folder": "", "text_len": 16, "text_dim": 64,
           "text_embedding": "zeros", "crop": 0}
    cfg.update(overrides)
    return cfg


def _positive_int(cfg: dict, name: str, multiple: int = 1) -> int:
    value = cfg[name]
    if (isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1
            or value % multiple):
        what = "a positive int" + (f" divisible by {multiple}" if multiple > 1 else "")
        raise ValueError(f"data.{name}: expected {what}, got {value!r}")
    return int(value)


def validate_data_config(data_cfg) -> dict:
    """The fields of ``data_cfg`` (dict or ConfigDict) checked, as a plain dict.

    Raises ValueError naming the field, what was expected and what was given.
    """
    given = data_cfg.to_dict() if hasattr(data_cfg, "to_dict") else dict(data_cfg)
    defaults = data_config()
    unknown = sorted(set(given) - set(defaults))
    if unknown:
        raise ValueError(f"data: unknown fields {unknown}{suggestions(unknown, defaults)}; "
                         f"expected fields {sorted(defaults)}")
    cfg = {**defaults, **given}
    if cfg["source"] not in SOURCES:
        raise ValueError(f"data.source: expected one of {SOURCES}, got {cfg['source']!r}")
    for name in ("height", "width"):
        cfg[name] = _positive_int(cfg, name, SPATIAL_FACTOR)
    for name in ("latent_frames", "num_examples", "text_len", "text_dim"):
        cfg[name] = _positive_int(cfg, name)
    crop = cfg["crop"]
    if isinstance(crop, bool) or not isinstance(crop, (int, np.integer)) or crop < 0:
        raise ValueError(f"data.crop: expected 0 (whole frames) or a crop side in pixels, got {crop!r}")
    if crop and cfg["source"] == "latents":
        raise ValueError(f"data.crop: latent shards are encoded whole; expected 0 for source='latents', got {crop}")
    seed = cfg["seed"]
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"data.seed: expected an int >= 0, got {seed!r}")
    if cfg["text_embedding"] not in TEXT_EMBEDDINGS:
        raise ValueError(f"data.text_embedding: expected one of {TEXT_EMBEDDINGS}, "
                         f"got {cfg['text_embedding']!r}")
    needs_folder = {"folder": "a folder of videos",
                    "latents": "a directory of latent shards (launch.encode --out)"}
    if cfg["source"] in needs_folder and (not isinstance(cfg["folder"], str) or not cfg["folder"]):
        raise ValueError(f"data.folder: expected {needs_folder[cfg['source']]} for source={cfg['source']!r}, "
                         f"got {cfg['folder']!r}")
    return cfg


# The control inputs each clip source gives per clip ('latents' holds what it was encoded from).
SOURCE_CONTROL_INPUTS = {"world": ("intrinsics", "c2w"), "pose": ("keypoints", "visibility"), "folder": ()}


def check_control_source(data_cfg, control_kind: str) -> None:
    """Refuse a control kind whose inputs the data source does not give (e.g. camera control
    on a video folder: no poses), before anything loads or compiles. 'latents' is checked
    against its shards' meta when the run starts (``latent_shards.check_for_training``)."""
    source = data_cfg["source"]
    if source not in SOURCE_CONTROL_INPUTS:
        return
    missing = [k for k in REQUIRED_CONTROL_INPUTS.get(control_kind, ()) if k not in SOURCE_CONTROL_INPUTS[source]]
    if missing:
        fits = [s for s, held in SOURCE_CONTROL_INPUTS.items()
                if all(k in held for k in REQUIRED_CONTROL_INPUTS[control_kind])]
        raise ValueError(f"control.kind: {control_kind!r} needs {list(REQUIRED_CONTROL_INPUTS[control_kind])} per "
                         f"clip, which data.source={source!r} does not give; expected control.kind='none' or "
                         f"data.source in {fits}")


def make_source(data_cfg) -> _ClipSource | CroppedSource | LatentSource:
    """The source described by ``data_cfg`` (see :func:`data_config`), validated first (for
    'latents', also against the shards' ``meta.json``: ValueError naming the field)."""
    cfg = validate_data_config(data_cfg)
    if cfg["source"] == "latents":
        return LatentSource(cfg["folder"], cfg)
    args = (cfg["height"], cfg["width"], cfg["latent_frames"], cfg["num_examples"], cfg["seed"],
            cfg["text_len"], cfg["text_dim"])
    if cfg["source"] == "world":
        source = WorldSource(*args, text_embedding=cfg["text_embedding"])
    elif cfg["source"] == "pose":
        source = PoseSource(*args, text_embedding=cfg["text_embedding"])
    else:
        source = FolderSource(cfg["folder"], *args)
    return CroppedSource(source, int(cfg["crop"]), cfg["seed"]) if cfg["crop"] else source


def clip_text(config) -> np.ndarray:
    """float32 ``[text_len, text_dim]``: the text the training clips of an experiment config
    carry (zeros, unless its data section asks for the source's fixed random embedding); what
    a trained generator is conditioned on when it streams."""
    data = config.get("data")
    if data is not None and data.get("text_embedding", "zeros") != "zeros":
        return make_source(data)[0]["text"]
    return np.zeros((config.model.text_len, config.model.text_dim), np.float32)


def _rows_of_global_batches(ds, rows: int, index: int, count: int):
    """Item ``i`` of process ``index``'s stream: item ``(i // rows) * rows * count + index * rows
    + i % rows`` of the one-process stream ``ds`` (its rows of every global batch)."""
    whole = rows * count

    def item(i):
        return ds[(i // rows) * whole + index * rows + i % rows]

    return grain.MapDataset.range(len(ds) // whole * rows).map(item)


def make_loader(source, batch_size: int, seed: int, shuffle: bool = True,
                num_epochs: int | None = None, worker_count: int = 0, *,
                shard_index: int = 0, shard_count: int = 1, read_threads: int = 2, keep=None):
    """A checkpointable iterator of batches of ``source``.

    Args:
      source: a random-access source (``len`` and ``__getitem__``).
      batch_size: items per batch; a last partial batch is dropped (static shapes).
      seed: the shuffle seed (a new order every epoch).
      shuffle: whether to shuffle; else items come in index order.
      num_epochs: passes over the source, None for endless.
      worker_count: processes that produce batches (0: this process). With workers the
        program must parse its absl flags before building the loader and run under an
        ``if __name__ == "__main__"`` guard.
      shard_index, shard_count: this process's share of every batch: the loader yields rows
        ``[shard_index * batch_size, (shard_index + 1) * batch_size)`` of the batches of
        ``batch_size * shard_count`` that one loader (``shard_count=1``) would yield, reading
        only those items. So the global batch of a multi-process run, its processes' batches
        side by side, is the same whatever the number of processes (e.g.
        :func:`aapt_jax.train.sharded.process_rows` of the batch sharding). A ``keep`` filter
        applies to each process's own items.
      read_threads: threads that read items ahead in each process.
      keep: optional predicate on one item; items it rejects are skipped (e.g.
        :class:`aapt_jax.data.control_outliers.CameraOutlierFilter`).

    Returns:
      A grain ``DatasetIterator`` yielding dicts of stacked numpy arrays; ``get_state()``
      returns a small dict to save and ``set_state(state)`` on a fresh loader built with
      the same arguments resumes with the very next batch.
    """
    _check_loader_args(len(source), batch_size, num_epochs, worker_count, shard_index, shard_count,
                       read_threads)
    ds = grain.MapDataset.source(source)
    if shuffle:
        ds = ds.shuffle(seed=seed)
    ds = ds.repeat(num_epochs)
    if shard_count > 1:
        ds = _rows_of_global_batches(ds, batch_size, shard_index, shard_count)
    # Only a few items ahead: a clip is large and the producer should not race the trainer.
    read = grain.ReadOptions(num_threads=read_threads, prefetch_buffer_size=max(2 * batch_size, 1))
    it = ds.to_iter_dataset(read)
    if keep is not None:
        it = it.filter(keep)
    it = it.batch(batch_size, drop_remainder=True)
    if worker_count > 0:
        it = it.mp_prefetch(grain.MultiprocessingOptions(num_workers=worker_count))
        # Batches from workers live in shared memory that is freed when they are collected;
        # plain copies keep their lifetime the caller's business.
        it = it.map(_plain_arrays)
    return iter(it)


def _check_loader_args(n_items, batch_size, num_epochs, worker_count, shard_index, shard_count, read_threads):
    """One-line errors for :func:`make_loader`'s arguments, before grain builds anything."""
    for name, value, low in (("batch_size", batch_size, 1), ("worker_count", worker_count, 0),
                             ("shard_count", shard_count, 1), ("read_threads", read_threads, 0)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ValueError(f"make_loader {name}: expected an int >= {low}, got {value!r}")
    if not 0 <= shard_index < shard_count:
        raise ValueError(f"make_loader shard_index: expected 0 <= shard_index < {shard_count}, "
                         f"got {shard_index!r}")
    if num_epochs is not None and (not isinstance(num_epochs, int) or num_epochs < 1):
        raise ValueError(f"make_loader num_epochs: expected None or an int >= 1, got {num_epochs!r}")
    if worker_count > 0 and not flags.FLAGS.is_parsed():
        raise ValueError("make_loader worker_count: grain's worker processes read absl flags; "
                         "parse them first (absl.app.run, or flags.FLAGS(argv))")
    if n_items < shard_count * batch_size:
        raise ValueError(f"make_loader batch_size: a shard of {n_items} items over "
                         f"{shard_count} hosts cannot fill a batch of {batch_size}")


def _plain_arrays(batch: dict) -> dict:
    return {k: np.array(v) for k, v in batch.items()}
