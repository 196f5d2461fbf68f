"""Wall-clock timing of device work, the one helper every benchmark times with.

Each timed call is blocked until its outputs are ready (JAX dispatches asynchronously, so
an unblocked call would time only the dispatch). A benchmark figure is the median over its
repeats, which a stray stall of a shared machine does not move.
"""

from __future__ import annotations

import statistics
import time
from typing import Any, Callable

import jax


def timed(call: Callable[[], Any]) -> tuple[Any, float]:
    """``(call(), seconds)``: the result and the wall time until it was ready."""
    start = time.perf_counter()
    out = call()
    jax.block_until_ready(out)
    return out, time.perf_counter() - start


def median_seconds(call: Callable[[], Any], *, repeats: int, warmup: int = 1) -> float:
    """Median wall seconds of ``repeats`` calls after ``warmup`` untimed ones (the first
    call of a jitted function compiles)."""
    for _ in range(warmup):
        jax.block_until_ready(call())
    return statistics.median(timed(call)[1] for _ in range(repeats))
