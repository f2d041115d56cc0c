"""Compositing kernels: alpha-over (foreground onto background through a mask), placed alpha-over
(a smaller foreground at an offset), and the background node's fused "blend with an up-sampled
low-resolution background" kernel.

Maths is uint8 fixed point and exact, so the numba, numpy and torch versions agree bit for bit:

    a   = clamp(round(mask * opacity * 255), 0, 255)            (float masks)
    out = (fg * a + bg * (255 - a) + 127) // 255                 (per channel)

``(v + 1 + (v >> 8)) >> 8`` equals ``v // 255`` for every ``v`` below 65535 (the largest sum here is
65152), which the kernels use instead of a division. Frames are (H, W, 3) uint8, masks (H, W)
float32 in [0, 1] or (H, W) uint8 in 0..255.
"""

from __future__ import annotations

import cv2
import numba as nb
import numpy as np

from . import JIT, check_frame, check_same


@nb.njit(inline="always")
def _div255(v):
    return (v + 1 + (v >> 8)) >> 8


ROWS = 8  # rows per parallel work item


def row_scratch(width: int) -> np.ndarray:
    """Per-worker-thread row scratch for the alpha-over kernels: (threads, 3 * width) int32. A node
    allocates it once in open() and passes it on every call (no allocation per frame); two kernels
    running at the same time need two scratches."""
    return np.empty((nb.config.NUMBA_NUM_THREADS, 3 * width), np.int32)


def _check_scratch(scratch, width):
    if scratch is None:
        return row_scratch(width)
    if scratch.shape != (nb.config.NUMBA_NUM_THREADS, 3 * width) or scratch.dtype != np.int32:
        raise ValueError(f"scratch: expected row_scratch({width}), got {scratch.shape} {scratch.dtype}")
    return scratch


@nb.njit(inline="always")
def _expand_alpha(mask_row, scale, a3):
    # one alpha per byte of the row: a = clamp(round(m * scale)); float32 masks pass 255 * opacity,
    # uint8 masks pass 1 (m * 1 + 0.5 truncates back to m)
    for x in range(mask_row.shape[0]):
        a = min(max(np.int32(mask_row[x] * scale + np.float32(0.5)), 0), 255)
        a3[3 * x] = a
        a3[3 * x + 1] = a
        a3[3 * x + 2] = a


@nb.njit(**JIT)
def _alpha_over(fg, bg, mask, scale, scratch, out):
    h, w = out.shape[0], out.shape[1]
    n = 3 * w
    for blk in nb.prange((h + ROWS - 1) // ROWS):
        a3 = scratch[nb.get_thread_id()]  # this worker thread's row of alpha per byte
        for y in range(blk * ROWS, min(h, blk * ROWS + ROWS)):
            _expand_alpha(mask[y], scale, a3)
            fr = fg[y].reshape(n)
            br = bg[y].reshape(n)
            orow = out[y].reshape(n)
            # flat over the row's 3*W bytes with alpha expanded per byte: LLVM vectorises this
            # loop; a loop over pixels with an inner 3-channel loop (stride 3) stays scalar (6x slower)
            for i in range(n):
                a = a3[i]
                v = np.int32(fr[i]) * a + np.int32(br[i]) * (255 - a) + 127
                orow[i] = np.uint8((v + 1 + (v >> 8)) >> 8)


def _alpha8_ref(mask: np.ndarray, opacity: float = 1.0) -> np.ndarray:
    if mask.dtype == np.uint8:
        return mask.astype(np.int32)
    scale = np.float32(255.0 * opacity)
    return np.clip((mask.astype(np.float32) * scale + np.float32(0.5)).astype(np.int32), 0, 255)


def alpha_over_numba(fg: np.ndarray, bg: np.ndarray, mask: np.ndarray, out: np.ndarray,
                     opacity: float = 1.0, scratch: np.ndarray | None = None) -> np.ndarray:
    """out = fg over bg through mask (float32 0..1 scaled by opacity, or uint8 0..255; opacity is
    ignored for uint8 masks: fold it into the mask). ``out`` may be ``bg`` (in place). ``scratch``:
    ``row_scratch(W)``, owned by the caller (allocated here when None)."""
    check_frame(fg, "fg")
    check_same(fg, bg, "fg/bg")
    check_same(fg, out, "fg/out")
    if mask.shape != fg.shape[:2] or not mask.flags.c_contiguous:
        raise ValueError(f"mask: expected C-contiguous {fg.shape[:2]}, got {mask.shape}")
    if mask.dtype == np.uint8:
        _alpha_over(fg, bg, mask, np.float32(1.0), _check_scratch(scratch, fg.shape[1]), out)
    elif mask.dtype == np.float32:
        _alpha_over(fg, bg, mask, np.float32(255.0 * opacity), _check_scratch(scratch, fg.shape[1]), out)
    else:
        raise ValueError(f"mask: expected float32 or uint8, got {mask.dtype}")
    return out


def alpha_over_ref(fg: np.ndarray, bg: np.ndarray, mask: np.ndarray, opacity: float = 1.0) -> np.ndarray:
    """numpy reference of ``alpha_over_numba`` (same integer maths)."""
    a = _alpha8_ref(mask, opacity)[..., None]
    v = fg.astype(np.int32) * a + bg.astype(np.int32) * (255 - a) + 127
    return (v // 255).astype(np.uint8)


def alpha_over_naive(fg: np.ndarray, bg: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """The straightforward float numpy expression (benchmark baseline; rounds like the kernel)."""
    m = mask[..., None]
    return (fg * m + bg * (1.0 - m) + 0.5).astype(np.uint8)


def alpha_over_torch(fg, bg, mask, opacity: float = 1.0, out=None):
    """torch version (any device): fg, bg (H, W, 3) uint8 tensors; mask (H, W) float32 or uint8."""
    import torch

    if mask.dtype == torch.uint8:
        a = mask.to(torch.int32)
    else:
        a = (mask.float() * torch.tensor(255.0 * opacity, dtype=torch.float32) + 0.5).to(torch.int32).clamp_(0, 255)
    a = a.unsqueeze(-1)
    v = fg.to(torch.int32) * a + bg.to(torch.int32) * (255 - a) + 127
    res = torch.div(v, 255, rounding_mode="floor").to(torch.uint8)
    if out is None:
        return res
    out.copy_(res)
    return out


# ---- placed alpha-over: a foreground smaller than the background, at an offset ----------------------

@nb.njit(**JIT)
def _place_over(fg, mask, bg, scale, fy0, fx0, dy0, dx0, ph, pw, copy_bg, out):
    h = out.shape[0]
    for y in nb.prange(h):
        if copy_bg:
            out[y, :, :] = bg[y, :, :]
        fy = y - dy0
        if fy < 0 or fy >= ph:
            continue
        sy = fy + fy0
        for i in range(pw):
            sx = i + fx0
            dx = i + dx0
            a = np.int32(mask[sy, sx] * scale + np.float32(0.5))
            a = min(max(a, 0), 255)
            ia = 255 - a
            for c in range(3):
                v = np.int32(fg[sy, sx, c]) * a + np.int32(bg[y, dx, c]) * ia + 127
                out[y, dx, c] = np.uint8(_div255(v))


def placement(fg_hw: tuple[int, int], bg_hw: tuple[int, int], x: int, y: int):
    """Clip a foreground of size fg_hw placed with its top-left at pixel (x, y) of the background:
    (fy0, fx0, dy0, dx0, ph, pw) = source offset, destination offset, visible size (0 if none)."""
    fh, fw = fg_hw
    bh, bw = bg_hw
    dy0, dx0 = max(y, 0), max(x, 0)
    fy0, fx0 = dy0 - y, dx0 - x
    ph = max(0, min(fh - fy0, bh - dy0))
    pw = max(0, min(fw - fx0, bw - dx0))
    return fy0, fx0, dy0, dx0, ph, pw


def place_over_numba(fg: np.ndarray, mask: np.ndarray, bg: np.ndarray, x: int, y: int, out: np.ndarray,
                     opacity: float = 1.0) -> np.ndarray:
    """out = bg with fg (through its float32 mask times opacity) over it, fg's top-left at pixel (x, y);
    parts outside the background are clipped. ``out`` may be ``bg`` (then only the region is written)."""
    check_frame(fg, "fg")
    check_frame(bg, "bg")
    check_same(bg, out, "bg/out")
    if mask.shape != fg.shape[:2] or mask.dtype != np.float32 or not mask.flags.c_contiguous:
        raise ValueError(f"mask: expected C-contiguous float32 {fg.shape[:2]}, got {mask.shape} {mask.dtype}")
    fy0, fx0, dy0, dx0, ph, pw = placement(fg.shape[:2], bg.shape[:2], x, y)
    _place_over(fg, mask, bg, np.float32(255.0 * opacity), fy0, fx0, dy0, dx0, ph, pw, out is not bg, out)
    return out


def place_over_ref(fg, mask, bg, x, y, opacity=1.0):
    out = bg.copy()
    fy0, fx0, dy0, dx0, ph, pw = placement(fg.shape[:2], bg.shape[:2], x, y)
    if ph and pw:
        region = out[dy0:dy0 + ph, dx0:dx0 + pw]
        region[...] = alpha_over_ref(fg[fy0:fy0 + ph, fx0:fx0 + pw], region, mask[fy0:fy0 + ph, fx0:fx0 + pw],
                                     opacity)
    return out


def place_over_torch(fg, mask, bg, x, y, opacity=1.0):
    out = bg.clone()
    fy0, fx0, dy0, dx0, ph, pw = placement(tuple(fg.shape[:2]), tuple(bg.shape[:2]), x, y)
    if ph and pw:
        region = out[dy0:dy0 + ph, dx0:dx0 + pw]
        region.copy_(alpha_over_torch(fg[fy0:fy0 + ph, fx0:fx0 + pw], region, mask[fy0:fy0 + ph, fx0:fx0 + pw],
                                      opacity))
    return out


# ---- fused: blend the frame over a low-resolution background, up-sampled bilinearly on the fly -----

def upsample_tables(src_len: int, dst_len: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Bilinear sampling tables (pixel-centre aligned, as cv2.resize INTER_LINEAR): for each output
    index, the two source indices (int64) and the 8-bit weight of the second (0..256, int32)."""
    pos = (np.arange(dst_len, dtype=np.float64) + 0.5) * (src_len / dst_len) - 0.5
    pos = np.clip(pos, 0.0, src_len - 1.0)
    i0 = np.floor(pos).astype(np.int64)
    i1 = np.minimum(i0 + 1, src_len - 1)
    wgt = np.rint((pos - i0) * 256.0).astype(np.int32)
    return i0, i1, wgt


@nb.njit(**JIT)
def _blend_rows_bg(frame, mask, hup, y0t, y1t, wyt, scratch, out):
    h, w = out.shape[0], out.shape[1]
    n = 3 * w
    for blk in nb.prange((h + ROWS - 1) // ROWS):
        a3 = scratch[nb.get_thread_id()]  # this worker thread's row of alpha per byte
        for y in range(blk * ROWS, min(h, blk * ROWS + ROWS)):
            _expand_alpha(mask[y], np.float32(1.0), a3)
            top = hup[y0t[y]].reshape(n)
            bot = hup[y1t[y]].reshape(n)
            wy = wyt[y]
            fr = frame[y].reshape(n)
            orow = out[y].reshape(n)
            for i in range(n):
                b = (np.int32(top[i]) * (256 - wy) + np.int32(bot[i]) * wy + 128) >> 8
                a = a3[i]
                v = np.int32(fr[i]) * a + b * (255 - a) + 127
                orow[i] = np.uint8((v + 1 + (v >> 8)) >> 8)


def blend_tables(lo_hw: tuple[int, int], hw: tuple[int, int]) -> tuple:
    """Buffers and tables for ``blend_lowres_bg_*`` from a low-res (h, w) background to a frame
    (H, W): the column-resized low-res rows (h, W, 3) uint8, the row tables of ``upsample_tables``
    and the kernel's ``row_scratch``. Owned by one caller (a node allocates them in open())."""
    y0, y1, wy = upsample_tables(lo_hw[0], hw[0])
    return np.zeros((lo_hw[0], hw[1], 3), np.uint8), y0, y1, wy, row_scratch(hw[1])


def _columns(bg_lo: np.ndarray, hup: np.ndarray) -> np.ndarray:
    # widening the few low-res rows is cheap glue: OpenCV's SIMD resize (columns only)
    return cv2.resize(bg_lo, (hup.shape[1], hup.shape[0]), dst=hup, interpolation=cv2.INTER_LINEAR)


def blend_lowres_bg_numba(frame: np.ndarray, mask: np.ndarray, bg_lo: np.ndarray, tables: tuple,
                          out: np.ndarray) -> np.ndarray:
    """out = frame over (bg_lo up-sampled bilinearly to the frame size) through the uint8 mask.
    Separable: the low-res rows are widened to W first (``tables[0]``, OpenCV), then the kernel
    interpolates between rows at full resolution fused with the blend, so the full-size background
    is never written. ``tables`` = blend_tables((h_lo, w_lo), (H, W))."""
    check_frame(frame, "frame")
    check_same(frame, out, "frame/out")
    check_frame(bg_lo, "bg_lo")
    if mask.shape != frame.shape[:2] or mask.dtype != np.uint8:
        raise ValueError(f"mask: expected uint8 {frame.shape[:2]}, got {mask.shape} {mask.dtype}")
    hup, y0, y1, wy, scratch = tables
    if hup.shape != (bg_lo.shape[0], frame.shape[1], 3) or len(y0) != frame.shape[0]:
        raise ValueError(f"tables are for another size: {hup.shape}, bg_lo {bg_lo.shape}, frame {frame.shape}")
    _blend_rows_bg(frame, mask, _columns(bg_lo, hup), y0, y1, wy, _check_scratch(scratch, frame.shape[1]), out)
    return out


def upsample_ref(bg_lo: np.ndarray, tables: tuple) -> np.ndarray:
    """numpy reference of the up-sampling: OpenCV widens the rows, then rows are interpolated with the
    kernel's 8-bit weights."""
    hup, y0, y1, wy, _ = tables
    v = _columns(bg_lo, hup.copy()).astype(np.int32)
    wy_ = wy[:, None, None]
    return ((v[y0] * (256 - wy_) + v[y1] * wy_ + 128) >> 8).astype(np.uint8)


def blend_lowres_bg_ref(frame, mask, bg_lo, tables):
    return alpha_over_ref(frame, upsample_ref(bg_lo, tables), mask)


def blend_lowres_bg_torch(frame, mask, bg_lo, tables):
    """torch version: frame/mask tensors on any device; bg_lo a small numpy array (its rows are
    widened on the host, as the numba path does)."""
    import torch

    dev = frame.device
    hup, y0, y1, wy, _ = tables
    v = torch.from_numpy(_columns(bg_lo, hup.copy())).to(dev).to(torch.int32)
    y0, y1, wy = (torch.as_tensor(t).to(dev) for t in (y0, y1, wy))
    wy_ = wy[:, None, None]
    up = ((v[y0] * (256 - wy_) + v[y1] * wy_ + 128) >> 8).to(torch.uint8)
    return alpha_over_torch(frame, up, mask)


def warmup() -> None:
    f = np.zeros((4, 4, 3), np.uint8)
    m = np.zeros((4, 4), np.float32)
    alpha_over_numba(f, f, m, np.empty_like(f))
    alpha_over_numba(f, f, np.zeros((4, 4), np.uint8), np.empty_like(f))
    place_over_numba(f[:2, :2].copy(), m[:2, :2].copy(), f, 1, 1, np.empty_like(f))
    place_over_numba(f[:2, :2].copy(), m[:2, :2].copy(), f, 1, 1, f)
    lo = np.zeros((2, 2, 3), np.uint8)
    tables = blend_tables((2, 2), (4, 4))
    blend_lowres_bg_numba(f, np.zeros((4, 4), np.uint8), lo, tables, np.empty_like(f))
