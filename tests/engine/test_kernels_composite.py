"""Compositing kernels: exact values on synthetic frames; numba == numpy reference == torch."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from engine.kernels import composite as kc

# inputs are made read-only to catch kernels writing into them; torch warns when wrapping those
pytestmark = pytest.mark.filterwarnings("ignore:The given NumPy array is not writable")


def quadrant_mask(h=8, w=8, values=(0.0, 1.0, 0.5, 0.25)) -> np.ndarray:
    m = np.empty((h, w), np.float32)
    m[: h // 2, : w // 2], m[: h // 2, w // 2:], m[h // 2:, : w // 2], m[h // 2:, w // 2:] = values
    return m


def ro(*arrays):
    for a in arrays:
        a.flags.writeable = False
    return arrays


def test_alpha_over_exact_values_on_quadrants():
    fg = np.full((8, 8, 3), 200, np.uint8)
    bg = np.full((8, 8, 3), 100, np.uint8)
    m = quadrant_mask()
    ro(fg, bg, m)
    out = kc.alpha_over_numba(fg, bg, m, np.empty_like(fg))
    # a = round(m * 255): 0, 255, 128, 64; out = (200 a + 100 (255 - a) + 127) // 255
    assert (out[:4, :4] == 100).all()
    assert (out[:4, 4:] == 200).all()
    assert (out[4:, :4] == (200 * 128 + 100 * 127 + 127) // 255).all()  # 150
    assert (out[4:, 4:] == (200 * 64 + 100 * 191 + 127) // 255).all()  # 125


def test_alpha_over_opacity_and_uint8_mask():
    fg = np.full((4, 6, 3), 255, np.uint8)
    bg = np.zeros((4, 6, 3), np.uint8)
    out = kc.alpha_over_numba(fg, bg, np.ones((4, 6), np.float32), np.empty_like(fg), opacity=0.5)
    assert (out == 128).all()  # a = round(127.5) = 128 -> 128
    m8 = np.full((4, 6), 51, np.uint8)
    assert (kc.alpha_over_numba(fg, bg, m8, np.empty_like(fg)) == 51).all()


def test_div255_trick_is_exact_over_every_sum():
    v = np.arange(0, 255 * 255 + 128, dtype=np.int64)
    assert np.array_equal((v + 1 + (v >> 8)) >> 8, v // 255)


@pytest.mark.parametrize("shape", [(1, 1), (7, 13), (33, 50), (64, 96)])
def test_alpha_over_numba_numpy_torch_agree(shape):
    rng = np.random.default_rng(sum(shape))
    fg = rng.integers(0, 256, (*shape, 3), dtype=np.uint8)
    bg = rng.integers(0, 256, (*shape, 3), dtype=np.uint8)
    m = rng.random(shape, dtype=np.float32)
    ro(fg, bg, m)
    for opacity in (1.0, 0.37):
        nb_ = kc.alpha_over_numba(fg, bg, m, np.empty_like(fg), opacity)
        assert np.array_equal(nb_, kc.alpha_over_ref(fg, bg, m, opacity))
        t = kc.alpha_over_torch(torch.from_numpy(fg), torch.from_numpy(bg), torch.from_numpy(m), opacity).numpy()
        assert np.array_equal(nb_, t)
    m8 = (m * 255).astype(np.uint8)
    nb8 = kc.alpha_over_numba(fg, bg, m8, np.empty_like(fg))
    assert np.array_equal(nb8, kc.alpha_over_ref(fg, bg, m8))
    assert np.array_equal(nb8, kc.alpha_over_torch(torch.from_numpy(fg), torch.from_numpy(bg),
                                                   torch.from_numpy(m8)).numpy())
    # the benchmark's naive float expression computes the same picture (within rounding)
    naive = kc.alpha_over_naive(fg, bg, m).astype(int)
    assert np.abs(naive - kc.alpha_over_numba(fg, bg, m, np.empty_like(fg)).astype(int)).max() <= 1


def test_alpha_over_in_place_on_background():
    fg = np.full((4, 4, 3), 10, np.uint8)
    bg = np.full((4, 4, 3), 250, np.uint8)
    kc.alpha_over_numba(fg, bg, np.ones((4, 4), np.float32), bg)
    assert (bg == 10).all()


def test_alpha_over_rejects_wrong_mask_and_dtype():
    f = np.zeros((4, 4, 3), np.uint8)
    with pytest.raises(ValueError, match="mask"):
        kc.alpha_over_numba(f, f, np.zeros((3, 4), np.float32), np.empty_like(f))
    with pytest.raises(ValueError, match="float32 or uint8"):
        kc.alpha_over_numba(f, f, np.zeros((4, 4), np.float64), np.empty_like(f))


@pytest.mark.parametrize("xy", [(2, 3), (-3, -2), (10, 7), (-20, 0), (0, 0)])
def test_place_over_clips_and_matches_reference(xy):
    rng = np.random.default_rng(3)
    bg = rng.integers(0, 256, (12, 16, 3), dtype=np.uint8)
    fg = rng.integers(0, 256, (5, 8, 3), dtype=np.uint8)
    m = rng.random((5, 8), dtype=np.float32)
    ro(bg, fg, m)
    out = kc.place_over_numba(fg, m, bg, *xy, np.empty_like(bg), 0.8)
    assert np.array_equal(out, kc.place_over_ref(fg, m, bg, *xy, 0.8))
    t = kc.place_over_torch(torch.from_numpy(fg), torch.from_numpy(m), torch.from_numpy(bg), *xy, 0.8).numpy()
    assert np.array_equal(out, t)


def test_place_over_exact_region():
    bg = np.zeros((10, 10, 3), np.uint8)
    fg = np.full((3, 4, 3), 90, np.uint8)
    out = kc.place_over_numba(fg, np.ones((3, 4), np.float32), bg, 5, 6, np.empty_like(bg))
    expect = np.zeros_like(bg)
    expect[6:9, 5:9] = 90
    assert np.array_equal(out, expect)
    # fully outside: untouched copy
    assert np.array_equal(kc.place_over_numba(fg, np.ones((3, 4), np.float32), bg, 50, 50, np.empty_like(bg)), bg)


def test_upsample_tables_match_pixel_centres():
    i0, i1, w = kc.upsample_tables(2, 8)
    # output centres 0.5..7.5 map to source (x + 0.5) / 4 - 0.5 = -0.375, -0.125, 0.125, ...
    assert i0.tolist() == [0, 0, 0, 0, 0, 0, 1, 1]
    assert w.tolist() == [0, 0, 32, 96, 160, 224, 0, 0]


def test_blend_lowres_bg_exact_on_constant_background():
    frame = np.full((16, 24, 3), 220, np.uint8)
    lo = np.full((4, 6, 3), 40, np.uint8)
    m = np.zeros((16, 24), np.uint8)
    m[:, 12:] = 255
    tables = kc.blend_tables((4, 6), (16, 24))
    out = kc.blend_lowres_bg_numba(frame, m, lo, tables, np.empty_like(frame))
    assert (out[:, :12] == 40).all() and (out[:, 12:] == 220).all()


@pytest.mark.parametrize("lo_hw,hw", [((4, 6), (16, 24)), ((9, 16), (36, 64)), ((5, 7), (23, 31))])
def test_blend_lowres_bg_numba_numpy_torch_agree(lo_hw, hw):
    rng = np.random.default_rng(hw[0])
    frame = rng.integers(0, 256, (*hw, 3), dtype=np.uint8)
    lo = rng.integers(0, 256, (*lo_hw, 3), dtype=np.uint8)
    m = rng.integers(0, 256, hw, dtype=np.uint8)
    ro(frame, lo, m)
    tables = kc.blend_tables(lo_hw, hw)
    out = kc.blend_lowres_bg_numba(frame, m, lo, tables, np.empty_like(frame))
    assert np.array_equal(out, kc.blend_lowres_bg_ref(frame, m, lo, tables))
    t = kc.blend_lowres_bg_torch(torch.from_numpy(frame), torch.from_numpy(m), lo, tables).numpy()
    assert np.array_equal(out, t)
    # the up-sampled background is a proper bilinear resize (within 1 of OpenCV's)
    import cv2

    up = kc.upsample_ref(lo, tables)
    assert np.abs(up.astype(int) - cv2.resize(lo, hw[::-1], interpolation=cv2.INTER_LINEAR)).max() <= 1


def test_kernel_py_func_matches_on_tiny_input():
    rng = np.random.default_rng(1)
    fg = rng.integers(0, 256, (3, 4, 3), dtype=np.uint8)
    bg = rng.integers(0, 256, (3, 4, 3), dtype=np.uint8)
    m = rng.random((3, 4), dtype=np.float32)
    a, b = np.empty_like(fg), np.empty_like(fg)
    kc._alpha_over(fg, bg, m, np.float32(255.0), kc.row_scratch(4), a)
    kc._alpha_over.py_func(fg, bg, m, np.float32(255.0), kc.row_scratch(4), b)
    assert np.array_equal(a, b)
