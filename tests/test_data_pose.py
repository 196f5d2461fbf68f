"""Procedural pose figure: keypoints on the drawn figure, rigid limbs, determinism."""

import numpy as np

from aapt_jax.data import pose_figure as P
from aapt_jax.model.pose import DEFAULT_SKELETON

HW = (96, 128)


def test_kinematic_tree_of_the_default_skeleton():
    parent, order = P.kinematic_tree(DEFAULT_SKELETON)
    names = DEFAULT_SKELETON.joint_names
    core = {names[j] for j in np.flatnonzero(parent < 0)}
    assert core == {"head", "left_shoulder", "right_shoulder", "left_hip", "right_hip"}
    hangs = {names[j]: names[parent[j]] for j in order}
    assert hangs == {"left_elbow": "left_shoulder", "right_elbow": "right_shoulder",
                     "left_wrist": "left_elbow", "right_wrist": "right_elbow",
                     "left_knee": "left_hip", "right_knee": "right_hip",
                     "left_ankle": "left_knee", "right_ankle": "right_knee"}
    position = {j: i for i, j in enumerate(order)}
    assert all(parent[parent[j]] < 0 or position[parent[j]] < position[j] for j in order)


def test_same_seed_same_clip_different_seed_different():
    a, b = P.pose_clip(5, 17, HW), P.pose_clip(5, 17, HW)
    for field in ("frames", "keypoints", "visibility", "figure_colors"):
        np.testing.assert_array_equal(getattr(a, field), getattr(b, field))
    assert a.frames.shape == (17, *HW, 3) and a.frames.dtype == np.uint8
    assert a.keypoints.shape == (17, 13, 2) and a.keypoints.dtype == np.float32
    assert a.visibility.shape == (17, 13) and a.visibility.dtype == bool
    c = P.pose_clip(6, 17, HW)
    assert not np.array_equal(a.frames, c.frames)
    assert not np.allclose(a.keypoints, c.keypoints)


def test_keypoints_lie_on_the_drawn_figure():
    for seed in range(4):
        clip = P.pose_clip(seed, 24, HW)
        t, j = np.nonzero(clip.visibility)
        assert len(t) > 0.8 * clip.visibility.size
        x, y = clip.keypoints[t, j, 0], clip.keypoints[t, j, 1]
        pixels = clip.frames[t, np.floor(y).astype(int), np.floor(x).astype(int)]
        in_figure = np.any(np.all(pixels[:, None] == clip.figure_colors[None], -1), -1)
        assert in_figure.all()
        # The head disc is painted last, so the head keypoint shows the head colour.
        head = DEFAULT_SKELETON.joint_names.index("head")
        seen = clip.visibility[:, head]
        kp = clip.keypoints[seen, head]
        head_pixels = clip.frames[seen][np.arange(seen.sum()), np.floor(kp[:, 1]).astype(int),
                                        np.floor(kp[:, 0]).astype(int)]
        np.testing.assert_array_equal(head_pixels, np.broadcast_to(clip.figure_colors[1], head_pixels.shape))


def test_limbs_keep_their_proportions():
    """Forward kinematics: every limb is its rest length times one per-frame scale."""
    clip = P.pose_clip(11, 60, HW)
    rest = np.asarray(DEFAULT_SKELETON.rest_xy)
    a, b = np.asarray(DEFAULT_SKELETON.limbs).T
    length = np.linalg.norm(clip.keypoints[:, a] - clip.keypoints[:, b], axis=-1)
    ratio = length / np.linalg.norm(rest[a] - rest[b], axis=-1)
    np.testing.assert_allclose(ratio, np.broadcast_to(ratio[:, :1], ratio.shape), rtol=1e-4)
    # ... and the pose really changes: the wrist moves relative to the shoulder.
    wrist, shoulder = (DEFAULT_SKELETON.joint_names.index(n) for n in ("left_wrist", "left_shoulder"))
    rel = clip.keypoints[:, wrist] - clip.keypoints[:, shoulder]
    assert np.ptp(np.arctan2(rel[:, 1], rel[:, 0])) > 0.3


def test_motion_is_smooth_and_windows_agree():
    long = P.pose_clip(2, 40, HW)
    step = np.linalg.norm(np.diff(long.keypoints, axis=0), axis=-1)
    assert 0 < step.max() < 0.1 * HW[0]
    window = P.pose_clip(2, 10, HW, start_frame=25)
    np.testing.assert_allclose(window.keypoints, long.keypoints[25:35], atol=1e-4)
    np.testing.assert_array_equal(window.visibility, long.visibility[25:35])
