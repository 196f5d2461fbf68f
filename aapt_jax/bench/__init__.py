"""Benchmark suites for ``python -m launch.bench --suite=NAME``.

Each suite is a module here with ``run(named, quick: bool) -> Iterable[dict]``; every dict
is one figure ``{"suite", "name", "value", "unit", ...context}``. ``named`` gives the
experiment configs a suite measures by name (:data:`aapt_jax.configs.Named`: ``launch.bench``
passes the checkout's ``configs.get``). ``quick`` shrinks the sizes so a test can check that
the suite runs; figures quoted anywhere come from full runs.
"""

import importlib
import pkgutil


def suites() -> list[str]:
    return sorted(m.name for m in pkgutil.iter_modules(__path__) if not m.name.startswith("_"))


def load(name: str):
    if name not in suites():
        raise ValueError(f"--suite: expected one of {suites()}, got {name!r}")
    return importlib.import_module(f"{__name__}.{name}")
