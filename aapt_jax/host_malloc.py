"""The launch binaries run on jemalloc when the machine has it (``libjemalloc2`` on Debian).

Every step of a jitted program on the CPU backend allocates its temporary buffers afresh.
glibc's malloc serves blocks over 32 MB (its mmap threshold's ceiling) with ``mmap`` and
gives them back with ``munmap``, so each step faults in and zeroes its buffers again: a
tiny-world stage 1 step took ~35k minor page faults, and 10-15% of the CPU time went to the
kernel. jemalloc that keeps freed pages (``dirty_decay_ms:-1``) reuses them: 150 steps of
``configs/tiny_world.py:adapt`` on the 2-core CPU went from 5.4 M faults and 20 s of system
time to 0.36 M and 4 s, 114 -> 96-102 s wall, with bit-identical losses. The cost is that a
process keeps its peak heap until it exits.

A preloaded allocator must be in place before the interpreter starts, so :func:`reexec`
runs the same command again with ``LD_PRELOAD``; ``AAPT_JAX_MALLOC=system`` keeps glibc's.
Without jemalloc on the machine nothing changes.
"""

from __future__ import annotations

import ctypes.util
import os
import sys

ENV = "AAPT_JAX_MALLOC"
# Freed pages stay with the process (no decay to the OS): the next step's buffers reuse them.
CONF = "dirty_decay_ms:-1,muzzy_decay_ms:-1"


def jemalloc_library() -> str | None:
    """The name ``LD_PRELOAD`` takes for the machine's jemalloc, or None without one."""
    return ctypes.util.find_library("jemalloc")


def reexec() -> None:
    """Replace this process (same pid and argv) by itself on jemalloc, adding ``LD_PRELOAD``.

    Returns without doing anything when it already ran (``AAPT_JAX_MALLOC`` set), when the
    user chose ``AAPT_JAX_MALLOC=system``, or when the machine has no jemalloc.
    """
    if os.environ.get(ENV):
        return
    library = jemalloc_library()
    if library is None:
        os.environ[ENV] = "system"      # children need not look again
        return
    preload = " ".join(p for p in (os.environ.get("LD_PRELOAD", ""), library) if p)
    env = dict(os.environ, **{ENV: "jemalloc", "LD_PRELOAD": preload})
    env.setdefault("MALLOC_CONF", CONF)
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, sys.orig_argv, env)
