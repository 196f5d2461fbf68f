"""Scale-out figures at the paper's size, from the plan on abstract shapes
(:mod:`aapt_jax.train.plan`: nothing allocated; run in a process with 8 virtual CPU devices):

  aapt8b_adapt_fsdp8_gib_per_device          stage 1, 8 devices (fsdp 8, ZeRO-3), 1 sample of 31
                                             latent frames per device, remat per block (bar <= 70)
  aapt8b_adversarial_gib_per_device          stage 3 student forcing, G ZeRO-2 + D ZeRO-3 over the 8
                                             devices of one sample (context 8), 30 frames (bar <= 70)
  aapt8b_stream_720p_context8_split          one 1280x720 stream (N = 15) on context=8: per-device
                                             flops x 8 / one device's flops (bar <= 1.15)
  aapt8b_stream_720p_context8_gib_per_device the same stream's per-device params (bf16, replicated)
                                             and state (KV cache split by heads)

Memory is params + gradients + optimizer state from the train state's actual shardings, plus
the saved activations of the backward (``saved_residuals``, split over the devices of the
batch and the context axis) and, for student forcing, the rollout's KV cache; see the plan's
docstring for what it leaves out. ``quick``: 2 of the 36 blocks (same shapes per block), only
to check that the path runs.
"""

from __future__ import annotations

from aapt_jax.configs import Named
from aapt_jax.train import plan

GIB = 2.0**30


def _memory_record(name, records, bar, **context):
    summary, first = records[-1], records[0]
    return dict(name=name, value=summary["gib_per_device_max"], unit="GiB", bar=bar,
                mesh=summary["mesh"], strategies=summary["strategies"], batch_size=summary["batch_size"],
                params_gib={k: v / GIB for k, v in first["params_bytes"].items()},
                gradients_gib={k: v / GIB for k, v in first["gradients_bytes"].items()},
                optimizer_gib=first["optimizer_bytes"] / GIB,
                saved_activation_gib=first["saved_activation_bytes"] / GIB,
                rollout_cache_gib=first.get("rollout_cache_bytes", 0) / GIB, dtype=summary["dtype"],
                remat=summary["remat"], source="plan on abstract shapes (saved_residuals, shardings)", **context)


def run(named: Named, quick: bool = False):
    def shrink(config):
        if quick:
            config.model.num_layers = 2
            if config.train.stage == "adversarial":
                config.train.disc_layers = (-1,)
        return config

    adapt = shrink(named("aapt-8B:adapt"))
    adapt.train.batch_size = 8  # one sample per device
    adapt.mesh.update(dict(data=1, fsdp=8, context=1, tensor=1))
    records = plan.in_subprocess(adapt, compile=False)
    yield _memory_record("aapt8b_adapt_fsdp8_gib_per_device", records, 70, config="aapt-8B:adapt",
                         latent_frames=1 + adapt.data.latent_frames, num_layers=adapt.model.num_layers)

    adv = shrink(named("aapt-8B:adversarial"))
    adv.train.batch_size = 1  # one sample across the 8 devices
    adv.mesh.update(dict(data=1, fsdp=1, context=8, tensor=1))
    records = plan.in_subprocess(adv, compile=False)
    yield _memory_record("aapt8b_adversarial_gib_per_device", records, 70, config="aapt-8B:adversarial",
                         generated_frames=adv.data.latent_frames, forcing=adv.train.forcing,
                         num_layers=adv.model.num_layers)

    stream = shrink(named("aapt_8b_720p:adversarial"))
    stream.mesh.update(dict(data=1, fsdp=1, context=8, tensor=1))
    records = plan.in_subprocess(stream, kind="stream")
    summary = records[-1]
    common = dict(config="aapt-8B-720p", resolution="1280x720", window=summary["window"],
                  tokens_per_frame=summary["tokens_per_frame"], mesh=summary["mesh"], num_layers=stream.model.num_layers,
                  attention_counted_as=summary["attention_counted_as"])
    yield dict(name="aapt8b_stream_720p_context8_split", value=summary["split"], unit="ratio", bar=1.15,
               per_device_flops=summary["flops"], one_device_flops=summary["one_device_flops"],
               all_to_all=summary["collectives"]["all-to-all"], source="XLA cost analysis of the partitioned step",
               **common)
    yield dict(name="aapt8b_stream_720p_context8_gib_per_device", value=summary["gib_per_device_max"], unit="GiB",
               params_gib=records[0]["params_bytes"] / GIB, state_gib=records[0]["state_bytes"] / GIB,
               param_dtype=summary["param_dtype"], source="the sampler's shardings on abstract shapes", **common)
