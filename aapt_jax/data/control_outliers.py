"""Dropping training clips whose camera embedding is an outlier (paper App. G).

Camera poses estimated from real videos sometimes jump by many typical steps between two
frames; the scaled embedding then has huge values that destabilise adversarial training.
The loader skips such clips (a grain filter) and counts them, so a run says how much of its
data it lost instead of silently training on it or dying.
"""

from __future__ import annotations

import logging

import jax
import numpy as np

from aapt_jax.model.controls import ControlConfig, control_maps, control_outlier_mask


class CameraOutlierFilter:
    """Predicate for a clip dict (``intrinsics`` ``[T, 4]``, ``c2w`` ``[T, 4, 4]``): False for
    an outlier, with ``dropped`` / ``seen`` counts and a warning per dropped clip."""

    def __init__(self, cfg: ControlConfig, video_hw: tuple[int, int]):
        self.cfg, self.video_hw = cfg, tuple(video_hw)
        self.dropped = self.seen = 0
        self._outlier = jax.jit(lambda intrinsics, c2w: control_outlier_mask(
            cfg, control_maps(cfg, self.video_hw, intrinsics=intrinsics, c2w=c2w))[0])

    def __call__(self, clip: dict) -> bool:
        self.seen += 1
        if not bool(self._outlier(np.asarray(clip["intrinsics"])[None], np.asarray(clip["c2w"])[None])):
            return True
        self.dropped += 1
        logging.warning("data: dropped a clip whose camera embedding exceeds control.outlier_max_abs=%g or is not "
                        "finite (%d of %d clips dropped so far)", self.cfg.outlier_max_abs, self.dropped, self.seen)
        return False


def control_outlier_filter(cfg: ControlConfig, video_hw) -> CameraOutlierFilter | None:
    """The loader filter for ``cfg``'s control kind, or None where no clip can be an outlier
    (pose heatmaps are bounded; no control has nothing to check)."""
    return CameraOutlierFilter(cfg, video_hw) if cfg.kind == "camera" else None
