"""lut and color_match nodes (and the shipped presets that use this issue's nodes)."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from engine.cube import identity_table, load_cube, write_cube
from engine.errors import PresetError
from engine.graph import build_graph
from engine.node import BuildContext
from engine.preset import load_preset, loads_preset
from nodes.color import apply_lut, film_look_table

REPO = Path(__file__).resolve().parents[2]


def build(text: str, folder: Path, hw=(60, 80)):
    preset = loads_preset(text, base_dir=folder, file=folder / "test.yaml")
    return build_graph(preset, BuildContext(source_size=hw))


def noise(hw=(60, 80), seed=0) -> np.ndarray:
    f = np.random.default_rng(seed).integers(0, 256, (*hw, 3), dtype=np.uint8)
    f.flags.writeable = False
    return f


def test_lut_node_identity_and_relative_path(tmp_path):
    (tmp_path / "looks").mkdir()
    write_cube(tmp_path / "looks" / "id.cube", identity_table(9))
    g = build("name: t\npipeline:\n  - node: lut\n    file: looks/id.cube\n", tmp_path)
    f = noise()
    with g:
        assert np.array_equal(g.process(f, strict=True), f)


def test_lut_node_agrees_with_function_and_amount_is_live(tmp_path):
    write_cube(tmp_path / "film.cube", film_look_table(17))
    g = build("name: t\npipeline:\n  - node: lut\n    file: film.cube\n    amount: 0.6\n    interpolation: trilinear\n",
              tmp_path)
    f = noise(seed=3)
    lut = load_cube(tmp_path / "film.cube")
    with g:
        out = g.process(f, strict=True).copy()
        assert np.array_equal(out, apply_lut(f, lut, amount=0.6, interpolation="trilinear"))
        g.run_by_id["lut"].node.set_param("amount", 0.0)
        assert np.array_equal(g.process(f, strict=True), f)


def test_bad_cube_is_a_build_error_with_its_line(tmp_path):
    (tmp_path / "bad.cube").write_text("LUT_3D_SIZE 2\n0 0 0\n0 0 0\n0 0 x\n")
    with pytest.raises(PresetError) as ei:
        build("name: t\npipeline:\n  - node: lut\n    file: bad.cube\n", tmp_path)
    msg = str(ei.value)
    assert "test.yaml:3" in msg and "bad.cube:4" in msg and "'x' is not a number" in msg
    with pytest.raises(PresetError, match="LUT file not found: 'gone.cube'"):
        build("name: t\npipeline:\n  - node: lut\n    file: gone.cube\n", tmp_path)


def test_color_match_moves_towards_the_reference(tmp_path):
    rng = np.random.default_rng(1)
    camera = np.clip(rng.normal((170, 120, 90), 25, (60, 80, 3)), 0, 255).astype(np.uint8)
    camera.flags.writeable = False
    # the "avatar" is a darker, flatter, bluer version of the camera; matching brings it back
    g = build("name: t\npipeline:\n  - node: color_adjust\n    id: avatar\n    contrast: -0.5\n"
              "    brightness: -0.2\n    hue_shift: 40\n"
              "  - node: color_match\n    inputs: {frame: avatar, reference: source}\n    amount: 1.0\n"
              "    smoothing: 0.0\n    max_gain: 4\n", tmp_path)
    with g:
        avatar = g.run_by_id["avatar"]
        out = g.process(camera, strict=True)
        before = avatar.out["frame"].reshape(-1, 3)
        after = out.reshape(-1, 3)
    target_m, target_s = camera.reshape(-1, 3).mean(0), camera.reshape(-1, 3).std(0)
    assert np.abs(before.mean(0) - target_m).max() > 20
    assert np.allclose(after.mean(0), target_m, atol=3), after.mean(0)
    assert np.allclose(after.std(0), target_s, rtol=0.15), after.std(0)


def test_color_match_empty_mask_measures_the_whole_frame(tmp_path):
    rng = np.random.default_rng(2)
    avatar = np.clip(rng.normal(60, 15, (60, 80, 3)), 0, 255).astype(np.uint8)
    camera = np.clip(rng.normal((170, 120, 90), 25, (60, 80, 3)), 0, 255).astype(np.uint8)
    cv2.imwrite(str(tmp_path / "avatar.png"), avatar)
    # the cut-out's mask (no person in a noise frame) is wired implicitly and selects nothing
    g = build("name: t\npipeline:\n  - node: background\n    id: cut\n    mode: image\n    image: avatar.png\n"
              "    feather: 0.0\n"
              "  - node: color_match\n    inputs: {frame: cut, reference: source}\n    amount: 1.0\n    smoothing: 0.0\n",
              tmp_path)
    camera.flags.writeable = False
    with g:
        out = g.process(camera, strict=True)
    assert np.allclose(out.reshape(-1, 3).mean(0), camera.reshape(-1, 3).mean(0), atol=3)


def test_color_match_reference_image(tmp_path):
    ref = np.full((20, 20, 3), (40, 160, 200), np.uint8)
    cv2.imwrite(str(tmp_path / "ref.png"), ref)
    g = build("name: t\npipeline:\n  - node: color_match\n    image: ref.png\n    amount: 1.0\n    smoothing: 0.5\n",
              tmp_path)
    f = np.full((60, 80, 3), 100, np.uint8)
    f.flags.writeable = False
    with g:
        first = g.process(f, strict=True).copy()
        for _ in range(10):
            last = g.process(f, strict=True)
    assert np.allclose(first[0, 0], (40, 160, 200), atol=1)  # constant picture: mean moves, no gain
    assert np.array_equal(first, last)


def test_color_match_wrong_size_mask(tmp_path):
    text = ("name: t\npipeline:\n  - node: background\n    id: person\n    mode: none\n"
            "  - node: resize\n    id: small\n    inputs: {frame: source}\n    size: 32x32\n"
            "  - node: color_match\n    inputs: {frame: small, mask: person.mask, reference: source}\n")
    with pytest.raises(PresetError, match="input `mask` is 80x60 but `frame` is 32x32"):
        build(text, tmp_path)


SHIPPED = ["lut_look.yaml", "background_blur.yaml", "background_replace.yaml", "small_avatar.yaml"]


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_presets_build_and_run(name):
    path = REPO / "presets" / name
    assert path.read_text().startswith("#"), "each shipped preset opens with a comment block"
    preset = load_preset(path)
    g = build_graph(preset, BuildContext(source_size=(72, 128)))
    f = noise((72, 128))
    with g:
        out = g.process(f, strict=True)
    assert out.shape == (72, 128, 3)


def test_shipped_assets_are_what_the_generator_makes(tmp_path):
    """presets/assets/warm_film.cube is generated by presets/assets/make_assets.py (film_look_table)."""
    lut = load_cube(REPO / "presets" / "assets" / "warm_film.cube")
    assert lut.is_3d and lut.size == 33
    assert np.allclose(lut.table, film_look_table(33), atol=1e-6)
