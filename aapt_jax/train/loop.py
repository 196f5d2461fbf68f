"""The training loop every stage runs in.

Exact resume: the checkpoint holds params, optimizer state, step and base RNG key (each
step's key is ``fold_in(key, step)``), plus the data iterator's state; a run killed at any
point and resumed ends with the same parameters, bit for bit, as one never interrupted.
SIGTERM saves a checkpoint and stops cleanly; a non-finite loss, or non-finite params or
optimizer state after an update, stops the run without saving, keeping the last good
checkpoint (as does a stage's own divergence check, e.g. exploding discriminator logits); the reason goes to the log and the raised error. Metrics go to TensorBoard event files under
``workdir/tb``; sample videos to ``workdir/samples/step_N.mp4`` (real | generated).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import time

import jax
import jax.numpy as jnp
import numpy as np
from ml_collections import ConfigDict
from tqdm import tqdm

from aapt_jax import configs as aapt_configs
from aapt_jax.data.control_outliers import control_outlier_filter
from aapt_jax.data.sources import make_loader, make_source
from aapt_jax.io import checkpoint as ckpt
from aapt_jax.io.files import WorkdirLock, atomic_write_json
from aapt_jax.io.video import unit_to_frames, write_mp4
from aapt_jax.parallel import sharding as shd
from aapt_jax.train import sharded, stages
from aapt_jax.train.sharded import initial_state  # noqa: F401  (the loop's public initial state)
from aapt_jax.train.config import train_config
from aapt_jax.train.optim import make_optimizer

log = logging.getLogger(__name__)

FINISH_BATCHES = 8  # batches a stage's finish hook sees (e.g. the VAE's latent statistics)


class TrainingStopped(RuntimeError):
    """A run stopped for a reason a person must look at (e.g. a non-finite loss)."""


def make_train_step(stage: stages.Stage, tx, layout: sharded.Layout | None = None,
                    batch_size: int | None = None) -> sharded.TrainStep:
    """The stage's jitted step on ``layout``'s mesh (default: a mesh of the one default device),
    ``batch_size`` examples per step in all (default: the first batch's rows)."""
    return sharded.TrainStep(stage, tx, layout, batch_size)


def _config_fingerprint(config: ConfigDict) -> dict:
    """The fields a resumed run must share with the run that wrote the checkpoints."""
    return {"stage": config.train.stage, "model": config.model.to_dict(), "control": config.control.to_dict(),
            "data": config.data.to_dict(), "vae": config.vae.to_dict(), "seed": config.train.seed,
            "batch_size": config.train.batch_size, "optimizer": config.train.optimizer}


# Fingerprint keys that are not the config's own dotted names.
_FINGERPRINT_FIELDS = {"stage": "train.stage", "seed": "train.seed", "batch_size": "train.batch_size",
                       "optimizer": "train.optimizer"}


def _flatten(tree, prefix: str) -> dict:
    if not isinstance(tree, dict):
        return {prefix: tree}
    out = {}
    for k, v in tree.items():
        out.update(_flatten(v, f"{prefix}.{k}"))
    return out


def config_differences(saved: dict, given: dict) -> list[str]:
    """``'field: saved X, given Y'`` for each config field that differs (keys a checkpoint
    written by an older version did not record are not compared)."""
    given = json.loads(json.dumps(given))  # tuples as lists, like the saved JSON
    differ = []
    for key in sorted(set(saved) & set(given)):
        name = _FINGERPRINT_FIELDS.get(key, key)
        a, b = _flatten(saved[key], name), _flatten(given[key], name)
        differ += [f"{k}: saved {a.get(k)!r}, given {b.get(k)!r}" for k in sorted(set(a) | set(b))
                   if a.get(k) != b.get(k)]
    return differ


def _write_video(path, real, fake, fps):
    """Side by side, real | generated, first sample of the batch."""
    both = np.concatenate([np.asarray(real[0]), np.asarray(fake[0])], axis=2)
    write_mp4(path, unit_to_frames(both), fps=fps)


def train(config: ConfigDict, workdir: str) -> dict:
    """Run (or resume) the stage in ``config.train.stage`` in ``workdir``. Returns a summary.

    The workdir is locked for the run (:class:`WorkdirBusy` naming the holder's pid if another
    process has it); a run refused by validation leaves no new workdir behind.
    """
    stages.check_config(config)  # before the workdir is created or locked
    workdir = os.path.abspath(workdir)
    if os.path.exists(os.path.join(workdir, ckpt.EXPORT_DIR, "info.json")):
        raise ValueError(f"workdir: {workdir} already holds a finished stage; use a new workdir")
    # One process per run holds the lock: the processes of a multi-host run share the workdir.
    with WorkdirLock(workdir) if jax.process_index() == 0 else contextlib.nullcontext():
        return _train_locked(config, workdir)


class _Metrics:
    """A step's metrics read on the host one step late: the loop dispatches step ``n + 1``
    before it reads step ``n`` (as maxtext's metric logger does), so the device never waits
    for the host. A step is read at once where the host acts on it (a checkpoint, a sample,
    the last step): a state is saved only after its step's metrics said it is finite."""

    def __init__(self, stage, tc, writer, bar, manager, schedule):
        self.stage, self.tc, self.writer, self.bar, self.manager, self.schedule = (stage, tc, writer, bar, manager,
                                                                                  schedule)
        self.pending, self.losses, self.t_last = None, [], time.perf_counter()

    def push(self, done: int, metrics: dict) -> None:
        """Step ``done``'s metrics (device arrays); reads the previous step's."""
        self.flush()
        self.pending = (done, metrics)

    def flush(self) -> None:
        """Read the pending step: stop on a non-finite loss or state or a stage's own divergence
        check (without saving, naming the last good checkpoint), else log it."""
        if self.pending is None:
            return
        (done, metrics), self.pending = self.pending, None
        host = jax.device_get(metrics)
        state_finite = bool(host.pop("state_finite"))
        loss = float(host["loss"])
        reason = None if np.isfinite(loss) else f"non-finite loss {loss}"
        if reason is None and not state_finite:
            reason = "non-finite params or optimizer state after the update (check train.lr and the gradients)"
        if reason is None and self.stage.check_metrics is not None:
            reason = self.stage.check_metrics(host)
        if reason is not None:
            self.manager.wait()
            good = self.manager.latest_step()
            message = (f"{reason} at step {done}; stopped without saving. " + (
                f"Last good checkpoint: step {good} in {self.manager.directory}" if good is not None else
                f"No checkpoint was saved before it (in {self.manager.directory})"))
            log.error("%s", message)
            raise TrainingStopped(message)
        self.losses.append(loss)
        self.bar.update(1)
        if done % self.tc.log_every == 0 or done == self.tc.steps:
            self._log(done, host, loss)

    def _log(self, done: int, host: dict, loss: float) -> None:
        now = time.perf_counter()
        rate = self.tc.log_every / max(now - self.t_last, 1e-9)
        self.t_last = now
        for k, v in host.items():
            self.writer.add_scalar(f"train/{k}", float(v), done)
        self.writer.add_scalar("train/lr", float(self.schedule(done)), done)
        self.writer.add_scalar("train/steps_per_s", rate, done)
        self.bar.set_postfix(loss=f"{loss:.4f}", steps_per_s=f"{rate:.2f}")


def _restore(manager, train_step: sharded.TrainStep, loader, config: ConfigDict, tc, workdir: str):
    """The latest checkpoint's state, restored straight into its shards (the loader set to its
    position), or the initial state. The config is compared before the arrays are read: a
    changed optimizer would otherwise fail inside the restore as an opaque tree-structure
    mismatch."""
    if manager.latest_step() is None:
        return train_step.init_state(tc.seed)
    differ = config_differences(manager.restore_meta(tc.restore_step or None)["config"], _config_fingerprint(config))
    if differ:
        raise ValueError(f"workdir: {workdir} has checkpoints of a different config ({'; '.join(differ)}); "
                         f"resume with the saved values or use a new workdir")
    state, meta, step = manager.restore(train_step.abstract_state(), tc.restore_step or None)
    data_state = meta["data_state"]
    if isinstance(data_state, list):  # one per process (a multi-process run)
        if len(data_state) != jax.process_count():
            raise ValueError(f"workdir: {workdir} was checkpointed by {len(data_state)} processes, resumed by "
                             f"{jax.process_count()}; resume with the same number of processes")
        data_state = data_state[jax.process_index()]
    loader.set_state(data_state.encode() if isinstance(data_state, str) else data_state)
    log.info("resumed %s at step %d", workdir, step)
    return state


def _train_locked(config: ConfigDict, workdir: str) -> dict:
    tc = train_config(config)
    layout = sharded.layout_for(config)             # the run's one mesh, from config.mesh
    stage = stages.build(config, layout)            # validates before any compile
    source = make_source(config.data)
    tx, schedule = stage.optimizer or make_optimizer(
        tc.optimizer, tc.lr, weight_decay=tc.weight_decay, grad_clip=tc.grad_clip, warmup_steps=tc.warmup_steps,
        decay_steps=tc.steps if tc.lr_schedule == "cosine" else 0)
    manager = ckpt.Checkpointer(os.path.join(workdir, "checkpoints"), keep=tc.keep_checkpoints)
    hw = (config.video.height, config.video.width)
    rows = tc.batch_size * stage.clips_per_example
    train_step = make_train_step(stage, tx, layout, rows)
    # This process loads only its rows of every batch (all of them on a single process).
    shard_index, shard_count, local_rows = sharded.process_rows(train_step.shardings.batch, rows)
    loader = make_loader(source, local_rows, seed=config.data.seed, shard_index=shard_index,
                         shard_count=shard_count, keep=control_outlier_filter(aapt_configs.control_config(config), hw))
    from tensorboardX import SummaryWriter
    writer = SummaryWriter(os.path.join(workdir, "tb")) if jax.process_index() == 0 else _NoWriter()
    stop = {"signal": None}
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: stop.update(signal=signum))
    try:
        state = _restore(manager, train_step, loader, config, tc, workdir)
        state, losses = _steps(config, tc, stage, train_step, state, loader, (manager, writer, schedule, stop),
                               workdir)
        manager.wait()
        return _finish(config, tc, stage, state, losses, source, workdir)
    finally:
        signal.signal(signal.SIGTERM, previous)
        writer.close()
        manager.close()


def _steps(config, tc, stage, train_step, state, loader, run, workdir):
    """Train from the state's step to ``train.steps`` or a SIGTERM; returns the state and
    the losses. run: (checkpointer, TensorBoard writer, lr schedule, {'signal': ...})."""
    manager, writer, schedule, stop = run
    layout = train_step.layout

    def sample_on_mesh(params, frozen, batch, key):
        with shd.use_mesh(layout.mesh, layout.rules):
            return stage.sample(params, frozen, batch, key)

    # The videos come back whole (replicated): process 0 writes them.
    sample_fn = jax.jit(sample_on_mesh, out_shardings=layout.replicated())
    frozen = train_step.place_frozen(stage.frozen)
    fingerprint = _config_fingerprint(config)

    def save(step):
        data_state = _all_processes(loader.get_state())
        # A copy: the save runs in the background while the next step donates `state`.
        manager.save(step, jax.tree.map(jnp.copy, state),
                     {"config": fingerprint, "data_state": data_state, "stage": stage.name, "info": stage.info})

    start = int(state["step"])
    with tqdm(total=tc.steps, initial=start, desc=f"{stage.name}", unit="step",
              disable=jax.process_index() != 0) as bar:
        metrics = _Metrics(stage, tc, writer, bar, manager, schedule)
        for step in range(start, tc.steps):
            done = step + 1
            batch = train_step.put_batch(next(loader))
            state, step_metrics = train_step(state, frozen, batch)
            metrics.push(done, step_metrics)
            checkpoint = done % tc.checkpoint_every == 0 or done == tc.steps or stop["signal"]
            sample = tc.sample_every and (done % tc.sample_every == 0 or done == tc.steps)
            if not (checkpoint or sample):
                continue
            metrics.flush()  # the host acts on this step: read it first
            if checkpoint:
                save(done)
            if sample:
                real, fake = sample_fn(state["params"], frozen, batch, jax.random.key(done))
                if jax.process_index() == 0:
                    os.makedirs(os.path.join(workdir, "samples"), exist_ok=True)
                    _write_video(os.path.join(workdir, "samples", f"step_{done}.mp4"), real, fake, config.video.fps)
            if stop["signal"]:
                log.warning("signal %s: saved step %d, stopping", stop["signal"], done)
                break
        metrics.flush()
    return state, metrics.losses


class _NoWriter:
    """TensorBoard for the processes other than process 0: it logs once for the run."""

    def add_scalar(self, *args, **kwargs):
        pass

    def close(self):
        pass


def _all_processes(data_state):
    """A loader's state as JSON text; in a multi-process run the list of every process's
    (the checkpoint's meta is written by process 0; each process resumes its own)."""
    text = data_state.decode() if isinstance(data_state, bytes) else data_state
    if jax.process_count() == 1:
        return text
    from jax.experimental import multihost_utils

    raw = np.frombuffer(json.dumps(text).encode(), np.uint8)
    lengths = multihost_utils.process_allgather(np.array([raw.size], np.int32))
    padded = np.zeros(int(np.max(lengths)), np.uint8)
    padded[:raw.size] = raw
    every = multihost_utils.process_allgather(padded)
    return [json.loads(bytes(row[:int(n)]).decode()) for row, n in zip(every, np.ravel(lengths))]


def _finish(config, tc, stage, state, losses, source, workdir) -> dict:
    """Export a finished stage (after its finish hook) and write the run's summary."""
    finished = int(state["step"]) >= tc.steps
    if finished:
        extra = {}
        if stage.finish is not None:
            stats_loader = make_loader(source, tc.batch_size, seed=config.data.seed + 1)
            extra = stage.finish(state["params"], [next(stats_loader) for _ in range(FINISH_BATCHES)])
        exported = state["params"] if stage.export_params is None else stage.export_params(state["params"])
        ckpt.save_export(workdir, exported, dict(stage.info, steps=tc.steps, **extra))
    n = max(1, len(losses) // 10)
    summary = dict(stage=stage.name, workdir=workdir, step=int(state["step"]), finished=finished,
                   first_10pct_loss=float(np.mean(losses[:n])) if losses else None,
                   last_10pct_loss=float(np.mean(losses[-n:])) if losses else None,
                   skipped_clips=getattr(source, "skipped_clips", 0))
    if jax.process_index() == 0:
        atomic_write_json(os.path.join(workdir, "summary.json"), summary)
    return summary
