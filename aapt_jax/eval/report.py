"""The long-horizon drift evaluation as a library: check the arguments, roll every model
along the same camera paths, and write the report (see :mod:`launch.evaluate` for the
command line and the files written)."""

from __future__ import annotations

import hashlib
import json
import os
import re
import time

import jax
import numpy as np
from ml_collections import ConfigDict
from tqdm import tqdm

from aapt_jax.data.geometry import check_data_geometry
from aapt_jax.data.sources import clip_text
from aapt_jax.eval.drift import METRICS, drift_report, psnr, second_bounds
from aapt_jax.eval.rollout import (WORLDS, DriftRollout, check_generator_export, eval_path,
                                   load_generator_export, sampler_of_stage, vae_reconstruction)
from aapt_jax.eval.rollout_cache import RolloutCache, weights_fingerprint
from aapt_jax.eval.world_figures import copy_first_frame, mean_ci95
from aapt_jax.io import builtin
from aapt_jax.io.vae_source import load_vae
from aapt_jax.io.video import write_mp4

NAME_RE = re.compile(r"^[A-Za-z0-9_.-]+$")
REFERENCE = "vae_reconstruction"
BASELINE = "copy_first_frame"
# Per second, besides the drift metrics: PSNR against the path's own render minus PSNR against
# the render of a walk branched from the same first frame (a generator that ignores the
# camera scores ~0; the VAE reconstruction gives the ceiling).
STUDY_METRICS = METRICS + ("control_following",)
# The figures compared between models, path by path (the same paths and noise for every model).
PAIRED = ("psnr_mean", "psnr_last", "ssim_mean", "control_following_mean")


def parse_models(spec) -> dict[str, str]:
    """``'a=DIR1,b=DIR2'`` -> ``{'a': 'DIR1', 'b': 'DIR2'}`` (order kept); ValueError naming --models."""
    if not spec or not str(spec).strip():
        raise ValueError("--models: expected comma-separated name=workdir pairs, got ''")
    models = {}
    for item in str(spec).split(","):
        name, sep, path = item.strip().partition("=")
        name, path = name.strip(), path.strip()
        if not sep or not name or not path:
            raise ValueError(f"--models: expected name=workdir, got {item!r} in {spec!r}")
        if not NAME_RE.match(name) or name == REFERENCE:
            raise ValueError(f"--models: model names are file names ([A-Za-z0-9_.-], not {REFERENCE!r}), "
                             f"got {name!r}")
        if name in models:
            raise ValueError(f"--models: the name {name!r} appears twice in {spec!r}")
        models[name] = path
    return models


def parse_seconds(spec, fps: float, temporal: int) -> list[int]:
    """``'10,60'`` -> sorted unique ints; each must be a whole number of latent frames."""
    try:
        seconds = sorted({int(s) for s in str(spec).split(",")})
    except ValueError:
        raise ValueError(f"--seconds: expected comma-separated positive ints, got {spec!r}") from None
    if not seconds or seconds[0] < 1:
        raise ValueError(f"--seconds: expected comma-separated positive ints, got {spec!r}")
    for s in seconds:
        frames = s * fps
        if frames != int(frames) or int(frames) % temporal:
            raise ValueError(f"--seconds: {s} s at video.fps={fps} is {frames} video frames, not a multiple of "
                             f"the VAE's {temporal} frames per latent frame")
    return seconds


def check_args(config: ConfigDict, vae: str, models: str, seconds: str, paths: int, seed: int,
               worlds: str = "heldout") -> dict:
    """Every flag checked and every export's info read; nothing loaded or compiled.

    Returns ``{'models': {name: (workdir, stage, sampler, cfg)}, 'seconds': [...],
    'latent_frames': K}``.
    """
    fps, temporal = config.video.fps, config.video.vae_temporal
    parsed_seconds = parse_seconds(seconds, fps, temporal)
    if isinstance(paths, bool) or not isinstance(paths, int) or paths < 1:
        raise ValueError(f"--paths: expected an int >= 1, got {paths!r}")
    if worlds not in WORLDS:
        raise ValueError(f"--worlds: expected one of {WORLDS}, got {worlds!r}")
    if seed == config.data.seed:
        raise ValueError(f"--seed: expected a seed distinct from the training data seed (config.data.seed), "
                         f"got {seed}")
    if not vae:
        raise ValueError("--vae: expected the workdir of a finished 'vae' stage, got ''")
    if not os.path.exists(builtin.resolve(vae, "--vae")):
        raise ValueError(f"--vae: {vae} does not exist")
    checked = {}
    for name, workdir in parse_models(models).items():
        info, cfg = check_generator_export(workdir, config, field=f"--models ({name})")
        checked[name] = (workdir, info["stage"], sampler_of_stage(info["stage"]), cfg)
    return {"models": checked, "seconds": parsed_seconds,
            "latent_frames": int(parsed_seconds[-1] * fps) // temporal}


def _mean_over_paths(reports: list[dict]) -> dict:
    return {m: [float(v) for v in np.mean([r[m] for r in reports], axis=0)] for m in STUDY_METRICS}


def horizon_summary(per_second: dict, seconds: list[int]) -> dict:
    """Per horizon ``H``: the metrics at second ``H`` (``*_last``) and PSNR/SSIM/colour
    distance/control following means over seconds 1..H."""
    out = {}
    for h in seconds:
        row = {f"{m}_last": per_second[m][h - 1] for m in STUDY_METRICS}
        for m in ("psnr", "ssim", "color_distance", "control_following"):
            row[f"{m}_mean"] = float(np.mean(per_second[m][:h]))
        out[str(h)] = row
    return out


def horizon_ci95(per_path: list[dict], seconds: list[int]) -> dict:
    """Half widths of the 95% intervals (Student t over paths) of every
    :func:`horizon_summary` figure."""
    rows = [horizon_summary(r, seconds) for r in per_path]
    return {h: {k: mean_ci95([r[h][k] for r in rows])[1] for k in rows[0][h]} for h in rows[0]}


def paired_differences(models: dict, seconds: list[int]) -> dict:
    """``{'a - b': {horizon: {figure: [mean, ci95]}}}`` for every pair of models, over the
    per-path differences of the :data:`PAIRED` figures: the paths and noise are shared, so
    the paired interval is tighter than the two separate ones."""
    names = list(models)
    per_path = {n: [horizon_summary(r, seconds) for r in models[n]["per_path"]] for n in names}
    out = {}
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            out[f"{a} - {b}"] = {
                str(h): {f: list(mean_ci95([x[str(h)][f] - y[str(h)][f] for x, y in zip(per_path[a], per_path[b])]))
                         for f in PAIRED} for h in seconds}
    return out


def markdown_table(result: dict) -> str:
    """The model x horizon table (means with 95% intervals over paths) and the paired
    differences between models."""
    lines = ["| model | stage | horizon (s) | PSNR mean (dB) | PSNR last (dB) | SSIM mean | control following "
             "mean (dB) | sharpness last (gen / real) | colour distance last |",
             "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    rows = list(result["models"].items()) + [(REFERENCE, result["reference"]), (BASELINE, result["baseline"])]
    one = result["paths"] < 2  # one path has no interval: the value alone, not "± 0.00"

    def pm(m, c, fmt=".2f", sign=""):
        return f"{m:{sign}{fmt}}" + ("" if one else f" ± {c:{fmt}}")

    for name, entry in rows:
        for h, s in entry["horizons"].items():
            ci = entry["ci95"][h]
            lines.append(f"| {name} | {entry['stage']} | {h} | {pm(s['psnr_mean'], ci['psnr_mean'])} | "
                         f"{pm(s['psnr_last'], ci['psnr_last'])} | {pm(s['ssim_mean'], ci['ssim_mean'], '.3f')} | "
                         f"{pm(s['control_following_mean'], ci['control_following_mean'])} | "
                         f"{s['sharpness_last']:.1f} / {s['sharpness_real_last']:.1f} | "
                         f"{pm(s['color_distance_last'], ci['color_distance_last'])} |")
    spread = ("one path, so no interval (two or more paths give one)" if one else
              "mean over paths ± the half width of its 95% interval (Student t)")
    note = (f"\n{result['paths']} camera paths (seed {result['seed']}, {result['worlds']} worlds), "
            f"{result['video_hw'][0]}x{result['video_hw'][1]} at {result['fps']} fps; {spread}; "
            f"'last' is the horizon's last second, 'mean' seconds 1..H. "
            f"Control following: PSNR against the path's own render minus PSNR against a walk branched from "
            f"the same first frame. Colour distance: per-channel 1-D Wasserstein distance (intensity levels) to "
            f"the real second's pixels. `{REFERENCE}`: the true video through the VAE (the best a generator in "
            f"this latent space can do); `{BASELINE}`: the true first frame held still.\n")
    pairs = ["", "Paired differences (same paths and noise; "
             + ("one path" if one else "mean ± 95% interval of the per-path difference") + "):", "",
             "| models | horizon (s) | " + " | ".join(f"Δ {f}" for f in PAIRED) + " |",
             "| --- | ---: |" + " ---: |" * len(PAIRED)]
    for pair, by_h in result["paired"].items():
        for h, figs in by_h.items():
            pairs.append(f"| {pair} | {h} | " + " | ".join(pm(m, c, sign="+") for m, c in
                                                            (figs[f] for f in PAIRED)) + " |")
    return "\n".join(lines) + "\n" + note + ("\n".join(pairs) + "\n" if result["paired"] else "")


def _per_second_ci95(per_path: list[dict], metric: str) -> np.ndarray:
    values = np.asarray([r[metric] for r in per_path], np.float64)  # [paths, seconds]
    return np.array([mean_ci95(values[:, j])[1] for j in range(values.shape[1])])


def plot(result: dict, path: str) -> None:
    """PSNR, SSIM, control following, colour distance and sharpness per second, one line per
    model, shaded over its 95% interval across paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    panels = (("psnr", "PSNR vs the true render (dB)"), ("ssim", "SSIM"),
              ("control_following", "control following (dB)"),
              ("color_distance", "colour distance to the true frames"), ("sharpness", "sharpness (Laplacian var.)"))
    fig, grid = plt.subplots(2, 3, figsize=(16, 8.4))
    axes = grid.ravel()
    rows = list(result["models"].items()) + [(REFERENCE, result["reference"]), (BASELINE, result["baseline"])]
    for (metric, label), ax in zip(panels, axes):
        for name, entry in rows:
            values = np.asarray(entry["per_second"][metric])
            x = np.arange(1, len(values) + 1)
            line, = ax.plot(x, values, marker="." if len(values) < 30 else None,
                            linestyle="--" if name in (REFERENCE, BASELINE) else "-",
                            label=f"{name} ({entry['stage']})")
            if len(entry["per_path"]) > 1:
                half = _per_second_ci95(entry["per_path"], metric)
                ax.fill_between(x, values - half, values + half, color=line.get_color(), alpha=0.15, linewidth=0)
        ax.set_xlabel("second")
        if len(x) > 60:
            ax.set_xscale("log")
        else:
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    real = np.asarray(result["reference"]["per_second"]["sharpness_real"])
    axes[4].plot(np.arange(1, len(real) + 1), real, color="black", linestyle=":", label="true render")
    axes[4].set_yscale("log")
    handles, labels = axes[4].get_legend_handles_labels()
    axes[5].legend(handles, labels, fontsize=9, loc="center")
    axes[5].axis("off")
    fig.suptitle(f"drift vs the true video: mean of {result['paths']} paths, shaded 95% interval")
    fig.tight_layout()
    tmp = path + ".tmp.png"
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    os.replace(tmp, path)


# The moments a frame strip shows (seconds), those within the video.
STRIP_SECONDS = (0, 1, 2, 5, 10, 30, 60, 300)


def strip_indices(fps: float, video_frames: int) -> list[tuple[float, int]]:
    """``[(second, frame index)]`` of :data:`STRIP_SECONDS` within a video of ``video_frames``
    frames, the last one added when the video ends between two of them."""
    out = [(s, int(round(s * fps))) for s in STRIP_SECONDS if int(round(s * fps)) < video_frames]
    last = video_frames - 1
    if out[-1][1] < last:
        out.append((last / fps, last))
    return out


def frame_strip(rows: dict, moments: list[tuple[float, int]], path: str) -> None:
    """One row per video (``{label: uint8 [len(moments), H, W, 3]}``, its frames at
    ``moments`` from :func:`strip_indices`): what the numbers are about, at a glance."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(rows), len(moments), figsize=(1.6 * len(moments), 1.7 * len(rows)),
                             squeeze=False)
    for r, (label, video) in enumerate(rows.items()):
        for c, (second, _) in enumerate(moments):
            ax = axes[r, c]
            ax.imshow(video[c])
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(f"{second:g} s", fontsize=9)
            if c == 0:
                ax.set_ylabel(label, fontsize=8)
    fig.tight_layout()
    tmp = path + ".tmp.png"
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    os.replace(tmp, path)


def _write_text(path: str, text: str) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def evaluate(config: ConfigDict, *, vae: str, models: str, seconds: str, paths: int, out: str, seed: int,
             worlds: str = "heldout") -> dict:
    """The whole evaluation (module docstring); returns what ``drift.json`` holds."""
    args = check_args(config, vae, models, seconds, paths, seed, worlds)
    try:
        vae_bundle = load_vae(config.vae.preset, vae)
        check_data_geometry(config, vae_bundle[0])
    except ValueError as e:
        raise ValueError(f"--vae: {e}") from e
    fps, K, horizons = config.video.fps, args["latent_frames"], args["seconds"]
    generators = {name: load_generator_export(workdir, config, field=f"--models ({name})")
                  for name, (workdir, *_) in args["models"].items()}
    os.makedirs(out, exist_ok=True)
    rolled = _roll_out(config, vae_bundle, generators, vae=vae, K=K, paths=paths, seed=seed, worlds=worlds, out=out)

    def entry(stage, sampler, per_path):
        per_second = _mean_over_paths(per_path)
        return {"stage": stage, "sampler": sampler, "per_second": per_second, "per_path": per_path,
                "horizons": horizon_summary(per_second, horizons), "ci95": horizon_ci95(per_path, horizons)}

    result = {
        "config": config.name, "fps": fps, "video_hw": [config.video.height, config.video.width],
        "seconds": horizons, "latent_frames": K, "video_frames": 1 + config.video.vae_temporal * K,
        "paths": paths, "seed": seed, "worlds": worlds, "metrics": list(STUDY_METRICS),
        "multistep_sampler": rolled["multistep_sampler"], "models": {},
        "reference": entry("vae", "reconstruction", rolled["reference"]),
        "baseline": entry("none", "copy", rolled["baseline"]),
    }
    for name, gen in generators.items():
        result["models"][name] = dict(entry(gen.stage, gen.sampler, rolled["reports"][name]), workdir=gen.workdir,
                                      window=gen.cfg.window,
                                      # wall time of each path's rollout; the first includes compiling
                                      rollout_seconds=rolled["rollout_seconds"][name])
    result["paired"] = paired_differences(result["models"], horizons)
    _write_outputs(out, result, rolled["strip"], rolled["moments"])
    return result


def _path_report(generated, real, other, fps: float) -> dict:
    """:func:`~aapt_jax.eval.drift.drift_report` of frames ``1 ..`` (frame 0 is given) plus
    per-second ``control_following`` against ``other``, the render of a branched walk."""
    report = drift_report(generated[1:], real[1:], fps)
    gap = psnr(generated[1:], real[1:]) - psnr(generated[1:], other[1:])
    report["control_following"] = [float(np.mean(gap[lo:hi])) for lo, hi in second_bounds(len(gap), fps)]
    return report


def _cache_keys(config, runner, generators: dict, *, vae: str, K: int, seed: int, worlds: str, text):
    """``keys(i, name)``: what decides path ``i``'s entry of model ``name`` (None: the
    reference's) in the :class:`~aapt_jax.eval.rollout_cache.RolloutCache`."""
    common = {"video": config.video.to_dict(), "control": config.control.to_dict(), "latent_frames": K,
              "seed": seed, "worlds": worlds, "vae": weights_fingerprint(vae),
              "text": hashlib.sha256(np.ascontiguousarray(text, np.float32).tobytes()).hexdigest()}
    models = {name: {"weights": weights_fingerprint(gen.workdir), "stage": gen.stage,
                     "num_steps": runner.num_steps, "shift": runner.shift} for name, gen in generators.items()}
    return lambda i, name=None: {**common, "path": i, **(models[name] if name else {})}


def _roll_out(config, vae_bundle, generators: dict, *, vae: str, K: int, paths: int, seed: int, worlds: str,
              out: str) -> dict:
    """Every generator along every path (the same key per path for every model): per-path
    reports of the models, the VAE reconstruction and the copied first frame, rollout wall
    times, path 0's videos (mp4 and the frame strip's rows). Each finished rollout is kept in
    ``out/rollouts`` (:mod:`aapt_jax.eval.rollout_cache`) and read back by a rerun whose
    weights, sampler and paths are the same."""
    fps = config.video.fps
    runner = DriftRollout(config, vae_bundle)
    text = clip_text(config)
    cache = RolloutCache(out)
    keys = _cache_keys(config, runner, generators, vae=vae, K=K, seed=seed, worlds=worlds, text=text)
    reports = {name: [] for name in generators}
    reference, baseline, rollout_seconds = [], [], {name: [] for name in generators}
    # Path 0's true render and each model's video at a few moments, for frames.png.
    moments = strip_indices(fps, 1 + config.video.vae_temporal * K)
    strip, at = {}, [index for _, index in moments]
    bar = tqdm(total=len(generators) * paths, desc="models x paths", unit="rollout")
    for i in range(paths):
        first = i == 0
        truth = cache.get(i, None, keys(i), want_strip=first)
        done = {name: cache.get(i, name, keys(i, name), want_strip=first) for name in generators}
        if first:  # the mp4s are path 0's: stream again where one is missing
            done = {n: d if os.path.exists(os.path.join(out, f"{n}_path0.mp4")) else None for n, d in done.items()}
        if truth is None or None in done.values():
            path = eval_path(config, i, latent_frames=K, seed=seed, worlds=worlds)
            other = eval_path(config, i, latent_frames=K, seed=seed, worlds=worlds, branch_seed=i + 1).video
        if truth is None:
            value = {"reference": _path_report(vae_reconstruction(vae_bundle, path.video), path.video, other, fps),
                     "baseline": _path_report(copy_first_frame(path.video), path.video, other, fps)}
            truth = value, path.video[at] if first else None
            cache.put(i, None, keys(i), *truth)
        reference.append(truth[0]["reference"])
        baseline.append(truth[0]["baseline"])
        if first:
            strip["true render"] = truth[1]
        key = jax.random.fold_in(jax.random.key(seed), i)
        for name, gen in generators.items():
            if done[name] is None:
                done[name] = _stream(runner, gen, path, other, text, key, mp4=(
                    os.path.join(out, f"{name}_path0.mp4") if first else None), strip_at=at if first else None)
                cache.put(i, name, keys(i, name), *done[name])
            reports[name].append(done[name][0]["report"])
            rollout_seconds[name].append(done[name][0]["seconds"])
            if first:
                strip[f"{name} ({gen.stage})"] = done[name][1]
            bar.update(1)
    bar.close()
    return {"reports": reports, "reference": reference, "baseline": baseline, "rollout_seconds": rollout_seconds,
            "strip": strip, "moments": moments,
            "multistep_sampler": {"num_steps": runner.num_steps, "shift": runner.shift}}


def _stream(runner, gen, path, other, text, key, *, mp4: str | None, strip_at: list | None):
    """One model along one path: ``({'report', 'seconds'}, its frames at ``strip_at`` or
    None)``; with ``mp4``, real | generated side by side is written there."""
    t0 = time.perf_counter()
    generated, real = runner(gen, path, text, key)
    seconds = time.perf_counter() - t0  # the rollout and its decode, not the scoring
    value = {"report": _path_report(generated, real, other, runner.config.video.fps), "seconds": seconds}
    if mp4:
        write_mp4(mp4, np.concatenate([real, generated], axis=2), fps=runner.config.video.fps)
    return value, None if strip_at is None else generated[strip_at]


def _write_outputs(out: str, result: dict, strip: dict, moments: list) -> None:
    """``drift.json``, ``drift.md``, ``drift.png`` and ``frames.png`` into ``out``."""
    _write_text(os.path.join(out, "drift.json"), json.dumps(result, indent=1))
    _write_text(os.path.join(out, "drift.md"), markdown_table(result))
    plot(result, os.path.join(out, "drift.png"))
    frame_strip(strip, moments, os.path.join(out, "frames.png"))
