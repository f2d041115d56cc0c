"""Colour kernels: a per-channel tone curve (256-entry table) followed by a 3x3 matrix and offset.

This one shape covers OBS's Color Correction filter (gamma, contrast, brightness, saturation, hue,
opacity): gamma becomes the table, the rest folds into the matrix. Frames are BGR uint8.
"""

from __future__ import annotations

import math

import numba as nb
import numpy as np

from . import JIT, check_frame, check_same

# luminance weights used by OBS's saturation matrix (RGB order)
_W_RGB = np.array([0.299, 0.587, 0.114])
_ROOT3 = 0.57735


def obs_color_matrix(gamma: float = 0.0, contrast: float = 0.0, brightness: float = 0.0,
                     saturation: float = 0.0, hue_shift: float = 0.0, opacity: float = 1.0):
    """OBS Color Correction (v2) settings -> (gamma exponent, 3x3 matrix M, offset t) in BGR order,
    applied as ``out = (in ** g) @ M + t`` on values in [0, 1] (row vectors), as OBS does."""
    g = (1.0 - gamma) if gamma < 0 else 1.0 / (gamma + 1.0)
    c = 1.0 / (1.0 - contrast) if contrast < 0 else contrast + 1.0
    # contrast then brightness: v*c + b
    m = np.eye(3) * c
    t = np.full(3, float(brightness))
    # saturation about luminance
    s = saturation + 1.0
    sat = np.empty((3, 3))
    for i in range(3):
        sat[i, :] = (1.0 - s) * _W_RGB[i]
        sat[i, i] += s
    # hue: rotation about the grey axis (OBS's pseudo-quaternion construction)
    half = 0.5 * math.radians(hue_shift)
    q = _ROOT3 * math.sin(half)
    w = math.cos(half)
    sq, qw = q * q, q * w
    diag, a, b = 0.5 - 2.0 * sq, sq + qw, sq - qw
    hue = 2.0 * np.array([[diag, b, a], [a, diag, b], [b, a, diag]])
    m = m @ sat @ hue
    t = t @ sat @ hue
    m *= opacity  # our frames have no alpha: alpha * opacity composited over black
    t *= opacity
    perm = [2, 1, 0]  # RGB -> BGR on both sides
    return g, m[np.ix_(perm, perm)], t[perm]


def curve_matrix_table(g: float, m: np.ndarray, t: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Fold the tone curve and the matrix into table[c_in, value, c_out] (float32, scaled to 0..255)
    and offset[c_out], so the kernel does 3 lookups and adds per output channel."""
    curve = (np.arange(256, dtype=np.float64) / 255.0) ** g * 255.0
    table = curve[None, :, None] * m[:, None, :]  # (3, 256, 3)
    return np.ascontiguousarray(table, np.float32), (np.asarray(t, np.float64) * 255.0 + 0.5).astype(np.float32)


@nb.njit(**JIT)
def _curve_matrix_numba(src, table, offset, out):
    h, w = src.shape[0], src.shape[1]
    lo, hi = np.float32(0.0), np.float32(255.0)
    for y in nb.prange(h):
        for x in range(w):
            # int64 indices: uint8 indexing makes numba emit slow conversions (10x slower)
            b0 = np.int64(src[y, x, 0])
            g0 = np.int64(src[y, x, 1])
            r0 = np.int64(src[y, x, 2])
            for c in range(3):
                v = table[0, b0, c] + table[1, g0, c] + table[2, r0, c] + offset[c]
                out[y, x, c] = np.uint8(np.int32(min(max(v, lo), hi)))  # offset carries +0.5: truncation rounds


def curve_matrix_numba(src: np.ndarray, table: np.ndarray, offset: np.ndarray, out: np.ndarray) -> np.ndarray:
    check_frame(src, "src")
    check_same(src, out)
    _curve_matrix_numba(src, table, offset, out)
    return out


def curve_matrix_torch(src, table, offset, out=None):
    """torch version (any device): src (H, W, 3) uint8 tensor; table/offset as from curve_matrix_table."""
    import torch

    idx = src.long()
    v = table[0][idx[..., 0]] + table[1][idx[..., 1]] + table[2][idx[..., 2]] + offset
    res = v.clamp_(0.0, 255.0).to(torch.uint8)
    if out is None:
        return res
    out.copy_(res)
    return out


def color_adjust_ref(src: np.ndarray, gamma=0.0, contrast=0.0, brightness=0.0, saturation=0.0,
                     hue_shift=0.0, opacity=1.0) -> np.ndarray:
    """Straightforward numpy implementation of the same maths (reference and benchmark baseline)."""
    g, m, t = obs_color_matrix(gamma, contrast, brightness, saturation, hue_shift, opacity)
    f = src.astype(np.float32) / 255.0
    f = np.power(f, np.float32(g))
    v = f @ m.astype(np.float32) + t.astype(np.float32)
    return np.clip(np.rint(v * 255.0), 0, 255).astype(np.uint8)


def warmup() -> None:
    src = np.zeros((2, 2, 3), np.uint8)
    tab, off = curve_matrix_table(1.0, np.eye(3), np.zeros(3))
    curve_matrix_numba(src, tab, off, np.empty_like(src))
