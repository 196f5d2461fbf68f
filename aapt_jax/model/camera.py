"""Camera control as per-latent-frame channel maps (AAPT App. G, after CameraCtrl).

Timing. A video of ``T = 1 + 4K`` frames encodes to ``1 + K`` latent frames: video frame 0
alone is latent frame 0, video frames ``4i-3 .. 4i`` are latent frame ``i``. The generator's
autoregressive position ``p`` (``0 .. K-1``) produces latent frame ``p + 1``, so the control
maps returned here cover latent frames ``1 .. K`` (index ``p`` holds latent frame ``p + 1``,
i.e. video frames ``4p + 1 .. 4p + 4``). Video frame 0 needs no map: the user gives it.

Representation (the paper's three changes to CameraCtrl II):

1. each frame's pose is taken relative to the PREVIOUS frame, not the first, so the values
   describe the per-frame camera change and stay bounded however far the camera travels;
2. each pixel carries its ray origin and direction ``(o, d)`` instead of the Pluecker
   ``(o x d, d)``;
3. the inputs are scaled to roughly unit standard deviation with a fixed affine map (below).

Normalisation (fixed, data-independent; nothing is divided by a statistic of the data):

- origin channels: ``o / origin_scale``. With relative poses ``o`` is the camera's step
  since the previous frame, expressed in the previous frame's camera coordinates, so
  ``origin_scale`` is the typical per-axis step per video frame of the training data
  (scene units per frame). A still camera gives exactly 0.
- direction channels: ``(d - d_id) / rotation_scale``, where ``d_id`` is the direction of
  the same pixel for the identity camera with the same intrinsics. For the relative
  rotation ``R`` between consecutive frames ``d - d_id = (R - I) d_id ~ w x d_id`` for a
  small rotation vector ``w``: a rotational-flow field whose per-axis size is the rotation
  angle, so ``rotation_scale`` is the typical per-axis rotation per video frame (radians).
  Why not raw ``d`` standardised by the identity camera's per-pixel statistics: between
  consecutive frames at video rate ``R`` is within a degree or so of ``I``, so raw ``d`` is a
  static per-pixel pattern (the model already knows pixel positions) plus a ~1% motion
  signal, and its z component has near-zero spread for narrow fields of view (dividing by
  it would blow up). Centring on ``d_id`` removes the static pattern, leaves the motion at
  unit scale, is exactly 0 for a camera that does not rotate, and is bounded by
  ``2 / rotation_scale`` in magnitude, which makes wild rotations easy to flag as outliers.

Channel layout of the folded maps (``fold`` grid pixels per latent cell per axis): for ray
component ``k`` (0-2 origin x, y, z; 3-5 direction x, y, z), sub-frame ``s`` (video frame
``4p + 1 + s`` of latent index ``p``) and offset ``(dy, dx)`` inside the latent cell's
``fold x fold`` block, the channel is

    ((k * 4 + s) * fold + dy) * fold + dx

i.e. Wan camera adapters' frame stacking (component-major, then sub-frame) followed by
PyTorch ``PixelUnshuffle(fold)``; grid pixel ``(y, x)`` of the ``(h * fold, w * fold)`` grid
lies in latent cell ``(y // fold, x // fold)`` at ``(dy, dx) = (y % fold, x % fold)``. The
origin channels are therefore the first half of the channels and the direction channels
the second half.

Conventions: ``c2w`` maps camera coordinates (x right, y down, z forward: OpenCV) to world
coordinates and must be rigid (rotation + translation, last row ``0 0 0 1``). Intrinsics
``(fx, fy, cx, cy)`` are in pixels of the video frame with continuous coordinates in which
pixel (row ``i``, column ``j``) covers ``[j, j+1) x [i, i+1)``, so its centre is
``(j + 0.5, i + 0.5)``.
"""

from __future__ import annotations

import jax.numpy as jnp

# The VAE's compression: 4 video frames per latent frame (after the first), 8x8 pixels per
# latent cell.
TEMPORAL_FACTOR = 4
SPATIAL_FACTOR = 8
RAY_COMPONENTS = 6


def latent_frame_count(shape, name: str, frame_axis: int = 1) -> int:
    """``K`` for an input whose axis ``frame_axis`` holds ``T = 1 + 4K`` video frames.

    Raises ValueError naming ``name`` unless ``T - 1`` is a positive multiple of 4.
    """
    num_frames = shape[frame_axis]
    if num_frames < 1 + TEMPORAL_FACTOR or (num_frames - 1) % TEMPORAL_FACTOR:
        raise ValueError(
            f"{name}: expected {1 + TEMPORAL_FACTOR}, {1 + 2 * TEMPORAL_FACTOR}, ... video frames "
            f"(T = 1 + {TEMPORAL_FACTOR}K, K >= 1) on axis {frame_axis}, got shape "
            f"{tuple(shape)} (T = {num_frames})")
    return (num_frames - 1) // TEMPORAL_FACTOR


def check_video_hw(video_hw, cell: int = SPATIAL_FACTOR) -> tuple[int, int]:
    """Validate ``video_hw = (H, W)``: positive ints divisible by ``cell`` (video pixels per
    latent cell, the VAE's spatial factor). Returns ``(H, W)``."""
    if isinstance(cell, bool) or not isinstance(cell, int) or cell < 1:
        raise ValueError(f"cell: expected a positive int, got {cell!r}")
    ok = (isinstance(video_hw, (tuple, list)) and len(video_hw) == 2
          and all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in video_hw))
    if not ok or any(v % cell for v in video_hw):
        raise ValueError(
            f"video_hw: expected (H, W), positive ints divisible by {cell}, "
            f"got {video_hw!r}")
    return int(video_hw[0]), int(video_hw[1])


def check_fold(fold) -> int:
    if isinstance(fold, bool) or not isinstance(fold, int) or fold < 1:
        raise ValueError(f"fold: expected a positive int, got {fold!r}")
    return fold


def check_positive(value, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (
            0.0 < float(value) < float("inf")):
        raise ValueError(f"{name}: expected a finite float > 0, got {value!r}")
    return float(value)


def _check_shape(x, name: str, expected: str, ok: bool):
    if not ok:
        raise ValueError(f"{name}: expected shape {expected}, got {tuple(jnp.shape(x))}")


def fold_to_latent(x, fold: int):
    """Fold 4 video frames and ``fold x fold`` grid pixels of each latent cell into channels.

    Args:
      x: ``[B, 4K, h * fold, w * fold, C]``, the grid maps of video frames ``1 .. 4K``.
      fold: grid pixels per latent cell along each axis.

    Returns:
      ``[B, K, h, w, C * 4 * fold**2]``; input ``x[b, 4p + s, h_i * fold + dy,
      w_i * fold + dx, c]`` lands in channel ``((c * 4 + s) * fold + dy) * fold + dx`` of
      output cell ``[b, p, h_i, w_i]``.
    """
    fold = check_fold(fold)
    x = jnp.asarray(x)
    _check_shape(x, "x", f"[B, 4K, h * {fold}, w * {fold}, C]",
                 x.ndim == 5 and x.shape[1] % TEMPORAL_FACTOR == 0
                 and x.shape[2] % fold == 0 and x.shape[3] % fold == 0)
    b, t, gh, gw, c = x.shape
    k, h, w = t // TEMPORAL_FACTOR, gh // fold, gw // fold
    x = x.reshape(b, k, TEMPORAL_FACTOR, h, fold, w, fold, c)
    # axes: b, k, s, h, dy, w, dx, c  ->  b, k, h, w, c, s, dy, dx
    x = x.transpose(0, 1, 3, 5, 7, 2, 4, 6)
    return x.reshape(b, k, h, w, c * TEMPORAL_FACTOR * fold * fold)


def camera_channels(fold: int) -> int:
    """Channels of :func:`camera_control` maps: 6 ray components x 4 frames x fold**2."""
    return RAY_COMPONENTS * TEMPORAL_FACTOR * check_fold(fold) ** 2


def _rigid_inverse_times(a, b):
    """``inv(a) @ b`` for rigid 4x4 ``a``, using the transpose so no matrix is inverted.

    The translations are subtracted before rotating, which keeps the relative step exact
    to float precision even when both cameras are far from the world origin.
    """
    ra_t = jnp.swapaxes(a[..., :3, :3], -1, -2)
    rot = ra_t @ b[..., :3, :3]
    trans = jnp.einsum("...ij,...j->...i", ra_t, b[..., :3, 3] - a[..., :3, 3])
    top = jnp.concatenate([rot, trans[..., None]], axis=-1)
    bottom = jnp.broadcast_to(jnp.array([0.0, 0.0, 0.0, 1.0], top.dtype), top.shape[:-2] + (1, 4))
    return jnp.concatenate([top, bottom], axis=-2)


def relative_poses(c2w):
    """Each frame's camera-to-world pose relative to the previous frame.

    ``rel[:, t] = inv(c2w[:, t-1]) @ c2w[:, t]`` (frame ``t`` in frame ``t-1``'s camera
    coordinates) and ``rel[:, 0] = I``, so ``c2w[:, t] = c2w[:, 0] @ rel[:, 1] @ ... @
    rel[:, t]``.

    Args:
      c2w: ``[B, T, 4, 4]`` rigid camera-to-world matrices.

    Returns:
      ``[B, T, 4, 4]``.
    """
    _check_shape(c2w, "c2w", "[B, T, 4, 4]", jnp.ndim(c2w) == 4 and jnp.shape(c2w)[-2:] == (4, 4))
    c2w = jnp.asarray(c2w)
    first = jnp.broadcast_to(jnp.eye(4, dtype=c2w.dtype), c2w[:, :1].shape)
    return jnp.concatenate([first, _rigid_inverse_times(c2w[:, :-1], c2w[:, 1:])], axis=1)


def _camera_space_directions(intrinsics, height: int, width: int):
    """Unnormalised camera-space directions ``[(u-cx)/fx, (v-cy)/fy, 1]``: ``[..., H, W, 3]``."""
    fx, fy, cx, cy = (intrinsics[..., i, None] for i in range(4))
    u = jnp.arange(width, dtype=intrinsics.dtype) + 0.5
    v = jnp.arange(height, dtype=intrinsics.dtype) + 0.5
    x = (u - cx) / fx          # [..., W]
    y = (v - cy) / fy          # [..., H]
    shape = x.shape[:-1] + (height, width)
    return jnp.stack([jnp.broadcast_to(x[..., None, :], shape),
                      jnp.broadcast_to(y[..., :, None], shape),
                      jnp.ones(shape, intrinsics.dtype)], axis=-1)


def _normalize(v):
    # Never zero here: the camera-space z component is 1 and a rotation keeps the norm.
    return v / jnp.sqrt(jnp.sum(v * v, axis=-1, keepdims=True))


def camera_rays(intrinsics, rel_c2w, height: int, width: int):
    """Per-pixel ray origin and unit direction.

    Args:
      intrinsics: ``[B, T, 4]`` = ``(fx, fy, cx, cy)`` in pixels of a ``height x width``
        image.
      rel_c2w: ``[B, T, 4, 4]`` camera-to-world (here: relative) poses.
      height, width: the image size in pixels.

    Returns:
      ``[B, T, height, width, 6]``: ``(o_x, o_y, o_z, d_x, d_y, d_z)`` with ``o`` the pose's
      translation and ``d = normalize(R @ [(u - cx)/fx, (v - cy)/fy, 1])`` at pixel centre
      ``(u, v) = (j + 0.5, i + 0.5)`` of row ``i``, column ``j``.
    """
    intrinsics = jnp.asarray(intrinsics)
    rel_c2w = jnp.asarray(rel_c2w, intrinsics.dtype)
    local = _camera_space_directions(intrinsics, height, width)
    d = _normalize(jnp.einsum("btij,bthwj->bthwi", rel_c2w[..., :3, :3], local))
    o = jnp.broadcast_to(rel_c2w[:, :, None, None, :3, 3], d.shape)
    return jnp.concatenate([o, d], axis=-1)


def _check_camera_inputs(intrinsics, c2w) -> int:
    _check_shape(intrinsics, "intrinsics", "[B, T, 4] (fx, fy, cx, cy)",
                 jnp.ndim(intrinsics) == 3 and jnp.shape(intrinsics)[-1] == 4)
    _check_shape(c2w, "c2w", "[B, T, 4, 4]",
                 jnp.ndim(c2w) == 4 and jnp.shape(c2w)[-2:] == (4, 4))
    k = latent_frame_count(jnp.shape(c2w), "c2w")
    if jnp.shape(intrinsics)[:2] != jnp.shape(c2w)[:2]:
        raise ValueError(
            f"intrinsics: expected shape {tuple(jnp.shape(c2w)[:2]) + (4,)} (B, T of c2w), "
            f"got {tuple(jnp.shape(intrinsics))}")
    return k


def camera_control(intrinsics, c2w, video_hw, fold: int, origin_scale: float,
                   rotation_scale: float, *, cell: int = SPATIAL_FACTOR, dtype=jnp.float32):
    """Scaled, folded ray maps of latent frames ``1 .. K`` (see the module docstring).

    Args:
      intrinsics: ``[B, T, 4]`` = ``(fx, fy, cx, cy)`` in pixels of the ``H x W`` video,
        ``T = 1 + 4K``.
      c2w: ``[B, T, 4, 4]`` absolute camera-to-world poses of video frames ``0 .. 4K``.
      video_hw: ``(H, W)``, divisible by ``cell``; the latent grid is ``(h, w) = (H/cell, W/cell)``.
      fold: grid pixels per latent cell per axis; rays are cast on an ``(h*fold, w*fold)``
        grid (``fold = cell`` = every video pixel, like CameraCtrl's ``PixelUnshuffle(8)``).
      cell: video pixels per latent cell per axis, the VAE's spatial factor (Wan: 8).
      origin_scale: typical per-axis camera step per video frame, in scene units.
      rotation_scale: typical per-axis camera rotation per video frame, in radians.
      dtype: output dtype (the rays are computed in float32).

    Returns:
      ``[B, K, h, w, 24 * fold**2]``, channel ``((k * 4 + s) * fold + dy) * fold + dx``;
      components ``k = 0..2`` are ``o / origin_scale`` and ``k = 3..5`` are
      ``(d - d_id) / rotation_scale`` with ``o, d`` from :func:`camera_rays` of the relative
      poses on the grid and ``d_id`` the identity camera's directions.
    """
    _check_camera_inputs(intrinsics, c2w)
    height, width = check_video_hw(video_hw, cell)
    fold = check_fold(fold)
    origin_scale = check_positive(origin_scale, "origin_scale")
    rotation_scale = check_positive(rotation_scale, "rotation_scale")

    grid_h = height // cell * fold
    grid_w = width // cell * fold
    intrinsics = jnp.asarray(intrinsics, jnp.float32)[:, 1:]
    # Continuous pixel coordinates scale linearly with the image, so the pixel-centre
    # convention survives the resampling to the grid.
    sx, sy = grid_w / width, grid_h / height
    intrinsics = intrinsics * jnp.array([sx, sy, sx, sy], jnp.float32)
    rel = relative_poses(jnp.asarray(c2w, jnp.float32))[:, 1:]

    identity_dirs = _normalize(_camera_space_directions(intrinsics, grid_h, grid_w))
    # d - d_id = R d_id - d_id for a rotation R. Applying (R - I) instead of subtracting two
    # unit vectors makes a camera that does not turn give exactly 0, independently of how
    # the compiler fuses the two normalisations.
    rot_minus_eye = rel[..., :3, :3] - jnp.eye(3, dtype=rel.dtype)
    turn = jnp.einsum("btij,bthwj->bthwi", rot_minus_eye, identity_dirs) / rotation_scale
    step = jnp.broadcast_to(rel[:, :, None, None, :3, 3] / origin_scale, turn.shape)
    return fold_to_latent(jnp.concatenate([step, turn], axis=-1), fold).astype(dtype)


def camera_outlier_mask(control, max_abs: float):
    """Flag samples whose scaled camera embedding has a value beyond ``max_abs``.

    Such values come from failed camera estimation (jumps of many typical steps between two
    frames) and destabilise adversarial training, so the data pipeline drops them.

    Args:
      control: ``[B, ...]`` scaled maps from :func:`camera_control`.
      max_abs: threshold in units of the scales (e.g. 10).

    Returns:
      bool ``[B]``: True for a sample to drop (also for non-finite values).
    """
    max_abs = check_positive(max_abs, "max_abs")
    control = jnp.asarray(control)
    flat = control.reshape(control.shape[0], -1)
    bad = (jnp.abs(flat) > max_abs) | ~jnp.isfinite(flat)
    return jnp.any(bad, axis=-1)
