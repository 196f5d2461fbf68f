"""The per-device plan of a training step or a streaming step on a target mesh, from abstract
shapes (maxtext's ``train_compile`` in spirit): nothing is allocated, no file is read.

:func:`plan_train` builds the stage abstractly (``stages.build(..., abstract=True)``), jits its
real train step with the run's shardings (:class:`aapt_jax.train.sharded.TrainStep`) and
reports, per device of the mesh:

* ``params_bytes``, ``gradients_bytes``, ``optimizer_bytes``: from the actual shardings of the
  train state (each leaf's slice on that device), per player;
* ``saved_activation_bytes``: what the backward keeps (``saved_residuals`` of each player's
  loss on abstract shapes, the params and inputs not counted; the players' backward passes
  run one after the other, so the larger counts), divided by the devices one sample's
  activations are split over (batch shards x context); plus, for student forcing, the KV
  cache of the rollout (no gradient; head-sharded) as ``rollout_cache_bytes``;
* with ``compile=True``: ``flops`` (XLA's count of the partitioned per-device program), the
  collectives of the compiled HLO (count and bytes per kind) and the CPU compiler's
  ``memory_analysis`` (a CPU figure: it upcasts bf16 and materialises, so not a GPU's).

The total (``gib_per_device``) is params + gradients + optimizer state + saved activations
(+ the rollout cache). A block's transient working set is not in it: with remat per block
and the attention kernels it is one block's activations.

Attention runs the dense ``xla`` path in the plan whatever ``model.attention_impl`` says:
a Pallas kernel is an opaque call to XLA's cost model (no flops) and does not compile for
CPU devices; under remat per block the saved residuals do not depend on it.

:func:`plan_stream` does the same for one streaming step (:class:`StreamingSampler`), and
:func:`in_subprocess` runs either in a fresh process with as many virtual CPU devices as
the mesh needs (``python -m aapt_jax.train.plan``, a JSON spec on stdin).
"""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
# Public in older JAX as jax.ad_checkpoint.saved_residuals; only the printing wrapper is now.
from jax._src.ad_checkpoint import saved_residuals
from ml_collections import ConfigDict

from aapt_jax import configs as aapt_configs
from aapt_jax.data.sources import TEMPORAL_FACTOR
from aapt_jax.model import kv_cache as kvc
from aapt_jax.model.dit import abstract_model
from aapt_jax.parallel import ulysses
from aapt_jax.parallel.mesh import mesh_from_config
from aapt_jax.sample.streaming import StreamingSampler, StreamState, state_shardings
from aapt_jax.train import adversarial, sharded, stages
from aapt_jax.train.config import train_config
from aapt_jax.train.optim import make_optimizer

GIB = 2.0**30
COLLECTIVES = ("all-gather", "all-reduce", "reduce-scatter", "all-to-all", "collective-permute")
_DTYPE_BYTES = {"pred": 1, "s8": 1, "u8": 1, "bf16": 2, "f16": 2, "s16": 2, "u16": 2, "f32": 4, "s32": 4, "u32": 4,
                "f64": 8, "s64": 8, "u64": 8}


# ----- counting ------------------------------------------------------------------------------


def saved_activation_bytes(loss, params, *inputs) -> int:
    """Bytes the backward of ``loss(params, *inputs)`` in ``params`` keeps, besides the params
    and inputs themselves (held anyway). The inputs enter as constants, as the
    discriminator's params and the batch do in a generator update."""
    found = []

    def trace(*inputs):
        found.extend(saved_residuals(lambda p: loss(p, *inputs), params))
        return 0

    jax.make_jaxpr(trace)(*inputs)
    return sum(aval.size * aval.dtype.itemsize for aval, source in found
               if not source.startswith(("from the argument", "from a constant")))


def device_bytes(tree, shardings) -> dict:
    """``{device: bytes of its slices}`` of the (abstract) arrays ``tree`` placed by
    ``shardings`` (same structure)."""
    out: dict = {}
    for x, s in zip(jax.tree.leaves(tree), jax.tree.leaves(shardings)):
        itemsize = jnp.dtype(x.dtype).itemsize
        for device, index in s.devices_indices_map(tuple(x.shape)).items():
            size = math.prod(len(range(*sl.indices(n))) for sl, n in zip(index, x.shape)) if x.shape else 1
            out[device] = out.get(device, 0) + size * itemsize
    return out


def collectives(hlo_text: str) -> dict:
    """``{kind: {count, bytes}}`` of the collectives in compiled HLO text (bytes: the
    results' sizes, per device)."""
    out = {k: {"count": 0, "bytes": 0} for k in COLLECTIVES}
    pattern = re.compile(r"=\s*(\(.*?\)|[a-z0-9]+\[[0-9,]*\]\S*)\s+(" + "|".join(COLLECTIVES) + r")(-start)?\(")
    for match in pattern.finditer(hlo_text):
        shapes = re.findall(r"([a-z]+[0-9]*)\[([0-9,]*)\]", match.group(1))
        if match.group(3):  # an async start's tuple ends with its result
            shapes = shapes[-1:]
        size = sum(_DTYPE_BYTES.get(dt, 4) * math.prod(int(d) for d in dims.split(",") if d) for dt, dims in shapes)
        out[match.group(2)]["count"] += 1
        out[match.group(2)]["bytes"] += size
    return out


def _flops(compiled) -> float | None:
    analysis = compiled.cost_analysis()
    if isinstance(analysis, (list, tuple)):
        analysis = analysis[0] if analysis else None
    return None if not analysis else float(analysis.get("flops", 0.0))


def _memory(compiled) -> dict | None:
    m = compiled.memory_analysis()
    if m is None:
        return None
    return dict(argument_bytes=int(m.argument_size_in_bytes), output_bytes=int(m.output_size_in_bytes),
                temp_bytes=int(m.temp_size_in_bytes), alias_bytes=int(m.alias_size_in_bytes))


def _compiled_figures(lowered) -> dict:
    compiled = lowered.compile()
    return dict(flops=_flops(compiled), collectives=collectives(compiled.as_text()),
                cpu_memory_analysis=_memory(compiled))


# ----- abstract inputs ------------------------------------------------------------------------


def abstract_batch(config: ConfigDict, rows: int, latent_frames: int | None = None) -> dict:
    """The shapes of a batch of ``rows`` clips as the config's data source gives them: latents
    (``data.source='latents'``) or uint8 video, the text, and the control's inputs."""
    d, v = config.data, config.video
    k = latent_frames or d.latent_frames
    frames = 1 + TEMPORAL_FACTOR * k
    sds = jax.ShapeDtypeStruct
    cfg = aapt_configs.model_config(config)
    batch = {"text": sds((rows, d.text_len, d.text_dim), jnp.float32)}
    if d.source == "latents":
        batch["latents"] = sds((rows, 1 + k, cfg.latent_height, cfg.latent_width, cfg.latent_channels), jnp.float32)
    else:
        batch["video"] = sds((rows, frames, v.height, v.width, 3), jnp.uint8)
    kind = aapt_configs.control_config(config).kind
    if kind == "camera":
        batch.update(intrinsics=sds((rows, frames, 4), jnp.float32), c2w=sds((rows, frames, 4, 4), jnp.float32))
    elif kind == "pose":
        raise ValueError("control.kind: the plan covers 'none' and 'camera' controls, got 'pose'")
    return batch


def _with_shardings(tree, shardings):
    return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, shardings)


def _plan_config(config: ConfigDict) -> ConfigDict:
    """A copy that builds without files: the dense attention path (see the module docstring),
    a placeholder data folder (no data is read)."""
    config = config.copy_and_resolve_references()
    config.model.attention_impl = "xla"
    if config.data.get("source") in ("folder", "latents") and not config.data.get("folder"):
        config.data.folder = "<not read by the plan>"
    return config


# ----- activations ----------------------------------------------------------------------------


def _split(layout: sharded.Layout, batch_sharding, rows: int) -> int:
    """The devices one step's activations are split over: distinct batch shards x context."""
    shards = len({tuple(index[0].indices(rows)) for index in batch_sharding.devices_indices_map((rows,)).values()})
    return shards * dict(layout.mesh.shape).get("context", 1)


def activation_bytes(config: ConfigDict, stage, frozen, batch) -> dict:
    """Global saved-activation bytes per player's backward (see the module docstring)."""
    key = jax.random.key(0)
    if stage.grads is None:
        loss = lambda p, f, b: stage.loss(p, f, b, key)[0]  # noqa: E731
        return {"generator": saved_activation_bytes(loss, stage.params, frozen, batch)}
    # The adversarial stage: the generator's loss of the first segment and the discriminator's
    # of all segments, on the latents the encoder gives (float32, normalized).
    cfg = aapt_configs.model_config(config)
    acfg = stages.adversarial_config(config)
    S, K = acfg.segments, acfg.segment_frames
    B = jax.tree.leaves(batch)[0].shape[0] // S
    sds = jax.ShapeDtypeStruct
    hw = (cfg.latent_height, cfg.latent_width)
    lat = lambda n, b=B: sds((b, n) + hw + (cfg.latent_channels,), jnp.float32)  # noqa: E731
    ctrl = None if not cfg.control_channels else sds((B, K) + hw + (cfg.control_channels,), jnp.float32)
    text = batch["text"]
    g_graphdef, d_graphdef = stage.player_graphdefs["generator"], stage.player_graphdefs["discriminator"]
    g_params, d_params = stage.params["generator"], stage.params["discriminator"]
    clip = dict(first=lat(1), noise=lat(K), rolled=lat(K), text=sds((B,) + text.shape[1:], text.dtype),
                t=sds((B,), jnp.float32), real_logits=sds((B, K), jnp.float32), controls=ctrl)
    out = {}
    if acfg.forcing == "student":
        def g_loss(gp, dp, clip):
            disc = nnx.merge(d_graphdef, dp)
            loss, _ = adversarial.student_generator_loss(
                g_graphdef, disc, None, clip["first"], clip["first"], clip["noise"], clip["rolled"],
                clip["controls"], clip["controls"], clip["text"], clip["t"], clip["real_logits"], gp)
            return loss
    else:
        def g_loss(gp, dp, clip):
            gen, disc = nnx.merge(g_graphdef, gp), nnx.merge(d_graphdef, dp)
            real = jnp.concatenate([clip["first"], clip["rolled"]], axis=1)
            v = gen(clip["noise"], jnp.full(clip["t"].shape, 1000.0), clip["text"], recycled=real[:, :-1],
                    control=clip["controls"])
            lf, lr = adversarial.teacher_forced_logits(disc, real, clip["noise"] - v, clip["t"], clip["text"],
                                                       clip["controls"])
            return adversarial.generator_loss(lf, jax.lax.stop_gradient(lr))
    out["generator"] = saved_activation_bytes(g_loss, g_params, d_params, clip)
    video = lat(1 + K, S * B)
    all_ctrl = None if ctrl is None else sds((S * B,) + ctrl.shape[1:], ctrl.dtype)
    all_text = sds((S * B,) + text.shape[1:], text.dtype)
    judged = adversarial.Judged(video, all_ctrl, all_text, video, all_ctrl, all_text, sds((S,), jnp.uint32))
    teacher = (lat(1 + K), clip["text"]) if acfg.forcing == "teacher" else None
    d_loss = lambda dp, judged, t: adversarial.discriminator_objective(  # noqa: E731
        acfg, d_graphdef, judged, t, (key, key), dp, teacher=teacher)[0]
    out["discriminator"] = saved_activation_bytes(d_loss, d_params, judged, sds((S * B,), jnp.float32))
    return out


def rollout_cache(config: ConfigDict, layout: sharded.Layout, rows: int) -> dict:
    """``{device: bytes}`` of the student-forcing rollout's KV cache (one segment's clips)."""
    cfg = aapt_configs.model_config(config)
    acfg = stages.adversarial_config(config)
    B = rows // acfg.segments
    dt = jnp.dtype(cfg.dtype)
    sds = jax.ShapeDtypeStruct
    kv = sds((cfg.num_layers, B, 1 + cfg.window, cfg.tokens_per_frame, cfg.num_heads, cfg.head_dim), dt)
    txt = sds((cfg.num_layers, B, cfg.text_len, cfg.num_heads, cfg.head_dim), dt)
    cache = kvc.KVCache(k=kv, v=kv, text_k=txt, text_v=txt)
    return device_bytes(cache, ulysses.cache_shardings(cache, mesh=layout.mesh, rules=layout.rules))


# ----- the plans ------------------------------------------------------------------------------


def plan_train(config: ConfigDict, *, compile: bool = True) -> list[dict]:
    """One record per device of ``config.mesh`` (built on the visible devices), then a summary
    record (``"device": "all"``) with the mesh, strategies, per-player figures and the
    compiled step's flops and collectives."""
    config = _plan_config(config)
    tc = train_config(config)
    layout = sharded.layout_for(config, mesh_from_config(config.get("mesh")))
    stage = stages.build(config, layout, abstract=True)
    tx, _ = stage.optimizer or make_optimizer(tc.optimizer, tc.lr, weight_decay=tc.weight_decay,
                                              grad_clip=tc.grad_clip, warmup_steps=tc.warmup_steps)
    rows = tc.batch_size * stage.clips_per_example
    step = sharded.TrainStep(stage, tx, layout, rows)
    state = step.abstract_state()
    sh = step.shardings
    frozen = _with_shardings(stage.frozen, sh.frozen)
    batch = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sh.batch),
                         abstract_batch(config, rows))
    players = list(stage.params) if stage.players else [sharded.GENERATOR]

    def per_player(tree, shardings):
        if not stage.players:
            return {sharded.GENERATOR: device_bytes(tree, shardings)}
        return {p: device_bytes(tree[p], shardings[p]) for p in players}

    params = per_player(state["params"], sh.state["params"])
    grads = per_player(state["params"], sh.grads)
    opt = device_bytes(state["opt_state"], sh.state["opt_state"])
    saved = activation_bytes(config, stage, stage.frozen, abstract_batch(config, rows))
    split = _split(layout, sh.batch, rows)
    saved_per_device = max(saved.values()) / split
    cache = rollout_cache(config, layout, rows) if (stage.players and tc.forcing == "student") else {}
    summary = dict(device="all", stage=tc.stage, mesh=dict(layout.mesh.shape), strategies=dict(layout.strategies),
                   batch_size=rows, devices=layout.mesh.size, attention_counted_as="xla",
                   saved_activation_global_bytes=saved, activations_split_over=split,
                   dtype=stage.info.get("model", {}).get("dtype"), remat=stage.info.get("model", {}).get("remat"))
    if compile:
        summary.update(_compiled_figures(step.lower(state, frozen, batch)))
    records = []
    for device in layout.mesh.devices.flat:
        r = dict(device=device.id, process=device.process_index,
                 coords=dict(zip(layout.mesh.axis_names, map(int, np.argwhere(layout.mesh.devices == device)[0]))),
                 params_bytes={p: params[p][device] for p in players},
                 gradients_bytes={p: grads[p][device] for p in players},
                 optimizer_bytes=opt[device], saved_activation_bytes=saved_per_device)
        if cache:
            r["rollout_cache_bytes"] = cache[device]
        total = (sum(r["params_bytes"].values()) + sum(r["gradients_bytes"].values()) + r["optimizer_bytes"]
                 + saved_per_device + r.get("rollout_cache_bytes", 0))
        r["gib_per_device"] = total / GIB
        if compile:
            r["flops"] = summary["flops"]
        records.append(r)
    summary["gib_per_device_max"] = max(r["gib_per_device"] for r in records)
    return records + [summary]


def plan_stream(config: ConfigDict, *, batch: int = 1, param_dtype: str | None = "bfloat16",
                compile: bool = True) -> list[dict]:
    """One streaming step (one latent frame, the cache full) on ``config.mesh``: per device
    the params, KV cache and recycled-frame bytes from the sampler's shardings; the
    partitioned step's flops and collectives (``compile``); and, as the reference, the
    flops of the same step on one device. ``param_dtype``: the serving copy's (default bf16)."""
    config = _plan_config(config)
    cfg = aapt_configs.model_config(config)
    if param_dtype:
        cfg = cfg.replace(param_dtype=param_dtype)
    mesh = mesh_from_config(config.get("mesh"))
    graphdef, params = abstract_model(cfg)
    params = nnx.to_pure_dict(params)
    sampler = StreamingSampler(cfg, graphdef, mesh=mesh)
    dt = jnp.dtype(cfg.dtype)
    sds = jax.ShapeDtypeStruct
    kv = sds((cfg.num_layers, batch, 1 + cfg.window, cfg.tokens_per_frame, cfg.num_heads, cfg.head_dim), dt)
    txt = sds((cfg.num_layers, batch, cfg.text_len, cfg.num_heads, cfg.head_dim), dt)
    state = StreamState(cache=kvc.KVCache(k=kv, v=kv, text_k=txt, text_v=txt),
                        prev_frame=sds((batch, 1, cfg.latent_height, cfg.latent_width, cfg.latent_channels), dt),
                        position=sds((), jnp.int32))
    control = (sds((batch, 1, cfg.latent_height, cfg.latent_width, cfg.control_channels), dt)
               if cfg.control_channels else None)
    key = jax.random.key(0)
    p_bytes = device_bytes(params, sampler.param_shardings(params))
    c_bytes = device_bytes(state, state_shardings(state, mesh, sampler.rules))
    summary = dict(device="all", mesh=dict(mesh.shape), devices=mesh.size, batch=batch, param_dtype=cfg.param_dtype,
                   dtype=cfg.dtype, window=cfg.window, tokens_per_frame=cfg.tokens_per_frame,
                   latent_hw=[cfg.latent_height, cfg.latent_width], attention_counted_as="xla")
    if compile:
        summary.update(_compiled_figures(sampler.lower("step", params, state, control, key)))
        one = StreamingSampler(cfg, graphdef, mesh=mesh_from_config({"data": 1}, devices=jax.devices()[:1]))
        summary["one_device_flops"] = _flops(one.lower("step", params, state, control, key).compile())
        summary["split"] = summary["flops"] * mesh.size / summary["one_device_flops"]
    records = []
    for device in mesh.devices.flat:
        r = dict(device=device.id, process=device.process_index, params_bytes=p_bytes[device],
                 state_bytes=c_bytes[device])
        r["gib_per_device"] = (r["params_bytes"] + r["state_bytes"]) / GIB
        records.append(r)
    summary["gib_per_device_max"] = max(r["gib_per_device"] for r in records)
    return records + [summary]


# ----- a process with the mesh's devices --------------------------------------------------------


def device_count_of(config: ConfigDict, devices: int | None = None) -> int:
    """Devices ``config.mesh`` needs: the product of its sizes, a -1 taking ``devices``."""
    sizes = [config.mesh.get(name, 1) for name in ("data", "fsdp", "context", "tensor")]
    fixed = math.prod(s for s in sizes if s != -1)
    if -1 not in sizes:
        return fixed
    if devices is None:
        raise ValueError(f"mesh: an axis is -1 ({dict(config.mesh)}); name the target's device count (--devices)")
    return devices


def in_subprocess(config: ConfigDict, *, kind: str = "train", devices: int | None = None, compile: bool = True,
                  timeout: float | None = None, **kwargs) -> list[dict]:
    """:func:`plan_train` (``kind='train'``) or :func:`plan_stream` (``'stream'``) in a fresh
    process with the mesh's device count of virtual CPU devices; its records."""
    n = device_count_of(config, devices)
    env = dict(os.environ, JAX_PLATFORMS="cpu",
               XLA_FLAGS=f"{os.environ.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count={n} "
                         "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true")
    spec = dict(config=config.to_json_best_effort(), kind=kind, devices=n, compile=compile, kwargs=kwargs)
    proc = subprocess.run([sys.executable, "-m", "aapt_jax.train.plan"], input=json.dumps(spec), env=env,
                          capture_output=True, text=True, timeout=timeout)
    if proc.returncode:
        last = (proc.stderr.strip().splitlines() or ["(no output)"])[-1]
        if last.startswith("ValueError: "):  # a config the plan refuses: the same one-line error
            raise ValueError(last[len("ValueError: "):])
        raise RuntimeError(f"plan: the planning process failed:\n{proc.stderr[-4000:]}")
    return [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]


def _main() -> None:
    spec = json.loads(sys.stdin.read())
    config = ConfigDict(json.loads(spec["config"]))
    for section, name in (("model", "patch_size"), ("train", "disc_layers")):
        if isinstance(config[section].get(name), list):
            config[section][name] = tuple(config[section][name])
    if jax.device_count() != spec["devices"]:
        raise RuntimeError(f"expected {spec['devices']} devices, have {jax.device_count()}")
    run = plan_train if spec["kind"] == "train" else plan_stream
    for record in run(config, compile=spec["compile"], **spec["kwargs"]):
        print(json.dumps(record), flush=True)


if __name__ == "__main__":
    _main()
