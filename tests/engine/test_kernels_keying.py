"""Chroma key and colour-statistics kernels: exact values on synthetic frames, numba == numpy == torch."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from engine.kernels import color as ck
from engine.kernels import lut as lk

GREEN_BGR = (64, 200, 40)


def key_frame() -> np.ndarray:
    f = np.zeros((8, 8, 3), np.uint8)
    f[:, :4] = GREEN_BGR  # screen
    f[:4, 4:] = (30, 40, 220)  # red shirt
    f[4:, 4:] = (90, 110, 100)  # greyish with a little green
    return f


def test_chroma_key_exact_masks_and_untouched_far_colours():
    f = key_frame()
    co = ck.chroma_key_coeffs(GREEN_BGR[::-1], 0.1, 0.05, 0.1)
    out, m = np.empty_like(f), np.empty(f.shape[:2], np.float32)
    ck.chroma_key_numba(f, co, out, m)
    assert (m[:, :4] == 0).all()  # the key colour itself
    assert (m[:4, 4:] == 1).all()  # far away: kept
    assert np.array_equal(out[:4, 4:], f[:4, 4:])  # and its colour untouched (spill value 1)
    # the keyed colour turns grey (its luma) by spill suppression
    assert np.ptp(out[0, 0].astype(int)) == 0


def test_chroma_key_smoothness_ramp():
    # distance d from the key in CbCr; mask = clamp((d - sim) / smooth) ** 1.5
    co = ck.chroma_key_coeffs(GREEN_BGR[::-1], 0.0, 1.0, 1.0)
    f = np.array([[[30, 40, 220]]], np.uint8)
    out, m = np.empty_like(f), np.empty((1, 1), np.float32)
    ck.chroma_key_numba(f, co, out, m)
    kcb, kcr = ck.key_chroma(GREEN_BGR[::-1])
    pcb, pcr = ck.key_chroma((220, 40, 30))
    d = np.hypot(pcb - kcb, pcr - kcr)
    assert m[0, 0] == pytest.approx(min(d, 1.0) ** 1.5, abs=1e-5)


@pytest.mark.parametrize("params", [(0.4, 0.08, 0.1), (0.06, 0.04, 0.3), (0.0, 0.5, 0.001)])
def test_chroma_key_numba_numpy_torch_agree(params):
    rng = np.random.default_rng(0)
    f = rng.integers(0, 256, (30, 41, 3), dtype=np.uint8)
    co = ck.chroma_key_coeffs((0, 255, 0), *params)
    out, m = np.empty_like(f), np.empty(f.shape[:2], np.float32)
    ck.chroma_key_numba(f, co, out, m)
    ro, rm = ck.chroma_key_ref(f, co)
    assert np.abs(out.astype(int) - ro).max() <= 1 and np.abs(m - rm).max() < 1e-5
    to, tm = ck.chroma_key_torch(torch.from_numpy(f), co)
    assert np.abs(out.astype(int) - to.numpy()).max() <= 1 and np.abs(m - tm.numpy()).max() < 1e-5


def test_masked_stats_exact():
    f = np.zeros((8, 8, 3), np.uint8)
    f[:, :4] = (10, 20, 30)
    f[:, 4:] = (110, 120, 130)
    mask = np.zeros((8, 8), np.float32)
    mask[:, :4] = 1.0
    acc = ck.stats_acc(8, 1)
    mean, std, w = ck.masked_stats_numba(f, mask, 1, acc)
    assert np.allclose(mean, [10, 20, 30]) and np.allclose(std, 0) and w == 32
    mean, std, w = ck.masked_stats_numba(f, None, 1, acc)
    assert np.allclose(mean, [60, 70, 80]) and np.allclose(std, 50) and w == 64
    _, _, w = ck.masked_stats_numba(f, np.zeros((8, 8), np.float32), 1, acc)
    assert w == 0


def test_masked_stats_numba_numpy_torch_agree():
    rng = np.random.default_rng(2)
    f = rng.integers(0, 256, (37, 53, 3), dtype=np.uint8)
    m = rng.random((37, 53), dtype=np.float32)
    for step in (1, 4):
        a = ck.masked_stats_numba(f, m, step, ck.stats_acc(37, step))
        b = ck.masked_stats_ref(f, m, step)
        c = ck.masked_stats_torch(torch.from_numpy(f), torch.from_numpy(m), step)
        for x, y, z in zip(a, b, c, strict=True):
            assert np.allclose(x, y) and np.allclose(x, z)


def test_transfer_table_moves_statistics():
    rng = np.random.default_rng(4)
    f = np.clip(rng.normal(100, 20, (64, 64, 3)), 0, 255).astype(np.uint8)
    m0, s0, _ = ck.masked_stats_ref(f, None, 1)
    table = ck.transfer_table(m0, s0, np.array([150.0, 90, 60]), np.array([10.0, 30, 20]))
    g = lk.table8_numba(f, table, np.empty_like(f))
    m1, s1, _ = ck.masked_stats_ref(g, None, 1)
    assert np.allclose(m1, [150, 90, 60], atol=1.5) and np.allclose(s1, [10, 30, 20], atol=1.5)
    ident = ck.transfer_table(m0, s0, m0, s0, amount=0.0)
    assert np.array_equal(ident, np.tile(np.arange(256, dtype=np.uint8), (3, 1)))
