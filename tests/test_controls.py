import functools

import jax
import numpy as np
import pytest

from aapt_jax.model import camera, controls, pose
from aapt_jax.model.controls import ControlConfig

VIDEO_HW = (16, 24)  # latent grid 2 x 3


def camera_inputs(batch=2, frames=9):
    rng = np.random.default_rng(0)
    c2w = np.broadcast_to(np.eye(4), (batch, frames, 4, 4)).copy()
    c2w[..., :3, 3] = np.cumsum(rng.normal(0, 0.05, (batch, frames, 3)), axis=1)
    intrinsics = np.broadcast_to([20.0, 20.0, 12.0, 8.0], (batch, frames, 4)).copy()
    return dict(intrinsics=intrinsics.astype(np.float32), c2w=c2w.astype(np.float32))


def pose_inputs(batch=2, frames=9, joints=13):
    rng = np.random.default_rng(1)
    return dict(keypoints=rng.uniform(0, 16, (batch, frames, joints, 2)).astype(np.float32),
                visibility=rng.uniform(size=(batch, frames, joints)) < 0.7)


@pytest.mark.parametrize("field, value", [
    ("kind", "rgb"),
    ("fold", 0),
    ("fold", 2.0),
    ("fold", True),
    ("num_joints", -1),
    ("origin_scale", 0.0),
    ("rotation_scale", -0.1),
    ("pose_sigma", float("nan")),
    ("outlier_max_abs", float("inf")),
])
def test_config_rejects_bad_fields(field, value):
    fields = {"kind": "camera", field: value}
    with pytest.raises(ValueError) as err:
        ControlConfig(**fields)
    message = str(err.value)
    assert f"ControlConfig.{field}" in message and repr(value) in message and "expected" in message


@pytest.mark.parametrize("cfg, channels", [
    (ControlConfig(), 0),
    (ControlConfig(kind="camera", fold=1), 24),
    # CameraCtrl's 6 * 8 * 8 = 384 per video frame, times the 4 frames of a latent frame.
    (ControlConfig(kind="camera", fold=8), 1536),
    (ControlConfig(kind="pose", fold=2, num_joints=13), 13 * 16),
])
def test_control_channels(cfg, channels):
    assert controls.control_channels(cfg) == channels


def test_none_kind_has_no_maps():
    assert controls.control_maps(ControlConfig(), VIDEO_HW) is None
    assert controls.control_maps(ControlConfig(), VIDEO_HW, c2w=None) is None
    with pytest.raises(ValueError, match="c2w"):
        controls.control_maps(ControlConfig(), VIDEO_HW, **camera_inputs())


# Each kind's config next to the direct call it must dispatch to (same scales), and the tolerance.
DISPATCH = {
    "camera": (ControlConfig(kind="camera", fold=2, origin_scale=0.05, rotation_scale=0.02), camera_inputs,
               functools.partial(camera.camera_control, video_hw=VIDEO_HW, fold=2, origin_scale=0.05,
                                 rotation_scale=0.02), 1e-5),
    "pose": (ControlConfig(kind="pose", fold=1, num_joints=13, pose_sigma=0.7), pose_inputs,
             functools.partial(pose.pose_control, video_hw=VIDEO_HW, fold=1, sigma=0.7), 1e-6),
}


@pytest.mark.parametrize("kind", sorted(DISPATCH))
def test_dispatch_matches_the_kinds_own_control(kind):
    cfg, make_inputs, direct_control, atol = DISPATCH[kind]
    inputs = make_inputs()
    maps = jax.jit(functools.partial(controls.control_maps, cfg, VIDEO_HW))(**inputs)
    assert maps.shape == (2, 2, 2, 3, controls.control_channels(cfg))
    np.testing.assert_allclose(maps, jax.jit(direct_control)(**inputs), atol=atol)
    np.testing.assert_array_equal(controls.control_outlier_mask(cfg, maps), [False, False])


def test_shapes_only_evaluation():
    # Model initialisation can size its input projection without computing any map.
    cfg = ControlConfig(kind="camera", fold=4)
    spec = {k: jax.ShapeDtypeStruct(v.shape, v.dtype) for k, v in camera_inputs(3, 13).items()}
    out = jax.eval_shape(functools.partial(controls.control_maps, cfg, VIDEO_HW), **spec)
    assert out.shape == (3, 3, 2, 3, controls.control_channels(cfg))


def _with(inputs, **changes):
    return {**inputs, **changes}


CAM = camera_inputs()
POSE = pose_inputs()


@pytest.mark.parametrize("kind, video_hw, inputs, field, given", [
    ("camera", VIDEO_HW, _with(CAM, c2w=CAM["c2w"][:, :8], intrinsics=CAM["intrinsics"][:, :8]),
     "c2w", "(2, 8, 4, 4)"),
    ("camera", VIDEO_HW, _with(CAM, c2w=CAM["c2w"][:, :1], intrinsics=CAM["intrinsics"][:, :1]),
     "c2w", "(2, 1, 4, 4)"),
    ("camera", VIDEO_HW, _with(CAM, intrinsics=CAM["intrinsics"][..., :3]), "intrinsics",
     "(2, 9, 3)"),
    ("camera", VIDEO_HW, _with(CAM, intrinsics=CAM["intrinsics"][:1]), "intrinsics", "(1, 9, 4)"),
    ("camera", VIDEO_HW, _with(CAM, c2w=CAM["c2w"][..., :3, :]), "c2w", "(2, 9, 3, 4)"),
    ("camera", (16, 20), CAM, "video_hw", "(16, 20)"),
    ("camera", (0, 16), CAM, "video_hw", "(0, 16)"),
    ("camera", VIDEO_HW, {"intrinsics": CAM["intrinsics"]}, "c2w", "not given"),
    ("pose", VIDEO_HW, _with(POSE, keypoints=POSE["keypoints"][:, :, :12],
                             visibility=POSE["visibility"][:, :, :12]),
     "keypoints", "(2, 9, 12, 2)"),
    ("pose", VIDEO_HW, _with(POSE, visibility=POSE["visibility"][:, :8]),
     "visibility", "(2, 8, 13)"),
    ("pose", VIDEO_HW, _with(POSE, keypoints=POSE["keypoints"][:, :6],
                             visibility=POSE["visibility"][:, :6]), "keypoints", "(2, 6, 13, 2)"),
    ("pose", VIDEO_HW, _with(POSE, c2w=CAM["c2w"]), "c2w", "unexpected"),
])
def test_bad_inputs_name_the_argument(kind, video_hw, inputs, field, given):
    cfg = ControlConfig(kind=kind, fold=1)
    # Abstract inputs: the check must fire before any array is computed.
    spec = {k: jax.ShapeDtypeStruct(np.shape(v), np.asarray(v).dtype) for k, v in inputs.items()}
    with pytest.raises(ValueError) as err:
        jax.eval_shape(functools.partial(controls.control_maps, cfg, video_hw), **spec)
    assert field in str(err.value) and given in str(err.value)
