"""Per-pixel kernels, one module per family. Each kernel exists three ways:

- ``*_numba``: ``@njit(cache=True, nogil=True, parallel=True)``, ``prange`` over rows, explicit ``out``;
- ``*_torch``: the same maths on torch tensors (CUDA when present; CPU for the equality tests);
- ``*_ref``: a plain numpy reference, used by the tests and as the benchmark baseline.

A thin wrapper checks dtype, shape and contiguity once per call (cheap) and dispatches.
"""

from __future__ import annotations

import os

import numpy as np

# numba's OpenMP workers sleep between kernels instead of spinning: on a 2-core machine shared with
# mediapipe's threads, spinning burnt more CPU than the kernels themselves (reenact node: 19 ms of CPU
# per frame spinning vs 7 ms passive). Read by the OpenMP runtime when numba first runs a kernel.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

JIT = dict(cache=True, nogil=True, parallel=True, fastmath=False)


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
