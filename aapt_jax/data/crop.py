"""Random square crops of a clip source, with its camera and keypoints moved along.

A convolutional VAE learns the same local statistics from a 32 x 32 crop as from the whole
64 x 64 frame at a quarter of the cost per clip, so ``data.crop`` trains it on crops and it
then runs on whole frames. Crops are exact for the controls too: a crop of a pinhole image
is the pinhole image with its principal point moved by the crop's corner, and keypoints
move by the same offset. Item ``i``'s crop is a deterministic function of the source's
seed and ``i``, so a resumed run sees the same crops.
"""

from __future__ import annotations

import numpy as np

# Crop corners land on multiples of this, the largest VAE spatial ratio in use, so a crop's
# latent cells line up with the whole frame's.
ALIGN = 8


class CroppedSource:
    """``source``'s items cut to ``crop x crop`` pixels at a random aligned corner.

    ``video [T, H, W, 3]`` becomes ``[T, crop, crop, 3]``; ``intrinsics [T, 4]``
    ``(fx, fy, cx, cy)`` get ``cx -= x0, cy -= y0``; ``keypoints [T, J, 2]`` get
    ``-= (x0, y0)``; everything else passes through.
    """

    def __init__(self, source, crop: int, seed: int):
        height, width = source.video_hw
        if crop % ALIGN or not ALIGN <= crop <= min(height, width):
            raise ValueError(f"data.crop: expected 0 or a multiple of {ALIGN} in [{ALIGN}, {min(height, width)}], "
                             f"got {crop}")
        self.source, self.crop, self.seed = source, crop, seed

    def __len__(self) -> int:
        return len(self.source)

    @property
    def video_hw(self) -> tuple[int, int]:
        return self.crop, self.crop

    def corner(self, index) -> tuple[int, int]:
        """``(y0, x0)`` of item ``index``'s crop."""
        height, width = self.source.video_hw
        rng = np.random.default_rng(np.random.SeedSequence([int(self.seed), 0xC809, int(index)]))
        y0 = int(rng.integers((height - self.crop) // ALIGN + 1)) * ALIGN
        x0 = int(rng.integers((width - self.crop) // ALIGN + 1)) * ALIGN
        return y0, x0

    def __getitem__(self, index) -> dict:
        item = dict(self.source[index])
        y0, x0 = self.corner(index)
        item["video"] = np.ascontiguousarray(item["video"][:, y0:y0 + self.crop, x0:x0 + self.crop])
        if "intrinsics" in item:
            item["intrinsics"] = item["intrinsics"] - np.array([0, 0, x0, y0], item["intrinsics"].dtype)
        if "keypoints" in item:
            item["keypoints"] = item["keypoints"] - np.array([x0, y0], item["keypoints"].dtype)
        return item
