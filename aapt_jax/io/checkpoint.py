"""Orbax checkpoints of a training run: async, the last k kept, written atomically.

A checkpoint step holds ``state`` (a pytree of arrays: step, params, optimizer state, RNG
key) and ``meta`` (JSON: the data iterator state, the stage, the config). Orbax writes
each step into a temporary directory and renames it when complete, so a run killed at any
moment leaves either a whole step or none; steps are never overwritten.
"""

from __future__ import annotations

import os
from typing import Any

import jax
import orbax.checkpoint as ocp

from aapt_jax.io.checksums import verify_manifest, write_manifest
from aapt_jax.io.files import atomic_write_json


class CheckpointError(ValueError):
    pass


class Checkpointer:
    def __init__(self, directory: str, keep: int = 3, async_save: bool = True):
        if keep < 1:
            raise ValueError(f"train.keep_checkpoints: expected >= 1, got {keep}")
        self.directory = os.path.abspath(directory)
        options = ocp.CheckpointManagerOptions(max_to_keep=keep, enable_async_checkpointing=async_save,
                                               create=True)
        self._manager = ocp.CheckpointManager(self.directory, options=options)

    def steps(self) -> list[int]:
        return sorted(self._manager.all_steps())

    def latest_step(self) -> int | None:
        steps = self.steps()
        return steps[-1] if steps else None

    def save(self, step: int, state: Any, meta: dict) -> bool:
        """Start saving ``step`` (returns at once when async); False if it already exists."""
        if step in self.steps():
            return False
        return self._manager.save(step, args=ocp.args.Composite(
            state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)))

    def wait(self) -> None:
        self._manager.wait_until_finished()

    def restore_meta(self, step: int | None = None) -> dict:
        """The JSON ``meta`` of ``step`` (default: the latest) alone, without reading arrays."""
        step, path, hint = self._locate(step)
        try:
            return self._manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
        except Exception as e:  # orbax raises many types for bad files; name the path once
            raise CheckpointError(f"{path}: cannot read this checkpoint's meta ({type(e).__name__}: "
                                  f"{str(e)[:300]}){hint}") from e

    def _locate(self, step: int | None) -> tuple[int, str, str]:
        steps = self.steps()
        if step is None:
            if not steps:
                raise CheckpointError(f"{self.directory}: no checkpoint steps found")
            step = steps[-1]
        path = os.path.join(self.directory, str(step))
        others = [s for s in steps if s != step]
        hint = f"; other steps on disk: {others} (restore one with --restore_step)" if others else ""
        if step not in steps:
            raise CheckpointError(f"{path}: no such checkpoint step{hint}")
        return step, path, hint

    def restore(self, abstract_state: Any, step: int | None = None) -> tuple[Any, dict, int]:
        """Restore ``step`` (default: the latest) into the structure of ``abstract_state``.

        Raises :class:`CheckpointError` naming the path and the other steps on disk when the
        step is missing, truncated or does not match the model.
        """
        step, path, hint = self._locate(step)
        try:
            restored = self._manager.restore(step, args=ocp.args.Composite(
                state=ocp.args.StandardRestore(placed_target(abstract_state)), meta=ocp.args.JsonRestore()))
        except Exception as e:  # orbax raises many types for bad files; name the path once
            raise CheckpointError(f"{path}: cannot restore this checkpoint ({type(e).__name__}: "
                                  f"{str(e)[:300]}){hint}") from e
        return restored["state"], restored["meta"], step

    def close(self) -> None:
        self._manager.wait_until_finished()
        self._manager.close()


def placed_target(tree):
    """A restore target whose every leaf has a sharding: one that gives none is read whole onto
    the default device (Orbax would otherwise use the sharding it was saved with, which a
    different set of devices cannot honour)."""
    default = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    return jax.tree.map(lambda x: x if getattr(x, "sharding", None) is not None else
                        jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=default), tree)


def abstract_like(tree):
    """``ShapeDtypeStruct`` leaves with the same shardings: the target for a restore."""
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=getattr(x, "sharding", None)),
                        tree)


EXPORT_DIR = "export"


def save_export(workdir: str, params: Any, info: dict) -> str:
    """Write a stage's final params (``workdir/export/params``), their checksums
    (``export/checksums.json``) and ``info.json`` atomically.

    The next stage starts from this export; it is written once and never replaced.
    """
    root = os.path.join(os.path.abspath(workdir), EXPORT_DIR)
    if os.path.exists(os.path.join(root, "info.json")):
        raise CheckpointError(f"{root}: an export already exists; refusing to overwrite it")
    os.makedirs(root, exist_ok=True)
    with ocp.StandardCheckpointer() as ckptr:  # every process writes its shards
        ckptr.save(os.path.join(root, "params"), params, force=True)
        ckptr.wait_until_finished()
    if jax.process_index() == 0:
        write_manifest(root, "params")
        atomic_write_json(os.path.join(root, "info.json"), info, sort_keys=True)  # last: marks the export complete
    return root


def export_info(workdir: str) -> dict:
    """The ``info.json`` of a finished stage; a clear error if the stage never finished."""
    import json

    path = os.path.join(os.path.abspath(workdir), EXPORT_DIR, "info.json")
    if not os.path.isfile(path):
        raise CheckpointError(f"{path}: not found: {workdir} holds no finished stage to start from "
                              f"(run that stage to the end first)")
    with open(path) as f:
        return json.load(f)


def load_export(workdir: str, abstract_params: Any) -> Any:
    """The export's params restored into ``abstract_params``'s structure, after checking
    every file against ``export/checksums.json`` (ChecksumError naming a changed file)."""
    root = os.path.join(os.path.abspath(workdir), EXPORT_DIR, "params")
    export_info(workdir)
    verify_manifest(os.path.dirname(root))
    try:
        with ocp.StandardCheckpointer() as ckptr:
            return ckptr.restore(root, placed_target(abstract_params))
    except Exception as e:
        raise CheckpointError(f"{root}: cannot restore these params ({type(e).__name__}: {str(e)[:300]})") from e
