"""Run a script on virtual CPU devices in a fresh interpreter (a helper, not a test module).

JAX fixes the device count when it starts, so the multi-device tests run their body in a child
python with ``--xla_force_host_platform_device_count`` and read back the JSON it prints last.
"""

import json
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# XLA flags that cut compile time for tests whose programs are many and small: the numbers do not
# change (the tests compare against one device compiled the same way).
FAST_COMPILE = "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"


def run_on_devices(script: str, *, timeout: int, devices: int = 8, xla_flags: str = "") -> dict:
    """Runs ``script`` with ``devices`` CPU devices; returns its last stdout line as JSON.

    The result also holds ``stderr`` (the child's log, where sharding warnings go) and
    ``wall_seconds``. A failing child fails the caller with the end of its stderr.
    """
    env = dict(os.environ, JAX_PLATFORMS="cpu",
               XLA_FLAGS=f"--xla_force_host_platform_device_count={devices} {xla_flags}".strip())
    start = time.time()
    proc = subprocess.run([sys.executable, "-c", script], env=env, cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-4000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    return dict(result=result, stderr=proc.stderr, wall_seconds=time.time() - start)
