"""3D / 1D LUT kernels and the .cube parser: identity is identity, the file's red-fastest order,
DOMAIN_MIN/MAX, amount, numba == numpy == torch, and errors that name the line."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from engine.cube import identity_table, load_cube, parse_cube, write_cube
from engine.errors import UserError
from engine.kernels import lut as lk

METHODS = ("tetrahedral", "trilinear")


def all_colours_frame(step: int = 5) -> np.ndarray:
    v = np.arange(0, 256, step, dtype=np.uint8)
    b, g, r = np.meshgrid(v, v, v, indexing="ij")
    return np.ascontiguousarray(np.stack([b, g, r], -1).reshape(len(v), -1, 3))


def cube_text(n: int, fn, header: str = "") -> str:
    """A 3D .cube whose entries are fn(r, g, b) (values in 0..1), red fastest."""
    lines = [header, f"LUT_3D_SIZE {n}"] if header else [f"LUT_3D_SIZE {n}"]
    t = np.linspace(0, 1, n)
    for b in t:
        for g in t:
            for r in t:
                lines.append(" ".join(f"{v:.6f}" for v in fn(r, g, b)))
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize("n", [2, 17, 33])
@pytest.mark.parametrize("method", METHODS)
def test_identity_lut_is_identity(n, method):
    frame = all_colours_frame(3)
    for amount in (1.0, 0.4):
        prep = lk.prepare_3d(identity_table(n), (0, 0, 0), (1, 1, 1), amount)
        assert np.array_equal(lk.lut3d_numba(frame, prep, np.empty_like(frame), method), frame)


def test_parsed_identity_file_is_identity(tmp_path):
    lut = parse_cube(cube_text(9, lambda r, g, b: (r, g, b), 'TITLE "id"\n# comment'))
    assert lut.is_3d and lut.size == 9 and lut.title == "id"
    frame = all_colours_frame(7)
    from nodes.color import apply_lut

    for method in METHODS:
        assert np.array_equal(apply_lut(frame, lut, interpolation=method), frame)


def test_red_fastest_order_and_bgr_frames():
    # a LUT that swaps red and blue: proves the file order (red fastest) and RGB->BGR handling
    lut = parse_cube(cube_text(5, lambda r, g, b: (b, g, r)))
    frame = all_colours_frame(17)
    from nodes.color import apply_lut

    for method in METHODS:
        assert np.array_equal(apply_lut(frame, lut, interpolation=method), frame[..., ::-1])


def test_inverting_lut_exact_and_amount_zero_is_identity():
    lut = parse_cube(cube_text(3, lambda r, g, b: (1 - r, 1 - g, 1 - b)))
    frame = all_colours_frame(5)
    from nodes.color import apply_lut

    assert np.array_equal(apply_lut(frame, lut), 255 - frame)
    assert np.array_equal(apply_lut(frame, lut, amount=0.0), frame)


def test_domain_min_max():
    # identity over the domain 0..0.5: inputs above 0.5 clamp to 0.5 (128)
    text = "DOMAIN_MIN 0 0 0\nDOMAIN_MAX 0.5 0.5 0.5\n" + cube_text(3, lambda r, g, b: (r / 2, g / 2, b / 2))
    lut = parse_cube(text)
    frame = np.array([[[0, 64, 255], [100, 127, 200]]], np.uint8)
    from nodes.color import apply_lut

    for method in METHODS:
        out = apply_lut(frame, lut, interpolation=method)
        assert np.array_equal(out, np.minimum(frame, 128)), method


def test_one_d_lut():
    lines = ["LUT_1D_SIZE 4"] + [f"{1 - t:f} {t:f} {t * t:f}" for t in np.linspace(0, 1, 4)]
    lut = parse_cube("\n".join(lines))
    assert not lut.is_3d
    frame = np.array([[[0, 85, 255], [255, 0, 170]]], np.uint8)  # BGR
    from nodes.color import apply_lut

    out = apply_lut(frame, lut)
    # R' = 1 - R, G' = G, B' = piecewise-linear of B^2 through the 4 points
    assert np.array_equal(out[..., 2], 255 - frame[..., 2])
    assert np.array_equal(out[..., 1], frame[..., 1])
    assert out[0, 0, 0] == 0 and out[0, 1, 0] == 255
    tab = lk.prepare_1d(lut.table, lut.domain_min, lut.domain_max)
    t = lk.table8_torch(torch.from_numpy(frame), torch.from_numpy(tab)).numpy()
    assert np.array_equal(t, out) and np.array_equal(lk.table8_ref(frame, tab), out)


@pytest.mark.parametrize("method", METHODS)
def test_numba_numpy_torch_agree(method):
    rng = np.random.default_rng(7)
    table = np.clip(identity_table(17) ** 0.7 + rng.normal(0, 0.05, (17, 17, 17, 3)), 0, 1).astype(np.float32)
    prep = lk.prepare_3d(table, (0.02, 0.0, 0.05), (0.95, 1.0, 0.9), 0.8)
    frame = rng.integers(0, 256, (40, 60, 3), dtype=np.uint8)
    out = lk.lut3d_numba(frame, prep, np.empty_like(frame), method)
    assert np.abs(out.astype(int) - lk.lut3d_ref(frame, prep, method)).max() <= 1
    t = lk.lut3d_torch(torch.from_numpy(frame), tuple(torch.from_numpy(a) for a in prep), method).numpy()
    assert np.abs(out.astype(int) - t).max() <= 1
    assert (out != lk.lut3d_ref(frame, prep, method)).mean() < 0.001  # float rounding only, rarely


def test_tetrahedral_and_trilinear_agree_on_smooth_lut():
    from nodes.color import film_look_table

    prep = lk.prepare_3d(film_look_table(33), (0, 0, 0), (1, 1, 1))
    frame = all_colours_frame(4)
    a = lk.lut3d_numba(frame, prep, np.empty_like(frame), "tetrahedral")
    b = lk.lut3d_numba(frame, prep, np.empty_like(frame), "trilinear")
    assert np.abs(a.astype(int) - b).max() <= 3
    assert not np.array_equal(a, frame)  # the look does change colours


def test_write_then_load_round_trip(tmp_path):
    from nodes.color import film_look_table

    table = film_look_table(5)
    write_cube(tmp_path / "x.cube", table, title="t")
    lut = load_cube(tmp_path / "x.cube")
    assert np.allclose(lut.table, table, atol=1e-6)


# ---- parser errors: line numbers ------------------------------------------------------------------

def err(text: str) -> str:
    with pytest.raises(UserError) as ei:
        parse_cube(text, "look.cube")
    return str(ei.value)


def test_error_wrong_entry_count_names_size_line():
    text = "# header\nLUT_3D_SIZE 2\n" + "0 0 0\n" * 7
    msg = err(text)
    assert "look.cube:2:" in msg and "needs 8 data lines, found 7" in msg


def test_error_too_many_entries_names_first_extra_line():
    text = "LUT_3D_SIZE 2\n" + "0 0 0\n" * 9
    assert "look.cube:10:" in err(text)


def test_error_text_in_data_line():
    text = "LUT_3D_SIZE 2\n0 0 0\n0 0 0\n0 zero 0\n" + "0 0 0\n" * 5
    msg = err(text)
    assert "look.cube:4:" in msg and "'zero' is not a number" in msg
    msg = err("LUT_3D_SIZE 2\n0 0 0\nhello world again\n")
    assert "look.cube:3:" in msg


@pytest.mark.parametrize("size", ["0", "257", "1", "-3", "two"])
def test_error_bad_size(size):
    msg = err(f"TITLE \"x\"\nLUT_3D_SIZE {size}\n0 0 0\n")
    assert "look.cube:2:" in msg


def test_error_min_not_below_max():
    text = "LUT_3D_SIZE 2\nDOMAIN_MIN 0 0.5 0\nDOMAIN_MAX 1 0.5 1\n" + "0 0 0\n" * 8
    msg = err(text)
    assert "look.cube:3:" in msg and "DOMAIN_MIN must be below DOMAIN_MAX" in msg


def test_error_missing_size_and_wrong_column_count():
    assert "no LUT_3D_SIZE" in err("0 0 0\n")
    assert "look.cube:2:" in err("LUT_3D_SIZE 2\n0 0\n")


def test_load_cube_missing_file(tmp_path):
    with pytest.raises(UserError, match="not found"):
        load_cube(tmp_path / "nope.cube")


# ---- baked 3D LUT (every 8-bit colour precomputed) ------------------------------------------------

def _film_prep(amount=1.0):
    from nodes.color import film_look_table

    return lk.prepare_3d(film_look_table(17), (0, 0, 0), (1, 1, 1), amount)


@pytest.mark.parametrize("method", ["tetrahedral", "trilinear"])
def test_baked_lut_is_bit_identical_to_interpolation(method):
    import torch

    prep = _film_prep(0.7)
    baked = lk.bake_3d(prep, method)
    src = np.random.default_rng(3).integers(0, 256, (61, 83, 3), dtype=np.uint8)
    direct = lk.lut3d_numba(src, prep, np.empty_like(src), method)
    np.testing.assert_array_equal(lk.lut_baked_numba(src, baked, np.empty_like(src)), direct)
    np.testing.assert_array_equal(lk.lut_baked_ref(src, baked), direct)
    np.testing.assert_array_equal(lk.lut_baked_torch(torch.from_numpy(src), torch.from_numpy(baked)).numpy(), direct)


def test_bake_can_be_abandoned():
    assert lk.bake_3d(_film_prep(), "tetrahedral", stop=lambda: True) is None


def test_lut_node_live_amount_change_rebakes_in_background(tmp_path):

    from engine.cube import write_cube
    from engine.graph import build_graph
    from engine.node import BuildContext
    from engine.preset import loads_preset
    from nodes.color import apply_lut, film_look_table

    write_cube(tmp_path / "look.cube", film_look_table(17))
    g = build_graph(loads_preset("name: l\npipeline:\n  - {node: lut, file: look.cube, amount: 1.0}\n",
                                 base_dir=tmp_path), BuildContext(source_size=(40, 50)))
    src = np.random.default_rng(4).integers(0, 256, (40, 50, 3), dtype=np.uint8)
    lut = load_cube(tmp_path / "look.cube")
    with g:
        node = g.run_by_id["lut"].node
        assert node._baked is not None  # baked at open, before the first frame
        np.testing.assert_array_equal(g.process(src), apply_lut(src, lut, amount=1.0))
        node.set_param("amount", 0.4)
        assert node._baked is None  # the old table is dropped at once; frames use the direct kernel
        np.testing.assert_array_equal(g.process(src), apply_lut(src, lut, amount=0.4))
        node._bake_thread.join(timeout=60)
        assert node._baked is not None
        np.testing.assert_array_equal(g.process(src), apply_lut(src, lut, amount=0.4))
