"""composite and overlay nodes: exact placement, wiring with `inputs:`, wrong-size mask build error."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from engine.errors import PresetError
from engine.graph import build_graph
from engine.node import BuildContext
from engine.preset import loads_preset
from nodes.composite import Composite, place


def build(text: str, folder: Path, hw=(90, 160)):
    preset = loads_preset(text, base_dir=folder, file=folder / "test.yaml")
    return build_graph(preset, BuildContext(source_size=hw))


def halves(hw=(90, 160)) -> np.ndarray:
    f = np.zeros((*hw, 3), np.uint8)
    f[:, : hw[1] // 2] = (200, 100, 50)
    f[:, hw[1] // 2:] = (10, 20, 30)
    f.flags.writeable = False
    return f


def test_place_positions():
    assert place((90, 160), (90, 160), 1.0, 0.5, 0.5) == (160, 90, 0, 0)
    assert place((90, 160), (90, 160), 0.5, 1.0, 1.0) == (80, 45, 80, 45)
    assert place((90, 160), (90, 160), 0.25, 0.0, 1.0, margin=4) == (40, 22, 4, 64)
    # a square foreground fitted into 16:9 keeps its aspect
    assert place((90, 160), (50, 50), 1.0, 0.5, 0.5)[:2] == (90, 90)


def test_wrong_size_mask_is_a_build_error(tmp_path):
    text = """name: t
pipeline:
  - node: background
    id: person
    mode: none
  - node: resize
    id: small
    inputs: {frame: source}
    size: 64x36
  - node: composite
    inputs: {background: source, foreground: small, mask: person.mask}
"""
    with pytest.raises(PresetError) as ei:
        build(text, tmp_path)
    msg = str(ei.value)
    assert "test.yaml:10" in msg and "composite" in msg
    assert "input `mask` is 160x90 but `foreground` is 64x36" in msg


def test_composite_scaled_corner_exact(tmp_path):
    text = """name: t
pipeline:
  - node: resize
    id: small
    inputs: {frame: source}
    size: 80x45
    mode: stretch
  - node: composite
    inputs: {background: source, foreground: small}
    scale: 0.5
    x: 1.0
    y: 0.0
"""
    g = build(text, tmp_path)
    f = halves()
    with g:
        out = g.process(f, strict=True)
    # the half-size copy sits in the top-right quadrant; everything else is the background
    expect = f.copy()
    expect[:45, 80:] = cv2.resize(np.ascontiguousarray(f), (80, 45), interpolation=cv2.INTER_AREA)
    assert np.abs(out.astype(int) - expect).max() <= 1
    assert np.array_equal(out[45:], f[45:]) and np.array_equal(out[:, :80], f[:, :80])


def test_composite_through_mask_and_opacity():
    ctx = BuildContext(source_size=(20, 30))
    node = Composite("c", Composite.validate_params({"opacity": 0.5})[0], ctx)
    node.out_shapes = node.configure({"background": (20, 30), "foreground": (20, 30), "mask": (20, 30)})
    node.open()
    bg = np.zeros((20, 30, 3), np.uint8)
    fg = np.full((20, 30, 3), 255, np.uint8)
    m = np.zeros((20, 30), np.float32)
    m[:, 15:] = 1.0
    out = {"frame": np.empty((20, 30, 3), np.uint8)}
    node.process({"background": bg, "foreground": fg, "mask": m}, out)
    assert (out["frame"][:, :15] == 0).all() and (out["frame"][:, 15:] == 128).all()


def test_overlay_badge_in_each_corner(tmp_path):
    badge = np.zeros((10, 20, 4), np.uint8)
    badge[...] = (0, 255, 0, 255)
    badge[:, :5, 3] = 0  # a transparent strip on the left
    cv2.imwrite(str(tmp_path / "badge.png"), badge)
    f = np.full((90, 160, 3), 50, np.uint8)
    f.flags.writeable = False
    for corner, (y, x) in {"top_left": (4, 4), "top_right": (4, 160 - 32 - 4), "bottom_left": (90 - 16 - 4, 4),
                           "bottom_right": (90 - 16 - 4, 160 - 32 - 4)}.items():
        g = build(f"name: t\npipeline:\n  - node: overlay\n    image: badge.png\n    corner: {corner}\n"
                  f"    margin: 4\n    width: 0.2\n", tmp_path)
        with g:
            out = g.process(f, strict=True)
        # 20x10 scaled to 32x16; opaque part is green, transparent strip and outside unchanged
        assert out[y + 8, x + 20].tolist() == [0, 255, 0], corner
        assert out[y + 8, x + 2].tolist() == [50, 50, 50], corner
        changed = np.any(out != 50, axis=2)
        assert changed.sum() <= 32 * 16 and changed[y:y + 16, x:x + 32].sum() == changed.sum(), corner


def test_overlay_missing_or_bad_image(tmp_path):
    with pytest.raises(PresetError, match="`image` is needed"):
        build("name: t\npipeline:\n  - node: overlay\n", tmp_path)
    with pytest.raises(PresetError, match="file not found: 'logo.png'"):
        build("name: t\npipeline:\n  - node: overlay\n    image: logo.png\n", tmp_path)
    (tmp_path / "logo.png").write_bytes(b"GIF89a......")
    with pytest.raises(PresetError, match="not an image"):
        build("name: t\npipeline:\n  - node: overlay\n    image: logo.png\n", tmp_path)
