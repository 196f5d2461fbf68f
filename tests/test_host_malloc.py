"""The launch binaries re-run themselves on jemalloc when the machine has it (same argv, same
pid), and leave glibc's malloc in place when asked to or when there is none."""

import os
import subprocess
import sys

import pytest

from aapt_jax import host_malloc

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Prints what the process it ends up in runs on; the re-exec repeats this same -c command.
SCRIPT = """
import os, sys
from aapt_jax import host_malloc
pid = os.getpid()
host_malloc.reexec()
print(os.environ.get("AAPT_JAX_MALLOC"), any("jemalloc" in line for line in open("/proc/self/maps")),
      sys.argv[1:], pid == os.getpid(), flush=True)
"""


def _child(script, **env):
    proc = subprocess.run([sys.executable, "-c", script, "a", "--b=1"], cwd=ROOT, capture_output=True, text=True,
                          timeout=120, env={k: v for k, v in dict(os.environ, **env).items() if v is not None})
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout.split()


@pytest.mark.skipif(host_malloc.jemalloc_library() is None, reason="the machine has no jemalloc (libjemalloc2)")
def test_reexec_runs_the_same_command_on_jemalloc():
    assert _child(SCRIPT, AAPT_JAX_MALLOC=None) == ["jemalloc", "True", "['a',", "'--b=1']", "True"]


def test_system_choice_keeps_glibc():
    assert _child(SCRIPT, AAPT_JAX_MALLOC="system", LD_PRELOAD=None) == ["system", "False", "['a',", "'--b=1']",
                                                                          "True"]


@pytest.mark.skipif(host_malloc.jemalloc_library() is None, reason="the machine has no jemalloc (libjemalloc2)")
def test_launch_binary_runs_on_jemalloc():
    # launch/__init__.py re-executes `python -m launch.X` before the binary's imports.
    probe = ("import sys; sys.argv = ['-m']; import launch; "
             "print(any('jemalloc' in line for line in open('/proc/self/maps')))")
    assert _child(probe, AAPT_JAX_MALLOC=None) == ["True"]
