"""A procedural maze world, ray cast in numpy, with exactly known cameras.

World coordinates: ``x`` and ``z`` span the ground plane and ``y`` points DOWN, like the
camera's ``y``, so an upright camera with yaw 0 has the identity rotation (as in
:func:`aapt_jax.sample.camera_path.walk_path`). The eye is at ``y = 0``; the floor is the
plane ``y = floor_y > 0`` and the ceiling ``y = -ceiling_y < 0``. Walls are whole cells of
a grid over ``(x, z)``: cell ``(iz, ix)`` covers ``[ix, ix + 1) * cell_size`` in ``x`` and
``[iz, iz + 1) * cell_size`` in ``z`` and runs from floor to ceiling.

Cameras follow :mod:`aapt_jax.model.camera` exactly: OpenCV axes (x right, y down, z
forward), ``c2w [T, 4, 4]`` camera-to-world, ``intrinsics [T, 4] = (fx, fy, cx, cy)`` in
pixels, pixel (row ``i``, column ``j``) centred at ``(u, v) = (j + 0.5, i + 0.5)``, world ray
``origin = c2w[:3, 3]``, ``direction = R @ normalize([(u - cx)/fx, (v - cy)/fy, 1])``.

The renderer is a pure function of (world, intrinsics, c2w, image size), built only from
elementwise IEEE operations (+ - * / sqrt floor, no BLAS, no transcendental functions), so
a frame's pixels do not depend on how many frames are rendered together: rendering the
same camera path again, in any chunks, reproduces it bit for bit.
"""

from __future__ import annotations

import dataclasses

import numpy as np

# Surface kinds of a ray hit.
FLOOR, CEILING, WALL_X, WALL_Z = 0, 1, 2, 3  # WALL_X: crossed a cell boundary x = const

_WALL_STYLES = 4  # checker, vertical stripes, horizontal bands, bricks
_RAYS_PER_CHUNK = 1 << 17
# Rays per pixel along each axis (see render_path): 2 x 2 removes most of the aliasing
# (4 x 4 adds little) at 4 times the rays.
SUPERSAMPLE = 2


@dataclasses.dataclass(frozen=True)
class World:
    """A maze: solid grid cells with per-cell textures, between a floor and a ceiling.

    Attributes:
      solid: bool ``[nz, nx]``, True where a cell is wall; the border is all wall.
      wall_style: int ``[nz, nx]``, pattern of a wall cell (0 checker, 1 vertical stripes,
        2 horizontal bands, 3 bricks).
      wall_colors: float32 ``[nz, nx, 3, 3]`` RGB in ``[0, 1]``: the pattern's two colours
        and a landmark panel colour.
      has_panel: bool ``[nz, nx]``, whether a wall cell carries a landmark panel.
      floor_colors: float32 ``[nz, nx, 2, 3]``, the floor tiles' two colours per cell.
      ceiling_colors: float32 ``[nz, nx, 2, 3]``, ceiling and light-panel colour per cell.
      cell_size: side of a cell in world units (metres).
      floor_y: the floor plane's ``y`` (> 0: below the eye).
      ceiling_y: the ceiling's height above the eye (the plane ``y = -ceiling_y``).
      fog_distance: distance at which a surface's colour is half fog.
      fog_color: float32 ``[3]``.
    """
    solid: np.ndarray
    wall_style: np.ndarray
    wall_colors: np.ndarray
    has_panel: np.ndarray
    floor_colors: np.ndarray
    ceiling_colors: np.ndarray
    cell_size: float = 2.0
    floor_y: float = 1.5
    ceiling_y: float = 1.0
    fog_distance: float = 12.0
    fog_color: np.ndarray = dataclasses.field(
        default_factory=lambda: np.array([0.55, 0.6, 0.65], np.float32))

    def free_cells(self) -> np.ndarray:
        """int ``[N, 2]`` ``(iz, ix)`` of the cells that are not wall."""
        return np.argwhere(~self.solid)


def _carve_maze(rng: np.random.Generator, rooms_z: int, rooms_x: int) -> np.ndarray:
    """A perfect maze (depth-first carving) on a ``(2 rooms_z + 1, 2 rooms_x + 1)`` grid."""
    solid = np.ones((2 * rooms_z + 1, 2 * rooms_x + 1), bool)
    visited = np.zeros((rooms_z, rooms_x), bool)
    stack = [(int(rng.integers(rooms_z)), int(rng.integers(rooms_x)))]
    visited[stack[0]] = True
    solid[2 * stack[0][0] + 1, 2 * stack[0][1] + 1] = False
    while stack:
        rz, rx = stack[-1]
        options = [(rz + dz, rx + dx) for dz, dx in ((1, 0), (-1, 0), (0, 1), (0, -1))
                   if 0 <= rz + dz < rooms_z and 0 <= rx + dx < rooms_x
                   and not visited[rz + dz, rx + dx]]
        if not options:
            stack.pop()
            continue
        nz, nx = options[int(rng.integers(len(options)))]
        visited[nz, nx] = True
        solid[rz + nz + 1, rx + nx + 1] = False  # the wall cell between the two rooms
        solid[2 * nz + 1, 2 * nx + 1] = False
        stack.append((nz, nx))
    return solid


def make_world(seed: int, rooms: tuple[int, int] = (6, 6), openness: float = 0.2,
               cell_size: float = 2.0) -> World:
    """A random maze world, a deterministic function of its arguments.

    Args:
      seed: layout and texture seed.
      rooms: ``(rooms_z, rooms_x)`` maze rooms; the grid is ``(2 rooms_z + 1, 2 rooms_x + 1)``
        cells.
      openness: fraction of the maze's inner walls knocked out, which adds loops, open
        halls and free-standing pillars to the corridors of a perfect maze.
      cell_size: side of a grid cell in world units.
    """
    rooms_z, rooms_x = rooms
    if rooms_z < 1 or rooms_x < 1:
        raise ValueError(f"rooms: expected two positive ints, got {rooms!r}")
    if not 0.0 <= openness <= 1.0:
        raise ValueError(f"openness: expected a float in [0, 1], got {openness!r}")
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), 0x3D]))
    solid = _carve_maze(rng, rooms_z, rooms_x)
    nz, nx = solid.shape
    inner = np.zeros_like(solid)
    inner[1:-1, 1:-1] = True
    # Wall cells between two rooms have exactly one odd coordinate.
    between = inner & ((np.arange(nz)[:, None] % 2) != (np.arange(nx)[None, :] % 2))
    solid &= ~(between & (rng.random(solid.shape) < openness))

    # Colours vary by cell, so every place looks different; a few saturated landmark
    # panels make places recognisable when the camera comes back.
    wall_style = rng.integers(_WALL_STYLES, size=solid.shape)
    base = rng.uniform(0.15, 0.95, size=solid.shape + (1, 3))
    wall_colors = np.concatenate(
        [base, base * rng.uniform(0.45, 0.75, size=solid.shape + (1, 1)),
         rng.uniform(0.0, 1.0, size=solid.shape + (1, 3)) ** 2], axis=-2)
    has_panel = rng.random(solid.shape) < 0.25
    floor_base = rng.uniform(0.2, 0.8, size=solid.shape + (1, 3))
    floor_colors = np.concatenate([floor_base, floor_base * 0.6], axis=-2)
    ceiling = rng.uniform(0.5, 0.8, size=solid.shape + (1, 1)) * np.ones(3)
    ceiling_colors = np.concatenate([ceiling, np.minimum(ceiling + 0.3, 1.0)], axis=-2)
    return World(solid=solid, wall_style=wall_style, wall_colors=wall_colors.astype(np.float32),
                 has_panel=has_panel, floor_colors=floor_colors.astype(np.float32),
                 ceiling_colors=ceiling_colors.astype(np.float32), cell_size=float(cell_size))


@dataclasses.dataclass(frozen=True)
class Hits:
    """Where rays first meet the world. All fields ``[N]``.

    ``t`` is the distance along the (unit) direction, ``kind`` one of FLOOR, CEILING,
    WALL_X, WALL_Z, ``cell_z, cell_x`` the wall cell that was hit or, for the floor and
    ceiling, the cell under the hit point, and ``x, y, z`` the hit point.
    """
    t: np.ndarray
    kind: np.ndarray
    cell_z: np.ndarray
    cell_x: np.ndarray
    x: np.ndarray
    y: np.ndarray
    z: np.ndarray


def cast_rays(world: World, origin, direction) -> Hits:
    """First surface along each ray.

    Args:
      world: the world.
      origin: float ``[N, 3]`` ray origins.
      direction: float ``[N, 3]`` unit ray directions (same dtype as ``origin``).

    Returns:
      :class:`Hits` of ``N`` rays. Walls are traversed cell by cell (a 2D DDA over the
      grid, all rays at once); the cell holding the origin is not tested, so a camera
      inside a wall sees out of it, and a camera outside the grid sees only wall.
    """
    origin = np.asarray(origin)
    direction = np.asarray(direction, origin.dtype)
    dtype = origin.dtype
    s = dtype.type(world.cell_size)
    # Contiguous components: strided column views make every operation slower.
    ox, oy, oz = np.ascontiguousarray(origin.T)
    dx, dy, dz = np.ascontiguousarray(direction.T)
    n = ox.shape[0]
    inf = dtype.type(np.inf)

    with np.errstate(divide="ignore", invalid="ignore"):
        t_floor = np.where(dy > 0, (dtype.type(world.floor_y) - oy) / dy, inf)
        t_ceiling = np.where(dy < 0, (dtype.type(-world.ceiling_y) - oy) / dy, inf)
        inv_dx = np.abs(dtype.type(1) / dx)
        inv_dz = np.abs(dtype.type(1) / dz)
    t_plane = np.minimum(t_floor, t_ceiling)

    nz, nx = world.solid.shape
    stride = nx + 2
    # The grid with a ring of wall around it, flattened: a ray walks a flat index and
    # stops at the ring at the latest, so no bounds checks are needed inside the loop.
    ringed = np.pad(world.solid, 1, constant_values=True).ravel()
    cell_x0, cell_z0 = np.floor(ox / s), np.floor(oz / s)
    ix, iz = cell_x0.astype(np.int64), cell_z0.astype(np.int64)
    inside = (ix >= 0) & (ix < nx) & (iz >= 0) & (iz < nz)
    with np.errstate(invalid="ignore"):
        t_next_x = np.where(dx == 0, inf,
                            np.where(dx > 0, (cell_x0 + 1) * s - ox, ox - cell_x0 * s) * inv_dx)
        t_next_z = np.where(dz == 0, inf,
                            np.where(dz > 0, (cell_z0 + 1) * s - oz, oz - cell_z0 * s) * inv_dz)

    # A camera outside the grid sees wall everywhere (the nearest border cell's texture).
    t_wall = np.where(inside, inf, dtype.type(0))
    wall_kind = np.full(n, WALL_X, np.int8)
    wall_flat = ((np.clip(iz, 0, nz - 1) + 1) * stride + np.clip(ix, 0, nx - 1) + 1).astype(np.int32)

    active = np.flatnonzero(inside & (np.minimum(t_next_x, t_next_z) < t_plane))
    a_flat = ((iz[active] + 1) * stride + ix[active] + 1).astype(np.int32)
    a_tx, a_tz, a_tp = t_next_x[active], t_next_z[active], t_plane[active]
    a_dtx, a_dtz = s * inv_dx[active], s * inv_dz[active]
    a_sz = np.where(dz[active] > 0, stride, -stride).astype(np.int32)
    a_sxz = np.where(dx[active] > 0, 1, -1).astype(np.int32) - a_sz  # x step minus z step
    # A straight line crosses at most nx + nz cell boundaries before the ring. In-place
    # masked updates: this loop is most of the rendering time.
    for _ in range(nx + nz + 2):
        if active.size == 0:
            break
        cross_x = a_tx < a_tz
        t_cross = np.minimum(a_tx, a_tz)
        a_flat += a_sz
        np.add(a_flat, a_sxz, out=a_flat, where=cross_x)
        np.add(a_tx, a_dtx, out=a_tx, where=cross_x)
        np.add(a_tz, a_dtz, out=a_tz, where=~cross_x)
        beyond = t_cross >= a_tp
        hit = ringed[a_flat]
        done = hit | beyond
        if not done.any():
            continue
        hit &= ~beyond
        hit_rays = active[hit]
        t_wall[hit_rays] = t_cross[hit]
        wall_kind[hit_rays] = np.where(cross_x[hit], WALL_X, WALL_Z)
        wall_flat[hit_rays] = a_flat[hit]
        keep = ~done
        active, a_flat, a_tx, a_tz, a_tp, a_dtx, a_dtz, a_sz, a_sxz = (
            v[keep] for v in (active, a_flat, a_tx, a_tz, a_tp, a_dtx, a_dtz, a_sz, a_sxz))

    is_wall = t_wall < t_plane
    t = np.where(is_wall, t_wall, t_plane)
    kind = np.where(is_wall, wall_kind, np.where(t_floor <= t_ceiling, FLOOR, CEILING)).astype(np.int8)
    # A zero direction meets nothing; give it a far hit that fog covers.
    t = np.where(np.isfinite(t), t, dtype.type(1e4))
    x, y, z = ox + t * dx, oy + t * dy, oz + t * dz
    cell_x = np.where(is_wall, wall_flat % stride - 1, np.floor(x / s).astype(np.int32))
    cell_z = np.where(is_wall, wall_flat // stride - 1, np.floor(z / s).astype(np.int32))
    return Hits(t=t, kind=kind, cell_z=cell_z, cell_x=cell_x, x=x, y=y, z=z)


def _odd(*coords):
    """float ``[N]``: 1 where the sum of ``floor(c)`` over ``coords`` is odd, else 0."""
    total = np.floor(coords[0])
    for c in coords[1:]:
        total = total + np.floor(c)
    return total - 2 * np.floor(total * 0.5)


def _frac(a):
    return a - np.floor(a)


def _palette(world: World) -> np.ndarray:
    """uint32 ``[nz * nx * 3 * 3]``: packed RGBA8 colour of (cell, surface, slot) at
    ``(cell * 3 + surface) * 3 + slot``; surfaces floor, ceiling, wall as in :func:`shade`.

    One packed gather per ray is several times cheaper than gathering three floats.
    """
    nz, nx = world.solid.shape
    table = np.zeros((nz * nx, 3, 3, 4), np.uint8)
    for surface, colors in enumerate((world.floor_colors, world.ceiling_colors, world.wall_colors)):
        rgb = np.round(np.clip(colors, 0, 1) * 255).astype(np.uint8)
        table[:, surface, :rgb.shape[-2], :3] = rgb.reshape(nz * nx, -1, 3)
    return table.view(np.uint32).reshape(-1)


def shade(world: World, hits: Hits) -> np.ndarray:
    """Colours of the hit surfaces: uint8 ``[N, 3]``.

    Walls: per-cell two-colour patterns over (position along the wall, height) and, on some
    cells, a landmark panel; floor: per-cell checker tiles with dark seams on cell edges;
    ceiling: a light panel per cell. Faces crossing ``x`` are darker than those crossing
    ``z`` so corners read, and distance fades to fog.

    Every pattern is evaluated for every ray and the surface picks its own: a few dozen
    whole-array operations are cheaper than splitting the rays by surface.
    """
    dtype = hits.t.dtype
    s = dtype.type(world.cell_size)
    nz, nx = world.solid.shape
    cell = (np.minimum(np.maximum(hits.cell_z, 0), nz - 1) * nx
            + np.minimum(np.maximum(hits.cell_x, 0), nx - 1))
    kind, x, y, z = hits.kind, hits.x, hits.y, hits.z
    wall_x = kind == WALL_X
    surface = np.minimum(kind, 2).astype(np.int32)  # floor 0, ceiling 1, wall 2

    along = np.where(wall_x, z, x)  # position along the wall face
    style = world.wall_style.astype(np.int8).ravel()[cell]
    bricks = ((_frac((along + _odd(y * 4) * dtype.type(0.25)) * 2) < 0.08)
              | (_frac(y * 4) < 0.1))
    wall_slot = np.where(style == 0, _odd(along * 2, y * 2),
                np.where(style == 1, _odd(along * 3),
                np.where(style == 2, _odd(y * 3.3), bricks)))
    local = along - np.floor(along / s) * s
    panel = (world.has_panel.ravel()[cell] & (np.abs(local - s * 0.5) < s * 0.25)
             & (y > -0.5) & (y < 0.5))
    wall_slot = np.where(panel, 2, wall_slot)

    fx, fz = _frac(x / s), _frac(z / s)
    light = (np.abs(fx - 0.5) < 0.2) & (np.abs(fz - 0.5) < 0.2)
    flat_slot = np.where(kind == FLOOR, _odd(x * 2, z * 2), light)
    slot = np.where(surface == 2, wall_slot, flat_slot).astype(np.int32)
    packed = _palette(world).take((cell * 3 + surface) * 3 + slot, mode="clip")
    color = packed.view(np.uint8).reshape(-1, 4)[:, :3].astype(dtype)

    seam = (kind == FLOOR) & ((np.abs(fx - 0.5) > 0.48) | (np.abs(fz - 0.5) > 0.48))
    dim = np.where(wall_x, dtype.type(0.75), np.where(seam, dtype.type(0.3), dtype.type(1)))
    # Rational fog: no exp, so the result is bit-exact whatever the array length.
    r = hits.t / dtype.type(world.fog_distance)
    keep = 1 / (1 + r * r)
    fog = world.fog_color.astype(dtype) * dtype.type(255)
    out = color * (dim * keep)[:, None] + fog * (1 - keep)[:, None] + dtype.type(0.5)
    return np.minimum(out, dtype.type(255)).astype(np.uint8)


def pixel_rays(intrinsics, c2w, video_hw, dtype=np.float32):
    """World-space rays of every pixel: origins and unit directions.

    Args:
      intrinsics: ``[T, 4]`` ``(fx, fy, cx, cy)``.
      c2w: ``[T, 4, 4]`` camera-to-world.
      video_hw: ``(H, W)``.

    Returns:
      ``origin, direction``, each ``[T, H, W, 3]`` of ``dtype`` (the convention of
      :func:`aapt_jax.model.camera.camera_rays`).
    """
    height, width = video_hw
    intrinsics = np.asarray(intrinsics).astype(dtype)
    c2w = np.asarray(c2w).astype(dtype)
    fx, fy, cx, cy = (intrinsics[:, i, None, None] for i in range(4))
    u = np.arange(width, dtype=dtype)[None, None, :] + dtype(0.5)
    v = np.arange(height, dtype=dtype)[None, :, None] + dtype(0.5)
    lx = np.broadcast_to((u - cx) / fx, (len(c2w), height, width))
    ly = np.broadcast_to((v - cy) / fy, (len(c2w), height, width))
    norm = np.sqrt(lx * lx + ly * ly + 1)
    lx, ly, lz = lx / norm, ly / norm, 1 / norm
    rot = c2w[:, None, None, :3, :3]
    # Written out instead of a matmul so no BLAS kernel (and its blocking) is involved.
    direction = np.stack([rot[..., i, 0] * lx + rot[..., i, 1] * ly + rot[..., i, 2] * lz
                          for i in range(3)], axis=-1)
    origin = np.broadcast_to(c2w[:, None, None, :3, 3], direction.shape)
    return origin, direction


def _check_path(intrinsics, c2w, video_hw):
    intrinsics, c2w = np.asarray(intrinsics), np.asarray(c2w)
    if c2w.ndim != 3 or c2w.shape[1:] != (4, 4):
        raise ValueError(f"c2w: expected shape [T, 4, 4], got {c2w.shape}")
    if intrinsics.shape != (c2w.shape[0], 4):
        raise ValueError(f"intrinsics: expected shape {(c2w.shape[0], 4)} ([T, 4] of c2w), "
                         f"got {intrinsics.shape}")
    ok = (isinstance(video_hw, (tuple, list)) and len(video_hw) == 2
          and all(isinstance(v, (int, np.integer)) and v > 0 for v in video_hw))
    if not ok:
        raise ValueError(f"video_hw: expected (H, W) positive ints, got {video_hw!r}")
    return intrinsics, c2w, (int(video_hw[0]), int(video_hw[1]))


def render_path(world: World, intrinsics, c2w, video_hw, supersample: int = SUPERSAMPLE) -> np.ndarray:
    """Render a camera path.

    Each pixel is the mean of ``supersample x supersample`` rays spread evenly over its area
    (a box filter, as a camera sensor integrates light). One ray per pixel point-samples the
    wall and floor patterns, whose stripes shrink below a pixel with distance: the sampled
    pattern then flickers under sub-pixel camera motion (aliasing), noise that no model of
    the world can predict.

    Args:
      world: the world.
      intrinsics: ``[T, 4]`` ``(fx, fy, cx, cy)`` in pixels.
      c2w: ``[T, 4, 4]`` camera-to-world.
      video_hw: ``(H, W)`` of the frames.
      supersample: rays per pixel along each axis (1 = one ray through the pixel centre).

    Returns:
      uint8 ``[T, H, W, 3]``; a pure function of the arguments, frame by frame.
    """
    intrinsics, c2w, (height, width) = _check_path(intrinsics, c2w, video_hw)
    if isinstance(supersample, bool) or not isinstance(supersample, (int, np.integer)) or supersample < 1:
        raise ValueError(f"supersample: expected an int >= 1, got {supersample!r}")
    s = int(supersample)
    # Pixel coordinates are continuous (centre of pixel j at j + 0.5), so scaling the
    # intrinsics by s puts the s x s sub-pixel centres evenly inside each pixel.
    fine = intrinsics * np.asarray(s, intrinsics.dtype)
    frames = np.empty((len(c2w), height, width, 3), np.uint8)
    chunk = max(1, _RAYS_PER_CHUNK // (height * width * s * s))
    for start in range(0, len(c2w), chunk):
        sl = slice(start, start + chunk)
        origin, direction = pixel_rays(fine[sl], c2w[sl], (height * s, width * s))
        hits = cast_rays(world, origin.reshape(-1, 3), direction.reshape(-1, 3))
        sub = shade(world, hits).reshape(-1, height, s, width, s, 3).astype(np.float32)
        frames[sl] = np.floor(sub.mean(axis=(2, 4)) + np.float32(0.5)).astype(np.uint8)
    return frames
