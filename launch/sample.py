"""Stream latent frames from an AAPT generator, one forward pass per latent frame.

    python -m launch.sample                                    # tiny config, random init
    python -m launch.sample --config=configs/tiny.py --config.sample.num_frames=240 \
        --checkpoint=/path/to/diffusers_transformer --out=/tmp/stream

Writes ``latents.npy`` ``[B, 1 + K, h, w, C]`` (the first frame, then the K generated
ones) and ``controls.npy`` to ``--out``; with a camera config, the camera follows a
scripted walk.
"""

import json
import os
import sys
import time

import jax
import numpy as np
from absl import app, flags, logging
from ml_collections import config_flags
from tqdm import tqdm

from aapt_jax import configs
from aapt_jax.io.files import atomic_save_npy
from aapt_jax.io.wan_transformer import load_wan_transformer
from aapt_jax.model.controls import control_maps
from aapt_jax.model.dit import create
from aapt_jax.sample.camera_path import walk_path
from aapt_jax.sample.streaming import StreamingSampler

_CONFIG = config_flags.DEFINE_config_file("config", "configs/tiny.py", "Experiment config file.")
_CHECKPOINT = flags.DEFINE_string("checkpoint", None, "Diffusers transformer dir/file; default: random init.")
_OUT = flags.DEFINE_string("out", "out/sample", "Output directory.")


def main(argv):
    del argv
    config = _CONFIG.value
    cfg = configs.model_config(config)
    ctrl_cfg = configs.control_config(config)
    K, B, seed = config.sample.num_frames, config.sample.batch, config.sample.seed
    if K < 1:
        raise ValueError(f"sample.num_frames: expected >= 1, got {K}")
    hw = (config.video.height, config.video.width)
    if _CHECKPOINT.value:
        _, graphdef, params = load_wan_transformer(_CHECKPOINT.value, cfg, seed=seed)
    else:
        graphdef, params = create(cfg, seed)

    key = jax.random.key(seed)
    k_first, k_text, k_steps = jax.random.split(key, 3)
    first = jax.random.normal(k_first, (B, 1, cfg.latent_height, cfg.latent_width, cfg.latent_channels))
    text = jax.random.normal(k_text, (B, cfg.text_len, cfg.text_dim))
    controls = None
    if ctrl_cfg.kind == "camera":
        intr, c2w = walk_path(1 + config.video.vae_temporal * K, hw)
        controls = control_maps(ctrl_cfg, hw, intrinsics=np.repeat(intr, B, 0), c2w=np.repeat(c2w, B, 0))
    elif ctrl_cfg.kind == "pose":
        raise ValueError("control.kind: 'pose' needs keypoints; launch.sample drives only 'none' or 'camera'")

    sampler = StreamingSampler(cfg, graphdef)
    state = sampler.init(params, first, text)
    frames, keys = [first], jax.random.split(k_steps, K)
    t_start, first_step_s = time.perf_counter(), None
    for i in tqdm(range(K), desc="latent frames", unit="frame"):
        state, frame = sampler.step(params, state, None if controls is None else controls[:, i:i + 1], keys[i])
        frames.append(np.asarray(frame))
        if first_step_s is None:
            first_step_s = time.perf_counter() - t_start
    total = time.perf_counter() - t_start
    latents = np.concatenate(frames, axis=1)
    if not np.isfinite(latents).all():
        raise FloatingPointError("generated latents contain NaN/Inf")
    os.makedirs(_OUT.value, exist_ok=True)
    atomic_save_npy(os.path.join(_OUT.value, "latents.npy"), latents)
    if controls is not None:
        atomic_save_npy(os.path.join(_OUT.value, "controls.npy"), np.asarray(controls))
    steady = (total - first_step_s) / max(K - 1, 1)
    summary = dict(config=config.name, frames=K, latents_shape=list(latents.shape),
                   first_step_s_with_compile=first_step_s, steady_step_ms=1e3 * steady,
                   latent_fps=1.0 / steady if steady > 0 else None, out=_OUT.value)
    logging.info("done: %s", summary)
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(app.run(main))
