"""Export figures: the converted generator in PyTorch against the JAX sampler, and the
converter's host memory.

* ``torch_vs_jax_stream_max_rel_err``: the ``tiny`` config (camera control), random init,
  fp32, converted by :func:`aapt_jax.io.convert.convert`; ``3 N`` latent frames streamed
  (past the window ``N``) by the PyTorch reference (``aapt_torch``) and by
  :class:`~aapt_jax.sample.streaming.StreamingSampler` from the same first frame, text,
  noise and camera controls; max abs difference over max abs JAX value.
* ``torch_vs_jax_decoded_max_abs_err``: those frames decoded by each side's streaming VAE
  decoder (one latent frame per call, pixels in [-1, 1]); max abs difference.
* ``convert_peak_rss_gib``: converting a ``wan2.1-t2v-1.3B``-shaped export (random init,
  fp32 on disk) to bf16 safetensors, in a fresh process: peak resident memory above the
  process's baseline just before the conversion (``VmHWM`` reset via ``clear_refs``).

``quick`` shrinks everything (a 2-layer window-2 generator, a tiny-config checkpoint for
the memory figure) to check that the suite runs.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from typing import Iterator

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from aapt_jax import configs
from aapt_jax.configs import Named
from aapt_jax.io import checkpoint as ckpt
from aapt_jax.io.convert import convert
from aapt_jax.model import vae as vae_lib
from aapt_jax.model.controls import control_maps
from aapt_jax.model.dit import abstract_model
from aapt_jax.model.vae_config import get_vae_config
from aapt_jax.sample.camera_path import walk_path
from aapt_jax.sample.streaming import StreamingSampler, rollout_noise


def random_params(cfg, seed: int = 0):
    """``(graphdef, params)`` of ``cfg`` drawn on the host with numpy (XLA's CPU compile of
    one threefry sampler per parameter shape costs seconds): kernels fan-in scaled, biases,
    norm gains and modulation tables perturbed away from their defaults, so that a
    mis-mapped tensor shows."""
    graphdef, abstract = abstract_model(cfg, seed)
    rng = np.random.default_rng(seed)
    flat = []
    for path, var in nnx.to_flat_state(abstract):
        spec = var.get_value()
        name = str(path[-1])
        if name == "kernel":
            value = rng.standard_normal(spec.shape) / np.sqrt(spec.shape[0])
        elif name == "weight":
            value = 1.0 + 0.1 * rng.standard_normal(spec.shape)
        else:  # biases and scale_shift_table
            value = 0.1 * rng.standard_normal(spec.shape)
        flat.append((path, var.replace(jnp.asarray(value, spec.dtype))))
    return graphdef, nnx.from_flat_state(flat)


def make_exports(root: str, cfg, control: dict, seed: int = 0) -> tuple:
    """A random ``tiny`` VAE export and a random generator export of ``cfg`` under ``root``.

    Returns (generator workdir, VAE config, VAE graphdef, VAE params, generator graphdef, params)."""
    rng = np.random.default_rng(seed)
    stats = dict(latents_mean=[float(x) for x in rng.normal(0, 0.5, 16)],
                 latents_std=[float(x) for x in rng.uniform(0.5, 2.0, 16)])
    vcfg = get_vae_config("tiny", **{k: tuple(v) for k, v in stats.items()})
    vae_graphdef, vae_params = vae_lib.init_vae(vcfg, seed)
    ckpt.save_export(os.path.join(root, "vae"), nnx.to_pure_dict(vae_params), dict(stage="vae", vae_preset="tiny",
                                                                                 **stats))
    graphdef, params = random_params(cfg, seed)
    workdir = os.path.join(root, "generator")
    info = dict(stage="distill", model=cfg.to_dict(), control=control, vae_preset="tiny",
                vae_checkpoint=os.path.join(root, "vae"))
    ckpt.save_export(workdir, nnx.to_pure_dict(params), info)
    return workdir, vcfg, vae_graphdef, vae_params, graphdef, params


def stream_parity(config, quick: bool, seed: int = 0) -> dict:
    """Stream the same inputs through the JAX sampler and the converted PyTorch reference
    (``config``: the tiny experiment config)."""
    import torch

    from aapt_torch import StreamingDecoder, StreamingGenerator

    config = config.copy_and_resolve_references()  # a copy: the fields below change
    if quick:
        config.model.num_layers, config.model.window = 2, 2
        config.video.height, config.video.width = 32, 48
    cfg = configs.model_config(config)
    ctrl = configs.control_config(config)
    hw = (config.video.height, config.video.width)
    K = 3 * cfg.window
    with tempfile.TemporaryDirectory() as root:
        workdir, vcfg, vae_graphdef, vae_params, graphdef, params = make_exports(
            root, cfg, config.control.to_dict(), seed)
        out = os.path.join(root, "converted")
        convert(workdir, out, dtype="float32", what=("generator", "vae"))
        gen = StreamingGenerator.from_pretrained(out)
        dec = StreamingDecoder.from_pretrained(os.path.join(out, "vae"))

    k_first, k_text, k_noise = jax.random.split(jax.random.key(seed), 3)
    first = jax.random.normal(k_first, (1, 1, cfg.latent_height, cfg.latent_width, cfg.latent_channels))
    text = jax.random.normal(k_text, (1, cfg.text_len, cfg.text_dim))
    intr, c2w = walk_path(1 + config.video.vae_temporal * K, hw)
    controls = control_maps(ctrl, hw, intrinsics=intr, c2w=c2w)  # [1, K, h, w, Cc]

    sampler = StreamingSampler(cfg, graphdef)
    state = sampler.init(params, first, text)
    noise = rollout_noise(k_noise, state, K)
    _, frames = sampler.rollout(params, state, controls, k_noise, num_frames=K)
    frames = np.asarray(frames)

    to_torch = lambda x: torch.from_numpy(np.array(x, np.float32)).permute(0, 4, 1, 2, 3)  # noqa: E731
    gen.init(to_torch(first), torch.from_numpy(np.array(text)))
    noise_t, controls_t = to_torch(noise), to_torch(controls)
    theirs = np.concatenate([gen.step(controls_t[:, :, i:i + 1], noise=noise_t[:, :, i:i + 1]).permute(0, 2, 3, 4, 1)
                             .numpy() for i in range(K)], axis=1)
    stream_err = float(np.abs(theirs - frames).max() / np.abs(frames).max())

    latents = np.concatenate([np.asarray(first), frames], axis=1)
    state = vae_lib.decode_init(vcfg, 1, latents.shape[2:4])
    ours, pixels_t = [], []
    for i in range(latents.shape[1]):
        z = jnp.asarray(latents[:, i:i + 1])
        state, pixels = vae_lib.decode_step(vae_graphdef, vae_params, state, vae_lib.denormalize_latents(vcfg, z))
        ours.append(np.asarray(pixels))
        pixels_t.append(dec.step(to_torch(latents[:, i:i + 1])).permute(0, 2, 3, 4, 1).numpy())
    decoded_err = float(np.abs(np.concatenate(ours, 1) - np.concatenate(pixels_t, 1)).max())
    return dict(stream_err=stream_err, decoded_err=decoded_err, frames=K, window=cfg.window,
                layers=cfg.num_layers, video_frames=int(sum(p.shape[1] for p in ours)))


_CHILD_MAKE = """
import json, sys, numpy as np
from flax import nnx
from aapt_jax.io import checkpoint as ckpt
from aapt_jax.io.wan_transformer import abstract_params
from aapt_jax.model.config import DiTConfig
cfg = DiTConfig.from_mapping(json.loads(sys.argv[1]))
rng = np.random.default_rng(0)
params = nnx.to_pure_dict(abstract_params(cfg))
import jax
params = jax.tree.map(lambda s: (0.02 * rng.standard_normal(s.shape, dtype=np.float32)).astype(s.dtype), params)
ckpt.save_export(sys.argv[2], params, dict(stage="base", model=cfg.to_dict()))
"""

_CHILD_CONVERT = """
import json, sys, time
from aapt_jax.io.convert import convert
def kib(field):
    for line in open("/proc/self/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1])
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")  # resets VmHWM to the current resident size
base = kib("VmRSS")
t = time.perf_counter()
convert(sys.argv[1], sys.argv[2], dtype="bfloat16", what="generator")
print(json.dumps(dict(base_kib=base, peak_kib=kib("VmHWM"), seconds=time.perf_counter() - t)))
"""


def convert_peak_rss(named: Named, quick: bool) -> dict:
    """Convert a random ``wan2.1-t2v-1.3B``-shaped export (``tiny`` when quick) in a child
    process; its peak RSS above the baseline it had just before converting."""
    name = "tiny" if quick else "wan2.1-t2v-1.3B"
    model = json.dumps(configs.model_config(named(name)).to_dict())
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    with tempfile.TemporaryDirectory() as root:
        src, out = os.path.join(root, "export"), os.path.join(root, "converted")
        subprocess.run([sys.executable, "-c", _CHILD_MAKE, model, src], check=True, env=env)
        ckpt_bytes = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(src) for f in fs)
        done = subprocess.run([sys.executable, "-c", _CHILD_CONVERT, src, out], check=True, env=env,
                              capture_output=True, text=True)
        result = json.loads(done.stdout.strip().splitlines()[-1])
        out_bytes = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(out) for f in fs)
    peak = (result["peak_kib"] - result["base_kib"]) / 2**20
    return dict(config=name, peak_gib=peak, checkpoint_gib=ckpt_bytes / 2**30, output_gib=out_bytes / 2**30,
                seconds=result["seconds"])


def run(named: Named, quick: bool = False) -> Iterator[dict]:
    t = time.perf_counter()
    parity = stream_parity(named("tiny"), quick)
    context = dict(config="tiny", frames=parity["frames"], window=parity["window"], layers=parity["layers"],
                   dtype="float32", seconds=round(time.perf_counter() - t, 1))
    yield dict(name="torch_vs_jax_stream_max_rel_err", value=parity["stream_err"], unit="ratio", **context)
    yield dict(name="torch_vs_jax_decoded_max_abs_err", value=parity["decoded_err"], unit="pixels in [-1, 1]",
               video_frames=parity["video_frames"], **context)
    rss = convert_peak_rss(named, quick)
    yield dict(name="convert_peak_rss_gib", value=rss["peak_gib"], unit="GiB", config=rss["config"],
               checkpoint_gib=round(rss["checkpoint_gib"], 3), output_gib=round(rss["output_gib"], 3),
               seconds=round(rss["seconds"], 1), dtype="bfloat16")
