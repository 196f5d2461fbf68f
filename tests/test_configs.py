"""Every experiment config builds validated model and data configs for each of its stages
(no weights loaded); the Wan 1.3B video config has the 1.3B count plus the new input
channels; the pose pipeline trains."""

import importlib
import inspect
import pathlib

import jax
import numpy as np
import pytest

from aapt_jax import configs
from aapt_jax.data.geometry import check_data_geometry
from aapt_jax.data.latent_shards import REQUIRED_CONTROL_INPUTS
from aapt_jax.data.sources import validate_data_config
from aapt_jax.io.wan_transformer import abstract_params
from aapt_jax.model.vae_config import get_vae_config
from aapt_jax.train import stages
from aapt_jax.train.optim import make_optimizer
from configs import tiny_world

CONFIG_DIR = pathlib.Path(__file__).resolve().parent.parent / "configs"
MODULES = sorted(p.stem for p in CONFIG_DIR.glob("*.py") if p.stem != "__init__")
# What each video source's clips carry besides video and text (aapt_jax.data.sources).
# 'latents' (launch.encode shards) hold what their source gave; checked against the shards when a run starts.
SOURCE_INPUTS = {"world": {"intrinsics", "c2w"}, "pose": {"keypoints", "visibility"}, "folder": set(), "latents": set()}
WAN_1_3B_PARAMS = 1_418_996_800  # diffusers' count of configs/wan2_1_t2v_1_3b.py (16 input channels)


def _module(name):
    return importlib.import_module(f"configs.{name}")


def _staged(name) -> bool:
    return bool(inspect.signature(_module(name).get_config).parameters)


STAGED = [(name, stage) for name in MODULES if _staged(name) for stage in _module(name).STAGE_DEFAULTS]


def test_every_config_is_covered():
    assert {"tiny", "tiny_world", "tiny_pose", "wan2_1_t2v_1_3b", "wan2_1_1_3b_video"} <= set(MODULES)
    assert {name for name, _ in STAGED} >= {"tiny_world", "tiny_pose", "wan2_1_1_3b_video"}
    for name in MODULES:
        if not _staged(name):
            configs.model_config(_module(name).get_config())  # validated DiTConfig


@pytest.mark.parametrize("name,stage", STAGED)
def test_stage_config_builds_validated_model_and_data(name, stage):
    c = _module(name).get_config(stage)
    assert c.train.stage in stages.STAGES and c.train.stage in stage  # a phase names its stage
    model = configs.model_config(c)
    if stage == "base":
        model.replace(causal=False, control_channels=0)  # revalidated
    control = configs.control_config(c)

    if c.data.source in ("folder", "latents") and not c.data.folder:
        with pytest.raises(ValueError, match="data.folder: expected"):
            validate_data_config(c.data)  # the user names their videos
        c.data.folder = "/path/to/videos"
    data = validate_data_config(c.data)
    vcfg = get_vae_config(c.vae.preset)
    check_data_geometry(c, vcfg)
    assert (c.video.vae_spatial, c.video.vae_temporal) == (vcfg.spatial_ratio, vcfg.temporal_ratio)
    assert (model.latent_height, model.latent_width) == (data["height"] // vcfg.spatial_ratio,
                                                         data["width"] // vcfg.spatial_ratio)
    assert (data["text_len"], data["text_dim"]) == (model.text_len, model.text_dim)
    needed = set(REQUIRED_CONTROL_INPUTS[control.kind])
    assert needed <= SOURCE_INPUTS[data["source"]], f"{control.kind} control on {data['source']} clips"

    tc = c.train
    reference = tiny_world.get_config(c.train.stage).train
    missing = set(reference) - set(tc) - ({"kl_weight"} if stage != "vae" else set())
    assert not missing, f"train fields the loop and stages read: {sorted(missing)}"
    make_optimizer(tc.optimizer, tc.lr, weight_decay=tc.weight_decay, grad_clip=tc.grad_clip,
                   warmup_steps=tc.warmup_steps)
    if c.train.stage == "adversarial":
        stages.adversarial_config(c).check(data["latent_frames"])


@pytest.mark.parametrize("name", sorted({n for n, _ in STAGED}))
def test_unknown_stage_is_named(name):
    with pytest.raises(ValueError, match="config stage: expected one of"):
        _module(name).get_config("nope")


def test_wan_1_3b_video_is_the_1_3b_plus_its_new_input_channels():
    from configs import wan2_1_1_3b_video as video

    base = configs.model_config(_module("wan2_1_t2v_1_3b").get_config())  # counted in test_param_counts
    models = {stage: configs.model_config(video.get_config(stage)) for stage in video.STAGE_DEFAULTS}
    cfg = models["adapt"]
    assert all(m == cfg for m in models.values())  # one generator through the stages
    assert cfg.causal and cfg.recycle_input and cfg.remat and cfg.dtype == "bfloat16"
    assert (cfg.num_layers, cfg.dim, cfg.ffn_dim, cfg.text_dim) == (base.num_layers, base.dim, base.ffn_dim,
                                                                    base.text_dim)
    assert (cfg.latent_height, cfg.latent_width) == (60, 104)  # 480x832 through the VAE's /8
    assert cfg.in_channels == base.in_channels + 16  # noise + recycled frame, no control
    # Only the patch embedding widens: kernel (1, 2, 2, in_channels, dim).
    extra = (cfg.in_channels - base.in_channels) * int(np.prod(cfg.patch_size)) * cfg.dim
    count = sum(x.size for x in jax.tree.leaves(abstract_params(cfg)))  # jax.eval_shape: shapes only
    assert count == WAN_1_3B_PARAMS + extra == 1_419_095_104
    adapt, distill = video.get_config("adapt").train, video.get_config("distill").train
    assert (adapt.optimizer, adapt.lr, adapt.weight_decay, adapt.shift) == ("adamw", 1e-5, 0.01, 24.0)
    assert (distill.lr, distill.distill_steps, distill.shift) == (1e-5, 32, 24.0)


def test_tiny_pose_adapt_trains(tmp_path):
    from aapt_jax.io import checkpoint as ckpt
    from aapt_jax.train.loop import train
    from configs import tiny_pose

    c = tiny_pose.get_config("adapt")
    c.video.height = c.video.width = c.data.height = c.data.width = 32
    c.data.latent_frames = 2
    c.model.num_layers = 1
    c.train.update(dict(steps=2, batch_size=1, checkpoint_every=2, log_every=1, sample_every=0, warmup_steps=0,
                        random_init=True))
    summary = train(c, str(tmp_path / "pose"))
    assert summary["finished"] and summary["step"] == 2 and np.isfinite(summary["last_10pct_loss"]), summary
    info = ckpt.export_info(str(tmp_path / "pose"))
    assert info["stage"] == "adapt" and info["model"]["control_channels"] == 13 * 4  # joints x frames, fold 1


def _clip_frames(c) -> int:
    """Latent frames of one training video of the config's stage, the first frame included."""
    if c.train.stage == "adversarial":
        return stages.adversarial_config(c).video_frames()
    return 1 + c.data.latent_frames


@pytest.mark.parametrize("name", sorted({n for n, _ in STAGED}))
def test_adaptation_and_adversarial_phases_train_past_the_window(name):
    """Some phase of stage 1 and some of stage 3 train on videos that the window masks:
    frame f stops seeing frame 1 once f > window + 1 (the paper's last adaptation phase is
    3N; its long-video stage 3 runs 60 s against a 5 s window)."""
    module = _module(name)
    phases = [module.get_config(s) for s in module.STAGE_DEFAULTS]
    window = configs.model_config(phases[0]).window
    for stage in ("adapt", "adversarial"):
        longest = max(_clip_frames(c) for c in phases if c.train.stage == stage)
        assert longest >= window + 3, (stage, longest, window)


@pytest.mark.parametrize("name,stage", [(n, s) for n, s in STAGED if _module(n).get_config(s).train.stage
                                        == "adversarial"])
def test_stage_3_follows_the_paper_optimizer(name, stage):
    tc = _module(name).get_config(stage).train
    assert (tc.optimizer, tc.rms_decay) == ("rmsprop", 0.9)
    assert not tc.grad_clip  # the paper states no clipping
