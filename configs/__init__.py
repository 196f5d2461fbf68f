"""Experiment configs: one ``get_config()`` per file (ml_collections).

The binaries load a file, ``--config=configs/X.py[:STAGE]``. :func:`get` is the same by
name, for the callers that hold names (the tests, ``launch.bench``): they hand it to the
library as its ``named`` argument, and the library never imports these files.
"""

from __future__ import annotations

import importlib
import pathlib

from ml_collections import ConfigDict

# The names the benchmark figures carry (the models as their authors call them) -> file.
NAMED = {
    "tiny": "tiny",
    "tiny_world": "tiny_world",
    "wan2.1-t2v-1.3B": "wan2_1_t2v_1_3b",
    "wan2.1-t2v-14B": "wan2_1_t2v_14b",
    "aapt-8B": "aapt_8b",
}


def files() -> list[str]:
    """The config files of this folder, by module name (``tiny_world``, ...)."""
    return sorted(p.stem for p in pathlib.Path(__file__).parent.glob("*.py") if p.stem != "__init__")


def get(spec: str) -> ConfigDict:
    """``'NAME'`` or ``'NAME:STAGE'``: a name of :data:`NAMED` or a file's module name, as
    ``--config=configs/FILE.py[:STAGE]`` would load it."""
    name, _, stage = spec.partition(":")
    known = sorted(set(NAMED) | set(files()))
    if name not in known:
        raise ValueError(f"config: expected one of {known}, got {name!r}")
    module = importlib.import_module(f"{__name__}.{NAMED.get(name, name)}")
    return module.get_config(stage) if stage else module.get_config()
