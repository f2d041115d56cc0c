"""Texture mapping through a triangle mesh, blended into a frame region with a soft mask.

A texture image ``tex`` (any size) carries a mesh: ``tex_pts`` (N, 2) vertex positions in texture
pixels; the same vertices sit at ``dst_pts`` (N, 2) in the frame, and ``tris`` (T, 3) int32 lists the
triangles **in drawing priority order** (the first triangle covering a pixel wins: sort nearest
first for a depth order). Inside the region ``(x0, y0, x1, y1)`` (x1, y1 exclusive) of the frame:

    owner = the first triangle containing the pixel centre (-1: none)
    out = src * (1 - a) + tex(bilinear at the mapped point) * a     where owner >= 0 and a > 0
    out = src                                                      elsewhere in the region

with ``a = alpha[y - y0, x - x0]`` ((y1 - y0, x1 - x0) float32 in [0, 1]). Pixels outside the region
are not touched; ``src`` may be ``out`` (in place). This is the one mesh rasteriser of the engine:
the face swap maps a small precomputed texture into a face region, and ``warp`` (reenactment) maps
an image into a same-size output with ``tex = src`` and alpha 1.

Per frame, ``mesh_affines`` (numpy, microseconds) gives every triangle's pixel -> barycentric map
and pixel -> texture map; ``_row_buckets`` lists the triangles touching each row (in order), and
``_map_rows`` (``prange`` over rows) finds each row's owners and samples and blends its pixels. The numpy reference and the torch version use the same float64 maths: the three agree to
within 1 grey level.
"""

from __future__ import annotations

import numba as nb
import numpy as np

from . import JIT, check_frame, clip_region


@nb.njit(inline="always", cache=True)
def bilinear_cell(sx, sy, w, h):
    """The bilinear cell of the float pixel position (sx, sy), clamped to a w x h image: the two
    columns, the two rows and the fractions (ix, jx, iy, jy, ax, ay). Inlined into the row kernel;
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


def bilinear_ref(img: np.ndarray, sx: np.ndarray, sy: np.ndarray) -> np.ndarray:
    """numpy reference: bilinear samples of ``img`` (H, W, C) at float pixel coordinates ``sx``, ``sy``
    (1-D, clamped to the image), as float64 (N, C)."""
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


def mesh_affines(tex_pts: np.ndarray, dst_pts: np.ndarray, tris: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per triangle: ``bary`` (T, 2, 3) with (l1, l2) = bary @ (x, y, 1) in frame pixels; ``tmap``
    (T, 2, 3) with (tex x, tex y) = tmap @ (x, y, 1); ``ok`` (T,) False for degenerate triangles."""
    dp = np.asarray(dst_pts, np.float64)[:, :2]
    sp = np.asarray(tex_pts, np.float64)[:, :2]
    tr = np.asarray(tris, np.int64)
    bary, ok = tri_affines(dp, tr)
    s0, s1, s2 = sp[tr[:, 0]], sp[tr[:, 1]], sp[tr[:, 2]]
    # tex = s0 + l1 (s1 - s0) + l2 (s2 - s0), with l1, l2 affine in (x, y)
    d1, d2 = s1 - s0, s2 - s0
    tmap = np.empty((len(tr), 2, 3), np.float64)
    for k in range(2):
        tmap[:, k, :] = d1[:, k, None] * bary[:, 0, :] + d2[:, k, None] * bary[:, 1, :]
        tmap[:, k, 2] += s0[:, k]
    return bary, tmap, ok


@nb.njit(cache=True, nogil=True)
def _row_buckets(dst_pts, tris, ok, y0, y1, x0, x1, starts, items):
    """CSR lists of triangles per row of [y0, y1): ``starts`` (rows + 1), ``items`` (capacity), each
    row's list in triangle order. Returns the number of items used, or -1 when ``items`` is too small."""
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


@nb.njit(inline="always", cache=True)
def _owner_row(r, bary, y0, x0, x1, starts, items, owner):
    """Row ``r`` of the owner map: the row walks its bucket in triangle order and a pixel keeps the
    first triangle that contains its centre."""
    fy = np.float64(y0 + r)
    for c in range(x1 - x0):
        owner[r, c] = -1
    for k in range(starts[r], starts[r + 1]):
        t = items[k]
        m00, m01, m02 = bary[t, 0, 0], bary[t, 0, 1], bary[t, 0, 2]
        m10, m11, m12 = bary[t, 1, 0], bary[t, 1, 1], bary[t, 1, 2]
        # exact x-span of this row inside the triangle (each barycentric is linear in x), widened by a
        # pixel; the per-pixel test below decides, so the result equals the bounding-box walk
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
        for x in range(xs, xe + 1):
            if owner[r, x - x0] >= 0:
                continue
            fx = np.float64(x)
            l1 = m00 * fx + m01 * fy + m02
            l2 = m10 * fx + m11 * fy + m12
            if l1 < -EPS or l2 < -EPS or 1.0 - l1 - l2 < -EPS:
                continue
            owner[r, x - x0] = t


@nb.njit(inline="always", cache=True)
def _blend_row(r, src, tex, owner, tmap, alpha, opaque, offset, has_offset, gain, has_gain, x0, y0, out):
    """Row ``r`` of the region: the texture sampled where a triangle owns the pixel, blended over
    ``src`` with ``alpha`` (``opaque``: alpha 1 everywhere, ``alpha`` not read); ``src`` elsewhere."""
    th, tw = tex.shape[0], tex.shape[1]
    y = y0 + r
    fy = np.float64(y)
    for c in range(owner.shape[1]):
        x = x0 + c
        t = owner[r, c]
        a = 1.0 if opaque else np.float64(alpha[r, c])
        if t < 0 or a <= 0.0:
            for k in range(3):
                out[y, x, k] = src[y, x, k]
            continue
        fx = np.float64(x)
        sx = tmap[t, 0, 0] * fx + tmap[t, 0, 1] * fy + tmap[t, 0, 2]
        sy = tmap[t, 1, 0] * fx + tmap[t, 1, 1] * fy + tmap[t, 1, 2]
        ix, jx, iy, jy, ax, ay = bilinear_cell(sx, sy, tw, th)
        if a > 1.0:
            a = 1.0
        for k in range(3):
            v = bilinear_at(tex, ix, jx, iy, jy, ax, ay, k)
            if has_gain:
                v *= np.float64(gain[r, c, k])
            if has_offset:
                v += np.float64(offset[r, c, k])
            if has_gain or has_offset:
                v = min(max(v, 0.0), 255.0)
            o = v if opaque else np.float64(src[y, x, k]) * (1.0 - a) + v * a
            out[y, x, k] = np.uint8(min(max(o + 0.5, 0.0), 255.0))


@nb.njit(**JIT)
def _map_rows(src, tex, bary, tmap, starts, items, alpha, opaque, offset, has_offset, gain, has_gain, x0, y0, x1,
              y1, owner, out):
    """Rows of the region in parallel: each row's owners, then its pixels (one pass, one thread wake-up)."""
    for r in nb.prange(y1 - y0):
        _owner_row(r, bary, y0, x0, x1, starts, items, owner)
        _blend_row(r, src, tex, owner, tmap, alpha, opaque, offset, has_offset, gain, has_gain, x0, y0, out)


class TexMap:
    """Reusable per-call state: the owner map and the row-bucket buffers, grown only when a region or
    a mesh is larger than any before (steady state allocates nothing)."""

    def __init__(self, capacity: int = 256 * 256):
        self._owner = np.empty(capacity, np.int32)
        self.owner = self._owner[:0].reshape(0, 0)
        self.starts = np.zeros(1025, np.int64)
        self.items = np.zeros(32768, np.int32)

    def owner_view(self, rh: int, rw: int) -> np.ndarray:
        if rh * rw > self._owner.size:
            self._owner = np.empty(int(rh * rw * 1.5), np.int32)
        self.owner = self._owner[: rh * rw].reshape(rh, rw)
        return self.owner

    def buckets(self, dst_pts: np.ndarray, tris: np.ndarray, ok: np.ndarray, x0: int, y0: int, x1: int,
                y1: int) -> np.ndarray:
        """Fills the row buckets of the region (``starts``, ``items``); returns its owner map buffer."""
        if self.starts.shape[0] < y1 - y0 + 1:
            self.starts = np.zeros(y1 - y0 + 1, np.int64)
        while _row_buckets(dst_pts, tris, ok, y0, y1, x0, x1, self.starts, self.items) < 0:
            self.items = np.zeros(self.items.shape[0] * 2, np.int32)
        return self.owner_view(y1 - y0, x1 - x0)


_NO_OFFSET = np.zeros((1, 1, 3), np.float32)
_ONE = np.ones((1, 1), np.float32)


def texmap_numba(src: np.ndarray, tex: np.ndarray, tex_pts: np.ndarray, dst_pts: np.ndarray, tris: np.ndarray,
                 alpha: np.ndarray | None, region, out: np.ndarray, state: TexMap | None = None,
                 offset: np.ndarray | None = None, gain: np.ndarray | None = None) -> np.ndarray:
    """Map ``tex`` through the mesh into ``out`` inside ``region``, blended over ``src`` with ``alpha``
    (shape of the region after clipping to the frame; None: opaque, alpha 1 everywhere). ``src`` may
    be ``out`` (not when it is also ``tex``). ``gain`` and ``offset``
    (region shape, 3) float32, when given, turn the texture colour v into v * gain + offset before
    the blend (clamped to 0..255): a low-frequency lighting correction."""
    check_frame(src, "src")
    check_frame(out, "out")
    check_frame(tex, "tex")
    if src.shape != out.shape:
        raise ValueError(f"src/out: shapes differ: {src.shape} vs {out.shape}")
    x0, y0, x1, y1 = clip_region(region, src.shape[:2])
    if x1 <= x0 or y1 <= y0:
        return out
    if alpha is not None and (alpha.shape != (y1 - y0, x1 - x0) or alpha.dtype != np.float32):
        raise ValueError(f"alpha: expected ({y1 - y0}, {x1 - x0}) float32, got {alpha.shape} {alpha.dtype}")
    state = state or TexMap()
    dp = np.ascontiguousarray(np.asarray(dst_pts)[:, :2], np.float64)
    tr = np.ascontiguousarray(tris, np.int32)
    bary, tmap, ok = mesh_affines(tex_pts, dp, tr)
    owner = state.buckets(dp, tr, ok, x0, y0, x1, y1)
    for name, f in (("offset", offset), ("gain", gain)):
        if f is not None and f.shape != (y1 - y0, x1 - x0, 3):
            raise ValueError(f"{name}: expected ({y1 - y0}, {x1 - x0}, 3), got {f.shape}")
    off = _NO_OFFSET if offset is None else np.asarray(offset, np.float32)
    gn = _NO_OFFSET if gain is None else np.asarray(gain, np.float32)
    opaque = alpha is None
    _map_rows(src, tex, bary, tmap, state.starts, state.items, _ONE if opaque else alpha, opaque, off,
              offset is not None, gn, gain is not None, x0, y0, x1, y1, owner, out)
    return out


def owner_ref(dst_pts, tris, region, shape) -> np.ndarray:
    """numpy reference of the owner map: triangle by triangle over its box, first triangle wins."""
    x0, y0, x1, y1 = clip_region(region, shape)
    dp = np.asarray(dst_pts, np.float64)[:, :2]
    tr = np.asarray(tris, np.int64)
    bary, _, ok = mesh_affines(dp, dp, tr)
    owner = np.full((y1 - y0, x1 - x0), -1, np.int32)
    for t in range(len(tr)):
        if not ok[t]:
            continue
        grid = tri_pixel_grid(dp[tr[t]], x0, y0, x1, y1)
        if grid is None:
            continue
        yy, xx = grid
        fx, fy = xx.astype(np.float64), yy.astype(np.float64)
        m = bary[t]
        l1 = m[0, 0] * fx + m[0, 1] * fy + m[0, 2]
        l2 = m[1, 0] * fx + m[1, 1] * fy + m[1, 2]
        inside = (l1 >= -EPS) & (l2 >= -EPS) & (1.0 - l1 - l2 >= -EPS)
        ya, xa = yy[0, 0], xx[0, 0]
        view = owner[ya - y0:ya - y0 + yy.shape[0], xa - x0:xa - x0 + xx.shape[1]]
        view[inside & (view < 0)] = t
    return owner


def texmap_ref(src, tex, tex_pts, dst_pts, tris, alpha, region, out, offset=None, gain=None) -> np.ndarray:
    """numpy reference of ``texmap_numba`` (same maths, float64)."""
    x0, y0, x1, y1 = clip_region(region, src.shape[:2])
    if x1 <= x0 or y1 <= y0:
        return out
    owner = owner_ref(dst_pts, tris, region, src.shape[:2])
    _, tmap, _ = mesh_affines(tex_pts, dst_pts, tris)
    s = src[y0:y1, x0:x1].astype(np.float64)
    res = s.copy()
    a = np.ones((y1 - y0, x1 - x0)) if alpha is None else np.minimum(alpha.astype(np.float64), 1.0)
    yy, xx = np.nonzero((owner >= 0) & (a > 0))
    t = owner[yy, xx]
    fx, fy = (xx + x0).astype(np.float64), (yy + y0).astype(np.float64)
    sx = tmap[t, 0, 0] * fx + tmap[t, 0, 1] * fy + tmap[t, 0, 2]
    sy = tmap[t, 1, 0] * fx + tmap[t, 1, 1] * fy + tmap[t, 1, 2]
    v = bilinear_ref(tex, sx, sy)
    if gain is not None:
        v = v * gain[yy, xx].astype(np.float64)
    if offset is not None:
        v = v + offset[yy, xx].astype(np.float64)
    if gain is not None or offset is not None:
        v = np.clip(v, 0.0, 255.0)
    aa = a[yy, xx][:, None]
    res[yy, xx] = s[yy, xx] * (1.0 - aa) + v * aa
    out[y0:y1, x0:x1] = np.where((owner >= 0)[..., None] & (a > 0)[..., None],
                                 np.clip(res + 0.5, 0.0, 255.0).astype(np.uint8), src[y0:y1, x0:x1])
    return out


def texmap_torch(src, tex, tex_pts, dst_pts, tris, alpha, region, out=None, chunk: int = 128, offset=None,
                 gain=None):
    """torch version (any device): ``src``/``out`` (H, W, 3) uint8 tensors, ``tex`` (th, tw, 3) uint8
    tensor, ``alpha`` region-sized float32 tensor; points and triangles as numpy. Triangles are
    rasterised in chunks; each pixel keeps its lowest covering triangle index (scatter_reduce amin),
    then one gather does the bilinear sample and the blend."""
    import torch

    dev = src.device
    h, w = src.shape[0], src.shape[1]
    x0, y0, x1, y1 = clip_region(region, (h, w))
    res = src.clone() if out is None else out
    if out is not None and out.data_ptr() != src.data_ptr():
        res[y0:y1, x0:x1] = src[y0:y1, x0:x1]
    if x1 <= x0 or y1 <= y0:
        return res
    dp = np.asarray(dst_pts, np.float64)[:, :2]
    tr = np.asarray(tris, np.int64)
    bary_np, tmap_np, ok = mesh_affines(tex_pts, dp, tr)
    rw = x1 - x0
    owner = owner_torch(dp, tr, bary_np, ok, (x0, y0, x1, y1), dev, chunk)
    big = torch.iinfo(torch.int64).max
    a_flat = (torch.ones((y1 - y0) * rw, dtype=torch.float64, device=dev) if alpha is None
              else alpha.reshape(-1).to(dev).double().clamp(max=1.0))
    pix = torch.nonzero((owner != big) & (a_flat > 0)).squeeze(1)
    if pix.numel() == 0:
        return res
    t = owner[pix]
    px = (pix % rw + x0).double()
    py = (pix // rw + y0).double()
    tm = torch.as_tensor(tmap_np, dtype=torch.float64, device=dev)[t]
    sx = tm[:, 0, 0] * px + tm[:, 0, 1] * py + tm[:, 0, 2]
    sy = tm[:, 1, 0] * px + tm[:, 1, 1] * py + tm[:, 1, 2]
    v = bilinear_torch(tex, sx, sy)
    if gain is not None:
        v = v * gain.to(dev).reshape(-1, 3)[pix].double()
    if offset is not None:
        v = v + offset.to(dev).reshape(-1, 3)[pix].double()
    if gain is not None or offset is not None:
        v = v.clamp(0.0, 255.0)
    oyi = pix // rw + y0
    oxi = pix % rw + x0
    a = a_flat[pix][:, None]
    o = src[oyi, oxi].double() * (1.0 - a) + v * a
    res[oyi, oxi] = (o + 0.5).clamp(0.0, 255.0).to(torch.uint8)
    return res


def warmup() -> None:
    src = np.zeros((8, 8, 3), np.uint8)
    pts = np.array([[0, 0], [7, 0], [0, 7], [7, 7]], np.float64)
    tris = np.array([[0, 1, 2], [1, 3, 2]], np.int32)
    texmap_numba(src, src, pts, pts, tris, np.ones((8, 8), np.float32), (0, 0, 8, 8), src.copy())
