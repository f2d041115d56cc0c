"""Real OBS Studio under Xvfb for the ``obs`` integration tests, and a live engine rig around it.

The OBS fixture is module-scoped (one OBS per test file, ~1 s to start) and always stopped by its
finalizer; tests that kill OBS restart it before they end. Pictures: a still image of solid colour
blocks through presets that only differ by a colour grade, so every output frame of a preset is
known exactly (the grade is a deterministic kernel) and presets are told apart by colour.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import pytest

from obs_plugin.testing import HeadlessObs, obs_installed

SCENES = ("Just Chatting", "Gaming", "BRB")
PASSWORD = "ci-secret-4f2b"
SIZE = (320, 180)  # engine output (w, h): small, 2 shared cores
FPS = 30.0

PRESETS = {
    "Warm": """
name: Warm
obs: {scenes: [Just Chatting]}
pipeline:
  - node: color_adjust
    id: grade
    brightness: 0.25
""",
    "Cool": """
name: Cool
obs: {scenes: [Gaming]}
pipeline:
  - node: color_adjust
    id: grade
    hue_shift: 120
""",
    "Dark": """
name: Dark
pipeline:
  - node: color_adjust
    id: grade
    brightness: -0.35
""",
}


def blocks_image() -> np.ndarray:
    """(180, 320, 3) uint8 BGR: four solid blocks (grey, red, green, blue) -> big, flat, easy to compare."""
    w, h = SIZE
    img = np.empty((h, w, 3), np.uint8)
    img[: h // 2, : w // 2] = (128, 128, 128)
    img[: h // 2, w // 2:] = (40, 40, 200)
    img[h // 2:, : w // 2] = (40, 180, 40)
    img[h // 2:, w // 2:] = (200, 60, 30)
    return img


def block_colors(img: np.ndarray) -> np.ndarray:
    """Mean colour of the centre of each block: (4, 3) float. Centres only: JPEG/YUV edges blur."""
    h, w = img.shape[:2]
    out = []
    for y0, x0 in ((0, 0), (0, w // 2), (h // 2, 0), (h // 2, w // 2)):
        patch = img[y0 + h // 8: y0 + 3 * h // 8, x0 + w // 8: x0 + 3 * w // 8]
        out.append(patch.reshape(-1, 3).mean(0))
    return np.array(out)


@pytest.fixture(scope="module")
def obs(tmp_path_factory):
    ok, why = obs_installed()
    if not ok:
        pytest.skip(why)
    o = HeadlessObs(tmp_path_factory.mktemp("obs"), password=PASSWORD, scenes=SCENES)
    o.start()
    yield o
    o.stop()


@pytest.fixture
def req(obs):
    """A client of our own (the test's eyes on OBS), reset to the first scene."""
    if obs.obs is None or obs.obs.poll() is not None:  # a previous test left OBS dead
        obs.start_obs()
    r = obs.client()
    r.send("SetCurrentProgramScene", {"sceneName": SCENES[0]})
    yield r
    try:
        r.disconnect()
    except Exception:
        pass
    try:  # leave OBS as the next test expects it: none of the inputs a test made
        r = obs.client()
        for i in r.send("GetInputList", {}, raw=True)["inputs"]:
            r.send("RemoveInput", {"inputName": i["inputName"]})
        r.disconnect()
    except Exception:
        pass


@pytest.fixture(scope="session")
def still(tmp_path_factory) -> Path:
    p = tmp_path_factory.mktemp("img") / "blocks.png"
    cv2.imwrite(str(p), blocks_image())
    return p


@pytest.fixture(scope="session")
def presets():
    from engine.preset import loads_preset

    return [loads_preset(PRESETS[n]) for n in ("Warm", "Cool", "Dark")]


@pytest.fixture(scope="session")
def expected(presets):
    """preset name -> the exact output frame the engine makes from the still image."""
    from nodes.color import color_adjust

    img = blocks_image()
    out = {"passthrough": img}
    for p in presets:
        out[p.name] = color_adjust(img, **p.nodes[0].params)
    return out


@dataclass
class Rig:
    """A live engine (still image -> presets -> sink) on its own threads, recording what it sends."""

    engine: object
    runner: object
    sink: object
    thread: threading.Thread
    frames: list = field(default_factory=list)  # (perf_counter, preset name or 'passthrough', frame copy?)
    keep_pixels: bool = True

    def on_frame(self, frame, meta) -> None:
        name = "passthrough" if self.engine.passthrough else meta.preset_name
        self.frames.append((time.perf_counter(), name, frame.copy() if self.keep_pixels else None))

    def wait_preset(self, name: str, timeout: float = 5.0, after: float = 0.0) -> float:
        """perf_counter of the first frame made by ``name`` (at or after ``after``); fails on timeout."""
        t_end = time.monotonic() + timeout
        i = 0
        while time.monotonic() < t_end:
            frames = self.frames
            while i < len(frames):
                t, n, _ = frames[i]
                if n == name and t >= after:
                    return t
                i += 1
            time.sleep(0.005)
        seen = sorted({n for _, n, _ in self.frames[-50:]})
        raise AssertionError(f"no frame from preset {name!r} within {timeout} s (recent: {seen})")


def paced_image(still: Path, fps: float = FPS):
    """The still image as a live source at ``fps`` (engine's ImageSource repeats as fast as it is read:
    unpaced it would keep two shared cores busy)."""
    from engine.sources import ImageSource

    class PacedImage(ImageSource):
        live = True

        def read(self, out):
            now = time.perf_counter()
            self._t = max(getattr(self, "_t", now) + 1.0 / self.fps, now - 0.5)
            if self._t > now:
                time.sleep(self._t - now)
            return super().read(out)

    return PacedImage(still, frames=None, fps=fps)


def start_rig(presets, still, sink, **runner_kw) -> Rig:
    from engine.runtime import Engine, LiveRunner

    source = paced_image(still)
    source.open()
    engine = Engine(presets, source_size=source.size, fps=FPS, out_size=SIZE, live=True, prepare="all")
    engine.start()
    rig = Rig(engine, None, sink, None)
    rig.runner = LiveRunner(source, engine, sink, fps=FPS, on_frame=rig.on_frame, status_every=3600, **runner_kw)
    rig.thread = threading.Thread(target=rig.runner.run, name="test-live", daemon=True)
    rig.thread.start()
    rig.wait_preset(presets[0].name, timeout=10)
    return rig


def stop_rig(rig: Rig) -> None:
    rig.runner.stop()
    rig.thread.join(timeout=10)
    rig.engine.close()
    rig.runner.source.close()


@pytest.fixture
def rig_factory(presets, still):
    rigs = []

    def make(sink=None, presets_=None, **kw):
        from engine.sinks import Sink

        class NullSink(Sink):  # frames are checked through on_frame; nothing to write
            name = "null"

            def open(self, size, fps):
                pass

            def write(self, frame):
                pass

        r = start_rig(presets_ or presets, still, sink or NullSink(), **kw)
        rigs.append(r)
        return r

    yield make
    for r in rigs:
        stop_rig(r)


@pytest.fixture
def links():
    """Start ObsLinks through this so each is stopped even when the test fails."""
    made = []

    def add(link):
        made.append(link)
        return link

    yield add
    for link in made:
        link.stop()


@pytest.fixture
def settings(obs):
    from obs_plugin.settings import ObsSettings

    return ObsSettings(host="127.0.0.1", port=obs.port, password=PASSWORD)


def make_link(rig, settings, links, **kw):
    from obs_plugin.link import ObsLink

    link = ObsLink(settings, rig.engine.bus, lambda: rig.engine.presets, rig.engine.state, **kw)
    assert link.try_connect()
    link.start()
    return links(link)


logging.getLogger("obsws_python").setLevel(logging.CRITICAL)
