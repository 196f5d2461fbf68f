"""Several processes (hosts) as one JAX program: ``jax.distributed.initialize``, explicit or
detected from the cluster.

Call :func:`initialize` once per process, before anything touches a device. Then
``jax.devices()`` lists every process's devices, ``config.mesh`` spans them all, each process
loads only its rows of every batch (:func:`aapt_jax.train.sharded.process_rows`) and Orbax
reads and writes each process's shards of a checkpoint. Where the processes come from:

* explicit: ``coordinator_address`` (``host:port`` of process 0), ``num_processes`` and
  ``process_id`` (``launch.train --coordinator_address=... --num_processes=... --process_id=...``);
* SLURM (``srun``, one task per host; ``SLURM_JOB_ID``, ``SLURM_NTASKS`` > 1, ...): JAX reads
  the coordinator (the first node), the process count and index from SLURM's environment;
* Kubernetes, an Indexed Job or a JobSet (``JOB_COMPLETION_INDEX`` is the process index):
  ``AAPT_COORDINATOR_ADDRESS`` (the DNS name and port of pod 0, e.g. through a headless
  service) and ``AAPT_NUM_PROCESSES`` from the manifest (``launch/k8s/``);
* otherwise: one process, nothing to do.

On CPU devices (tests: two processes on 127.0.0.1) the cross-process collectives are gloo's.
"""

from __future__ import annotations

import logging
import os
from typing import Sequence

import jax

log = logging.getLogger(__name__)

K8S_INDEX = "JOB_COMPLETION_INDEX"
K8S_COORDINATOR = "AAPT_COORDINATOR_ADDRESS"
K8S_PROCESSES = "AAPT_NUM_PROCESSES"


def detect() -> dict | None:
    """The cluster this process runs in, as ``jax.distributed.initialize`` arguments
    (``{}``: let JAX read them, as for SLURM), or None for a single process."""
    env = os.environ
    if "SLURM_JOB_ID" in env and int(env.get("SLURM_NTASKS", "1")) > 1:
        return {"cluster": "slurm"}
    if K8S_INDEX in env and K8S_COORDINATOR in env:
        if K8S_PROCESSES not in env:
            raise ValueError(f"{K8S_PROCESSES}: expected the number of pods of the job beside {K8S_COORDINATOR}, "
                             f"got nothing")
        return {"cluster": "kubernetes", "coordinator_address": env[K8S_COORDINATOR],
                "num_processes": int(env[K8S_PROCESSES]), "process_id": int(env[K8S_INDEX])}
    return None


def initialize(coordinator_address: str | None = None, num_processes: int | None = None,
               process_id: int | None = None, local_device_ids: Sequence[int] | None = None) -> dict:
    """Join this process to the others (see the module docstring); returns what was used,
    ``{'cluster': 'single'}`` when there is nothing to join. ValueError naming the flag when
    the explicit arguments are incomplete."""
    explicit = dict(coordinator_address=coordinator_address, num_processes=num_processes, process_id=process_id)
    given = {k: v for k, v in explicit.items() if v not in (None, "")}
    if given:
        missing = sorted(set(explicit) - set(given))
        if missing:
            raise ValueError(f"--{missing[0]}: expected it with --{', --'.join(sorted(given))} (a multi-process run "
                             f"needs --coordinator_address, --num_processes and --process_id), got nothing")
        if not 0 <= process_id < num_processes:
            raise ValueError(f"--process_id: expected 0 <= process_id < --num_processes={num_processes}, "
                             f"got {process_id}")
        found = dict(cluster="explicit", **given)
    else:
        found = detect()
        if found is None:
            return {"cluster": "single"}
    args = {k: v for k, v in found.items() if k != "cluster"}  # SLURM: none, JAX reads its environment
    jax.distributed.initialize(local_device_ids=local_device_ids, **args)
    found.update(process_index=jax.process_index(), process_count=jax.process_count(),
                 local_devices=jax.local_device_count(), devices=jax.device_count())
    log.info("distributed: %s", found)
    return found
