"""Per-pixel kernels, one module per family. Each kernel exists three ways:

- ``*_numba``: ``@njit(cache=True, nogil=True, parallel=True)``, ``prange`` over rows, explicit ``out``;
- ``*_torch``: the same maths on torch tensors (CUDA when present; CPU for the equality tests);
- ``*_ref``: a plain numpy reference, used by the tests and as the benchmark baseline.

A thin wrapper checks dtype, shape and contiguity once per call (cheap) and dispatches.
"""

from __future__ import annotations

import os

import numba as nb
import numpy as np

# numba's OpenMP workers sleep between kernels instead of spinning: on a 2-core machine shared with
# mediapipe's threads, spinning burnt more CPU than the kernels themselves (reenact node: 19 ms of CPU
# per frame spinning vs 7 ms passive). Read by the OpenMP runtime when numba first runs a kernel.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

JIT = dict(cache=True, nogil=True, parallel=True, fastmath=False)


@nb.njit(inline="always", cache=True)
def bilinear_cell(sx, sy, w, h):
    """The bilinear cell of the float pixel position (sx, sy), clamped to a w x h image: the two
    columns, the two rows and the fractions (ix, jx, iy, jy, ax, ay). Inlined into the warp kernels;
    ``bilinear_ref`` is the same in numpy."""
    sx = min(max(sx, 0.0), w - 1.0)
    sy = min(max(sy, 0.0), h - 1.0)
    ix = min(int(sx), w - 2) if w > 1 else 0
    iy = min(int(sy), h - 2) if h > 1 else 0
    return ix, min(ix + 1, w - 1), iy, min(iy + 1, h - 1), sx - ix, sy - iy


@nb.njit(inline="always", cache=True)
def bilinear_at(img, ix, jx, iy, jy, ax, ay, k):
    """Channel ``k`` of ``img`` sampled in the cell from ``bilinear_cell``, as float64."""
    top = np.float64(img[iy, ix, k]) + ax * (np.float64(img[iy, jx, k]) - np.float64(img[iy, ix, k]))
    bot = np.float64(img[jy, ix, k]) + ax * (np.float64(img[jy, jx, k]) - np.float64(img[jy, ix, k]))
    return top + ay * (bot - top)


def clip_region(region, shape) -> tuple[int, int, int, int]:
    """(x0, y0, x1, y1) of ``region`` clipped to an image of ``shape`` (h, w); None = the whole image."""
    h, w = shape[:2]
    if region is None:
        return 0, 0, w, h
    x0, y0, x1, y1 = (int(v) for v in region)
    return max(0, x0), max(0, y0), min(w, x1), min(h, y1)


def check_frame(a: np.ndarray, name: str = "frame") -> None:
    if a.dtype != np.uint8 or a.ndim != 3 or a.shape[2] != 3:
        raise ValueError(f"{name}: expected (H, W, 3) uint8, got {a.shape} {a.dtype}")
    if not a.flags.c_contiguous:
        raise ValueError(f"{name}: must be C-contiguous")


def check_same(a: np.ndarray, b: np.ndarray, names: str = "src/out") -> None:
    if a.shape != b.shape or a.dtype != b.dtype:
        raise ValueError(f"{names}: shapes/dtypes differ: {a.shape} {a.dtype} vs {b.shape} {b.dtype}")


def bilinear_ref(img: np.ndarray, sx: np.ndarray, sy: np.ndarray) -> np.ndarray:
    """numpy reference: bilinear samples of ``img`` (H, W, C) at float pixel coordinates ``sx``, ``sy``
    (1-D, clamped to the image), as float64 (N, C). The warp kernels' references share it."""
    h, w = img.shape[:2]
    sx = np.clip(sx, 0.0, w - 1.0)
    sy = np.clip(sy, 0.0, h - 1.0)
    ix = np.minimum(sx.astype(np.int64), max(w - 2, 0))
    iy = np.minimum(sy.astype(np.int64), max(h - 2, 0))
    ax = (sx - ix)[:, None]
    ay = (sy - iy)[:, None]
    jx = np.minimum(ix + 1, w - 1)
    jy = np.minimum(iy + 1, h - 1)
    s = img.astype(np.float64)
    top = s[iy, ix] + ax * (s[iy, jx] - s[iy, ix])
    bot = s[jy, ix] + ax * (s[jy, jx] - s[jy, ix])
    return top + ay * (bot - top)


EPS = 1e-7  # barycentric tolerance: pixel centres on a shared edge belong to both triangles


def tri_affines(dst_pts: np.ndarray, tris: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For each triangle, ``bary`` (T, 2, 3): rows giving l1, l2 = M @ (x, y, 1) (l0 = 1 - l1 - l2), and
    ``ok`` (T,) bool: False for degenerate (zero-area) triangles."""
    p0 = dst_pts[tris[:, 0]]
    p1 = dst_pts[tris[:, 1]]
    p2 = dst_pts[tris[:, 2]]
    e1 = p1 - p0
    e2 = p2 - p0
    det = e1[:, 0] * e2[:, 1] - e1[:, 1] * e2[:, 0]
    ok = np.abs(det) > 1e-9
    inv = np.where(ok, 1.0 / np.where(ok, det, 1.0), 0.0)
    m = np.empty((len(tris), 2, 3), np.float64)
    # [l1, l2] = inv([e1 e2]) @ (p - p0)
    m[:, 0, 0] = e2[:, 1] * inv
    m[:, 0, 1] = -e2[:, 0] * inv
    m[:, 1, 0] = -e1[:, 1] * inv
    m[:, 1, 1] = e1[:, 0] * inv
    m[:, 0, 2] = -(m[:, 0, 0] * p0[:, 0] + m[:, 0, 1] * p0[:, 1])
    m[:, 1, 2] = -(m[:, 1, 0] * p0[:, 0] + m[:, 1, 1] * p0[:, 1])
    return m, ok


def tri_pixel_grid(pts: np.ndarray, x0: int, y0: int, x1: int, y1: int) -> tuple[np.ndarray, np.ndarray] | None:
    """numpy reference: (yy, xx) integer grids of the pixels in the bounding box of triangle ``pts``
    (3, 2), clipped to the region [x0, x1) x [y0, y1); None when nothing is left."""
    xa = max(int(np.ceil(pts[:, 0].min() - 1e-6)), x0)
    xb = min(int(np.floor(pts[:, 0].max() + 1e-6)), x1 - 1)
    ya = max(int(np.ceil(pts[:, 1].min() - 1e-6)), y0)
    yb = min(int(np.floor(pts[:, 1].max() + 1e-6)), y1 - 1)
    if xa > xb or ya > yb:
        return None
    return np.mgrid[ya:yb + 1, xa:xb + 1]


def bilinear_torch(img, sx, sy):
    """torch twin of ``bilinear_ref``: ``img`` (H, W, C) tensor, ``sx``/``sy`` 1-D float64 tensors;
    float64 (N, C)."""
    h, w = img.shape[0], img.shape[1]
    sx = sx.clamp(0.0, w - 1.0)
    sy = sy.clamp(0.0, h - 1.0)
    ix = sx.long().clamp(max=max(w - 2, 0))
    iy = sy.long().clamp(max=max(h - 2, 0))
    ax = (sx - ix)[:, None]
    ay = (sy - iy)[:, None]
    jx = (ix + 1).clamp(max=w - 1)
    jy = (iy + 1).clamp(max=h - 1)
    s = img.double()
    top = s[iy, ix] + ax * (s[iy, jx] - s[iy, ix])
    bot = s[jy, ix] + ax * (s[jy, jx] - s[jy, ix])
    return top + ay * (bot - top)


def owner_torch(dst_pts: np.ndarray, tris: np.ndarray, bary_np: np.ndarray, ok: np.ndarray, region, dev,
                chunk: int):
    """torch: for each pixel of ``region`` (x0, y0, x1, y1), the lowest index of a triangle whose
    closed area (barycentric tolerance ``EPS``) holds the pixel centre, as an int64 tensor (rh * rw,),
    ``torch.iinfo(int64).max`` where none does. Triangles are rasterised in chunks of similar
    bounding-box size; each pixel keeps the smallest index (scatter_reduce amin). ``bary_np`` and
    ``ok`` from ``tri_affines``."""
    import torch

    x0, y0, x1, y1 = region
    pts = dst_pts[tris]  # (T, 3, 2)
    bx0 = np.maximum(np.ceil(pts[..., 0].min(1) - 1e-6), x0).astype(np.int64)
    bx1 = np.minimum(np.floor(pts[..., 0].max(1) + 1e-6), x1 - 1).astype(np.int64)
    by0 = np.maximum(np.ceil(pts[..., 1].min(1) - 1e-6), y0).astype(np.int64)
    by1 = np.minimum(np.floor(pts[..., 1].max(1) + 1e-6), y1 - 1).astype(np.int64)
    idx = np.nonzero(ok & (bx1 >= bx0) & (by1 >= by0))[0]
    order = idx[np.argsort(((bx1 - bx0 + 1) * (by1 - by0 + 1))[idx], kind="stable")]
    rw, rh = x1 - x0, y1 - y0
    owner = torch.full((rh * rw,), torch.iinfo(torch.int64).max, dtype=torch.int64, device=dev)
    bary = torch.as_tensor(bary_np, dtype=torch.float64, device=dev)
    for c0 in range(0, len(order), chunk):
        ts = order[c0:c0 + chunk]
        cw = int((bx1 - bx0 + 1)[ts].max())
        ch = int((by1 - by0 + 1)[ts].max())
        tt = torch.as_tensor(ts, device=dev)
        ox = (torch.as_tensor(bx0[ts], device=dev)[:, None, None]
              + torch.arange(cw, device=dev)[None, None, :]).expand(len(ts), ch, cw)
        oy = (torch.as_tensor(by0[ts], device=dev)[:, None, None]
              + torch.arange(ch, device=dev)[None, :, None]).expand(len(ts), ch, cw)
        valid = (ox <= torch.as_tensor(bx1[ts], device=dev)[:, None, None]) & \
                (oy <= torch.as_tensor(by1[ts], device=dev)[:, None, None])
        m = bary[tt]
        fx, fy = ox.double(), oy.double()
        l1 = m[:, 0, 0, None, None] * fx + m[:, 0, 1, None, None] * fy + m[:, 0, 2, None, None]
        l2 = m[:, 1, 0, None, None] * fx + m[:, 1, 1, None, None] * fy + m[:, 1, 2, None, None]
        inside = valid & (l1 >= -EPS) & (l2 >= -EPS) & (1.0 - l1 - l2 >= -EPS)
        flat = ((oy - y0) * rw + (ox - x0))[inside]
        tid = tt[:, None, None].expand(len(ts), ch, cw)[inside]
        owner.scatter_reduce_(0, flat, tid, reduce="amin")
    return owner
