import os

from virtual_devices import FAST_COMPILE

os.environ.setdefault("JAX_PLATFORMS", "cpu")
# The suite's time is mostly XLA compiling many small programs, which run for milliseconds:
# compiled without LLVM's expensive passes they compile ~40% faster (the gradient-equality
# tests of student forcing: 228 -> 137 s) and give the same numbers to the tests' tolerances.
# Binaries the tests start in a subprocess inherit the flags.
os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {FAST_COMPILE}".strip()

import jax  # noqa: E402

jax.config.update("jax_default_matmul_precision", "highest")
