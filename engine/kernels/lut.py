"""Lookup-table kernels: 3D LUTs (trilinear or tetrahedral interpolation) and per-channel 256-entry
tables (1D LUTs, colour matching).

A 3D LUT is prepared once (``prepare_3d``) into a flat float32 grid already in output units
(0..255, BGR) with the ``amount`` folded in: both interpolations reproduce a linear function
exactly, so ``amount * lut + (1 - amount) * identity`` on the grid equals blending the results.
Per-input-value index and fraction tables (256 entries per channel) carry DOMAIN_MIN/MAX, so the
kernel does no division. Frames are (H, W, 3) uint8 BGR.
"""

from __future__ import annotations

import numba as nb
import numpy as np

from . import JIT, check_frame, check_same


def _axis_tables(n: int, dmin: np.ndarray, dmax: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For each BGR channel and input value 0..255: lower grid index (int64, 0..n-2) and fraction."""
    v = np.arange(256, dtype=np.float64) / 255.0
    idx = np.empty((3, 256), np.int64)
    frac = np.empty((3, 256), np.float32)
    for c_bgr in range(3):
        c = 2 - c_bgr
        t = np.clip((v - dmin[c]) / (dmax[c] - dmin[c]), 0.0, 1.0) * (n - 1)
        i0 = np.minimum(np.floor(t), n - 2).astype(np.int64)
        idx[c_bgr] = i0
        frac[c_bgr] = (t - i0).astype(np.float32)
    return idx, frac


def prepare_3d(table: np.ndarray, domain_min, domain_max, amount: float = 1.0):
    """(N, N, N, 3) [b, g, r, rgb] table in 0..1 -> (grid, idx, frac): grid flat float32
    [b, g, r, bgr] in 0..255 with amount folded in; idx/frac from ``_axis_tables``."""
    n = table.shape[0]
    dmin = np.asarray(domain_min, np.float64)
    dmax = np.asarray(domain_max, np.float64)
    lut = table[..., ::-1].astype(np.float64)  # rgb -> bgr output channels
    if amount != 1.0:
        t = np.linspace(0.0, 1.0, n)
        ident = np.empty_like(lut)
        ident[..., 0] = (dmin[2] + t * (dmax[2] - dmin[2]))[:, None, None]  # blue axis is the first index
        ident[..., 1] = (dmin[1] + t * (dmax[1] - dmin[1]))[None, :, None]
        ident[..., 2] = (dmin[0] + t * (dmax[0] - dmin[0]))[None, None, :]
        lut = amount * lut + (1.0 - amount) * ident
    grid = np.ascontiguousarray((lut * 255.0).reshape(-1), np.float32)
    idx, frac = _axis_tables(n, dmin, dmax)
    return grid, idx, frac


# fastmath: lets LLVM fuse multiply-adds; results stay within 1 level of the numpy reference
JIT_FAST = dict(JIT, fastmath=True)


@nb.njit(inline="always")
def _cell(src, y, x, idx, frac, sr, sg, sb):
    # int64 indices: uint8 indexing makes numba emit slow conversions
    b = np.int64(src[y, x, 0])
    g = np.int64(src[y, x, 1])
    r = np.int64(src[y, x, 2])
    return frac[0, b], frac[1, g], frac[2, r], idx[0, b] * sb + idx[1, g] * sg + idx[2, r] * sr


@nb.njit(**JIT_FAST)
def _lut3d_tetra(src, grid, n, idx, frac, out):
    h, w = src.shape[0], src.shape[1]
    sr, sg, sb = 3, 3 * n, 3 * n * n  # strides of the flat grid [b, g, r, c]
    s_all = sr + sg + sb
    lo, hi = np.float32(0.0), np.float32(255.0)
    half = np.float32(0.5)
    one = np.float32(1.0)
    for y in nb.prange(h):
        for x in range(w):
            fb, fg, fr, base = _cell(src, y, x, idx, frac, sr, sg, sb)
            # branch-free tetrahedron choice (a 6-way branch mispredicts on camera noise: 1.4x slower):
            # the path runs from the cell's origin along the axis of the largest fraction, then the
            # middle one; its corners are origin, +axis(max), +all-axis(min), +all
            mx = max(fr, max(fg, fb))
            mn = min(fr, min(fg, fb))
            md = fr + fg + fb - mx - mn
            r_max = (fr >= fg) & (fr >= fb)
            g_max = (~r_max) & (fg >= fb)
            o1 = sr if r_max else (sg if g_max else sb)
            b_min = (fb <= fg) & (fb <= fr)
            g_min = (~b_min) & (fg <= fr)
            o2 = s_all - (sb if b_min else (sg if g_min else sr))
            w0, w1, w2 = one - mx, mx - md, md - mn
            p1, p2, p3 = base + o1, base + o2, base + s_all
            for c in range(3):
                v = w0 * grid[base + c] + w1 * grid[p1 + c] + w2 * grid[p2 + c] + mn * grid[p3 + c] + half
                out[y, x, c] = np.uint8(np.int32(min(max(v, lo), hi)))


@nb.njit(**JIT_FAST)
def _lut3d_trilinear(src, grid, n, idx, frac, out):
    h, w = src.shape[0], src.shape[1]
    sr, sg, sb = 3, 3 * n, 3 * n * n
    lo, hi = np.float32(0.0), np.float32(255.0)
    half = np.float32(0.5)
    for y in nb.prange(h):
        for x in range(w):
            fb, fg, fr, base = _cell(src, y, x, idx, frac, sr, sg, sb)
            for c in range(3):
                p = base + c
                c00 = grid[p] + fr * (grid[p + sr] - grid[p])
                c10 = grid[p + sg] + fr * (grid[p + sg + sr] - grid[p + sg])
                c01 = grid[p + sb] + fr * (grid[p + sb + sr] - grid[p + sb])
                c11 = grid[p + sb + sg] + fr * (grid[p + sb + sg + sr] - grid[p + sb + sg])
                c0 = c00 + fg * (c10 - c00)
                c1 = c01 + fg * (c11 - c01)
                v = c0 + fb * (c1 - c0) + half
                out[y, x, c] = np.uint8(np.int32(min(max(v, lo), hi)))


def lut3d_numba(src: np.ndarray, prepared: tuple, out: np.ndarray, method: str = "tetrahedral") -> np.ndarray:
    """Apply a prepared 3D LUT (``prepare_3d``) to a BGR uint8 frame, into ``out``."""
    check_frame(src, "src")
    check_same(src, out)
    grid, idx, frac = prepared
    n = round((grid.size // 3) ** (1.0 / 3.0))
    (_lut3d_tetra if method == "tetrahedral" else _lut3d_trilinear)(src, grid, n, idx, frac, out)
    return out


def _corners_ref(src, prepared):
    grid, idx, frac = prepared
    n = round((grid.size // 3) ** (1.0 / 3.0))
    s = src.astype(np.int64)
    fb, fg, fr = frac[0][s[..., 0]], frac[1][s[..., 1]], frac[2][s[..., 2]]
    base = idx[0][s[..., 0]] * 3 * n * n + idx[1][s[..., 1]] * 3 * n + idx[2][s[..., 2]] * 3
    return grid, n, fb[..., None], fg[..., None], fr[..., None], base[..., None] + np.arange(3)


def _interp_vectorised(grid, p, fb, fg, fr, method, where, zeros_like, one):
    """The kernels' maths on whole arrays, for numpy (reference) and torch alike: ``p`` holds each
    pixel's grid offsets (..., 3), f* the fractions (..., 1)."""
    n3 = grid.shape[0] // 3
    n = round(n3 ** (1.0 / 3.0))
    sr, sg, sb = 3, 3 * n, 3 * n * n
    if method == "tetrahedral":
        a, b_, c_, d_, e_ = fr > fg, fg > fb, fr > fb, fb > fg, fb > fr
        conds = [a & b_, a & ~b_ & c_, a & ~b_ & ~c_, ~a & d_, ~a & ~d_ & e_, ~a & ~d_ & ~e_]
        cases = [(sr, sr + sg, one - fr, fr - fg, fg - fb, fb), (sr, sr + sb, one - fr, fr - fb, fb - fg, fg),
                 (sb, sr + sb, one - fb, fb - fr, fr - fg, fg), (sb, sg + sb, one - fb, fb - fg, fg - fr, fr),
                 (sg, sg + sb, one - fg, fg - fb, fb - fr, fr), (sg, sr + sg, one - fg, fg - fr, fr - fb, fb)]
        v = zeros_like(p)
        o3 = sr + sg + sb
        for cond, (o1, o2, w0, w1, w2, w3) in zip(conds, cases, strict=True):
            vv = w0 * grid[p] + w1 * grid[p + o1] + w2 * grid[p + o2] + w3 * grid[p + o3]
            v = where(cond, vv, v)
        return v
    c00 = grid[p] + fr * (grid[p + sr] - grid[p])
    c10 = grid[p + sg] + fr * (grid[p + sg + sr] - grid[p + sg])
    c01 = grid[p + sb] + fr * (grid[p + sb + sr] - grid[p + sb])
    c11 = grid[p + sb + sg] + fr * (grid[p + sb + sg + sr] - grid[p + sb + sg])
    c0 = c00 + fg * (c10 - c00)
    c1 = c01 + fg * (c11 - c01)
    return c0 + fb * (c1 - c0)


def lut3d_ref(src: np.ndarray, prepared: tuple, method: str = "tetrahedral") -> np.ndarray:
    """numpy reference of ``lut3d_numba`` (same float32 maths, vectorised)."""
    grid, _, fb, fg, fr, p = _corners_ref(src, prepared)
    v = _interp_vectorised(grid, p, fb, fg, fr, method, np.where, lambda a: np.zeros(a.shape, np.float32),
                           np.float32(1.0))
    return np.clip(v + np.float32(0.5), 0, 255).astype(np.uint8)


def lut3d_torch(src, prepared_t: tuple, method: str = "tetrahedral"):
    """torch version: src (H, W, 3) uint8 tensor; prepared_t = the three prepare_3d arrays as tensors
    on src's device."""
    import torch

    grid, idx, frac = prepared_t
    n = round((grid.numel() // 3) ** (1.0 / 3.0))
    s = src.long()
    fb, fg, fr = (frac[i][s[..., i]].unsqueeze(-1) for i in range(3))
    p = (idx[0][s[..., 0]] * 3 * n * n + idx[1][s[..., 1]] * 3 * n + idx[2][s[..., 2]] * 3).unsqueeze(-1) + \
        torch.arange(3, device=src.device)
    one = torch.ones((), dtype=torch.float32, device=src.device)
    v = _interp_vectorised(grid, p, fb, fg, fr, method, torch.where,
                           lambda a: torch.zeros(a.shape, dtype=torch.float32, device=src.device), one)
    return (v + 0.5).clamp_(0, 255).to(torch.uint8)


# ---- baked 3D LUT: every 8-bit colour precomputed -------------------------------------------------
# A uint8 frame has only 2^24 colours. Running the interpolation once over all of them (about 0.1 s)
# gives a 48 MiB table; each pixel is then one lookup: the same bytes out, several times faster, since
# camera frames reuse nearby colours and so stay in cache.

BAKE_CHUNK = 16  # blue values per bake step: 16 * 65536 colours, 3 MiB of input at a time


def _bake_chunk_src(b0: int, nb_: int) -> np.ndarray:
    v = np.arange(nb_ << 16, dtype=np.uint32)
    src = np.empty((nb_ * 256, 256, 3), np.uint8)
    flat = src.reshape(-1, 3)
    flat[:, 0] = (v >> 16) + b0
    flat[:, 1] = (v >> 8) & 255
    flat[:, 2] = v & 255
    return src


def bake_3d(prepared: tuple, method: str = "tetrahedral", stop=None) -> np.ndarray | None:
    """All 2^24 BGR colours through ``lut3d_numba``: a flat uint8 table indexed by
    ``(b << 16 | g << 8 | r) * 3``. ``stop()`` returning True abandons the bake (returns None)."""
    baked = np.empty(3 << 24, np.uint8)
    view = baked.reshape(256 * 256, 256, 3)
    for b0 in range(0, 256, BAKE_CHUNK):
        if stop is not None and stop():
            return None
        src = _bake_chunk_src(b0, BAKE_CHUNK)
        lut3d_numba(src, prepared, view[b0 * 256:(b0 + BAKE_CHUNK) * 256], method)
    return baked


@nb.njit(**JIT)
def _lut_baked(src, baked, out):
    h, w = src.shape[0], src.shape[1]
    for y in nb.prange(h):
        for x in range(w):
            k = ((np.int64(src[y, x, 0]) << 16) | (np.int64(src[y, x, 1]) << 8) | np.int64(src[y, x, 2])) * 3
            out[y, x, 0] = baked[k]
            out[y, x, 1] = baked[k + 1]
            out[y, x, 2] = baked[k + 2]


def lut_baked_numba(src: np.ndarray, baked: np.ndarray, out: np.ndarray) -> np.ndarray:
    """Apply a baked 3D LUT (``bake_3d``) to a BGR uint8 frame, into ``out``."""
    check_frame(src, "src")
    check_same(src, out)
    if baked.shape != (3 << 24,) or baked.dtype != np.uint8:
        raise ValueError(f"baked: expected ({3 << 24},) uint8 from bake_3d, got {baked.shape} {baked.dtype}")
    _lut_baked(src, baked, out)
    return out


def lut_baked_ref(src: np.ndarray, baked: np.ndarray) -> np.ndarray:
    s = src.astype(np.int64)
    return baked.reshape(256, 256, 256, 3)[s[..., 0], s[..., 1], s[..., 2]]


def lut_baked_torch(src, baked):
    """torch version: src (H, W, 3) uint8 tensor, baked the flat table as a tensor on src's device."""
    s = src.long()
    return baked.view(256, 256, 256, 3)[s[..., 0], s[..., 1], s[..., 2]]


# ---- per-channel 256-entry tables ------------------------------------------------------------------

def prepare_1d(table: np.ndarray, domain_min, domain_max, amount: float = 1.0) -> np.ndarray:
    """(N, 3) RGB 1D LUT in 0..1 -> (3, 256) uint8 per-channel table in BGR order (amount folded in)."""
    n = table.shape[0]
    v = np.arange(256, dtype=np.float64) / 255.0
    out = np.empty((3, 256), np.uint8)
    for c_bgr in range(3):
        c = 2 - c_bgr
        t = np.clip((v - domain_min[c]) / (domain_max[c] - domain_min[c]), 0.0, 1.0) * (n - 1)
        mapped = np.interp(t, np.arange(n), table[:, c].astype(np.float64))
        res = amount * mapped + (1.0 - amount) * v
        out[c_bgr] = np.clip(np.rint(res * 255.0), 0, 255).astype(np.uint8)
    return out


@nb.njit(**JIT)
def _table8(src, table, out):
    h, w = src.shape[0], src.shape[1]
    for y in nb.prange(h):
        for x in range(w):
            for c in range(3):
                out[y, x, c] = table[c, np.int64(src[y, x, c])]


def table8_numba(src: np.ndarray, table: np.ndarray, out: np.ndarray) -> np.ndarray:
    """out[..., c] = table[c, src[..., c]] with a (3, 256) uint8 table (BGR order)."""
    check_frame(src, "src")
    check_same(src, out)
    if table.shape != (3, 256) or table.dtype != np.uint8:
        raise ValueError(f"table: expected (3, 256) uint8, got {table.shape} {table.dtype}")
    _table8(src, table, out)
    return out


def table8_ref(src: np.ndarray, table: np.ndarray) -> np.ndarray:
    return np.stack([table[c][src[..., c]] for c in range(3)], axis=-1)


def table8_torch(src, table):
    import torch

    s = src.long()
    return torch.stack([table[c][s[..., c]] for c in range(3)], dim=-1)


def warmup() -> None:
    from ..cube import identity_table

    f = np.zeros((2, 2, 3), np.uint8)
    prep = prepare_3d(identity_table(2), (0, 0, 0), (1, 1, 1))
    lut3d_numba(f, prep, np.empty_like(f), "tetrahedral")
    lut3d_numba(f, prep, np.empty_like(f), "trilinear")
    table8_numba(f, np.zeros((3, 256), np.uint8), np.empty_like(f))
    _lut_baked(f, np.zeros(3 << 24, np.uint8), np.empty_like(f))
