"""Colour kernels: a per-channel tone curve (256-entry table) followed by a 3x3 matrix and offset;
OBS's chroma key (mask + spill suppression); masked per-channel colour statistics (colour matching).

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




# ---- chroma key (OBS's Chroma Key filter maths) ------------------------------------------------------

# Cb / Cr from RGB in 0..1 (BT.709, as OBS's chroma key shader); index 0..2 = r, g, b, 3 = offset
_CB = np.array([-0.100644, -0.338572, 0.439216, 0.501961], np.float32)
_CR = np.array([0.439216, -0.398942, -0.040274, 0.501961], np.float32)
_LUMA = np.array([0.2126, 0.7152, 0.0722], np.float32)  # r, g, b


def key_chroma(rgb: tuple[int, int, int]) -> tuple[float, float]:
    """(Cb, Cr) of a key colour given as (r, g, b) 0..255."""
    v = np.asarray(rgb, np.float32) / np.float32(255.0)
    return float(v @ _CB[:3] + _CB[3]), float(v @ _CR[:3] + _CR[3])


def chroma_key_coeffs(key_rgb, similarity: float, smoothness: float, spill: float) -> np.ndarray:
    """Kernel constants (float32): key cb, cr, similarity, 1/smoothness, 1/spill."""
    kcb, kcr = key_chroma(key_rgb)
    return np.array([kcb, kcr, similarity, 1.0 / max(smoothness, 1e-4), 1.0 / max(spill, 1e-4)], np.float32)


@nb.njit(**JIT)
def _chroma_key(src, k, cb, cr, luma, out, mask):
    h, w = src.shape[0], src.shape[1]
    s = np.float32(1.0 / 255.0)
    zero, one, half = np.float32(0.0), np.float32(1.0), np.float32(0.5)
    for y in nb.prange(h):
        for x in range(w):
            b = np.float32(src[y, x, 0]) * s
            g = np.float32(src[y, x, 1]) * s
            r = np.float32(src[y, x, 2]) * s
            pcb = r * cb[0] + g * cb[1] + b * cb[2] + cb[3]
            pcr = r * cr[0] + g * cr[1] + b * cr[2] + cr[3]
            d = np.sqrt((pcb - k[0]) * (pcb - k[0]) + (pcr - k[1]) * (pcr - k[1]))
            base = d - k[2]
            m = min(max(base * k[3], zero), one)
            mask[y, x] = m * np.sqrt(m)  # pow(x, 1.5) as OBS
            sv = min(max(base * k[4], zero), one)
            sv = sv * np.sqrt(sv)
            de = r * luma[0] + g * luma[1] + b * luma[2]
            # lerp(desaturated, colour, spill value): keyed-colour spill turns grey
            out[y, x, 0] = np.uint8(np.int32((de + (b - de) * sv) * np.float32(255.0) + half))
            out[y, x, 1] = np.uint8(np.int32((de + (g - de) * sv) * np.float32(255.0) + half))
            out[y, x, 2] = np.uint8(np.int32((de + (r - de) * sv) * np.float32(255.0) + half))


def chroma_key_numba(src: np.ndarray, coeffs: np.ndarray, out: np.ndarray, mask: np.ndarray) -> None:
    """Key ``src`` (BGR uint8): ``mask`` (H, W) float32 1 = keep, 0 = key colour; ``out`` the frame
    with the key colour's spill desaturated. ``coeffs`` from ``chroma_key_coeffs``."""
    check_frame(src, "src")
    check_same(src, out)
    if mask.shape != src.shape[:2] or mask.dtype != np.float32:
        raise ValueError(f"mask: expected float32 {src.shape[:2]}, got {mask.shape} {mask.dtype}")
    _chroma_key(src, coeffs, _CB, _CR, _LUMA, out, mask)


def chroma_key_ref(src: np.ndarray, coeffs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    f = src.astype(np.float32) * np.float32(1.0 / 255.0)
    b, g, r = f[..., 0], f[..., 1], f[..., 2]
    pcb = r * _CB[0] + g * _CB[1] + b * _CB[2] + _CB[3]
    pcr = r * _CR[0] + g * _CR[1] + b * _CR[2] + _CR[3]
    d = np.sqrt((pcb - coeffs[0]) * (pcb - coeffs[0]) + (pcr - coeffs[1]) * (pcr - coeffs[1]))
    base = d - coeffs[2]
    m = np.clip(base * coeffs[3], 0, 1).astype(np.float32)
    sv = np.clip(base * coeffs[4], 0, 1).astype(np.float32)
    sv = sv * np.sqrt(sv)
    de = r * _LUMA[0] + g * _LUMA[1] + b * _LUMA[2]
    out = np.stack([de + (c - de) * sv for c in (b, g, r)], axis=-1) * np.float32(255.0) + np.float32(0.5)
    return out.astype(np.uint8), m * np.sqrt(m)


def chroma_key_torch(src, coeffs):
    """torch version: src (H, W, 3) uint8 tensor -> (frame uint8, mask float32)."""
    import torch

    dev = src.device
    cb, cr, luma = (torch.from_numpy(a).to(dev) for a in (_CB, _CR, _LUMA))
    k = torch.as_tensor(coeffs).to(dev)
    f = src.float() * (1.0 / 255.0)
    b, g, r = f[..., 0], f[..., 1], f[..., 2]
    pcb = r * cb[0] + g * cb[1] + b * cb[2] + cb[3]
    pcr = r * cr[0] + g * cr[1] + b * cr[2] + cr[3]
    d = torch.sqrt((pcb - k[0]) * (pcb - k[0]) + (pcr - k[1]) * (pcr - k[1]))
    base = d - k[2]
    m = (base * k[3]).clamp(0, 1)
    sv = (base * k[4]).clamp(0, 1)
    sv = sv * torch.sqrt(sv)
    de = r * luma[0] + g * luma[1] + b * luma[2]
    out = torch.stack([de + (c - de) * sv for c in (b, g, r)], dim=-1) * 255.0 + 0.5
    return out.to(torch.uint8), m * torch.sqrt(m)


# ---- colour statistics (for colour matching) ---------------------------------------------------------

@nb.njit(**JIT)
def _masked_stats(src, mask, use_mask, step, acc):
    h, w = src.shape[0], src.shape[1]
    rows = (h + step - 1) // step
    for i in nb.prange(rows):
        y = i * step
        for k in range(7):
            acc[i, k] = 0.0
        for x in range(0, w, step):
            wt = np.float64(mask[y, x]) if use_mask else 1.0
            if wt <= 0.0:
                continue
            acc[i, 0] += wt
            for c in range(3):
                v = np.float64(src[y, x, c])
                acc[i, 1 + c] += wt * v
                acc[i, 4 + c] += wt * v * v


def stats_acc(h: int, step: int) -> np.ndarray:
    """Scratch for ``masked_stats_numba`` (allocate once per frame size)."""
    return np.zeros(((h + step - 1) // step, 7), np.float64)


def _finish_stats(tot: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    wsum = float(tot[0])
    if wsum <= 0.0:
        return np.zeros(3), np.ones(3), 0.0
    mean = tot[1:4] / wsum
    var = np.maximum(tot[4:7] / wsum - mean * mean, 0.0)
    return mean, np.sqrt(var), wsum


def masked_stats_numba(src: np.ndarray, mask: np.ndarray | None, step: int, acc: np.ndarray):
    """Per-channel (BGR) mean and standard deviation of ``src`` weighted by ``mask`` (float32 0..1,
    None = every pixel), on every ``step``-th row and column. -> (mean (3,), std (3,), weight sum)."""
    check_frame(src, "src")
    use = mask is not None
    if use and mask.shape != src.shape[:2]:
        raise ValueError(f"mask: expected {src.shape[:2]}, got {mask.shape}")
    _masked_stats(src, mask if use else np.zeros((1, 1), np.float32), use, step, acc)
    return _finish_stats(acc.sum(axis=0))


def masked_stats_ref(src, mask, step):
    s = src[::step, ::step].astype(np.float64)
    wt = np.ones(s.shape[:2]) if mask is None else mask[::step, ::step].astype(np.float64)
    wt = np.where(wt > 0, wt, 0.0)
    tot = np.concatenate([[wt.sum()], (s * wt[..., None]).sum((0, 1)), (s * s * wt[..., None]).sum((0, 1))])
    return _finish_stats(tot)


def masked_stats_torch(src, mask, step):
    import torch

    s = src[::step, ::step].double()
    wt = torch.ones(s.shape[:2], dtype=torch.float64, device=src.device) if mask is None else \
        mask[::step, ::step].double().clamp(min=0)
    tot = torch.cat([wt.sum()[None], (s * wt[..., None]).sum((0, 1)), (s * s * wt[..., None]).sum((0, 1))])
    return _finish_stats(tot.cpu().numpy())


def transfer_table(src_mean, src_std, ref_mean, ref_std, amount: float = 1.0, max_gain: float = 3.0) -> np.ndarray:
    """(3, 256) uint8 per-channel table moving the source statistics to the reference's
    (Reinhard-style mean/std transfer per BGR channel), blended with identity by ``amount``."""
    v = np.arange(256, dtype=np.float64)
    out = np.empty((3, 256), np.uint8)
    for c in range(3):
        gain = min(max(ref_std[c] / max(src_std[c], 1.0), 1.0 / max_gain), max_gain)
        mapped = (v - src_mean[c]) * gain + ref_mean[c]
        out[c] = np.clip(np.rint(v + amount * (mapped - v)), 0, 255).astype(np.uint8)
    return out


def warmup() -> None:
    src = np.zeros((2, 2, 3), np.uint8)
    tab, off = curve_matrix_table(1.0, np.eye(3), np.zeros(3))
    curve_matrix_numba(src, tab, off, np.empty_like(src))
    chroma_key_numba(src, chroma_key_coeffs((0, 255, 0), 0.4, 0.08, 0.1), np.empty_like(src),
                     np.empty((2, 2), np.float32))
    masked_stats_numba(src, np.ones((2, 2), np.float32), 1, stats_acc(2, 1))
    masked_stats_numba(src, None, 1, stats_acc(2, 1))
