"""background and chroma_key nodes: quality on a real green-screen clip (IoU), every mode, bad files,
looping replacement video."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from engine.errors import PresetError
from engine.graph import build_graph
from engine.node import BuildContext
from engine.preset import loads_preset
from nodes.background import Background, person_mask_iou

GREENSCREEN = "driving/greenscreen_man.mp4"


def build(text: str, folder: Path, hw=(96, 128)):
    preset = loads_preset(text, base_dir=folder, file=folder / "test.yaml")
    return build_graph(preset, BuildContext(source_size=hw))


def flat(hw=(96, 128), value=(128, 128, 128)) -> np.ndarray:
    f = np.empty((*hw, 3), np.uint8)
    f[...] = value
    f.flags.writeable = False
    return f


@pytest.mark.data
@pytest.mark.slow
@pytest.mark.parametrize("model", ["landscape", "general"])
def test_mask_iou_against_chroma_key_on_greenscreen(shared_data, model):
    """The issue's quality target: mean IoU >= 0.95 (here on every 6th frame, 13 frames)."""
    res = person_mask_iou(shared_data / GREENSCREEN, step=6, model=model)
    assert res["frames"] == 13
    assert res["mean_iou"] >= 0.95, res
    assert res["min_iou"] >= 0.9, res


@pytest.mark.data
def test_mask_every_2_keeps_quality(shared_data):
    res = person_mask_iou(shared_data / GREENSCREEN, frames=8, step=2, mask_every=2)
    assert res["mean_iou"] >= 0.95, res


@pytest.mark.data
def test_modes_on_a_real_person(shared_data, tmp_path):
    cap = cv2.VideoCapture(str(shared_data / GREENSCREEN))
    ok, frame = cap.read()
    cap.release()
    assert ok
    frame.flags.writeable = False
    g = build("name: t\npipeline:\n  - node: background\n    mode: color\n    color: '#ff00ff'\n"
              "    feather: 0.0\n", tmp_path, frame.shape[:2])
    with g:
        out = g.process(frame, strict=True)
        mask = g.run_by_id["background"].out["mask"]
    assert mask.dtype == np.float32 and mask.shape == frame.shape[:2]
    assert 0.0 <= mask.min() and mask.max() <= 1.0
    person = mask > 0.5
    assert 0.2 < person.mean() < 0.8
    # centre of the face is the person (frame kept), a top corner is background (magenta)
    assert person[250, 256] and np.array_equal(out[250, 256], frame[250, 256])
    assert not person[20, 20] and out[20, 20].tolist() == [255, 0, 255]
    # blur: person pixels unchanged, background changed
    g = build("name: t\npipeline:\n  - node: background\n    strength: 30\n", tmp_path, frame.shape[:2])
    with g:
        out = g.process(frame, strict=True)
        m = g.run_by_id["background"].out["mask"]
    assert np.array_equal(out[m == 1.0], frame[m == 1.0])
    assert np.abs(out[m == 0.0].astype(int) - frame[m == 0.0]).mean() > 3


def test_color_mode_without_a_person_is_the_colour(tmp_path):
    g = build("name: t\npipeline:\n  - node: background\n    mode: color\n    color: [10, 20, 30]\n", tmp_path)
    with g:
        out = g.process(flat(), strict=True)
        mask = g.run_by_id["background"].out["mask"]
    assert mask.max() < 0.05
    assert (out == (30, 20, 10)).all()


def test_none_mode_passes_the_frame(tmp_path):
    g = build("name: t\npipeline:\n  - node: background\n    mode: none\n", tmp_path)
    f = flat(value=(1, 2, 3))
    with g:
        assert np.array_equal(g.process(f, strict=True), f)


def test_missing_background_image_is_a_build_error(tmp_path):
    with pytest.raises(PresetError) as ei:
        build("name: t\npipeline:\n  - node: background\n    mode: image\n    image: nope.png\n", tmp_path)
    msg = str(ei.value)
    assert "test.yaml:3" in msg and "`image`: file not found: 'nope.png'" in msg and "relative to the preset" in msg
    with pytest.raises(PresetError, match="`image` is needed for mode image"):
        build("name: t\npipeline:\n  - node: background\n    mode: image\n", tmp_path)


def test_not_an_image_is_a_build_error(tmp_path):
    (tmp_path / "notes.png").write_text("not a picture")
    with pytest.raises(PresetError, match=r"`image`: 'notes.png' is not an image"):
        build("name: t\npipeline:\n  - node: background\n    mode: image\n    image: notes.png\n", tmp_path)


def test_missing_video_is_a_build_error(tmp_path):
    with pytest.raises(PresetError, match="`video`: file not found"):
        build("name: t\npipeline:\n  - node: background\n    mode: video\n    video: loop.mp4\n", tmp_path)


def test_image_mode_fill_and_fit(tmp_path):
    img = np.zeros((50, 200, 3), np.uint8)
    img[:, :100] = (0, 0, 255)
    img[:, 100:] = (255, 0, 0)
    cv2.imwrite(str(tmp_path / "bg.png"), img)
    for fit in ("fill", "fit"):
        g = build(f"name: t\npipeline:\n  - node: background\n    mode: image\n    image: bg.png\n    fit: {fit}\n",
                  tmp_path)
        with g:
            out = g.process(flat(), strict=True)
        if fit == "fit":  # letterboxed: black bars above and below
            assert (out[0] == 0).all() and out[48, 10].tolist() == [0, 0, 255]
        else:  # filled: the centre crop, no bars
            assert out[0, 10].tolist() == [0, 0, 255] and out[0, 120].tolist() == [255, 0, 0]


def write_video(path: Path, values: list[int], hw=(48, 64)) -> None:
    w = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 25, (hw[1], hw[0]))
    assert w.isOpened()
    for v in values:
        w.write(np.full((*hw, 3), v, np.uint8))
    w.release()


def test_replacement_video_shorter_than_the_stream_loops(tmp_path):
    values = [20, 70, 120, 170, 220]
    write_video(tmp_path / "loop.mp4", values)
    g = build("name: t\npipeline:\n  - node: background\n    mode: video\n    video: loop.mp4\n", tmp_path)
    seen = []
    with g:
        for _ in range(12):
            seen.append(int(np.median(g.process(flat(), strict=True))))
        node = g.run_by_id["background"].node
        assert node.video.loops == 2
    expected = [values[i % 5] for i in range(12)]
    assert np.abs(np.array(seen) - expected).max() <= 4, seen


def test_undecodable_video_is_a_clear_error(tmp_path):
    (tmp_path / "bad.mp4").write_bytes(b"\x00" * 1000)
    g = build("name: t\npipeline:\n  - node: background\n    mode: video\n    video: bad.mp4\n", tmp_path)
    with pytest.raises(Exception, match="no video frames could be decoded"):
        g.open()


def test_mask_every_n_reuses_the_mask(tmp_path, monkeypatch):
    g = build("name: t\npipeline:\n  - node: background\n    mask_every: 3\n", tmp_path)
    with g:
        node: Background = g.run_by_id["background"].node
        calls = []
        orig = node._update_mask
        monkeypatch.setattr(node, "_update_mask", lambda *a: (calls.append(1), orig(*a)))
        for _ in range(7):
            g.process(flat(), strict=True)
    assert len(calls) == 3  # frames 0, 3, 6


def test_chroma_key_node_outputs_frame_and_mask(tmp_path):
    f = np.zeros((96, 128, 3), np.uint8)
    f[:, :64] = (64, 200, 40)
    f[:, 64:] = (30, 40, 220)
    f.flags.writeable = False
    g = build("name: t\npipeline:\n  - node: chroma_key\n    key_color: [40, 200, 64]\n    similarity: 0.1\n",
              tmp_path)
    with g:
        out = g.process(f, strict=True)
        mask = g.run_by_id["chroma_key"].out["mask"]
    assert (mask[:, :64] == 0).all() and (mask[:, 64:] == 1).all()
    assert np.array_equal(out[:, 64:], f[:, 64:])


def test_blur_follows_the_current_frame_between_mask_updates(tmp_path):
    g = build("name: t\npipeline:\n  - node: background\n    mask_every: 2\n", tmp_path)
    with g:
        for value in (40, 90, 160, 220):  # frames 1 and 3 reuse the mask but not the picture
            out = g.process(flat(value=(value, value, value)), strict=True)
            assert np.abs(out.astype(int) - value).max() <= 1, value


def test_live_mode_switch_uses_files_given_and_refuses_missing_ones(tmp_path):
    from engine.errors import CommandError

    cv2.imwrite(str(tmp_path / "bg.png"), np.full((30, 40, 3), (0, 0, 200), np.uint8))
    g = build("name: t\npipeline:\n  - node: background\n    mode: color\n    color: '#0000ff'\n"
              "    image: bg.png\n", tmp_path)
    with g:
        node = g.run_by_id["background"].node
        assert (g.process(flat(), strict=True) == (255, 0, 0)).all()
        node.set_param("mode", "image")
        assert (g.process(flat(), strict=True) == (0, 0, 200)).all()
        node.set_param("mode", "color")
        assert (g.process(flat(), strict=True) == (255, 0, 0)).all()
        with pytest.raises(CommandError, match="mode video needs `video:`"):
            node.set_param("mode", "video")
        assert node.p["mode"] == "color"
