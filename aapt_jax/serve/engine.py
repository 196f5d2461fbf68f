"""The model side of the server: weights, the jitted per-latent-frame functions, warm-up.

One :class:`Engine` per process, shared by every stream; a stream's device state lives in
its :class:`StreamHandle`. Per latent frame a stream makes two jitted calls (timed
separately, for the page and the latency bench):

    handle = engine.start(first_rgb, seed)          # uint8 [H, W, 3] -> video frame 0
    frames, step_ms, decode_ms = engine.next(handle, intrinsics, c2w)   # 4 video frames

``step``: camera control maps of the next latent frame + one generator forward pass;
``decode``: one causal-VAE streaming decode step to uint8 pixels. Both stay on the device
until the uint8 frames are fetched, so a latent frame costs two host syncs.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from ml_collections import ConfigDict

from aapt_jax import configs
from aapt_jax.data.sources import clip_text
from aapt_jax.io.video import frames_to_unit, unit_to_frames
from aapt_jax.io.generator_source import load_generator
from aapt_jax.io.vae_source import load_vae
from aapt_jax.model import vae as vae_lib
from aapt_jax.model.controls import control_maps
from aapt_jax.model.dit import abstract_model, create
from aapt_jax.sample import streaming
from aapt_jax.serve.camera_rig import CameraRig

log = logging.getLogger(__name__)


@dataclasses.dataclass
class StreamHandle:
    """One stream's device state: the generator's :class:`StreamState`, the VAE decoder's
    caches, the stream's noise key and how many latent frames it has generated."""
    state: streaming.StreamState
    decoder: vae_lib.StreamState
    key: jax.Array
    index: int = 0


class Engine:
    """The generator and VAE of one config, jitted once for all streams.

    Args:
      config: an experiment config (``configs/*.py``) with a camera (or no) control.
      checkpoint: a finished stage's workdir or a diffusers transformer dir; '' = random init.
      vae: a finished 'vae' stage's workdir or a diffusers VAE dir; '' = random init.
      seed: seed of the random weights.
    """

    def __init__(self, config: ConfigDict, checkpoint: str = "", vae: str = "", seed: int = 0):
        self.config = config
        self.cfg = configs.model_config(config)
        self.ctrl_cfg = configs.control_config(config)
        if self.ctrl_cfg.kind == "pose":
            raise ValueError("control.kind: the server drives 'camera' or 'none', got 'pose'")
        self.video_hw = (int(config.video.height), int(config.video.width))
        self.fps = float(config.video.fps)
        self.frames_per_latent = int(config.video.vae_temporal)
        self.random_generator = not checkpoint
        self.random_vae = not vae
        if checkpoint:
            params, stage = load_generator(checkpoint, self.cfg, seed=seed, field="--checkpoint")
            graphdef, _ = abstract_model(self.cfg)
            self.generator_source = f"{checkpoint} ({stage})"
        else:
            graphdef, params = create(self.cfg, seed)
            self.generator_source = "random init (untrained: the video is noise)"
        self.vcfg, vae_graphdef, vae_params = load_vae(config.vae.preset, vae, seed=seed, allow_random=True)
        self.vae_source = vae or "random init (untrained)"
        if self.vcfg.temporal_ratio != self.frames_per_latent:
            raise ValueError(f"video.vae_temporal: expected the VAE's temporal_ratio {self.vcfg.temporal_ratio}, "
                             f"got {self.frames_per_latent}")
        self.params = jax.device_put(params)
        self.vae_params = jax.device_put(vae_params)
        self.text = jnp.asarray(clip_text(config))[None]
        self._graphdef, self._vae_graphdef = graphdef, vae_graphdef
        self._init = jax.jit(self._init_impl)
        self._step = jax.jit(self._step_impl, donate_argnums=(1,))
        self._decode = jax.jit(self._decode_impl, donate_argnums=(1,))
        self._encode = jax.jit(self._encode_impl)
        self.compile_s = None

    @property
    def uses_camera(self) -> bool:
        return self.ctrl_cfg.kind == "camera"

    def describe(self) -> dict:
        """What the page and the bench print about the model."""
        return dict(config=self.config.name, video_hw=list(self.video_hw), fps=self.fps,
                    frames_per_latent=self.frames_per_latent, generator=self.generator_source,
                    vae=self.vae_source, random_weights=self.random_generator or self.random_vae,
                    device=str(jax.devices()[0].device_kind), platform=jax.default_backend(),
                    compile_s=self.compile_s)

    # Jitted bodies: pure functions of (params, state, inputs).
    def _encode_impl(self, vae_params, rgb):
        pixels = frames_to_unit(rgb)[None, None]
        enc = vae_lib.encode_init(self.vcfg, 1, self.video_hw)
        _, (mean, _) = vae_lib.encode_step(self._vae_graphdef, vae_params, enc, pixels)
        return vae_lib.normalize_latents(self.vcfg, mean)

    def _init_impl(self, params, first, text):
        return streaming.init_state(nnx.merge(self._graphdef, params), first, text)

    def _step_impl(self, params, state, intrinsics, c2w, key, index):
        control = None
        if self.uses_camera:
            control = control_maps(self.ctrl_cfg, self.video_hw, intrinsics=intrinsics, c2w=c2w)
        noise = jax.random.normal(jax.random.fold_in(key, index), state.prev_frame.shape, state.prev_frame.dtype)
        return streaming.generate_frame(nnx.merge(self._graphdef, params), state, noise, control)

    def _decode_impl(self, vae_params, decoder, latent):
        decoder, pixels = vae_lib.decode_step(self._vae_graphdef, vae_params, decoder,
                                              vae_lib.denormalize_latents(self.vcfg, latent))
        return decoder, unit_to_frames(pixels[0])

    def encode_image(self, rgb: np.ndarray) -> jax.Array:
        """uint8 ``[H, W, 3]`` at the config's size -> normalized latent ``[1, 1, h, w, C]``."""
        rgb = np.asarray(rgb)
        if rgb.dtype != np.uint8 or rgb.shape != (*self.video_hw, 3):
            raise ValueError(f"first frame: expected uint8 {[*self.video_hw, 3]}, got {rgb.dtype} {list(rgb.shape)}")
        return self._encode(self.vae_params, rgb)

    def start(self, first_rgb: np.ndarray, seed: int) -> tuple[StreamHandle, np.ndarray]:
        """A new stream from a first frame: (handle, uint8 ``[1, H, W, 3]`` its VAE reconstruction)."""
        first = self.encode_image(first_rgb)
        state = self._init(self.params, first, self.text)
        decoder = vae_lib.decode_init(self.vcfg, 1, (self.cfg.latent_height, self.cfg.latent_width))
        decoder, frames = self._decode(self.vae_params, decoder, first)
        return StreamHandle(state, decoder, jax.random.key(seed)), np.asarray(frames)

    def next(self, handle: StreamHandle, intrinsics: np.ndarray, c2w: np.ndarray):
        """The next latent frame under the camera path ``intrinsics [1, 5, 4]``,
        ``c2w [1, 5, 4, 4]`` (the previous video frame's pose, then the 4 new ones).

        Returns (uint8 ``[4, H, W, 3]``, step ms, decode ms).
        """
        t0 = time.perf_counter()
        handle.state, latent = self._step(self.params, handle.state, intrinsics, c2w, handle.key,
                                          np.int32(handle.index))
        latent.block_until_ready()
        t1 = time.perf_counter()
        handle.decoder, frames = self._decode(self.vae_params, handle.decoder, latent)
        frames = np.asarray(frames)
        t2 = time.perf_counter()
        handle.index += 1
        return frames, 1e3 * (t1 - t0), 1e3 * (t2 - t1)

    def warm_up(self) -> float:
        """Compile every jitted path (encode, init, first and steady decode, step) with the
        shapes and dtypes streams use; returns and records the seconds it took."""
        t0 = time.perf_counter()
        handle, _ = self.start(np.zeros((*self.video_hw, 3), np.uint8), seed=0)
        rig = CameraRig.free(self.video_hw)
        for _ in range(2):
            self.next(handle, *rig.advance(frozenset({"forward"}), (0.0, 0.0), self.frames_per_latent))
        self.compile_s = time.perf_counter() - t0
        return self.compile_s


_ENGINES: dict = {}


def cached_engine(config: ConfigDict, checkpoint: str = "", vae: str = "", seed: int = 0) -> Engine:
    """One warm engine per (config, weights) in a process: the tests and the bench share its
    compile (configs with the same fields share an engine)."""
    key = (json.dumps(config.to_dict(), sort_keys=True, default=repr), checkpoint, vae, seed)
    if key not in _ENGINES:
        engine = Engine(config.copy_and_resolve_references(), checkpoint, vae, seed)
        engine.warm_up()
        _ENGINES[key] = engine
    return _ENGINES[key]
