"""The built-in weights: made from a finished pipeline workdir, and checked against their figures.

:func:`ship` converts a pipeline's VAE, stage 0 base model and stage 3 generator with
``launch.convert``'s converter (bf16 transformer safetensors, fp32 VAE, plus config: the folders PyTorch users
load too) into ``aapt_jax/weights/WORLD/{vae,base,aapt}``, measures each one's held-out
figure with the converted files, the way a user loads them, and records the figures in
``figures.json``. :func:`check` measures them again: the tests call it on the shipped
weights. Nothing is replaced until everything new is written: the new folder is built
beside the old one and swapped in at the end.

The pieces form a chain (each trains on the ones before it), and one run makes a stretch of
it: ``vae, base, aapt`` from scratch, or only ``aapt`` post-trained from the shipped VAE and
base (what a user of a downloaded model does). The shipped pieces before the stretch are
carried into the new folder as they are, with the command that made them; the pieces after
it are dropped, since they were made from the weights being replaced.
"""

from __future__ import annotations

import datetime
import json
import os
import shutil
import tempfile

from aapt_jax.eval import world_figures as wf
from aapt_jax.io import builtin
from aapt_jax.io.convert import convert
from aapt_jax.io.vae_source import load_vae

# The world whose weights the package ships (``aapt_jax/weights/tiny_world``).
WORLD = "tiny_world"
# Shipped piece -> (the pipeline stage it comes from, what the converter writes of it).
PIECES = {"vae": ("vae", "vae"), "base": ("base", "generator"), "aapt": ("adversarial", "generator")}
# Generators ship in bf16 (the tensors the model keeps in fp32 stay fp32), as Wan's weights are
# published: half the bytes, and the recorded figures are measured on these files.
GENERATOR_DTYPE = "bfloat16"
# Shipped weights are split into files of at most 4 MiB: the repository holds them, and no
# single blob in it should be large.
SHARD_BYTES = 4 << 20
# The figures each piece records (few paths, so the tests can measure them again in seconds).
CHECK = {"vae": {"paths": 2, "seconds": 2.0}, "base": {"paths": 2, "latent_frames": 6},
         "aapt": {"paths": 2, "seconds": [1.0, 2.0]}}


def carried(pieces, world: str = WORLD) -> tuple[str, ...]:
    """The shipped pieces of ``world`` a run making ``pieces`` starts from (those before them
    in the chain).

    ValueError naming the field unless ``pieces`` is a nonempty stretch of :data:`PIECES`
    whose predecessors are shipped."""
    order = tuple(PIECES)
    pieces = tuple(pieces)
    first = order.index(pieces[0]) if pieces and pieces[0] in order else -1
    if first < 0 or pieces != order[first:first + len(pieces)]:
        raise ValueError(f"pieces: expected consecutive pieces of the chain {list(order)} (e.g. "
                         f"{list(order)} or ['aapt']), got {list(pieces)}")
    for piece in order[:first]:
        if not os.path.isdir(os.path.join(builtin.path(world), piece)):
            raise ValueError(f"pieces: {list(pieces)} start from the shipped {piece} of {world}, which is not in "
                             f"{builtin.path(world)} (make it too: --pieces={','.join(order[:first + len(pieces)])})")
    return order[:first]


def measure(config, folder: str) -> dict:
    """``{piece: {figure settings..., 'value': dB}}`` of the pieces under ``folder``."""
    vae = load_vae(config.vae.preset, os.path.join(folder, "vae"))
    out = {}
    c = CHECK["vae"]
    out["vae"] = dict(c, figure="vae_psnr_heldout_db",
                      value=wf.mean_ci95(wf.vae_heldout_psnr(config, vae, **c))[0])
    if os.path.isdir(os.path.join(folder, "base")):
        c = CHECK["base"]
        out["base"] = dict(c, figure="base_denoise_psnr_db", noise_t=wf.BASE_NOISE_T,
                           value=wf.mean_ci95(wf.base_denoise_psnr(config, vae, os.path.join(folder, "base"), **c))[0])
    if os.path.isdir(os.path.join(folder, "aapt")):
        c = CHECK["aapt"]
        held = wf.generator_heldout(config, vae, os.path.join(folder, "aapt"), paths=c["paths"],
                                    seconds=tuple(c["seconds"]))
        out["aapt"] = dict(c, figure="generator_psnr_db", value=wf.mean_ci95(held["generator"])[0],
                           copy_first_frame_db=wf.mean_ci95(held["copy_first_frame"])[0],
                           control_following_db=wf.mean_ci95(held["control_following"])[0])
    return out


def check(config, world: str = WORLD) -> dict:
    """``{piece: (recorded dB, measured dB)}`` for the shipped weights of ``world``."""
    recorded = builtin.figures(world).get("pieces", {})
    measured = measure(config, builtin.path(world))
    return {piece: (recorded[piece]["value"], measured[piece]["value"]) for piece in measured if piece in recorded}


def ship(workdir: str, config, *, world: str = WORLD, pieces=tuple(PIECES), command: str = "",
         log=print) -> dict:
    """Convert ``pieces`` of the pipeline in ``workdir`` into the package's weights of
    ``world``, with the shipped pieces they start from (:func:`carried`), and record their
    figures; returns what ``figures.json`` holds.

    ValueError naming the field before anything is written when ``pieces`` is not a stretch
    of the chain, a piece it starts from is not shipped, or a stage has not finished."""
    keep = carried(pieces, world)
    dest = builtin.path(world)
    made_by = builtin.made_by(world)
    for piece in pieces:
        stage = PIECES[piece][0]
        if not os.path.isfile(os.path.join(workdir, stage, "export", "info.json")):
            raise ValueError(f"workdir: the {stage} stage has not finished in {os.path.join(workdir, stage)} "
                             f"(run the pipeline first)")
    made = {"command": command, "made": datetime.date.today().isoformat()}
    vae = os.path.join(dest if "vae" in keep else workdir, "vae")
    os.makedirs(os.path.dirname(dest), exist_ok=True)
    staging = tempfile.mkdtemp(prefix=f".{world}.", dir=os.path.dirname(dest))
    os.chmod(staging, 0o755)  # mkdtemp's 0700 would make the shipped folder private
    try:
        for piece in keep:
            log(f"[ship] {piece}: keeping the shipped one")
            shutil.copytree(os.path.join(dest, piece), os.path.join(staging, piece))
        for piece in pieces:
            stage, what = PIECES[piece]
            log(f"[ship] {piece}: converting {os.path.join(workdir, stage)}")
            scratch = os.path.join(staging, f".{piece}")
            convert(os.path.join(workdir, stage), scratch, dtype=GENERATOR_DTYPE, what=(what,), vae=vae,
                    max_shard_bytes=SHARD_BYTES)
            # The VAE piece is the converter's diffusers VAE folder; a generator piece is the
            # converter's folder itself (aapt.json + transformer/).
            os.rename(os.path.join(scratch, "vae") if piece == "vae" else scratch, os.path.join(staging, piece))
            shutil.rmtree(scratch, ignore_errors=True)
        log("[ship] measuring the held-out figures of the converted weights")
        figures = measure(config, staging)
        for piece, entry in figures.items():  # who made each piece: this run, or the run it was carried from
            entry.update(made_by.get(piece, {}) if piece in keep else made)
        record = {"world": world, "pieces": figures}
        with open(os.path.join(staging, builtin.FIGURES), "w") as f:
            json.dump(record, f, indent=1)
        old = None
        if os.path.exists(dest):
            old = dest + ".old"
            shutil.rmtree(old, ignore_errors=True)
            os.rename(dest, old)
        os.rename(staging, dest)
        if old:
            shutil.rmtree(old)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    log(f"[ship] {dest}: {json.dumps(record['pieces'])}")
    return record
