"""The data's frame size against the video config and the VAE, checked before anything runs."""

from __future__ import annotations


def check_data_geometry(config, vcfg) -> None:
    """ValueError naming the field unless ``config.data`` has the video's size and the video's
    sides are multiples of the VAE's spatial ratio (``vcfg.spatial_ratio``)."""
    d, v = config.data, config.video
    crop = d.get("crop", 0)
    if crop and config.train.stage != "vae":
        raise ValueError(f"data.crop: only the vae stage trains on crops (the generator's latent grid is the whole "
                         f"frame's); expected 0 for stage {config.train.stage!r}, got {crop}")
    if (d.height, d.width) != (v.height, v.width):
        raise ValueError(f"data.height/width: expected the video size {(v.height, v.width)}, got {(d.height, d.width)}")
    if v.vae_spatial != vcfg.spatial_ratio:
        raise ValueError(f"video.vae_spatial: expected the VAE's spatial ratio {vcfg.spatial_ratio}, got {v.vae_spatial}")
    for side in ("height", "width"):
        if v[side] % vcfg.spatial_ratio:
            raise ValueError(f"video.{side}: expected a multiple of the VAE's spatial ratio {vcfg.spatial_ratio}, "
                             f"got {v[side]}")
