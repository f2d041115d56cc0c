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
