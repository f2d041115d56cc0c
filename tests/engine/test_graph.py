"""Graph lifecycle: sizes agreed at build, buffers reused, nodes closed exactly once, a failing node
bypassed while the stream goes on."""

import logging

import numpy as np
import pytest

from engine.errors import PresetError
from engine.graph import build_graph, fit_into
from engine.node import BuildContext, Node, register
from engine.params import Param, Port, PortType
from engine.preset import loads_preset

EVENTS: list[str] = []


@register
class _Probe(Node):
    """Test node: records its lifecycle; fails on demand."""

    kind = "test_probe"
    family = "test"
    description = "test-only node that records open/process/close and can fail"
    inputs = (Port("frame", PortType.FRAME),)
    outputs = (Port("frame", PortType.FRAME),)
    params = (Param("fail", "bool", False, "raise in process()"), Param("fail_open", "bool", False, "raise in open()"))

    def open(self):
        EVENTS.append(f"open {self.id}")
        if self.p["fail_open"]:
            raise RuntimeError("cannot open")

    def process(self, inputs, out):
        assert not inputs["frame"].flags.writeable or True
        if self.p["fail"]:
            raise ValueError("boom")
        out["frame"][...] = 255 - inputs["frame"]

    def close(self):
        EVENTS.append(f"close {self.id}")


def ctx(h=48, w=64):
    return BuildContext(source_size=(h, w))


def frame(h=48, w=64, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def test_process_open_close_once_and_buffers_reused():
    EVENTS.clear()
    g = build_graph(loads_preset("name: t\npipeline:\n  - node: test_probe\n  - node: mirror\n"), ctx())
    with g:
        a = g.process(frame())
        first_buf = a
        b = g.process(frame(seed=1))
        assert b is first_buf  # the same preallocated output buffer
        np.testing.assert_array_equal(b, (255 - frame(seed=1))[:, ::-1])
    g.close()
    assert EVENTS == ["open test_probe", "close test_probe"]


def test_failing_node_is_bypassed_and_logged(caplog):
    g = build_graph(loads_preset("name: t\npipeline:\n  - node: test_probe\n    fail: true\n  - node: mirror\n"), ctx())
    with g, caplog.at_level(logging.ERROR):
        for i in range(3):
            out = g.process(frame(seed=i))
            np.testing.assert_array_equal(out, frame(seed=i)[:, ::-1])  # probe skipped, mirror ran
    assert g.run_by_id["test_probe"].failures == 3
    assert "test_probe" in caplog.text and "bypassed" in caplog.text
    assert caplog.text.count("bypassed") == 1  # rate-limited


def test_strict_mode_raises():
    g = build_graph(loads_preset("name: t\npipeline:\n  - node: test_probe\n    fail: true\n"), ctx())
    with g, pytest.raises(ValueError):
        g.process(frame(), strict=True)


def test_failed_open_closes_every_node():
    EVENTS.clear()
    g = build_graph(loads_preset("""
name: t
pipeline:
  - {node: test_probe, id: a}
  - {node: test_probe, id: b, fail_open: true}
  - {node: test_probe, id: c}
"""), ctx())
    with pytest.raises(RuntimeError):
        g.open()
    g.close()
    assert sorted(EVENTS) == sorted(["open a", "open b", "close a", "close b", "close c"])


def test_sizes_agreed_at_build_and_errors():
    g = build_graph(loads_preset("name: t\npipeline:\n  - {node: crop, x: 8, y: 4, width: 32, height: 16}\n"
                                 "  - {node: resize, size: 100x50}\n"), ctx())
    assert g.output_shape == (50, 100)
    with g:
        assert g.process(frame()).shape == (50, 100, 3)
    with pytest.raises(PresetError, match="does not fit in the 64x48 input"):
        build_graph(loads_preset("name: t\npipeline:\n  - {node: crop, x: 40, width: 32}\n"), ctx())


def test_disabled_node_passes_frames_through():
    g = build_graph(loads_preset("name: t\npipeline:\n  - {node: test_probe, enabled: false}\n"), ctx())
    with g:
        np.testing.assert_array_equal(g.process(frame()), frame())


@pytest.mark.parametrize("mode", ["fit", "fill", "stretch"])
def test_fit_into_modes(mode):
    src = np.zeros((10, 40, 3), np.uint8)
    src[:, :20] = 200
    dst = np.full((20, 20, 3), 7, np.uint8)
    fit_into(src, dst, mode)
    if mode == "fit":  # 40x10 -> 20x5 letterboxed: black bars top and bottom
        assert (dst[:7] == 0).all() and (dst[-7:] == 0).all() and dst[10, 2, 0] == 200
    elif mode == "fill":  # centre 10x10 crop: left half bright, right half dark
        assert dst[10, 2, 0] == 200 and dst[10, 17, 0] == 0
    else:
        assert dst[0, 2, 0] == 200 and dst[19, 17, 0] == 0
