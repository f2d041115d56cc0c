"""Mesh warp kernel: numba == numpy reference == torch, and exact expectations on synthetic meshes."""

from __future__ import annotations

import numpy as np
import pytest

from engine.kernels import warp as k


def grid_mesh(w: int, h: int, nx: int, ny: int):
    """A regular grid of vertices over the whole image (pixel centres 0..w-1) and its triangles."""
    xs = np.linspace(0, w - 1, nx)
    ys = np.linspace(0, h - 1, ny)
    pts = np.array([(x, y) for y in ys for x in xs], np.float64)
    tris = []
    for j in range(ny - 1):
        for i in range(nx - 1):
            a, b, c, d = j * nx + i, j * nx + i + 1, (j + 1) * nx + i, (j + 1) * nx + i + 1
            tris += [(a, b, c), (b, d, c)]
    return pts, np.array(tris, np.int32)


def checker(h: int, w: int, cell: int = 4) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w]
    img = np.zeros((h, w, 3), np.uint8)
    img[..., 0] = ((xx // cell + yy // cell) % 2) * 255
    img[..., 1] = (xx * 255 // max(w - 1, 1)).astype(np.uint8)
    img[..., 2] = (yy * 255 // max(h - 1, 1)).astype(np.uint8)
    return img


def bulge(pts: np.ndarray, w: int, h: int, amount: float, seed: int = 0) -> np.ndarray:
    """Move inner vertices smoothly (border vertices stay), plus a little noise."""
    rng = np.random.default_rng(seed)
    d = pts.copy()
    inner = (pts[:, 0] > 0) & (pts[:, 0] < w - 1) & (pts[:, 1] > 0) & (pts[:, 1] < h - 1)
    cx, cy = w / 2, h / 2
    r = np.hypot(pts[:, 0] - cx, pts[:, 1] - cy) / max(w, h)
    fall = np.exp(-(r / 0.3) ** 2)
    d[inner, 0] += amount * fall[inner] + rng.normal(0, 0.3, inner.sum())
    d[inner, 1] += -0.6 * amount * fall[inner] + rng.normal(0, 0.3, inner.sum())
    return d


def test_identity_mesh_copies_the_image():
    img = checker(37, 53)
    pts, tris = grid_mesh(53, 37, 6, 5)
    out = np.zeros_like(img)
    state = k.MeshWarp(img.shape[:2], len(tris))
    k.warp_mesh_numba(img, pts, pts, tris, out, state=state)
    assert np.array_equal(out, img)
    assert state.cover.all()


def test_translation_shifts_pixels_exactly():
    img = checker(40, 40)
    # one big quad moved right by exactly 3 px: pixel x takes source x - 3
    src = np.array([[0, 0], [39, 0], [0, 39], [39, 39]], np.float64)
    dst = src + [3.0, 0.0]
    tris = np.array([[0, 1, 2], [1, 3, 2]], np.int32)
    out = np.zeros_like(img)
    k.warp_mesh_numba(img, src, dst, tris, out)
    assert np.array_equal(out[:, 3:], img[:, :37])
    assert np.array_equal(out[:, :3], img[:, :3])  # not covered by any triangle: identity


@pytest.mark.parametrize("size,grid,amount", [((9, 7), (3, 3), 1.5), ((64, 48), (7, 6), 6.0),
                                              ((512, 512), (17, 17), 30.0)])
def test_numba_equals_reference_and_torch(size, grid, amount):
    torch = pytest.importorskip("torch")
    w, h = size
    img = checker(h, w, 3)
    pts, tris = grid_mesh(w, h, *grid)
    dst = bulge(pts, w, h, amount)
    a = np.zeros_like(img)
    b = np.zeros_like(img)
    k.warp_mesh_numba(img, pts, dst, tris, a)
    k.warp_mesh_ref(img, pts, dst, tris, b)
    c = k.warp_mesh_torch(torch.from_numpy(img), pts, dst, tris).numpy()
    assert np.abs(a.astype(int) - b).max() <= 1
    assert np.abs(a.astype(int) - c).max() <= 1
    assert (a != b).mean() < 1e-3 and (a != c).mean() < 1e-3


def test_region_limits_the_work_and_python_kernel_agrees():
    img = checker(20, 24)
    pts, tris = grid_mesh(24, 20, 4, 4)
    dst = bulge(pts, 24, 20, 2.0)
    region = (5, 4, 18, 15)
    a = np.full_like(img, 7)
    k.warp_mesh_numba(img, pts, dst, tris, a, region)
    assert (a[:4] == 7).all() and (a[15:] == 7).all() and (a[:, :5] == 7).all() and (a[:, 18:] == 7).all()
    # the pure-Python form of the kernels (no JIT) gives the same pixels
    from engine.kernels import texmap as tm

    sp, dp = pts.astype(np.float64), dst.astype(np.float64)
    bary, tmap, ok = tm.mesh_affines(sp, dp, tris)
    starts = np.zeros(12, np.int64)
    items = np.zeros(4096, np.int32)
    assert tm._row_buckets.py_func(dp, tris, ok, 4, 15, 5, 18, starts, items) > 0
    owner = np.empty((11, 13), np.int32)
    b = np.full_like(img, 7)
    tm._map_rows.py_func(img, img, bary, tmap, starts, items, tm._ONE, True, tm._NO_OFFSET, False,
                         tm._NO_OFFSET, False, 5, 4, 18, 15, owner, b)
    assert np.array_equal(a, b)


def test_fold_free_warp_leaves_no_holes():
    img = checker(120, 160)
    pts, tris = grid_mesh(160, 120, 9, 7)
    dst = bulge(pts, 160, 120, 8.0, seed=3)
    state = k.MeshWarp(img.shape[:2], len(tris))
    out = np.zeros_like(img)
    k.warp_mesh_numba(img, pts, dst, tris, out, state=state)
    assert state.cover.all()


def test_blend_three_ways_agree():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(1)
    dst = rng.integers(0, 256, (30, 40, 3), dtype=np.uint8)
    patch = rng.integers(0, 256, (10, 12, 3), dtype=np.uint8)
    alpha = rng.random((10, 12)).astype(np.float32)
    alpha[0] = 0.0
    alpha[1] = 1.0
    a, b, c = dst.copy(), dst.copy(), torch.from_numpy(dst.copy())
    k.blend_numba(a, patch, alpha, 5, 7)
    k.blend_ref(b, patch, alpha, 5, 7)
    k.blend_torch(c, torch.from_numpy(patch), torch.from_numpy(alpha), 5, 7)
    assert np.abs(a.astype(int) - b).max() <= 1
    assert np.abs(a.astype(int) - c.numpy()).max() <= 1
    assert np.array_equal(a[7], dst[7]) and np.array_equal(a[8, 5:17], patch[1])
    with pytest.raises(ValueError):
        k.blend_numba(a, patch, alpha, 35, 7)
