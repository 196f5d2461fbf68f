"""Clips whose camera embedding is an outlier (App. G) are skipped by the loader and counted."""

import numpy as np

from aapt_jax.data.control_outliers import control_outlier_filter
from aapt_jax.data.sources import make_loader
from aapt_jax.model.controls import ControlConfig
from aapt_jax.sample.camera_path import walk_path

HW = (32, 32)


class Clips:
    def __init__(self, n, bad):
        self.items = []
        for i in range(n):
            intr, c2w = walk_path(9, HW, step=0.02 + 0.01 * i)
            c2w = c2w[0].copy()
            if i in bad:
                c2w[5:, :3, 3] += bad[i]         # a failed pose estimate: a jump of many steps
            self.items.append(dict(intrinsics=intr[0], c2w=c2w, index=np.int32(i)))

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        return self.items[i]


def test_outlier_clips_are_skipped_and_counted():
    cfg = ControlConfig(kind="camera", fold=1)
    keep = control_outlier_filter(cfg, HW)
    source = Clips(6, bad={2: 3.0, 4: np.nan})
    seen = [int(b["index"][0]) for b in make_loader(source, 1, seed=0, shuffle=False, num_epochs=1, keep=keep)]
    assert seen == [0, 1, 3, 5]
    assert (keep.dropped, keep.seen) == (2, 6)


def test_only_camera_control_is_filtered():
    assert control_outlier_filter(ControlConfig(kind="pose", fold=1), HW) is None
    assert control_outlier_filter(ControlConfig(kind="none"), HW) is None
