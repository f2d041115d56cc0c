"""color_adjust and mirror kernels: numba == numpy reference (<= 1 level) == torch (exact), known values,
and the node agrees with the plain function."""

import numpy as np
import pytest
import torch

from engine.graph import build_graph
from engine.kernels import color as ck
from engine.kernels import transform as tk
from engine.node import BuildContext
from engine.preset import loads_preset
from nodes.color import color_adjust

RNG = np.random.default_rng(7)
FRAME = RNG.integers(0, 256, (67, 93, 3), dtype=np.uint8)  # odd sizes catch row/stride bugs
SETTINGS = [
    {},
    dict(gamma=1.5), dict(gamma=-2.0), dict(contrast=2.0), dict(contrast=-3.0), dict(brightness=0.3),
    dict(saturation=-1.0), dict(saturation=4.0), dict(hue_shift=120.0), dict(hue_shift=-45.0), dict(opacity=0.25),
    dict(gamma=0.5, contrast=0.7, brightness=-0.1, saturation=1.5, hue_shift=40.0, opacity=0.9),
]


@pytest.mark.parametrize("kw", SETTINGS)
def test_color_numba_matches_numpy_and_torch(kw):
    out = color_adjust(FRAME, **kw)
    ref = ck.color_adjust_ref(FRAME, **kw)
    assert np.abs(out.astype(int) - ref).max() <= 1
    g, m, t = ck.obs_color_matrix(**kw)
    table, offset = ck.curve_matrix_table(g, m, t)
    tt = ck.curve_matrix_torch(torch.from_numpy(FRAME), torch.from_numpy(table), torch.from_numpy(offset)).numpy()
    np.testing.assert_array_equal(tt, out)


def test_color_py_func_matches_jit_on_tiny_input():
    tiny = FRAME[:3, :4].copy()
    g, m, t = ck.obs_color_matrix(gamma=0.3, saturation=0.8, hue_shift=30)
    table, offset = ck.curve_matrix_table(g, m, t)
    a, b = np.empty_like(tiny), np.empty_like(tiny)
    ck._curve_matrix_numba(tiny, table, offset, a)
    ck._curve_matrix_numba.py_func(tiny, table, offset, b)
    np.testing.assert_array_equal(a, b)


def test_color_known_values():
    np.testing.assert_array_equal(color_adjust(FRAME), FRAME)  # defaults are the identity
    grey = color_adjust(FRAME, saturation=-1.0)
    assert np.abs(grey[..., 0].astype(int) - grey[..., 2]).max() <= 1  # no colour left
    assert (color_adjust(FRAME, brightness=1.0) == 255).all()
    assert (color_adjust(FRAME, opacity=0.0) == 0).all()
    px = np.array([[[0, 0, 255]]], np.uint8)  # pure red (BGR)
    # OBS composes its colour matrix for row vectors (brightness sits in the translation row), so a
    # +120 degree hue shift takes red to blue
    np.testing.assert_array_equal(color_adjust(px, hue_shift=120.0), [[[255, 0, 0]]])
    np.testing.assert_array_equal(color_adjust(px, hue_shift=180.0), ck.color_adjust_ref(px, hue_shift=180.0))
    # OBS's gamma 1.0 means exponent 1/2: mid-grey 64 -> 255 * (64/255) ** 0.5 = 127.7
    assert color_adjust(np.full((1, 1, 3), 64, np.uint8), gamma=1.0)[0, 0, 0] == 128


def test_color_node_agrees_with_function():
    kw = dict(gamma=0.4, contrast=0.5, saturation=0.6, hue_shift=20.0)
    text = "name: t\npipeline:\n  - node: color_adjust\n" + "".join(f"    {k}: {v}\n" for k, v in kw.items())
    g = build_graph(loads_preset(text), BuildContext(source_size=FRAME.shape[:2]))
    with g:
        np.testing.assert_array_equal(g.process(FRAME), color_adjust(FRAME, **kw))


@pytest.mark.parametrize("horizontal", [True, False])
def test_mirror_numba_numpy_torch(horizontal):
    out = np.empty_like(FRAME)
    tk.mirror_numba(FRAME, out, horizontal)
    np.testing.assert_array_equal(out, tk.mirror_ref(FRAME, horizontal))
    np.testing.assert_array_equal(tk.mirror_torch(torch.from_numpy(FRAME), horizontal).numpy(), out)


def test_kernel_wrappers_reject_bad_arrays():
    with pytest.raises(ValueError, match="uint8"):
        tk.mirror_numba(FRAME.astype(np.float32), np.empty_like(FRAME))
    with pytest.raises(ValueError, match="C-contiguous"):
        tk.mirror_numba(FRAME[:, ::2], np.empty((67, 47, 3), np.uint8))
    with pytest.raises(ValueError, match="differ"):
        tk.mirror_numba(FRAME, np.empty((10, 10, 3), np.uint8))
