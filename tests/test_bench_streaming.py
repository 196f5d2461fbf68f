"""The streaming benchmark suite runs at tiny size and prints every figure it promises."""

import json
import math
import os
import subprocess
import sys

import configs

# one parameter count per named config (tiny, tiny_world, the Wan configs, aapt-8B)
NAMES = {"step_time_ratio_late_vs_early", "cache_speedup_vs_recompute", "flops_ratio_vs_diffusion_forcing",
         "aapt_8b_tflops_per_latent_frame", "aapt_8b_h100_video_fps_at_50pct_mfu",
         *(f"param_count_{name}" for name in configs.NAMED)}
REQUIRED = {"param_count_tiny", "param_count_wan2.1-t2v-1.3B", "param_count_wan2.1-t2v-14B", "param_count_aapt-8B"}


def test_streaming_suite_quick():
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    proc = subprocess.run([sys.executable, "-m", "launch.bench", "--suite=streaming", "--quick"], cwd=root,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    records = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    assert {r["name"] for r in records} == NAMES and REQUIRED <= NAMES
    for r in records:
        assert r["suite"] == "streaming" and r["unit"] and math.isfinite(r["value"]) and r["value"] > 0, r
    flops = {r["name"]: r for r in records}["flops_ratio_vs_diffusion_forcing"]
    assert flops["value"] < 0.55  # XLA-counted: a deterministic figure even in quick mode
