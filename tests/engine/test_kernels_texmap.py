"""texmap kernel: numba == numpy reference == torch (CPU), on synthetic meshes with exact expectations."""

from __future__ import annotations

import numpy as np
import pytest

from engine.kernels import texmap as k


def _grid_mesh(n: int, size: float, jitter: float, rng) -> tuple[np.ndarray, np.ndarray]:
    g = np.linspace(0, size, n)
    xx, yy = np.meshgrid(g, g)
    pts = np.stack([xx.ravel(), yy.ravel()], 1)
    inner = (xx.ravel() > 0) & (xx.ravel() < size) & (yy.ravel() > 0) & (yy.ravel() < size)
    pts[inner] += rng.uniform(-jitter, jitter, (inner.sum(), 2))
    tris = []
    for r in range(n - 1):
        for c in range(n - 1):
            a, b, d, e = r * n + c, r * n + c + 1, (r + 1) * n + c, (r + 1) * n + c + 1
            tris += [(a, b, d), (b, e, d)]
    return pts, np.array(tris, np.int32)


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_numba_reference_torch_agree(seed):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(seed)
    tex = rng.integers(0, 256, (70, 90, 3), dtype=np.uint8)
    tex_pts, tris = _grid_mesh(6, 60.0, 4.0, rng)
    dst_pts = tex_pts * rng.uniform(0.8, 1.6) + rng.uniform(-10, 40, 2)  # partly outside the frame too
    dst_pts += rng.uniform(-2, 2, dst_pts.shape)
    order = rng.permutation(len(tris))  # arbitrary drawing order (first wins)
    tris = tris[order]
    src = rng.integers(0, 256, (80, 100, 3), dtype=np.uint8)
    region = (5, 3, 97, 78)
    alpha = rng.uniform(-0.2, 1.2, (75, 92)).astype(np.float32)
    offset = rng.uniform(-60, 60, (75, 92, 3)).astype(np.float32) if seed in (1, 3) else None
    gain = rng.uniform(0.3, 3.0, (75, 92, 3)).astype(np.float32) if seed >= 2 else None  # v * gain + offset
    out_nb = np.full_like(src, 7)
    k.texmap_numba(src, tex, tex_pts, dst_pts, tris, alpha, region, out_nb, offset=offset, gain=gain)
    out_ref = np.full_like(src, 7)
    k.texmap_ref(src, tex, tex_pts, dst_pts, tris, alpha, region, out_ref, offset=offset, gain=gain)
    out_t = torch.full(src.shape, 7, dtype=torch.uint8)
    k.texmap_torch(torch.from_numpy(src), torch.from_numpy(tex), tex_pts, dst_pts, tris, torch.from_numpy(alpha),
                   region, out_t, offset=None if offset is None else torch.from_numpy(offset),
                   gain=None if gain is None else torch.from_numpy(gain))
    assert np.abs(out_nb.astype(int) - out_ref).max() <= 1
    assert np.abs(out_nb.astype(int) - out_t.numpy()).max() <= 1
    # outside the region: untouched
    assert (out_nb[:3] == 7).all() and (out_nb[:, 97:] == 7).all()
    # owner maps agree exactly
    st = k.TexMap()
    k.texmap_numba(src, tex, tex_pts, dst_pts, tris, alpha, region, out_nb, st, offset=offset)
    assert np.array_equal(st.owner, k.owner_ref(dst_pts, tris, region, src.shape[:2]))


def test_identity_mapping_copies_texture_and_alpha_zero_keeps_source():
    rng = np.random.default_rng(5)
    tex = rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)
    pts = np.array([[0, 0], [39, 0], [0, 39], [39, 39]], np.float64)
    tris = np.array([[0, 1, 2], [1, 3, 2]], np.int32)
    src = np.zeros((40, 40, 3), np.uint8)
    out = np.empty_like(src)
    k.texmap_numba(src, tex, pts, pts, tris, np.ones((40, 40), np.float32), (0, 0, 40, 40), out)
    assert np.array_equal(out, tex)  # integer positions: bilinear returns the texel itself
    half = np.full((40, 40), 0.5, np.float32)
    k.texmap_numba(src, tex, pts, pts, tris, half, (0, 0, 40, 40), out)
    assert np.abs(out.astype(int) - (tex.astype(int) + 1) // 2).max() <= 1
    k.texmap_numba(src, tex, pts, pts, tris, np.zeros((40, 40), np.float32), (0, 0, 40, 40), out)
    assert not out.any()


def test_first_triangle_wins_and_uncovered_pixels_keep_source():
    tex = np.zeros((10, 10, 3), np.uint8)
    tex[:, :5] = 100
    tex[:, 5:] = 200
    # two triangles on the same place in the frame, sampling different halves of the texture
    dst = np.array([[2, 2], [12, 2], [2, 12]], np.float64)
    tp_a = np.array([[0, 0], [4, 0], [0, 4]], np.float64)
    tp_b = np.array([[5, 5], [9, 5], [5, 9]], np.float64)
    tex_pts = np.vstack([tp_a, tp_b])
    dst_pts = np.vstack([dst, dst])
    src = np.full((16, 16, 3), 9, np.uint8)
    alpha = np.ones((16, 16), np.float32)
    for tris, want in (([[0, 1, 2], [3, 4, 5]], 100), ([[3, 4, 5], [0, 1, 2]], 200)):
        out = np.empty_like(src)
        k.texmap_numba(src, tex, tex_pts, dst_pts, np.array(tris, np.int32), alpha, (0, 0, 16, 16), out)
        assert out[4, 4, 0] == want
        assert out[14, 14, 0] == 9 and out[0, 0, 0] == 9  # no triangle there


def test_in_place_and_bad_alpha_shape():
    rng = np.random.default_rng(1)
    tex = rng.integers(0, 256, (20, 20, 3), dtype=np.uint8)
    pts = np.array([[0, 0], [19, 0], [0, 19], [19, 19]], np.float64)
    tris = np.array([[0, 1, 2], [1, 3, 2]], np.int32)
    src = rng.integers(0, 256, (30, 30, 3), dtype=np.uint8)
    a = np.full((20, 20), 0.3, np.float32)
    expect = k.texmap_numba(src, tex, pts, pts + 5, tris, a, (5, 5, 25, 25), np.empty_like(src))
    inplace = src.copy()
    k.texmap_numba(inplace, tex, pts, pts + 5, tris, a, (5, 5, 25, 25), inplace)
    assert np.array_equal(inplace[5:25, 5:25], expect[5:25, 5:25])
    with pytest.raises(ValueError):
        k.texmap_numba(src, tex, pts, pts, tris, np.ones((3, 3), np.float32), (0, 0, 20, 20), src.copy())


def test_offset_shifts_the_texture_colour():
    tex = np.full((20, 20, 3), 100, np.uint8)
    pts = np.array([[0, 0], [19, 0], [0, 19], [19, 19]], np.float64)
    tris = np.array([[0, 1, 2], [1, 3, 2]], np.int32)
    src = np.zeros((20, 20, 3), np.uint8)
    off = np.zeros((20, 20, 3), np.float32)
    off[..., 0] = 30.0
    off[..., 2] = 200.0  # clamps at 255
    out = k.texmap_numba(src, tex, pts, pts, tris, np.ones((20, 20), np.float32), (0, 0, 20, 20), src.copy(),
                         offset=off)
    assert (out[..., 0] == 130).all() and (out[..., 1] == 100).all() and (out[..., 2] == 255).all()
