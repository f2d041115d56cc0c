"""Piecewise-affine mesh warp (inverse mapping) and a masked blend.

A mesh is ``src_pts``/``dst_pts`` (N, 2) float64 pixel positions of the same vertices in the source
image and in the output, and ``tris`` (T, 3) int32 vertex indices. Every output pixel (centre at
integer x, y) inside the region ``(x0, y0, x1, y1)`` (x1, y1 exclusive) that lies in a destination
triangle takes the source colour at the same barycentric position (bilinear). A pixel covered by
several triangles takes the lowest triangle index ("first wins", deterministic). Pixels of the
region that no triangle covers keep the source pixel at the same place (identity), and ``cover``
tells which pixels a triangle wrote (1) so tests can check there are no holes.

The warp is the texture map of ``texmap`` with the source image as its own texture and alpha 1:
one rasteriser (row buckets, rows in parallel) and one per-pixel sampler serve both. The numpy
reference and the torch version use the same float64 maths, so the three agree to within 1 grey level.
"""

from __future__ import annotations

import numba as nb
import numpy as np

from . import JIT, check_frame, clip_region
from . import texmap as tm


class MeshWarp:
    """Reusable per-frame warp state for one output size: the rasteriser's buffers, allocated once
    (grown only when a mesh or region needs more), so steady state allocates nothing big."""

    def __init__(self, shape: tuple[int, int], n_tris: int = 0):
        h, w = shape
        self.shape = (h, w)
        self.map = tm.TexMap(h * w)
        self.region = (0, 0, 0, 0)

    @property
    def cover(self) -> np.ndarray:
        """(h, w) uint8: 1 where a triangle wrote the pixel in the last warp's region."""
        cov = np.zeros(self.shape, np.uint8)
        x0, y0, x1, y1 = self.region
        cov[y0:y1, x0:x1] = self.map.owner >= 0
        return cov

    def __call__(self, src, src_pts, dst_pts, tris, out, region=None):
        return warp_mesh_numba(src, src_pts, dst_pts, tris, out, region, self)


def warp_mesh_numba(src: np.ndarray, src_pts: np.ndarray, dst_pts: np.ndarray, tris: np.ndarray, out: np.ndarray,
                    region=None, state: MeshWarp | None = None) -> np.ndarray:
    """Warp ``src`` into ``out`` (same shape, not ``src`` itself) inside ``region``; pixels outside it
    are not touched."""
    check_frame(src, "src")
    check_frame(out, "out")
    if src.shape != out.shape:
        raise ValueError(f"src/out: shapes differ: {src.shape} vs {out.shape}")
    if state is None or state.shape != src.shape[:2]:
        state = MeshWarp(src.shape[:2], len(tris))
    x0, y0, x1, y1 = clip_region(region, src.shape[:2])
    state.region = (x0, y0, max(x0, x1), max(y0, y1))
    if x1 <= x0 or y1 <= y0:
        return out
    if out is src:
        raise ValueError("warp: out must not be src (the source is read while out is written)")
    return tm.texmap_numba(src, src, src_pts, dst_pts, tris, None, (x0, y0, x1, y1), out, state.map)


def warp_mesh_ref(src: np.ndarray, src_pts: np.ndarray, dst_pts: np.ndarray, tris: np.ndarray, out: np.ndarray,
                  region=None, cover: np.ndarray | None = None) -> np.ndarray:
    """numpy reference (``texmap_ref`` with the source as its own texture)."""
    x0, y0, x1, y1 = clip_region(region, src.shape[:2])
    if cover is not None:
        cover[y0:y1, x0:x1] = tm.owner_ref(dst_pts, tris, region, src.shape[:2]) >= 0
    return tm.texmap_ref(src, src, src_pts, dst_pts, tris, None, region, out)


def warp_mesh_torch(src, src_pts, dst_pts, tris, out=None, region=None, chunk: int = 64):
    """torch version (any device): ``texmap_torch`` with the source as its own texture. ``src``
    (H, W, 3) uint8 tensor; points and triangles as numpy."""
    return tm.texmap_torch(src, src, src_pts, dst_pts, tris, None, region, out, chunk=chunk)


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
