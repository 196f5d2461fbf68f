"""`launch.evaluate`: drift of random-initialised generator exports along world camera paths.

Nothing is trained: the exports are random weights saved the way the stages save them, so
the test checks the plumbing (stage -> sampler, encode, rollout, streaming decode, metrics,
files) and the flag errors, not the numbers.
"""

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest
from flax import nnx

from aapt_jax import configs
from aapt_jax.io.checkpoint import save_export
from aapt_jax.model import vae as vae_lib
from aapt_jax.io.wan_transformer import abstract_params
from aapt_jax.model.vae_config import get_vae_config
from configs import tiny_world

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# 32x32 video (4x4 latents), 8 fps (a second is 2 latent frames), a 1-layer generator.
OVERRIDES = dict(height=32, width=32, fps=8, num_layers=1, window=2)


def _config():
    c = tiny_world.get_config("distill")
    c.video.update(dict(height=OVERRIDES["height"], width=OVERRIDES["width"], fps=OVERRIDES["fps"]))
    c.data.update(dict(height=OVERRIDES["height"], width=OVERRIDES["width"]))
    c.model.update(dict(num_layers=OVERRIDES["num_layers"], window=OVERRIDES["window"]))
    c.train.update(dict(sample_steps=2))
    return c


def _flag_overrides():
    return [f"--config.video.height={OVERRIDES['height']}", f"--config.video.width={OVERRIDES['width']}",
            f"--config.data.height={OVERRIDES['height']}", f"--config.data.width={OVERRIDES['width']}",
            f"--config.video.fps={OVERRIDES['fps']}", f"--config.model.num_layers={OVERRIDES['num_layers']}",
            f"--config.model.window={OVERRIDES['window']}", "--config.train.sample_steps=2"]


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    """Workdirs of a tiny VAE export and 'adapt' / 'distill' generator exports (random weights)."""
    root = tmp_path_factory.mktemp("exports")
    config = _config()
    vcfg = get_vae_config(config.vae.preset)
    _, vae_params = vae_lib.init_vae(vcfg, 0)
    save_export(str(root / "vae"), nnx.to_pure_dict(vae_params),
                {"stage": "vae", "vae_preset": config.vae.preset, "latents_mean": [0.0] * vcfg.z_dim,
                 "latents_std": [1.0] * vcfg.z_dim})
    cfg = configs.model_config(config)
    shapes = nnx.to_pure_dict(abstract_params(cfg))
    for i, stage in enumerate(("adapt", "distill")):
        # numpy draws: nnx's init compiles a sampler per parameter shape (seconds on CPU).
        rng = np.random.default_rng(i)
        params = jax.tree.map(lambda s: (0.05 * rng.standard_normal(s.shape)).astype(s.dtype), shapes)
        save_export(str(root / stage), params, {"stage": stage, "model": cfg.to_dict(), "vae_preset": config.vae.preset})
    return root


def test_evaluate_end_to_end_writes_report(exports, tmp_path):
    out = tmp_path / "drift"
    proc = subprocess.run(
        [sys.executable, "-m", "launch.evaluate", "--config=configs/tiny_world.py:distill", *_flag_overrides(),
         f"--vae={exports / 'vae'}", f"--models=s1={exports / 'adapt'},cd={exports / 'distill'}",
         "--seconds=1,2", "--paths=1", f"--out={out}"],
        cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads((out / "drift.json").read_text())
    assert result["seconds"] == [1, 2] and result["latent_frames"] == 4 and result["video_frames"] == 17
    assert set(result["models"]) == {"s1", "cd"}
    assert result["models"]["s1"]["stage"] == "adapt" and result["models"]["s1"]["sampler"] == "multistep"
    assert result["models"]["cd"]["sampler"] == "onestep"
    for entry in list(result["models"].values()) + [result["reference"], result["baseline"]]:
        for metric in ("psnr", "ssim", "sharpness", "sharpness_real", "color_distance", "control_following"):
            values = entry["per_second"][metric]
            assert len(values) == 2 and np.isfinite(values).all(), (metric, values)
        assert set(entry["horizons"]) == {"1", "2"} and set(entry["ci95"]) == {"1", "2"}
        assert {"psnr_last", "psnr_mean", "ssim_last", "ssim_mean", "sharpness_last", "sharpness_real_last",
                "color_distance_last", "control_following_mean"} <= set(entry["horizons"]["2"])
        assert set(entry["ci95"]["2"]) == set(entry["horizons"]["2"])
        assert entry["horizons"]["1"]["psnr_last"] == entry["per_second"]["psnr"][0]
    assert set(result["paired"]) == {"s1 - cd"}
    s1, cd = (result["models"][n]["horizons"]["2"]["psnr_mean"] for n in ("s1", "cd"))
    np.testing.assert_allclose(result["paired"]["s1 - cd"]["2"]["psnr_mean"][0], s1 - cd, atol=1e-9)
    table = (out / "drift.md").read_text()
    assert "| s1 | adapt | 2 |" in table and "| cd | distill | 1 |" in table and "| s1 - cd | 2 |" in table
    assert (out / "drift.png").stat().st_size > 1000
    assert (out / "frames.png").stat().st_size > 1000  # true render and each model at a few moments
    from aapt_jax.io.video import read_video

    video = read_video(str(out / "cd_path0.mp4"), 32, 64)  # real | generated
    assert video.shape == (17, 32, 64, 3)
    assert (out / "s1_path0.mp4").exists()


def test_rerun_reads_finished_rollouts_and_streams_only_what_changed(exports, tmp_path, monkeypatch):
    """A stopped long evaluation resumes: every finished (path, model) rollout is kept in
    ``out/rollouts`` and read back while its weights, sampler and path are unchanged."""
    from aapt_jax.eval import report

    config = _config()
    args = dict(vae=str(exports / "vae"), seconds="1", paths=2, seed=5, out=str(tmp_path / "o"))
    first = report.evaluate(config, models=f"s1={exports / 'adapt'},cd={exports / 'distill'}", **args)
    streamed = []
    real_call = report.DriftRollout.__call__

    def counting_call(self, gen, path, text, key):
        streamed.append(os.path.basename(gen.workdir))
        return real_call(self, gen, path, text, key)

    def no_render(*a, **k):
        raise AssertionError("rendered a path whose rollouts were all kept")

    monkeypatch.setattr(report.DriftRollout, "__call__", counting_call)
    with monkeypatch.context() as m:
        m.setattr(report, "eval_path", no_render)
        again = report.evaluate(config, models=f"s1={exports / 'adapt'},cd={exports / 'distill'}", **args)
    assert streamed == []
    for name in ("s1", "cd"):
        assert again["models"][name]["per_path"] == first["models"][name]["per_path"]
        assert again["models"][name]["rollout_seconds"] == first["models"][name]["rollout_seconds"]
    assert again["reference"]["per_path"] == first["reference"]["per_path"]
    # Other weights under the name 'cd': only cd streams, on both paths; s1 is read back.
    changed = report.evaluate(config, models=f"s1={exports / 'adapt'},cd={exports / 'adapt'}", **args)
    assert streamed == ["adapt", "adapt"]
    assert changed["models"]["s1"]["per_path"] == first["models"]["s1"]["per_path"]
    # Same weights as s1 (same sampler, paths and noise): the same video, so the same figures.
    assert changed["models"]["cd"]["per_path"] == first["models"]["s1"]["per_path"]
    # A longer horizon is other paths (more latent frames): everything streams again.
    streamed.clear()
    report.evaluate(config, models=f"s1={exports / 'adapt'}", **{**args, "seconds": "2"})
    assert streamed == ["adapt", "adapt"]


def test_path_report_control_following_per_second():
    from aapt_jax.eval.report import _path_report

    rng = np.random.default_rng(0)
    real, other = (rng.integers(0, 256, (17, 8, 8, 3), dtype=np.uint8) for _ in range(2))
    near = np.clip(real.astype(int) + rng.integers(-8, 9, real.shape), 0, 255).astype(np.uint8)
    follows = _path_report(near, real, other, fps=8)["control_following"]
    ignores = _path_report(other, real, other, fps=8)["control_following"]
    assert len(follows) == 2 and min(follows) > 15.0  # frames 1-8 and 9-16; frame 0 is given
    assert max(ignores) < -15.0


def test_bad_flags_fail_before_anything_compiles(exports, tmp_path):
    from aapt_jax.eval import report as evaluate

    compiled = []

    def on_event(event, duration, **kwargs):
        if event == "/jax/core/compile/backend_compile_duration":
            compiled.append(event)

    config = _config()
    good = dict(vae=str(exports / "vae"), models=f"cd={exports / 'distill'}", seconds="1", paths=1,
                out=str(tmp_path / "o"), seed=5)
    cases = [
        (dict(models="cd"), r"--models: expected name=workdir, got 'cd'"),
        (dict(models=""), r"--models: expected comma-separated name=workdir pairs"),
        (dict(models=f"a={exports / 'adapt'},a={exports / 'distill'}"), r"--models: the name 'a' appears twice"),
        (dict(models=f"cd={tmp_path / 'missing'}"), r"--models \(cd\): .*missing' is not a directory"),
        (dict(models=f"v={exports / 'vae'}"), r"--models \(v\): .* holds a 'vae' stage, expected a generator stage"),
        (dict(models=f"e={tmp_path}"), r"--models \(e\): .*info.json: not found"),
        (dict(vae=str(tmp_path / "novae")), r"--vae: .*novae does not exist"),
        (dict(vae=str(exports / "adapt")), r"--vae: .*holds a 'adapt' stage, expected 'vae'"),
        (dict(seconds="1.5"), r"--seconds: expected comma-separated positive ints"),
        (dict(seconds="0,2"), r"--seconds: expected comma-separated positive ints"),
        (dict(paths=0), r"--paths: expected an int >= 1"),
        (dict(seed=config.data.seed), r"--seed: expected a seed distinct from the training data seed"),
    ]
    odd = _config()
    odd.video.fps = 6  # 1 s = 6 video frames: not whole latent frames
    jax.monitoring.register_event_duration_secs_listener(on_event)
    try:
        for change, message in cases:
            with pytest.raises(ValueError, match=message):
                evaluate.evaluate(config, **{**good, **change})
        with pytest.raises(ValueError, match=r"--seconds: 1 s at video.fps=6 is 6 video frames"):
            evaluate.evaluate(odd, **good)
    finally:
        jax.monitoring.unregister_event_duration_listener(on_event)
    assert not compiled, "compiled before the flags were checked"
    assert not (tmp_path / "o").exists()


def test_compare_stages_streams_both_generators(exports, tmp_path):
    from aapt_jax.eval.compare import compare_stages

    config = _config()
    config.vae.checkpoint = str(exports / "vae")
    result = compare_stages(config, adapt=str(exports / "adapt"), distill=str(exports / "distill"), clips=2,
                            out=str(tmp_path / "cmp"))
    assert result["clips"] == 2 and result["latent_frames"] == config.data.latent_frames
    assert all(np.isfinite(v) for k, v in result.items() if k.startswith("psnr"))
    assert (tmp_path / "cmp" / "true_stage1_stage2.mp4").stat().st_size > 0
    with pytest.raises(ValueError, match="--adapt"):  # each flag names a stage of its own
        compare_stages(config, adapt=str(exports / "distill"), distill=str(exports / "distill"), clips=1,
                       out=str(tmp_path / "cmp2"))


def test_frame_strip_moments():
    from aapt_jax.eval.report import strip_indices

    assert strip_indices(24, 1 + 4 * 360) == [(0, 0), (1, 24), (2, 48), (5, 120), (10, 240), (30, 720), (60, 1440)]
    assert strip_indices(24, 100) == [(0, 0), (1, 24), (2, 48), (99 / 24, 99)]  # the last frame ends the strip
    assert strip_indices(24, 1 + 4 * 1800)[-1] == (300, 7200)


def test_markdown_table_prints_intervals_only_with_two_paths_or_more():
    from aapt_jax.eval.report import PAIRED, markdown_table

    figures = dict(psnr_mean=12.0, psnr_last=11.0, ssim_mean=0.2, control_following_mean=0.5,
                   sharpness_last=10.0, sharpness_real_last=20.0, color_distance_last=3.0)
    entry = dict(stage="adapt", horizons={"10": figures}, ci95={"10": {k: 0.25 for k in figures}})

    def table(paths):
        return markdown_table(dict(models={"s1": entry, "cd": dict(entry, stage="distill")}, reference=entry,
                                   baseline=entry, paths=paths, seed=1, worlds="heldout", video_hw=[64, 64], fps=24,
                                   paired={"s1 - cd": {"10": {f: (0.5, 0.25) for f in PAIRED}}}))

    one, two = table(1), table(2)
    assert "| s1 | adapt | 10 | 12.00 | 11.00 | 0.200 | 0.50 |" in one and "±" not in one
    assert "one path, so no interval" in one and "| s1 - cd | 10 | +0.50 |" in one
    assert "| s1 | adapt | 10 | 12.00 ± 0.25 | 11.00 ± 0.25 | 0.200 ± 0.250 | 0.50 ± 0.25 |" in two
    assert "| s1 - cd | 10 | +0.50 ± 0.25 |" in two and "95% interval" in two
