"""Benchmark: global hotkey -> first output frame showing the new preset, and what preparing presets in
the background costs the live output.

    python tests/bench/bench_hotkeys.py                    # both parts, prints a report
    python tests/bench/bench_hotkeys.py --json out.json    # also writes figures + machine info
    python tests/bench/bench_hotkeys.py --rounds 0         # part 1 only (--switches 0: part 2 only)

Part 1 (switch latency): a live engine (built-in demo camera, 1280x720 at 30 fps, output paced at 30 fps)
with 9 presets, the global hotkey listener on a private Xvfb, and 50 real key presses
(``xdotool key ctrl+alt+N``) at random moments. Latency = from just before xdotool is started to the
output thread sending the first frame made by the new preset. Target: median under 2 frame intervals
(66.7 ms at 30 fps).

Part 2 (background preparation): the same live engine; one phase with nothing being prepared, one phase
in which the 9 presets (each with 4 real avatar images from ../shared/data/avatars, or generated ones
when absent) are prepared over and over in the background (``reload``), and, for comparison, the same
with the preparing thread's mitigations off (normal priority, no pauses). Per phase: output ticks sent
more than half an interval late, the latest tick, frames dropped, capture->output latency.
Target: preparing never makes an output frame late (same late count as the idle phase).

``--pipeline reenact``: the same with 3 presets ``face`` + ``reenact`` on real paintings at 640x360
(a fresh AVATARCAST_CACHE: the first preparation of each avatar is cold, reloads hit the cache).

Needs Xvfb and xdotool (apt-get install xvfb xdotool). Runs ~2 minutes.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import random
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests" / "integration"))

from x_display import key, missing_tools, start_xvfb, stop_xvfb, write_preset_files  # noqa: E402

from engine import bench  # noqa: E402
from engine.control import CommandBus, make_command  # noqa: E402
from engine.preset import load_preset  # noqa: E402
from engine.runtime import Engine, FrameMeta, LiveRunner  # noqa: E402
from engine.sinks import Sink  # noqa: E402
from engine.sources import DemoSource  # noqa: E402

SIZE = (1280, 720)
PIPELINE = "color"
FPS = 30.0
PERIOD_MS = 1000.0 / FPS
AVATARS = REPO.parent / "shared" / "data" / "avatars"


class NullSink(Sink):
    def open(self, size, fps) -> None:
        pass

    def write(self, frame) -> None:
        pass

    def close(self, ok: bool = True) -> None:
        pass


class TimedBus(CommandBus):
    """Records when each command was queued (the pynput callback's moment)."""

    def __init__(self) -> None:
        super().__init__()
        self.sent: list[tuple[str, float]] = []

    def send(self, cmd) -> None:
        self.sent.append((cmd.name, cmd.t))
        super().send(cmd)


def avatar_images(folder: Path) -> list[Path]:
    found = sorted(AVATARS.glob("*.jpg"))[:4] if AVATARS.is_dir() else []
    if found:
        return found
    import cv2

    rng = np.random.default_rng(0)
    out = []
    for i in range(4):
        p = folder / f"avatar{i}.jpg"
        cv2.imwrite(str(p), cv2.GaussianBlur(rng.integers(0, 256, (1024, 768, 3), dtype=np.uint8), (0, 0), 3))
        out.append(p)
    return out


def write_presets(folder: Path, images: list[Path]) -> list[Path]:
    if PIPELINE == "reenact":
        return write_reenact_presets(folder)
    imgs = ", ".join(str(p) for p in images)
    return write_preset_files(folder, [f"name: p{i + 1}\navatar:\n  images: [{imgs}]\npipeline:\n"
                                       f"  - node: color_adjust\n    id: color\n    hue_shift: {-160 + 40 * i}\n"
                                       f"    saturation: 0.4\n  - node: mirror\n" for i in range(9)])


def write_reenact_presets(folder: Path) -> list[Path]:
    """Three avatars (real paintings from ../shared/data/avatars) driven by the face tracker: the heavy,
    real preparation (face detector and mesh models, avatar landmarks and mesh from engine.cache)."""
    names = ("mona_lisa.jpg", "pearl_earring.jpg", "painted_child.jpg")
    if not all((AVATARS / n).is_file() for n in names):
        raise SystemExit(f"--pipeline reenact needs {', '.join(names)} in {AVATARS}")
    return write_preset_files(folder, [f"name: r{i + 1}\navatar:\n  images: [{AVATARS / n}]\npipeline:\n"
                                       f"  - node: face\n  - node: reenact\n    size: {SIZE[0]}x{SIZE[1]}\n"
                                       for i, n in enumerate(names)], stem="r")


class Rig:
    def __init__(self, files: list[Path]):
        from engine import hotkeys as hk

        self.files = files
        self.bus = TimedBus()
        self.engine = Engine([load_preset(f) for f in files], source_size=SIZE, fps=FPS, live=True,
                             prepare="background", bus=self.bus, reload=lambda: [load_preset(f) for f in files])
        self.engine.start()
        self.engine.wait_prepared(120)
        self.lock = threading.Condition()
        self.frames: list[tuple[float, int, int, float]] = []  # (t_out, capture index, preset, t_capture)
        self.events: list[tuple[float, dict]] = []
        self.engine.bus.subscribe(self._event)
        self.source = DemoSource(SIZE, FPS, paced=True)
        self.source.open()
        self.runner = LiveRunner(self.source, self.engine, NullSink(), fps=FPS, on_frame=self._frame)
        self.listener = hk.HotkeyListener(hk.resolve(self.engine.presets), self.bus)
        if not self.listener.start():
            raise SystemExit("the hotkey listener did not start")
        self.thread = threading.Thread(target=self.runner.run, daemon=True)
        self.thread.start()
        time.sleep(1.0)

    def _frame(self, frame, meta: FrameMeta) -> None:
        with self.lock:
            self.frames.append((time.perf_counter(), meta.index, meta.preset, meta.t_capture))
            self.lock.notify_all()

    def _event(self, e: dict) -> None:
        with self.lock:
            self.events.append((time.perf_counter(), e))
            self.lock.notify_all()

    def stop(self) -> None:
        self.runner.stop()
        self.thread.join(10)
        self.listener.stop()
        self.engine.close()
        self.source.close()


def pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))]


def part_switch(rig: Rig, display: str, n: int = 50) -> dict:
    rng = random.Random(1)
    total, to_cmd, cmd_to_frame = [], [], []
    current = rig.engine.active
    for _ in range(n):
        target = rng.choice([i for i in range(len(rig.engine.presets)) if i != current])
        time.sleep(rng.uniform(0.15, 0.35))  # random phase against the frame clock
        n_sent = len(rig.bus.sent)
        t_key = time.perf_counter()
        key(display, f"ctrl+alt+{target + 1}")
        with rig.lock:
            ok = rig.lock.wait_for(lambda tg=target, tk=t_key: any(p == tg and t > tk for t, _, p, _ in rig.frames[-8:]), 5)
        if not ok:
            raise SystemExit(f"preset {target + 1} never showed up")
        t_frame = next(t for t, _, p, _ in rig.frames if p == target and t > t_key)
        t_cmd = rig.bus.sent[n_sent][1]
        total.append((t_frame - t_key) * 1000)
        to_cmd.append((t_cmd - t_key) * 1000)
        cmd_to_frame.append((t_frame - t_cmd) * 1000)
        current = target
    med = statistics.median(total)
    return {"switches": n, "median_ms": med, "p90_ms": pct(total, 0.9), "max_ms": max(total), "min_ms": min(total),
            "median_frame_intervals": med / PERIOD_MS,
            "key_to_command_median_ms": statistics.median(to_cmd),
            "command_to_frame_median_ms": statistics.median(cmd_to_frame),
            "target": "median < 2 frame intervals (66.7 ms)", "met": med < 2 * PERIOD_MS}


def phase(rig: Rig, seconds: float, preparing: bool) -> dict:
    """Run for ``seconds`` (or until the reload under way is done), reloading (= preparing all 9 presets again, in the background) back to back
    when ``preparing``. Counts from the runner's stats over the phase."""
    st = rig.runner.stats
    st.tick_late_max_ms = 0.0
    s0 = (st.late_output, rig.runner.cap_tb.dropped, rig.runner.out_tb.dropped, st.frames_output, st.instant_output,
          st.repeated_output)
    n_frames0 = len(rig.frames)
    prepared = 0
    t0 = time.perf_counter()
    t_end = t0 + seconds
    while time.perf_counter() < t_end:
        if not preparing:
            time.sleep(0.05)
            continue
        n_ev = len(rig.events)
        rig.engine.bus.send(make_command("reload"))
        with rig.lock:
            rig.lock.wait_for(lambda n=n_ev: any(e.get("event") in ("reloaded", "rejected") for _, e in rig.events[n:]),
                              60)
        prepared += len(rig.engine.presets)
    lat = [(t - tc) * 1000 for t, _, _, tc in rig.frames[n_frames0:]]
    return {"seconds": time.perf_counter() - t0, "presets_prepared": prepared, "output_frames": st.frames_output - s0[3], "late_output": st.late_output - s0[0],
            "tick_late_max_ms": st.tick_late_max_ms, "instant_output": st.instant_output - s0[4],
            "repeated_output": st.repeated_output - s0[5], "dropped_capture": rig.runner.cap_tb.dropped - s0[1],
            "dropped_processed": rig.runner.out_tb.dropped - s0[2], "latency_ms": lat,
            "load_avg_1min": os.getloadavg()[0]}


def rounds(rig: Rig, n: int, seconds: float) -> dict:
    """Alternate idle and preparing phases (the machine's other load drifts; alternating spreads it
    evenly over both) and add them up."""
    out: dict[str, dict] = {}
    for _ in range(n):
        for name, preparing in (("idle", False), ("preparing", True)):
            p = phase(rig, seconds, preparing)
            acc = out.setdefault(name, {"seconds": 0.0, "presets_prepared": 0, "output_frames": 0, "instant_output": 0,
                                        "repeated_output": 0, "late_output": 0,
                                        "tick_late_max_ms": 0.0, "dropped": 0, "latency_ms": [], "load": []})
            acc["seconds"] += p["seconds"]  # a reload under way finishes: a preparing phase may run longer
            acc["presets_prepared"] += p["presets_prepared"]
            acc["output_frames"] += p["output_frames"]
            acc["instant_output"] += p["instant_output"]
            acc["repeated_output"] += p["repeated_output"]
            acc["late_output"] += p["late_output"]
            acc["tick_late_max_ms"] = max(acc["tick_late_max_ms"], p["tick_late_max_ms"])
            acc["dropped"] += p["dropped_capture"] + p["dropped_processed"]
            acc["latency_ms"] += p["latency_ms"]
            acc["load"].append(p["load_avg_1min"])
    for acc in out.values():
        lat = acc.pop("latency_ms")
        acc["latency_median_ms"] = statistics.median(lat)
        acc["latency_p99_ms"] = pct(lat, 0.99)
        acc["load_avg_1min"] = statistics.mean(acc.pop("load"))
    out["prepare_ms_median"] = statistics.median(rig.engine.prepare_ms.values())
    return out


def print_rounds(title: str, r: dict) -> None:
    print(f"   {title}: one preset prepared in {r['prepare_ms_median']:.0f} ms (median)")
    print(f"     {'phase':<11}{'s':>4}{'presets':>9}{'frames':>8}{'instant':>8}{'repeats':>8}{'late':>6}{'latest ms':>11}{'dropped':>9}"
          f"{'lat med':>9}{'lat p99':>9}{'load':>6}")
    for name in ("idle", "preparing"):
        p = r[name]
        print(f"     {name:<11}{p['seconds']:>4.0f}{p['presets_prepared']:>9}{p['output_frames']:>8}"
              f"{p['instant_output']:>8}{p['repeated_output']:>8}{p['late_output']:>6}"
              f"{p['tick_late_max_ms']:>11.1f}{p['dropped']:>9}{p['latency_median_ms']:>9.1f}{p['latency_p99_ms']:>9.1f}"
              f"{p['load_avg_1min']:>6.1f}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--json", metavar="FILE", help="also write the figures as JSON")
    ap.add_argument("--switches", type=int, default=50, help="presses in part 1 (0: skip part 1)")
    ap.add_argument("--seconds", type=float, default=5.0, help="length of each part-2 phase")
    ap.add_argument("--rounds", type=int, default=4, help="idle/preparing phase pairs in part 2 (0: skip part 2)")
    ap.add_argument("--pipeline", choices=("color", "reenact"), default="color",
                    help="color: 9 colour-grade presets with 4 avatar images each at 1280x720 (default); reenact: "
                         "3 face + reenact presets on real paintings at 640x360 (the heavy, real preparation)")
    args = ap.parse_args()
    global PIPELINE, SIZE
    PIPELINE = args.pipeline
    if PIPELINE == "reenact":
        SIZE = (640, 360)
        os.environ.setdefault("AVATARCAST_CACHE", tempfile.mkdtemp(prefix="avatarcast-bench-cache-"))
    logging.basicConfig(level=logging.WARNING, format="%(name)s: %(message)s")
    missing = missing_tools()
    if missing:
        print(f"cannot run: {', '.join(missing)} not installed (apt-get install xvfb xdotool)")
        return 2
    xvfb, display = start_xvfb()
    os.environ["DISPLAY"] = display
    os.environ["AVATARCAST_HOME"] = tempfile.mkdtemp(prefix="avatarcast-bench-home-")  # defaults only
    tmp = Path(tempfile.mkdtemp(prefix="avatarcast-bench-"))
    result: dict = {"machine": bench.machine(), "pipeline": PIPELINE, "size": f"{SIZE[0]}x{SIZE[1]}", "fps": FPS,
                    "load_avg_at_start": os.getloadavg()}
    print("machine: " + ", ".join(f"{k} {v}" for k, v in result["machine"].items()))
    print(f"load average at start: {' '.join(f'{v:.1f}' for v in os.getloadavg())} "
          f"(on {os.cpu_count()} cores shared with other work)")
    try:
        rig = Rig(write_presets(tmp, avatar_images(tmp)))
        try:
            if args.switches:
                sw = result["switch"] = part_switch(rig, display, args.switches)
                print(f"\n1. hotkey -> first output frame of the new preset, {sw['switches']} real xdotool presses, "
                      f"{SIZE[0]}x{SIZE[1]} at {FPS:g} fps:")
                print(f"   median {sw['median_ms']:.1f} ms = {sw['median_frame_intervals']:.2f} frame intervals "
                      f"(p90 {sw['p90_ms']:.1f}, min {sw['min_ms']:.1f}, max {sw['max_ms']:.1f} ms); "
                      f"target < 66.7 ms: {'met' if sw['met'] else 'NOT met'}")
                print(f"   of which key -> command on the bus {sw['key_to_command_median_ms']:.1f} ms (xdotool + X + "
                      f"pynput), command -> frame out {sw['command_to_frame_median_ms']:.1f} ms (median)")
            if args.rounds:
                print(f"\n2. background preparation vs none, {args.rounds} x ({args.seconds:g} s idle, "
                      f"{args.seconds:g} s preparing); late = sent more than {PERIOD_MS / 2:.1f} ms after its tick:")
                result["prepare"] = rounds(rig, args.rounds, args.seconds)
                print_rounds("as shipped (steps after frames, low-priority decoding, 1 numba thread, 0.5 ms GIL interval)",
                             result["prepare"])
        finally:
            rig.stop()
        if args.rounds:  # for comparison: the preparing thread without its mitigations
            from engine import runtime

            runtime.calm_preparing_thread = lambda: None
            runtime.Engine._pause = lambda self: None
            runtime.PREPARE_SWITCH_INTERVAL = sys.getswitchinterval()
            decode = runtime.decode_image
            runtime.decode_image = lambda path, low_priority=False: decode(path)
            rig = Rig(write_presets(tmp, avatar_images(tmp)))
            try:
                result["prepare_unmitigated"] = rounds(rig, args.rounds, args.seconds)
                print_rounds("without mitigations (steps back to back, normal decoding, all numba threads, 5 ms interval)",
                             result["prepare_unmitigated"])
            finally:
                rig.stop()
    finally:
        stop_xvfb(xvfb)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
        print(f"\nwrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
