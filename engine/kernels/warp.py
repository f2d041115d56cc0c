"""Piecewise-affine mesh warp (inverse mapping) and a masked blend.

A mesh is ``src_pts``/``dst_pts`` (N, 2) float64 pixel positions of the same vertices in the source
image and in the output, and ``tris`` (T, 3) int32 vertex indices. Every output pixel (centre at
integer x, y) inside the region ``(x0, y0, x1, y1)`` (x1, y1 exclusive) that lies in a destination
triangle takes the source colour at the same barycentric position (bilinear). A pixel covered by
several triangles takes the lowest triangle index ("first wins", deterministic). Pixels of the
region that no triangle covers keep the source pixel at the same place (identity), and ``cover``
tells which pixels a triangle wrote (1) so tests can check there are no holes.

Per frame the thin wrapper computes, for every destination triangle, the affine map from output
pixel to barycentric coordinates (``tri_affines``) and buckets triangles by the rows they touch
(``row_buckets``); the numba kernel then walks rows in parallel. The numpy reference and the torch
version use the same float64 maths, so the three agree to within 1 grey level.
"""

from __future__ import annotations

import numba as nb
import numpy as np

from . import (
    EPS,
    JIT,
    bilinear_at,
    bilinear_cell,
    bilinear_ref,
    bilinear_torch,
    check_frame,
    clip_region,
    owner_torch,
    tri_affines,
    tri_pixel_grid,
)


@nb.njit(cache=True, nogil=True)
def _row_buckets(dst_pts, tris, ok, y0, y1, x0, x1, starts, items):
    """CSR lists of triangles per row of [y0, y1): ``starts`` (rows + 1), ``items`` (capacity).
    Returns the number of items used, or -1 when ``items`` is too small."""
    rows = y1 - y0
    counts = np.zeros(rows + 1, np.int64)
    t_n = tris.shape[0]
    lo = np.empty(t_n, np.int64)
    hi = np.empty(t_n, np.int64)
    for t in range(t_n):
        lo[t] = 1
        hi[t] = 0
        if not ok[t]:
            continue
        ymin = min(dst_pts[tris[t, 0], 1], dst_pts[tris[t, 1], 1], dst_pts[tris[t, 2], 1])
        ymax = max(dst_pts[tris[t, 0], 1], dst_pts[tris[t, 1], 1], dst_pts[tris[t, 2], 1])
        xmin = min(dst_pts[tris[t, 0], 0], dst_pts[tris[t, 1], 0], dst_pts[tris[t, 2], 0])
        xmax = max(dst_pts[tris[t, 0], 0], dst_pts[tris[t, 1], 0], dst_pts[tris[t, 2], 0])
        if xmax < x0 - 1 or xmin > x1:
            continue
        a = max(int(np.ceil(ymin - 1e-6)), y0)
        b = min(int(np.floor(ymax + 1e-6)), y1 - 1)
        if a > b:
            continue
        lo[t] = a
        hi[t] = b
        for y in range(a, b + 1):
            counts[y - y0 + 1] += 1
    for r in range(rows):
        counts[r + 1] += counts[r]
    total = counts[rows]
    if total > items.shape[0]:
        return -1
    fill = counts[:rows].copy()
    for t in range(t_n):  # increasing t: each row's list is in triangle order
        for y in range(lo[t], hi[t] + 1):
            r = y - y0
            items[fill[r]] = t
            fill[r] += 1
    starts[:rows + 1] = counts
    return total


@nb.njit(**JIT)
def _warp_rows(src, src_pts, dst_pts, tris, bary, y0, y1, x0, x1, starts, items, out, cover):
    h, w = src.shape[0], src.shape[1]
    for r in nb.prange(y1 - y0):
        y = y0 + r
        for x in range(x0, x1):
            cover[y, x] = 0
        for k in range(starts[r], starts[r + 1]):
            t = items[k]
            i0, i1, i2 = tris[t, 0], tris[t, 1], tris[t, 2]
            m00, m01, m02 = bary[t, 0, 0], bary[t, 0, 1], bary[t, 0, 2]
            m10, m11, m12 = bary[t, 1, 0], bary[t, 1, 1], bary[t, 1, 2]
            fy = np.float64(y)
            # exact x-span of this row inside the triangle (each barycentric is linear in x), widened by
            # a pixel; the per-pixel test below decides, so the result equals the bounding-box walk
            lo = np.float64(x0)
            hi = np.float64(x1 - 1)
            for a, b in ((m00, m01 * fy + m02), (m10, m11 * fy + m12),
                         (-m00 - m10, 1.0 - (m01 + m11) * fy - m02 - m12)):
                if a > 1e-12:
                    lo = max(lo, (-EPS - b) / a)
                elif a < -1e-12:
                    hi = min(hi, (-EPS - b) / a)
                elif b < -EPS:
                    hi = lo - 2.0
            if hi < lo - 1.0:
                continue
            xs = max(int(np.floor(lo)) - 1, x0)
            xe = min(int(np.ceil(hi)) + 1, x1 - 1)
            # source position = p0 + l1 (p1 - p0) + l2 (p2 - p0)
            sx0, sy0 = src_pts[i0, 0], src_pts[i0, 1]
            sx1, sy1 = src_pts[i1, 0] - sx0, src_pts[i1, 1] - sy0
            sx2, sy2 = src_pts[i2, 0] - sx0, src_pts[i2, 1] - sy0
            for x in range(xs, xe + 1):
                if cover[y, x]:
                    continue
                fx = np.float64(x)
                l1 = m00 * fx + m01 * fy + m02
                l2 = m10 * fx + m11 * fy + m12
                l0 = 1.0 - l1 - l2
                if l0 < -EPS or l1 < -EPS or l2 < -EPS:
                    continue
                sx = sx0 + l1 * sx1 + l2 * sx2
                sy = sy0 + l1 * sy1 + l2 * sy2
                ix, jx, iy, jy, ax, ay = bilinear_cell(sx, sy, w, h)
                for c in range(3):
                    v = bilinear_at(src, ix, jx, iy, jy, ax, ay, c)
                    out[y, x, c] = np.uint8(min(max(v + 0.5, 0.0), 255.0))
                cover[y, x] = 1
        for x in range(x0, x1):
            if not cover[y, x]:
                for c in range(3):
                    out[y, x, c] = src[y, x, c]


class MeshWarp:
    """Reusable per-frame warp state for one source size: bucket buffers are allocated once
    (grown only when a mesh needs more), so steady state allocates nothing big."""

    def __init__(self, shape: tuple[int, int], n_tris: int):
        h, w = shape
        self.shape = (h, w)
        self.cover = np.zeros((h, w), np.uint8)
        self.starts = np.zeros(h + 1, np.int64)
        self.items = np.zeros(max(4096, n_tris * 32), np.int32)

    def __call__(self, src, src_pts, dst_pts, tris, out, region=None):
        return warp_mesh_numba(src, src_pts, dst_pts, tris, out, region, self)


def warp_mesh_numba(src: np.ndarray, src_pts: np.ndarray, dst_pts: np.ndarray, tris: np.ndarray, out: np.ndarray,
                    region=None, state: MeshWarp | None = None) -> np.ndarray:
    """Warp ``src`` into ``out`` (same shape) inside ``region``; pixels outside it are not touched."""
    check_frame(src, "src")
    check_frame(out, "out")
    if src.shape != out.shape:
        raise ValueError(f"src/out: shapes differ: {src.shape} vs {out.shape}")
    if state is None or state.shape != src.shape[:2]:
        state = MeshWarp(src.shape[:2], len(tris))
    x0, y0, x1, y1 = clip_region(region, src.shape[:2])
    if x1 <= x0 or y1 <= y0:
        return out
    sp = np.ascontiguousarray(src_pts[:, :2], np.float64)
    dp = np.ascontiguousarray(dst_pts[:, :2], np.float64)
    tr = np.ascontiguousarray(tris, np.int32)
    bary, ok = tri_affines(dp, tr)
    while True:
        n = _row_buckets(dp, tr, ok, y0, y1, x0, x1, state.starts, state.items)
        if n >= 0:
            break
        state.items = np.zeros(state.items.shape[0] * 2, np.int32)
    _warp_rows(src, sp, dp, tr, bary, y0, y1, x0, x1, state.starts, state.items, out, state.cover)
    return out


def warp_mesh_ref(src: np.ndarray, src_pts: np.ndarray, dst_pts: np.ndarray, tris: np.ndarray, out: np.ndarray,
                  region=None, cover: np.ndarray | None = None) -> np.ndarray:
    """numpy reference: triangle by triangle over its bounding box, first triangle wins."""
    x0, y0, x1, y1 = clip_region(region, src.shape[:2])
    sp = np.asarray(src_pts[:, :2], np.float64)
    dp = np.asarray(dst_pts[:, :2], np.float64)
    tr = np.asarray(tris, np.int64)
    bary, ok = tri_affines(dp, tr)
    cov = np.zeros(src.shape[:2], np.uint8) if cover is None else cover
    cov[y0:y1, x0:x1] = 0
    for t in range(len(tr)):
        if not ok[t]:
            continue
        grid = tri_pixel_grid(dp[tr[t]], x0, y0, x1, y1)
        if grid is None:
            continue
        yy, xx = grid
        fx = xx.ravel().astype(np.float64)
        fy = yy.ravel().astype(np.float64)
        m = bary[t]
        l1 = m[0, 0] * fx + m[0, 1] * fy + m[0, 2]
        l2 = m[1, 0] * fx + m[1, 1] * fy + m[1, 2]
        l0 = 1.0 - l1 - l2
        inside = (l0 >= -EPS) & (l1 >= -EPS) & (l2 >= -EPS)
        inside &= cov[yy.ravel(), xx.ravel()] == 0
        if not inside.any():
            continue
        l0, l1, l2 = l0[inside], l1[inside], l2[inside]
        s = sp[tr[t]]
        sx = s[0, 0] + l1 * (s[1, 0] - s[0, 0]) + l2 * (s[2, 0] - s[0, 0])
        sy = s[0, 1] + l1 * (s[1, 1] - s[0, 1]) + l2 * (s[2, 1] - s[0, 1])
        py, px = yy.ravel()[inside], xx.ravel()[inside]
        out[py, px] = np.clip(bilinear_ref(src, sx, sy) + 0.5, 0.0, 255.0).astype(np.uint8)
        cov[py, px] = 1
    hole = cov[y0:y1, x0:x1] == 0
    out[y0:y1, x0:x1][hole] = src[y0:y1, x0:x1][hole]
    return out


def warp_mesh_torch(src, src_pts, dst_pts, tris, out=None, region=None, chunk: int = 64):
    """torch version (any device): triangles are rasterised in chunks of similar bounding-box size,
    each pixel keeps its lowest covering triangle index (scatter_reduce amin), then one gather does
    the bilinear sample. ``src`` (H, W, 3) uint8 tensor; points/tris as numpy or tensors."""
    import torch

    dev = src.device
    h, w = src.shape[0], src.shape[1]
    x0, y0, x1, y1 = clip_region(region, (h, w))
    res = src.clone() if out is None else out
    if out is not None:
        res[y0:y1, x0:x1] = src[y0:y1, x0:x1]
    if x1 <= x0 or y1 <= y0:
        return res
    dp_np = np.asarray(dst_pts[:, :2], np.float64)
    tr_np = np.asarray(tris, np.int64)
    bary_np, ok = tri_affines(dp_np, tr_np)
    if not ok.any():
        return res
    rw = x1 - x0
    owner = owner_torch(dp_np, tr_np, bary_np, ok, (x0, y0, x1, y1), dev, chunk)
    big = torch.iinfo(torch.int64).max
    bary = torch.as_tensor(bary_np, dtype=torch.float64, device=dev)
    covered = owner != big
    pix = torch.nonzero(covered).squeeze(1)
    t = owner[pix]
    px = (pix % rw + x0).double()
    py = (pix // rw + y0).double()
    m = bary[t]
    l1 = m[:, 0, 0] * px + m[:, 0, 1] * py + m[:, 0, 2]
    l2 = m[:, 1, 0] * px + m[:, 1, 1] * py + m[:, 1, 2]
    sp = torch.as_tensor(np.asarray(src_pts[:, :2], np.float64), device=dev)
    tri = torch.as_tensor(tr_np, device=dev)[t]
    p0x, p0y = sp[tri[:, 0], 0], sp[tri[:, 0], 1]
    sx = p0x + l1 * (sp[tri[:, 1], 0] - p0x) + l2 * (sp[tri[:, 2], 0] - p0x)
    sy = p0y + l1 * (sp[tri[:, 1], 1] - p0y) + l2 * (sp[tri[:, 2], 1] - p0y)
    v = bilinear_torch(src, sx, sy)
    oyi = (pix // rw + y0)
    oxi = (pix % rw + x0)
    res[oyi, oxi] = (v + 0.5).clamp(0.0, 255.0).to(torch.uint8)
    return res


# ---- blend ---------------------------------------------------------------------------------------

@nb.njit(**JIT)
def _blend_numba(dst, patch, alpha, x0, y0):
    ph, pw = patch.shape[0], patch.shape[1]
    for r in nb.prange(ph):
        y = y0 + r
        for x in range(pw):
            a = np.float32(alpha[r, x])
            if a <= 0.0:
                continue
            for c in range(3):
                v = np.float32(dst[y, x0 + x, c]) * (np.float32(1.0) - a) + np.float32(patch[r, x, c]) * a
                dst[y, x0 + x, c] = np.uint8(min(max(v + np.float32(0.5), np.float32(0.0)), np.float32(255.0)))


def blend_numba(dst: np.ndarray, patch: np.ndarray, alpha: np.ndarray, x0: int, y0: int) -> np.ndarray:
    """In place: ``dst[y0:y0+ph, x0:x0+pw] = dst * (1 - alpha) + patch * alpha`` (alpha (ph, pw) float32
    in [0, 1]; patch (ph, pw, 3) uint8, must fit inside dst)."""
    ph, pw = patch.shape[:2]
    if alpha.shape != (ph, pw) or y0 < 0 or x0 < 0 or y0 + ph > dst.shape[0] or x0 + pw > dst.shape[1]:
        raise ValueError(f"blend: patch {patch.shape} / alpha {alpha.shape} at ({x0}, {y0}) does not fit {dst.shape}")
    _blend_numba(dst, patch, alpha, int(x0), int(y0))
    return dst


def blend_ref(dst: np.ndarray, patch: np.ndarray, alpha: np.ndarray, x0: int, y0: int) -> np.ndarray:
    ph, pw = patch.shape[:2]
    view = dst[y0:y0 + ph, x0:x0 + pw]
    a = alpha.astype(np.float32)[..., None]
    v = view.astype(np.float32) * (np.float32(1.0) - a) + patch.astype(np.float32) * a
    res = np.clip(v + np.float32(0.5), 0, 255).astype(np.uint8)
    view[...] = np.where(a > 0, res, view)
    return dst


def blend_torch(dst, patch, alpha, x0: int, y0: int):
    import torch

    ph, pw = patch.shape[0], patch.shape[1]
    view = dst[y0:y0 + ph, x0:x0 + pw]
    a = alpha.float()[..., None]
    v = view.float() * (1.0 - a) + patch.float() * a
    res = (v + 0.5).clamp(0, 255).to(torch.uint8)
    view.copy_(torch.where(a > 0, res, view))
    return dst


def warmup() -> None:
    src = np.zeros((8, 8, 3), np.uint8)
    pts = np.array([[0, 0], [7, 0], [0, 7], [7, 7]], np.float64)
    tris = np.array([[0, 1, 2], [1, 3, 2]], np.int32)
    warp_mesh_numba(src, pts, pts, tris, np.empty_like(src))
    blend_numba(src, src[:2, :2].copy(), np.ones((2, 2), np.float32), 0, 0)
