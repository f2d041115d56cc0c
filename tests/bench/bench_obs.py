"""OBS integration benchmark against a real headless OBS Studio (not part of the test run).

    python tests/bench/bench_obs.py [--runs 20] [--size 640x360] [--fps 30] [--json out.json]

Measures, with the same rig as tests/integration (a still image of colour blocks, presets that differ
by a colour grade, the engine's real live runner, the real OBS link and stream sink):

1. scene -> avatar: ``SetCurrentProgramScene`` sent -> first engine output frame made by the bound
   preset (also from the moment the link received ``CurrentProgramSceneChanged``). Target < 100 ms.
2. output -> OBS: first engine output frame of a new preset -> first ``GetSourceScreenshot`` of the
   Media Source reading ``--output obs`` that shows it (polled back to back; the poll period is
   reported as the resolution). Target < 300 ms.
3. OBS restart: OBS killed, restarted; frames keep flowing (largest gap between output frames while
   OBS is down or starting) and time from OBS's port accepting again to the link being connected.
   Target: reconnected < 2 s after OBS is back.

Prints a JSON report with medians, spread, and the machine (load average included: the numbers are
only as good as the cores that were free).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import random
import shutil
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import cv2
import numpy as np

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests" / "integration"))

from conftest import PRESETS, block_colors, blocks_image, paced_image  # noqa: E402

from engine.control import parse_command  # noqa: E402
from engine.preset import loads_preset  # noqa: E402
from engine.runtime import Engine, LiveRunner  # noqa: E402
from obs_plugin.link import ObsLink  # noqa: E402
from obs_plugin.scene_setup import stream_input_settings  # noqa: E402
from obs_plugin.settings import ObsSettings  # noqa: E402
from obs_plugin.stream import StreamSink  # noqa: E402
from obs_plugin.testing import HeadlessObs, free_port, screenshot  # noqa: E402

SCENES = ("Just Chatting", "Gaming", "BRB")


def summary(xs: list[float]) -> dict:
    xs = sorted(xs)
    return {"n": len(xs), "median_ms": round(statistics.median(xs) * 1000, 1),
            "p10_ms": round(xs[len(xs) // 10] * 1000, 1), "p90_ms": round(xs[(len(xs) * 9) // 10] * 1000, 1),
            "min_ms": round(xs[0] * 1000, 1), "max_ms": round(xs[-1] * 1000, 1)}


class Rig:
    def __init__(self, size, fps, sink, tmp: Path):
        img = cv2.resize(blocks_image(), size, interpolation=cv2.INTER_NEAREST)
        still = tmp / "blocks.png"
        cv2.imwrite(str(still), img)
        self.presets = [loads_preset(PRESETS[n]) for n in ("Warm", "Cool", "Dark")]
        self.source = paced_image(still, fps)
        self.source.open()
        self.engine = Engine(self.presets, source_size=self.source.size, fps=fps, out_size=size, live=True,
                             prepare="all")
        self.engine.start()
        self.frames: list[tuple[float, str]] = []
        self.runner = LiveRunner(self.source, self.engine, sink, fps=fps, on_frame=self.on_frame, status_every=3600)
        self.thread = threading.Thread(target=self.runner.run, daemon=True)
        self.thread.start()

    def on_frame(self, frame, meta):
        self.frames.append((time.perf_counter(), meta.preset_name))

    def first(self, name: str, after: float, timeout: float = 5.0) -> float:
        t_end = time.monotonic() + timeout
        i = 0
        while time.monotonic() < t_end:
            fr = self.frames
            while i < len(fr):
                if fr[i][1] == name and fr[i][0] >= after:
                    return fr[i][0]
                i += 1
            time.sleep(0.001)
        raise RuntimeError(f"no {name} frame within {timeout} s")

    def stop(self):
        self.runner.stop()
        self.thread.join(10)
        self.engine.close()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--restarts", type=int, default=5)
    ap.add_argument("--size", default="640x360")
    ap.add_argument("--fps", type=float, default=30.0)
    ap.add_argument("--json", help="also write the report here")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    w, h = (int(v) for v in args.size.split("x"))
    report: dict = {"machine": {"python": platform.python_version(), "platform": platform.platform(),
                                "cpus": os.cpu_count(), "loadavg_start": os.getloadavg()},
                    "config": {"size": args.size, "fps": args.fps, "runs": args.runs, "obs_canvas_fps": 30}}
    tmp = Path(tempfile.mkdtemp(prefix="avatarcast-bench-"))
    obs = HeadlessObs(tmp / "obs", password="bench", scenes=SCENES, canvas=(w, h), fps=30)
    obs.start()
    sink = StreamSink("127.0.0.1", free_port())
    rig = Rig((w, h), args.fps, sink, tmp)
    link = ObsLink(ObsSettings(port=obs.port, password="bench"), rig.engine.bus, lambda: rig.engine.presets,
                   rig.engine.state)
    t_event: list[float] = []
    orig = link._on_event

    def spy(event_type, data):
        if event_type == "CurrentProgramSceneChanged":
            t_event.append(time.perf_counter())
        orig(event_type, data)

    link._on_event = spy
    try:
        assert link.try_connect()
        link.start()
        req = obs.client()
        report["machine"]["obs"] = link.version
        rig.first("Warm", 0)

        # 1. scene -> avatar
        total, from_event = [], []
        for i in range(args.runs):
            scene, preset = (("Gaming", "Cool"), ("Just Chatting", "Warm"))[i % 2]
            time.sleep(0.2 + random.uniform(0, 2 / args.fps))  # random phase against the frame clock
            t_event.clear()
            t0 = time.perf_counter()
            req.send("SetCurrentProgramScene", {"sceneName": scene})
            t1 = rig.first(preset, t0)
            total.append(t1 - t0)
            if t_event:
                from_event.append(t1 - t_event[0])
        report["scene_to_first_new_frame"] = {"from_request": summary(total), "from_event": summary(from_event),
                                              "target_ms": 100}

        # 2. engine output -> OBS screenshot (stream path)
        req.send("CreateInput", {"sceneName": "Just Chatting", "inputName": "avatarcast", "inputKind": "ffmpeg_source",
                                 "inputSettings": stream_input_settings(sink.url), "sceneItemEnabled": True})
        from nodes.color import color_adjust

        img = cv2.resize(blocks_image(), (w, h), interpolation=cv2.INTER_NEAREST)
        want = {p.name: block_colors(color_adjust(img, **p.nodes[0].params)) for p in rig.presets}

        def seen_colors():
            shot = screenshot(req, "avatarcast")
            return None if shot is None else block_colors(shot)

        t_end = time.monotonic() + 20
        while time.monotonic() < t_end:
            c = seen_colors()
            if c is not None and np.abs(c - want[rig.engine.preset.name]).max() < 12:
                break
            time.sleep(0.05)
        lat, polls = [], []
        order = ["Cool", "Dark", "Warm"]
        for i in range(args.runs):
            name = order[i % 3]
            time.sleep(0.3 + random.uniform(0, 2 / args.fps))
            t0 = time.perf_counter()
            rig.engine.bus.send(parse_command({"command": "switch_preset", "name": name}))
            t_out = rig.first(name, t0)
            t_prev = time.perf_counter()
            t_end = time.monotonic() + 5
            while time.monotonic() < t_end:
                c = seen_colors()
                now = time.perf_counter()
                polls.append(now - t_prev)
                t_prev = now
                if c is not None and np.abs(c - want[name]).max() < 12:
                    lat.append(now - t_out)
                    break
        report["output_to_obs_screenshot"] = {**summary(lat), "poll_period": summary(polls), "target_ms": 300}

        # 3. OBS restart
        reconnect, gaps, down_frames = [], [], []
        for _ in range(args.restarts):
            time.sleep(0.5)
            n0 = rig.runner.stats.frames_output
            t_kill = time.perf_counter()
            obs.kill()
            time.sleep(1.0)
            obs.start_obs()
            t_back = time.perf_counter()
            t_end = time.monotonic() + 10
            while not link.connected.is_set() and time.monotonic() < t_end:
                time.sleep(0.005)
            t_conn = time.perf_counter()
            reconnect.append(t_conn - t_back)
            ts = [t for t, _ in rig.frames if t_kill <= t <= t_conn]
            gaps.append(max(np.diff(ts)) if len(ts) > 1 else float("inf"))
            down_frames.append({"frames_out": rig.runner.stats.frames_output - n0,
                                "seconds": round(t_conn - t_kill, 2)})
        req = obs.client()
        report["obs_restart"] = {"reconnect_after_port_open": summary(reconnect),
                                 "largest_output_gap_during_outage": summary(gaps),
                                 "frames_during_outage": down_frames, "target_reconnect_ms": 2000,
                                 "frame_period_ms": round(1000 / args.fps, 1)}
        report["machine"]["loadavg_end"] = os.getloadavg()
    finally:
        link.stop()
        rig.stop()
        obs.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    text = json.dumps(report, indent=2)
    print(text)
    if args.json:
        Path(args.json).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
