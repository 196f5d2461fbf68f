"""Reading a stage export or a training checkpoint one tensor at a time.

A converter must not hold the model: Orbax restores a partial tree (``partial_restore``)
straight into a host numpy array, so each tensor is read when it is written out and then
dropped. Which checkpoint, and what it holds, is resolved here once:

* ``WORKDIR`` with ``export/info.json``: the stage's final export (params alone);
* ``WORKDIR`` with ``checkpoints/``: the latest training step;
* ``WORKDIR/checkpoints/STEP``: that step (its ``state`` item: ``{'params', 'opt_state', ...}``).

``info`` is the stage's record (``stage``, ``model``, ``control``, ``vae_preset``,
``vae_checkpoint``, ``discriminator``...), the same dict for an export and a checkpoint.
"""

from __future__ import annotations

import json
import os
from typing import Any

import numpy as np
from absl import logging as absl_logging

from aapt_jax.io.checkpoint import EXPORT_DIR, CheckpointError, export_info
from aapt_jax.io.checksums import verify_manifest


class CheckpointTensors:
    """Tensors of one Orbax pytree item, addressed by dotted path (``blocks.0.ffn...``)."""

    def __init__(self, directory: str):
        import orbax.checkpoint as ocp

        self.directory = directory
        self._ocp = ocp
        self._checkpointer = ocp.PyTreeCheckpointer()
        try:
            tree = self._checkpointer.metadata(directory).item_metadata.tree
        except Exception as e:  # orbax raises many types for a damaged directory
            raise CheckpointError(f"{directory}: cannot read the checkpoint's metadata "
                                  f"({type(e).__name__}: {str(e)[:200]})") from e
        self.specs: dict[str, tuple[tuple, np.dtype]] = {}
        self._collect(tree, ())

    def _collect(self, node, path):
        if isinstance(node, dict):
            for k, v in node.items():
                self._collect(v, path + (str(k),))
        elif isinstance(node, (list, tuple)):
            for i, v in enumerate(node):
                self._collect(v, path + (str(i),))
        elif node is not None:
            self.specs[".".join(path)] = (tuple(node.shape), np.dtype(node.dtype))

    def has(self, path: str) -> bool:
        return path in self.specs

    def shape(self, path: str) -> tuple:
        return self.specs[path][0]

    def subtree(self, prefix: str) -> dict[str, tuple]:
        """``{path relative to prefix: shape}`` of every tensor under ``prefix``."""
        start = prefix + "." if prefix else ""
        return {p[len(start):]: s for p, (s, _) in self.specs.items() if p.startswith(start)}

    def read(self, path: str) -> np.ndarray:
        """One tensor as a host numpy array in its stored dtype."""
        import jax

        if path not in self.specs:
            raise CheckpointError(f"{self.directory}: no tensor {path!r} in this checkpoint")
        shape, dtype = self.specs[path]
        item: Any = jax.ShapeDtypeStruct(shape, dtype)
        for part in reversed(path.split(".")):
            item = {part: item}
        restore_args = jax.tree.map(lambda _: self._ocp.RestoreArgs(restore_type=np.ndarray), item)
        verbosity = absl_logging.get_verbosity()
        absl_logging.set_verbosity(absl_logging.WARNING)  # Orbax logs several lines per restore
        try:
            out = self._checkpointer.restore(self.directory, args=self._ocp.args.PyTreeRestore(
                item=item, restore_args=restore_args, partial_restore=True))
        except Exception as e:
            raise CheckpointError(f"{self.directory}: cannot read tensor {path} ({type(e).__name__}: "
                                  f"{str(e)[:200]}); the checkpoint is damaged or truncated") from e
        finally:
            absl_logging.set_verbosity(verbosity)
        for part in path.split("."):
            out = out[part]
        return np.asarray(out)


class CheckpointSource:
    """What ``--checkpoint`` names: its ``info``, tensors and where its params live.

    Attributes:
      path: the export directory or the step directory read.
      info: the stage's record (module docstring).
      tensors: :class:`CheckpointTensors` of the params (export) or the training state.
      params_prefix: dotted prefix of the params inside ``tensors`` (``''`` or ``'params'``).
      step: the training step, or None for an export.
    """

    def __init__(self, checkpoint: str, field: str = "checkpoint"):
        if not checkpoint:
            raise ValueError(f"{field}: expected a stage workdir or WORKDIR/checkpoints/STEP, got ''")
        path = os.path.abspath(checkpoint)
        if not os.path.exists(path):
            raise ValueError(f"{field}: {path} does not exist")
        self.step = None
        if os.path.isfile(os.path.join(path, EXPORT_DIR, "info.json")):
            self.info = export_info(path)
            self.path = os.path.join(path, EXPORT_DIR)
            verify_manifest(self.path)  # a truncated or changed file is named before any read
            self.tensors = CheckpointTensors(os.path.join(self.path, "params"))
            self.params_prefix = ""
            return
        if os.path.isdir(os.path.join(path, "checkpoints")):
            steps = sorted(int(s) for s in os.listdir(os.path.join(path, "checkpoints")) if s.isdigit())
            if not steps:
                raise ValueError(f"{field}: {path} holds neither an export nor a finished checkpoint step")
            path = os.path.join(path, "checkpoints", str(steps[-1]))
        if not os.path.isdir(os.path.join(path, "state")):
            raise ValueError(f"{field}: {path} is not a stage workdir (no export/info.json, no checkpoints/) "
                             f"nor a checkpoint step (no state/)")
        self.path = path
        self.step = int(os.path.basename(path)) if os.path.basename(path).isdigit() else None
        self.info = _info_of_step(path)
        self.tensors = CheckpointTensors(os.path.join(path, "state"))
        self.params_prefix = "params"

    @property
    def stage(self) -> str:
        return self.info.get("stage", "")

    def prefix(self, *parts: str) -> str:
        return ".".join(p for p in (self.params_prefix, *parts) if p)


def _info_of_step(step_dir: str) -> dict:
    meta_path = os.path.join(step_dir, "meta", "metadata")
    if not os.path.isfile(meta_path):
        raise CheckpointError(f"{meta_path}: missing; the checkpoint step is incomplete")
    with open(meta_path) as f:
        meta = json.load(f)
    if "info" in meta:
        return meta["info"]
    # Steps written before the stage record was saved with them: rebuild what the config says.
    config = meta["config"]
    stage = meta.get("stage", config.get("stage"))
    info = {"stage": stage, "control": config.get("control"), "vae_preset": config["vae"]["preset"],
            "vae_checkpoint": config["vae"].get("checkpoint", "")}
    if stage != "vae":
        from aapt_jax.model.controls import ControlConfig, control_channels

        model = dict(config["model"], causal=stage != "base")
        model["control_channels"] = 0 if stage == "base" else control_channels(ControlConfig(**config["control"]))
        info["model"] = model
    return info
