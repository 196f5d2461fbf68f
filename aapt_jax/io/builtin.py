"""Weights shipped inside the package, named ``builtin:WORLD/PIECE``.

The tiny world ships what a user of a real model would download: its VAE, its pretrained
base model (stage 0, the "pretrained video diffusion model" AAPT starts from) and a
post-trained AAPT generator, each as the folder ``launch.convert`` writes (safetensors plus
config), under ``aapt_jax/weights/WORLD/PIECE``, with the held-out figures each reached in
``aapt_jax/weights/WORLD/figures.json``. They are made by ``python -m launch.pretrain``,
never edited by hand.

A config field that takes a checkpoint (``vae.checkpoint``, ``train.init_from``,
``--checkpoint``) accepts ``builtin:tiny_world/vae`` and friends wherever it accepts a
directory; :func:`resolve` turns the name into the folder.
"""

from __future__ import annotations

import json
import os

PREFIX = "builtin:"
WEIGHTS_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "weights")
FIGURES = "figures.json"


def shipped() -> list[str]:
    """Every ``builtin:WORLD/PIECE`` present in this installation."""
    names = []
    if os.path.isdir(WEIGHTS_DIR):
        for world in sorted(os.listdir(WEIGHTS_DIR)):
            root = os.path.join(WEIGHTS_DIR, world)
            if os.path.isdir(root):
                names += [f"{PREFIX}{world}/{p}" for p in sorted(os.listdir(root))
                          if os.path.isdir(os.path.join(root, p))]
    return names


def is_builtin(source) -> bool:
    return isinstance(source, str) and source.startswith(PREFIX)


def path(name: str) -> str:
    """The folder of ``WORLD/PIECE`` under the package's weights (whether or not it exists)."""
    return os.path.join(WEIGHTS_DIR, *name.split("/"))


def resolve(source: str, field: str = "checkpoint") -> str:
    """``source`` itself, or the folder a ``builtin:`` name stands for.

    Raises ValueError naming ``field`` for a builtin name that is not shipped."""
    if not is_builtin(source):
        return source
    name = source[len(PREFIX):]
    folder = path(name)
    if not name or ".." in name.split("/") or not os.path.isdir(folder):
        raise ValueError(f"{field}: expected one of the shipped weights {shipped()}, got {source!r}")
    return folder


def sources(config, generator: str | None = None, vae: str | None = None) -> tuple[str, str]:
    """(generator, VAE) to load for streaming ``config``: each one given is kept as it is (''
    means random weights); one left None is the config's own (``vae.checkpoint``), else the
    piece its world (the config's ``name``) ships (``builtin:NAME/aapt``, ``builtin:NAME/vae``),
    else ''. What ``launch.sample`` and ``launch.serve`` load when not told otherwise."""
    def shipped_piece(piece):
        name = f"{PREFIX}{config.get('name', '')}/{piece}"
        return name if name in shipped() else ""

    if generator is None:
        generator = shipped_piece("aapt")
    if vae is None:
        vae = config.vae.get("checkpoint", "") or shipped_piece("vae")
    return generator, vae


def figures(world: str) -> dict:
    """The held-out figures recorded when ``world``'s weights were made ({} if none)."""
    where = os.path.join(WEIGHTS_DIR, world, FIGURES)
    if not os.path.isfile(where):
        return {}
    with open(where) as f:
        return json.load(f)


def made_by(world: str) -> dict:
    """``{piece: {'command': ..., 'made': date}}``: the run that made each shipped piece of
    ``world`` (a record that names one command for the whole folder gives it to every piece)."""
    record = figures(world)
    return {piece: {k: entry.get(k, record.get(k, "")) for k in ("command", "made")}
            for piece, entry in record.get("pieces", {}).items()}
