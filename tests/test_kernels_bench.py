"""The attention benchmark suite runs at tiny size and its figures are consistent."""

from aapt_jax import bench
from aapt_jax.kernels import _flash
from configs import get as named_config


def test_attention_suite_quick_run():
    records = list(bench.load("attention").run(named_config, quick=True))
    by_name = {}
    for r in records:
        assert {"name", "value", "unit"} <= set(r)
        by_name.setdefault(r["name"], []).append(r)
    for tag in ("", "_dq", "_dkv"):
        visited = by_name[f"visited_block_fraction{tag}"][0]
        density = by_name[f"mask_block_density{tag}"][0]
        assert 0 < visited["value"] < 1
        assert abs(visited["value"] - density["value"]) < 1e-12
    assert by_name["kernel_flops_forward"][0]["value"] > 0
    # XLA's count of the dense reference covers at least its two matmuls.
    assert by_name["dense_flops_forward"][0]["value"] >= by_name["dense_matmul_flops_forward"][0]["value"]
    assert by_name["kernel_flops_forward_backward"][0]["pallas_calls"] == 3
    assert by_name["cuda_module_cost_analysis_flops"][0]["triton_custom_calls"] == 1
    for r in records:
        if r["name"].startswith("shared_memory_bytes"):
            assert r["value"] <= _flash.HOPPER_SHARED_MEMORY_BYTES
        assert not r["name"].startswith("seconds") or r.get("unit") == "s"
