"""``avatarcast``: the command line. User mistakes print one clear message (no traceback), exit 2."""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import os
import sys
import time
from pathlib import Path

from . import __version__
from .errors import UserError
from .params import ParamError, parse_size

log = logging.getLogger("avatarcast")
# Modules that add subcommands or options: each has ``add_commands(sub, parsers)`` where ``sub`` is the
# subcommand action and ``parsers`` maps "run", "render", "demo", "preset" (its sub-action: "preset_sub")
# to the existing parsers. Modules not present in this install are skipped.
EXTENSIONS: tuple[str, ...] = ("engine.hotkeys", "engine.bundle", "obs_plugin.cli", "nodes.evaluate")
DEFAULT_DEMO_PRESET = "demo"


def _size(text: str) -> tuple[int, int]:
    try:
        return parse_size(text)
    except ParamError as exc:
        raise argparse.ArgumentTypeError(f"{exc} (width x height, e.g. 1280x720)") from None


def _pos_int(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {v}")
    return v


def _fps(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not 1 <= v <= 240:
        raise argparse.ArgumentTypeError(f"fps must be 1..240, got {v:g}")
    return v


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is at the time of each record (not the one at set-up), so a
    replaced or closed stderr (tests, embedding) never breaks logging."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value):
        pass


def setup_logging(verbose: int, quiet: bool) -> None:
    level = logging.WARNING if quiet else (logging.DEBUG if verbose else logging.INFO)
    handler = _StderrHandler()
    handler.setFormatter(logging.Formatter("avatarcast: %(levelname)s: %(message)s" if verbose else
                                           "avatarcast: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for noisy in ("numba", "absl", "jax", "urllib3", "websocket", "obsws_python", "PIL", "matplotlib"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


# ---- commands ------------------------------------------------------------------------------------

def load_presets(words: list[str]):
    from .library import find_preset

    return [find_preset(w) for w in words]


def _engine(presets, source, args, live: bool):
    from .device import pick_device
    from .library import find_preset_file
    from .preset import load_preset
    from .runtime import Engine

    words = list(getattr(args, "preset", None) or [])
    reload = (lambda: [load_preset(find_preset_file(w)) for w in words]) if words else None
    return Engine(presets, source_size=source.size, fps=source.fps, out_size=args.size if live else
                  getattr(args, "size", None), device=pick_device(getattr(args, "device", "auto")), live=live,
                  prepare="background" if live else "all", reload=reload)


def cmd_run(args) -> int:
    from .runtime import LiveRunner
    from .sinks import open_sink_spec
    from .sources import open_source

    presets = load_presets(args.preset or [DEFAULT_DEMO_PRESET])
    source = open_source(args.source, camera=args.camera, size=args.size, fps=args.fps, live=True)
    sink = open_sink_spec(args.output, vcam_device=args.vcam_device, vcam_backend=args.vcam_backend)
    source.open()
    try:
        engine = _engine(presets, source, args, live=True)
        engine.hud = args.hud
        engine.mirror = args.mirror
        engine.start()
        for hook in RUN_HOOKS:
            hook(engine, args)
        runner = LiveRunner(source, engine, sink, fps=args.fps or source.fps, max_frames=args.max_frames,
                            duration=args.duration)
        runner.open_sink()
        names = ", ".join(f"{i + 1}: {p.name}" for i, p in enumerate(presets))
        log.info("live: %s %dx%d -> %s %dx%d at %.3g fps; presets %s (Ctrl+C to stop)", source.name,
                 *source.size, args.output, *engine.out_size, runner.fps, names)
        try:
            stats = runner.run()
        except KeyboardInterrupt:
            runner.stop()
            stats = runner.stats
        log.info("stopped: %d frames out, %d processed, dropped %d camera + %d processed frames, latency %.1f ms",
                 stats.frames_output, stats.frames_processed, stats.dropped_capture, stats.dropped_processed,
                 stats.latency_ms)
        for hook in STOP_HOOKS:
            hook(engine)
        engine.close()
    finally:
        source.close()
    return 0


RUN_HOOKS: list = []  # callables (engine, args) run after the engine starts (hotkeys, OBS)
STOP_HOOKS: list = []


def cmd_render(args) -> int:
    from .runtime import render
    from .sinks import FileSink, check_output_path
    from .sources import open_source

    check_output_path(Path(args.output))
    presets = load_presets([args.preset])
    source = open_source(args.input, live=False, frames=args.max_frames)
    source.open()
    try:
        engine = _engine(presets, source, args, live=False)
        engine.start()
        sink = FileSink(args.output, audio_from=args.input if not args.no_audio else None)
        t0 = time.perf_counter()
        n = render(source, engine, sink, max_frames=args.max_frames, progress=not args.no_progress)
        dt = time.perf_counter() - t0
        engine.close()
    finally:
        source.close()
    print(f"wrote {args.output} ({n} frames, {engine.out_size[0]}x{engine.out_size[1]}, {n / dt:.1f} fps)")
    return 0


def cmd_demo(args) -> int:
    from .library import find_preset
    from .runtime import render
    from .sinks import FileSink, WindowSink, display_available

    preset = find_preset(args.preset)
    source = DEMO_SOURCE_FACTORY(args)
    source.open()
    try:
        engine = _engine([preset], source, args, live=False)
        engine.start()
        out = Path(args.output)
        n = render(source, engine, FileSink(out), progress=not args.no_progress)
        engine.close()
    finally:
        source.close()
    print(f"wrote {out.resolve()} ({n} frames, {engine.out_size[0]}x{engine.out_size[1]}) "
          f"with preset {preset.name!r}")
    if args.window:
        ok, why = display_available()
        if not ok:
            log.info("not showing a window: %s", why)
        else:
            _play(out, WindowSink(f"avatarcast demo: {preset.name}"))
    return 0


def _default_demo_source(args):
    from .sources import DemoSource

    return DemoSource(args.size or (1280, 720), 30.0, frames=args.frames)


DEMO_SOURCE_FACTORY = _default_demo_source  # issue-3 reenactment demo replaces this with a scripted driver


def _play(path: Path, sink) -> None:
    import numpy as np

    from .sources import VideoSource

    src = VideoSource(path, paced=True)
    src.open()
    buf = np.zeros((src.size[1], src.size[0], 3), np.uint8)
    sink.open(src.size, src.fps)
    try:
        while src.read(buf):
            sink.write(buf)
    finally:
        sink.close()
        src.close()


def cmd_nodes(args) -> int:
    from .node import discover

    reg = discover()
    if args.json:
        out = []
        for kind, cls in sorted(reg.items()):
            out.append({"node": kind, "family": cls.family, "description": cls.description,
                        "inputs": [{"name": p.name, "type": p.type.value, "description": p.description}
                                   for p in cls.inputs],
                        "outputs": [{"name": p.name, "type": p.type.value, "description": p.description}
                                    for p in cls.outputs],
                        "params": {p.name: p.json_schema() for p in cls.params},
                        "commands": list(cls.commands)})
        print(json.dumps(out, indent=2))
        return 0
    for kind, cls in sorted(reg.items(), key=lambda kv: (kv[1].family, kv[0])):
        if args.names and kind not in args.names:
            continue
        print(f"{kind}  [{cls.family}]  {cls.description}")
        for label, ports in (("in ", cls.inputs), ("out", cls.outputs)):
            for p in ports:
                opt = " (optional)" if p.optional else ""
                print(f"    {label} {p.name}: {p.type.value}{opt}  {p.description}")
        for p in cls.params:
            default = p.default if not isinstance(p.default, tuple) else list(p.default)
            live = "" if p.live else "  [fixed while running]"
            print(f"    param {p.name}: {p.kind_text()} = {default!r}  {p.description}{live}")
        if cls.commands:
            print(f"    commands: {', '.join(cls.commands)}")
        print()
    return 0


def cmd_preset_validate(args) -> int:
    from .errors import PresetError
    from .library import find_preset_file
    from .preset import load_preset

    bad = 0
    for word in args.files:
        try:
            p = load_preset(find_preset_file(word))
        except PresetError as exc:
            bad += 1
            print(exc.render(), file=sys.stderr)
            continue
        except UserError as exc:
            bad += 1
            print(exc.render(), file=sys.stderr)
            continue
        print(f"{word}: ok: {p.name!r}, {len(p.nodes)} nodes ({', '.join(n.id for n in p.nodes) or 'none'})")
    return 2 if bad else 0


def cmd_bench(args) -> int:
    from . import bench
    from .node import discover

    discover()
    unknown = [n for n in args.names if n not in bench.CASES]
    if unknown:
        raise UserError(f"unknown benchmark {', '.join(unknown)}", hint="benchmarks: " + ", ".join(sorted(bench.CASES)))
    if args.list:
        for name, c in sorted(bench.CASES.items()):
            print(f"{name:<28} {c.description}")
        return 0
    data = bench.run(args.names or None, repeat=args.repeat)
    if args.json:
        bench.write_json(data, args.json)
        print(f"\nwrote {args.json}")
    return 0


# ---- parser --------------------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="avatarcast", description="Real-time avatars for live streamers: "
                                 "a webcam in, an animated avatar out (virtual camera, OBS, files).")
    ap.add_argument("--version", action="version", version=f"avatarcast {__version__}")
    ap.add_argument("-v", "--verbose", action="count", default=0, help="more log output (debug)")
    ap.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors")
    sub = ap.add_subparsers(dest="command", metavar="COMMAND")

    r = sub.add_parser("run", help="live: camera -> preset -> virtual camera / window / file / pipe",
                       description="Run live. Frames are always the newest from the camera; late frames are dropped "
                                   "(and counted), never queued. Prints fps and per-node timings while running.")
    r.add_argument("--preset", action="append", metavar="PRESET",
                   help="preset file or name; repeat to load a set to switch between (default: demo)")
    g = r.add_mutually_exclusive_group()
    g.add_argument("--camera", metavar="N|PATH", help="camera index (0, 1, ...) or device path (/dev/video2)")
    g.add_argument("--source", metavar="SOURCE", help="demo (default), a video file (loops) or an image")
    r.add_argument("--output", default="vcam", metavar="OUT",
                   help="vcam (virtual camera, default), window, file:PATH, pipe (raw bgr24 on stdout)")
    r.add_argument("--vcam-device", metavar="DEV", help="virtual camera device (e.g. /dev/video10)")
    r.add_argument("--vcam-backend", metavar="NAME", help="pyvirtualcam backend (v4l2loopback, obs, unitycapture)")
    r.add_argument("--size", type=_size, metavar="WxH", help="camera and output size (default 1280x720)")
    r.add_argument("--fps", type=_fps, metavar="FPS", help="camera and output fps (default 30)")
    r.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto", help="where per-pixel work runs")
    r.add_argument("--max-frames", type=_pos_int, metavar="N", help="stop after N output frames")
    r.add_argument("--duration", type=float, metavar="SEC", help="stop after SEC seconds")
    r.add_argument("--hud", action="store_true", help="draw avatar name, fps and node timings on the output")
    r.add_argument("--mirror", action="store_true", help="flip the camera image (selfie view)")
    r.set_defaults(func=cmd_run)

    d = sub.add_parser("render", help="offline: a video or image through a preset into a file",
                       description="Render every frame of INPUT through PRESET in order (deterministic) into "
                                   "OUTPUT (.mp4/.mkv, or .png/.jpg for a still). Copies the input's audio track.")
    d.add_argument("input", metavar="INPUT", help="video or image file")
    d.add_argument("-o", "--output", required=True, metavar="OUTPUT", help="output file (.mp4, .mkv, .png, .jpg)")
    d.add_argument("--preset", required=True, metavar="PRESET", help="preset file or name")
    d.add_argument("--max-frames", type=_pos_int, metavar="N", help="render only the first N frames")
    d.add_argument("--size", type=_size, metavar="WxH", help="output size (default: the preset's output size)")
    d.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto", help="where per-pixel work runs")
    d.add_argument("--no-audio", action="store_true", help="do not copy the input's audio")
    d.add_argument("--no-progress", action="store_true", help="no progress bar")
    d.set_defaults(func=cmd_render)

    m = sub.add_parser("demo", help="the built-in demo: no camera, no GPU, no downloads; writes a video",
                       description="Run a shipped preset on the built-in demo source and write a short video.")
    m.add_argument("-o", "--output", default="avatarcast-demo.mp4", metavar="FILE", help="video to write")
    m.add_argument("--preset", default=DEFAULT_DEMO_PRESET, metavar="PRESET", help="preset (default: demo)")
    m.add_argument("--frames", type=_pos_int, default=150, metavar="N", help="number of frames (default 150)")
    m.add_argument("--size", type=_size, metavar="WxH", help="demo source size")
    m.add_argument("--window", action="store_true", help="also play it in a window when a display exists")
    m.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto", help="where per-pixel work runs")
    m.add_argument("--no-progress", action="store_true", help="no progress bar")
    m.set_defaults(func=cmd_demo)

    n = sub.add_parser("nodes", help="list every node with its ports and params")
    n.add_argument("names", nargs="*", metavar="NODE", help="only these nodes")
    n.add_argument("--json", action="store_true", help="machine-readable")
    n.set_defaults(func=cmd_nodes)

    p = sub.add_parser("preset", help="preset files: validate, ...")
    psub = p.add_subparsers(dest="preset_command", metavar="ACTION")
    pv = psub.add_parser("validate", help="check preset files without running them")
    pv.add_argument("files", nargs="+", metavar="FILE")
    pv.set_defaults(func=cmd_preset_validate)
    p.set_defaults(func=lambda a: (p.print_help(), 2)[1])

    b = sub.add_parser("bench", help="benchmarks: median of repeated runs with machine info")
    b.add_argument("names", nargs="*", metavar="NAME", help="only these cases (see --list)")
    b.add_argument("--list", action="store_true", help="list the cases")
    b.add_argument("--repeat", type=_pos_int, default=30, help="timed runs per variant (default 30)")
    b.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    b.set_defaults(func=cmd_bench)

    parsers = {"run": r, "render": d, "demo": m, "nodes": n, "preset": p, "preset_sub": psub, "bench": b}
    for modname in EXTENSIONS:
        try:
            mod = importlib.import_module(modname)
        except ModuleNotFoundError as exc:
            if exc.name == modname:
                continue
            raise
        mod.add_commands(sub, parsers)
    return ap


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("OPENCV_LOG_LEVEL", "ERROR")
    os.environ.setdefault("GLOG_minloglevel", "2")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    parser = build_parser()
    args = parser.parse_args(argv)
    setup_logging(args.verbose, args.quiet)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except UserError as exc:
        print(f"avatarcast: error: {exc.render()}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("avatarcast: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0


if __name__ == "__main__":
    sys.exit(main())
