"""The VAE benchmark suite runs at its quick size and reports finite figures."""

import math

from aapt_jax.bench import vae as vae_bench
from configs import get as named_config


def test_quick_run():
    records = list(vae_bench.run(named_config, quick=True))
    assert [r["name"] for r in records] == [
        "decode_ms_per_latent_frame_tiny", "light_vs_full_decode_speedup",
        "streaming_vs_full_decode_max_abs_diff"]
    for record in records:
        assert math.isfinite(record["value"]) and record["unit"], record
    by_name = {r["name"]: r for r in records}
    assert by_name["decode_ms_per_latent_frame_tiny"]["value"] > 0
    assert by_name["light_vs_full_decode_speedup"]["flops_ratio"] > 2
    assert by_name["streaming_vs_full_decode_max_abs_diff"]["value"] <= 1e-5
