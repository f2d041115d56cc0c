"""Geometric kernels: mirror (horizontal / vertical flip) into an explicit ``out``."""

from __future__ import annotations

import numba as nb
import numpy as np

from . import JIT, check_frame, check_same


@nb.njit(**JIT)
def _mirror_h(src, out):
    h, w = src.shape[0], src.shape[1]
    for y in nb.prange(h):
        for x in range(w):
            xs = w - 1 - x
            out[y, x, 0] = src[y, xs, 0]
            out[y, x, 1] = src[y, xs, 1]
            out[y, x, 2] = src[y, xs, 2]


@nb.njit(**JIT)
def _mirror_v(src, out):
    h = src.shape[0]
    for y in nb.prange(h):
        out[y, :, :] = src[h - 1 - y, :, :]


def mirror_numba(src: np.ndarray, out: np.ndarray, horizontal: bool = True) -> np.ndarray:
    check_frame(src, "src")
    check_same(src, out)
    (_mirror_h if horizontal else _mirror_v)(src, out)
    return out


def mirror_ref(src: np.ndarray, horizontal: bool = True) -> np.ndarray:
    return np.ascontiguousarray(src[:, ::-1] if horizontal else src[::-1])


def mirror_torch(src, horizontal: bool = True):
    import torch

    return torch.flip(src, dims=[1] if horizontal else [0]).contiguous()


def warmup() -> None:
    a = np.zeros((2, 2, 3), np.uint8)
    mirror_numba(a, np.empty_like(a), True)
    mirror_numba(a, np.empty_like(a), False)
