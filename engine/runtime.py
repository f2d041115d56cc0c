"""The runtime: the ``Engine`` turns input frames into output frames (active preset's graph, commands,
passthrough, HUD); ``run_live`` drives it from a live source with three threads; ``render`` drives it
offline over every frame of a file.

Live mode (MediaPipe's flow limiter, by hand): capture, processing and output are separate threads
joined by triple buffers. Each buffer holds at most one unread frame: a newer frame replaces it and
the replaced one is counted as dropped, so nothing queues and latency stays bounded. The output
thread paces at the target fps and repeats the newest frame when processing is slower.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import cv2
import numpy as np

from .control import Command, CommandBus
from .errors import AvatarcastError, CommandError, SinkError, SourceError, UserError, Where
from .graph import Graph, build_graph, fit_into
from .kernels import transform as tk
from .node import BuildContext
from .params import ParamError, PortType
from .preset import Preset
from .sinks import Sink
from .sources import Source, VideoSource

log = logging.getLogger("avatarcast.runtime")


class TripleBuffer:
    """One producer, one consumer, newest wins. No allocation after construction.

    The producer fills ``back()`` and calls ``publish(meta)``; a published frame not yet taken is
    replaced and counted in ``dropped``. The consumer's ``take()`` returns the newest frame, which
    stays valid until its next ``take()``."""

    def __init__(self, shape: tuple[int, ...], dtype=np.uint8):
        self.bufs = [np.zeros(shape, dtype) for _ in range(3)]
        self.meta: list[Any] = [None, None, None]
        self._back, self._mid, self._front = 0, 1, 2
        self._fresh = False
        self._closed = False
        self._cond = threading.Condition()
        self.dropped = 0
        self.published = 0

    def back(self) -> np.ndarray:
        return self.bufs[self._back]

    def publish(self, meta: Any) -> None:
        with self._cond:
            self.meta[self._back] = meta
            if self._fresh:
                self.dropped += 1
            self._back, self._mid = self._mid, self._back
            self._fresh = True
            self.published += 1
            self._cond.notify_all()

    def take(self, timeout: float | None = None) -> tuple[np.ndarray, Any] | None:
        """Wait (up to ``timeout``) for a frame newer than the last one taken."""
        with self._cond:
            if not self._fresh:
                self._cond.wait_for(lambda: self._fresh or self._closed, timeout)
            if not self._fresh:
                return None
            self._front, self._mid = self._mid, self._front
            self._fresh = False
            return self.bufs[self._front], self.meta[self._front]

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()


@dataclass
class FrameMeta:
    index: int  # capture index (0, 1, ...)
    t_capture: float  # perf_counter when the frame was captured
    preset: int = -1  # index of the preset that processed it
    preset_name: str = ""


@dataclass
class Stats:
    frames_captured: int = 0
    frames_processed: int = 0
    frames_output: int = 0
    dropped_capture: int = 0  # camera frames replaced before processing took them
    dropped_processed: int = 0  # processed frames replaced before the output took them
    repeated_output: int = 0  # output ticks with no new frame (the previous one was sent again)
    fps: float = 0.0  # processed frames per second (moving average)
    latency_ms: float = 0.0  # capture -> output, moving average
    latency_max_ms: float = 0.0
    camera_losses: int = 0
    node_ms: dict[str, float] = field(default_factory=dict)

    def line(self) -> str:
        nodes = " ".join(f"{k} {v:.1f}ms" for k, v in self.node_ms.items())
        return (f"{self.fps:5.1f} fps | latency {self.latency_ms:5.1f} ms | dropped {self.dropped_capture}+"
                f"{self.dropped_processed} | {nodes}")


class Engine:
    """Processes one frame at a time with the active preset; applies commands between frames.

    presets: the active set (switchable by index/name/next/prev). All are built and opened up front
    (``prepare='all'``) or the first up front and the rest in a background thread (``'background'``).
    """

    def __init__(self, presets: list[Preset], *, source_size: tuple[int, int], fps: float = 30.0,
                 out_size: tuple[int, int] | None = None, device: str = "cpu", live: bool = False,
                 bus: CommandBus | None = None, start: int = 0, prepare: str = "all",
                 reload: Callable[[], list[Preset]] | None = None):
        if not presets:
            raise UserError("no preset given", hint="use --preset FILE (see presets/ for examples)")
        self.presets = list(presets)
        self.source_size = source_size  # (w, h)
        self.fps = fps
        self.device = device
        self.live = live
        self.bus = bus or CommandBus()
        self.active = start
        self.prepare_mode = prepare
        self.reload_fn = reload
        self.graphs: dict[int, Graph] = {}
        self._graph_errors: dict[int, str] = {}
        self._lock = threading.Lock()
        self._pending_switch: int | None = None
        self.passthrough = False
        self.frozen = False
        self.mirror = False
        self.hud = False
        self.stats = Stats()
        self._fps_t = 0.0
        self._out_size_req = out_size
        self._prep_thread: threading.Thread | None = None
        self._closed = False

    # ---- set-up -----------------------------------------------------------------------------
    def _context(self) -> BuildContext:
        w, h = self.source_size
        return BuildContext(source_size=(h, w), fps=self.fps, device=self.device, live=self.live)

    def _build(self, i: int) -> Graph:
        g = build_graph(self.presets[i], self._context())
        g.open()
        return g

    def start(self) -> None:
        """Build and open the active preset's graph (errors raise: bad preset, missing model)."""
        self.graphs[self.active] = self._build(self.active)
        if self._out_size_req:
            self.out_size = self._out_size_req
        else:
            h, w = self.graphs[self.active].output_shape
            self.out_size = (w, h)
        w, h = self.out_size
        sw, sh = self.source_size
        self._mirror_buf = np.zeros((sh, sw, 3), np.uint8)
        self._last_out = np.zeros((h, w, 3), np.uint8)
        tk.warmup()
        others = [i for i in range(len(self.presets)) if i != self.active]
        if self.prepare_mode == "all":
            for i in others:
                self._prepare_one(i)
        elif others:
            self._prep_thread = threading.Thread(target=self._prepare_all, args=(others,), name="prepare", daemon=True)
            self._prep_thread.start()

    def _prepare_one(self, i: int) -> None:
        try:
            g = self._build(i)
        except AvatarcastError as exc:
            self._graph_errors[i] = str(exc)
            log.error("preset %r cannot be used: %s", self.presets[i].name, exc)
            return
        with self._lock:
            if self._closed:
                g.close()
            else:
                self.graphs[i] = g

    def _prepare_all(self, indices: list[int]) -> None:
        for i in indices:
            if self._closed:
                return
            self._prepare_one(i)

    def wait_prepared(self, timeout: float | None = None) -> None:
        if self._prep_thread is not None:
            self._prep_thread.join(timeout)

    @property
    def preset(self) -> Preset:
        return self.presets[self.active]

    @property
    def graph(self) -> Graph:
        return self.graphs[self.active]

    # ---- per frame --------------------------------------------------------------------------
    def process(self, frame: np.ndarray, out: np.ndarray) -> int:
        """Apply pending commands, then turn ``frame`` (source size) into ``out`` (output size).
        Returns the index of the preset that made the frame."""
        for cmd in self.bus.drain():
            self.apply(cmd)
        if self._pending_switch is not None and self._pending_switch in self.graphs:
            self._switch_now(self._pending_switch)
        if self.frozen:
            np.copyto(out, self._last_out)
            return self.active
        src = frame
        if self.mirror:
            tk.mirror_numba(frame, self._mirror_buf, True)
            src = self._mirror_buf
        if self.passthrough:
            fit_into(src, out, "fill")
        else:
            g = self.graph
            res = g.process(src, strict=not self.live)
            fit_into(res, out, "fit")
        if self.hud:
            self._draw_hud(out)
        np.copyto(self._last_out, out)
        now = time.perf_counter()
        if self._fps_t:
            dt = now - self._fps_t
            if dt > 0:
                inst = 1.0 / dt
                self.stats.fps = inst if self.stats.fps == 0 else self.stats.fps + 0.1 * (inst - self.stats.fps)
        self._fps_t = now
        self.stats.frames_processed += 1
        return self.active

    def _draw_hud(self, out: np.ndarray) -> None:
        h = out.shape[0]
        scale = max(0.35, h / 1400)
        lines = [f"{self.preset.name}  {self.stats.fps:.0f} fps"]
        if self.passthrough:
            lines[0] += "  PASSTHROUGH"
        lines += [f"{k} {v:.1f} ms" for k, v in self.graph.timings().items()]
        y = int(22 * scale / 0.5)
        for text in lines:
            cv2.putText(out, text, (10, y), cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0), 3, cv2.LINE_AA)
            cv2.putText(out, text, (10, y), cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 255), 1, cv2.LINE_AA)
            y += int(20 * scale / 0.5)

    # ---- commands ---------------------------------------------------------------------------
    def apply(self, cmd: Command) -> bool:
        """Apply one command; a bad one is logged with its reason and ignored (never raises)."""
        try:
            self._apply(cmd)
        except (CommandError, ParamError, UserError) as exc:
            msg = exc.render() if isinstance(exc, UserError) else str(exc)
            log.warning("rejected %s command %s from %s: %s", cmd.name, dict(cmd.args), cmd.source, msg)
            return False
        self.bus.publish(self.state(event=cmd.name))
        return True

    def _apply(self, cmd: Command) -> None:
        n = cmd.name
        if n == "switch_preset":
            self.request_switch(self._find_preset(cmd))
        elif n in ("next_preset", "prev_preset"):
            step = 1 if n == "next_preset" else -1
            base = self._pending_switch if self._pending_switch is not None else self.active
            self.request_switch((base + step) % len(self.presets))
        elif n in ("passthrough", "freeze", "mirror", "hud"):
            attr = "frozen" if n == "freeze" else n
            on = cmd.get("on")
            setattr(self, attr, (not getattr(self, attr)) if on is None else on)
            log.info("%s %s", n, "on" if getattr(self, attr) else "off")
        elif n == "recalibrate":
            target = cmd.get("node")
            runs = [self._run(target)] if target else [r for r in self.graph.runs if "recalibrate" in r.spec.cls.commands]
            for run in runs:
                if "recalibrate" not in run.spec.cls.commands:
                    raise CommandError(f"node {run.spec.id} has nothing to recalibrate")
                run.node.command("recalibrate", {})
        elif n == "bypass":
            run = self._run(cmd.get("node"))
            on = cmd.get("on")
            run.enabled = (not run.enabled) if on is None else not on
        elif n in ("set_param", "nudge_param"):
            run = self._run(cmd.get("node"))
            pname = cmd.get("param")
            try:
                param = run.spec.cls.param(pname)
            except KeyError:
                names = ", ".join(p.name for p in run.spec.cls.params)
                raise CommandError(f"node {run.spec.id} has no param {pname!r} (its params: {names})") from None
            if not param.live:
                raise CommandError(f"{run.spec.id}.{pname} cannot change while running; edit the preset and reload")
            if n == "set_param":
                value = param.validate(cmd.get("value"))
            else:
                if param.type not in ("float", "int"):
                    raise CommandError(f"{run.spec.id}.{pname} is not a number; use set_param")
                value = run.node.p[pname] + cmd.get("direction") * param.nudge_step
                lo = param.min if param.min is not None else value
                hi = param.max if param.max is not None else value
                value = param.validate(min(max(value, lo), hi))
            run.node.set_param(pname, value)
            log.info("%s.%s = %r", run.spec.id, pname, value)
        elif n == "reload":
            self._reload()
        else:
            raise CommandError(f"unknown command {n!r}")

    def _run(self, node_id: str | None):
        run = self.graph.run_by_id.get(node_id or "")
        if run is None:
            ids = ", ".join(self.graph.run_by_id) or "none"
            raise CommandError(f"preset {self.preset.name!r} has no node {node_id!r} (its nodes: {ids})")
        return run

    def _find_preset(self, cmd: Command) -> int:
        name, index = cmd.get("name"), cmd.get("index")
        if index is not None:
            if not 1 <= index <= len(self.presets):
                raise CommandError(f"no preset number {index} (there are {len(self.presets)})")
            return index - 1
        for i, p in enumerate(self.presets):
            if p.name == name or (p.file is not None and p.file.stem == name):
                return i
        raise CommandError(f"no preset named {name!r}", hint="presets: " + ", ".join(p.name for p in self.presets))

    def request_switch(self, i: int) -> None:
        if i in self._graph_errors:
            raise CommandError(f"preset {self.presets[i].name!r} failed to load: {self._graph_errors[i]}")
        if i in self.graphs:
            self._switch_now(i)
        elif self.live:
            self._pending_switch = i  # switch on the first frame after it is prepared
            if self._prep_thread is None or not self._prep_thread.is_alive():
                self._prep_thread = threading.Thread(target=self._prepare_one, args=(i,), daemon=True)
                self._prep_thread.start()
        else:
            self._prepare_one(i)
            self._switch_now(i)

    def _switch_now(self, i: int) -> None:
        self._pending_switch = None
        if i == self.active:
            return
        self.graphs[i].reset()
        self.active = i
        log.info("preset: %s", self.presets[i].name)
        self.bus.publish(self.state(event="preset"))

    def _reload(self) -> None:
        if self.reload_fn is None:
            raise CommandError("these presets were not loaded from files; nothing to reload")
        presets = self.reload_fn()  # raises PresetError -> rejected, old presets stay
        name = self.preset.name
        with self._lock:
            old = self.graphs
            self.presets = presets
            self.graphs = {}
            self._graph_errors = {}
        self.active = next((i for i, p in enumerate(presets) if p.name == name), 0)
        self.graphs[self.active] = self._build(self.active)
        for i in range(len(presets)):
            if i != self.active:
                self._prepare_one(i)
        for g in old.values():
            g.close()

    def state(self, event: str = "state") -> dict:
        return {"event": event, "preset": self.preset.name, "index": self.active + 1, "presets": len(self.presets),
                "passthrough": self.passthrough, "frozen": self.frozen, "mirror": self.mirror,
                "fps": round(self.stats.fps, 1)}

    def close(self) -> None:
        with self._lock:
            self._closed = True
            graphs = list(self.graphs.values())
        if self._prep_thread is not None:
            self._prep_thread.join(timeout=30)
        for g in graphs:
            g.close()


# ---- offline ------------------------------------------------------------------------------------

def render(source: Source, engine: Engine, sink: Sink, *, max_frames: int | None = None,
           progress: bool = True) -> int:
    """Every frame of ``source`` through ``engine`` into ``sink``, in order. Returns frames written.
    The sink is closed with ok=False (partial output removed) on any error or Ctrl+C."""
    from tqdm import tqdm

    total = source.frame_count
    if max_frames is not None:
        total = min(total, max_frames) if total else max_frames
    w, h = source.size
    frame = np.zeros((h, w, 3), np.uint8)
    frame.flags.writeable = True
    ow, oh = engine.out_size
    out = np.zeros((oh, ow, 3), np.uint8)
    n = 0
    ok = False
    sink.open(engine.out_size, source.fps)
    bar = tqdm(total=total, unit="frame", disable=not progress, dynamic_ncols=True, leave=True,
               desc="render", mininterval=0.5)
    try:
        while max_frames is None or n < max_frames:
            if not source.read(frame):
                break
            engine.process(frame, out)
            sink.write(out)
            n += 1
            bar.update(1)
        if isinstance(source, VideoSource) and max_frames is None and source.frame_count and \
                n < source.frame_count - 2:
            raise SourceError(f"the video ended early: decoded {n} of {source.frame_count} frames (truncated or corrupt)",
                              Where(source.path),
                              hint="re-encode it with ffmpeg, or pass --max-frames to render the readable part")
        if n == 0:
            raise SourceError("no frames could be read from the input")
        ok = True
    finally:
        bar.close()
        sink.close(ok)
    engine.stats.node_ms = engine.graph.timings()
    return n


# ---- live ---------------------------------------------------------------------------------------

class LiveRunner:
    """Three threads: capture -> process -> output, joined by triple buffers (see module docstring)."""

    def __init__(self, source: Source, engine: Engine, sink: Sink, *, fps: float | None = None,
                 max_frames: int | None = None, duration: float | None = None, status_every: float = 5.0,
                 on_frame: Callable[[np.ndarray, FrameMeta], None] | None = None):
        self.source = source
        self.engine = engine
        self.sink = sink
        self.fps = fps or source.fps or 30.0
        self.max_frames = max_frames
        self.duration = duration
        self.status_every = status_every
        self.on_frame = on_frame  # called on the output thread with each sent frame (tests, OBS status)
        w, h = source.size
        ow, oh = engine.out_size
        self.cap_tb = TripleBuffer((h, w, 3))
        self.out_tb = TripleBuffer((oh, ow, 3))
        self._stop = threading.Event()
        self._source_ended = threading.Event()
        self.error: BaseException | None = None
        self.stats = engine.stats
        self._sink_open = False

    def stop(self) -> None:
        self._stop.set()
        self.cap_tb.close()
        self.out_tb.close()

    # capture thread
    def _capture(self) -> None:
        i = 0
        backoff = 0.5
        while not self._stop.is_set():
            buf = self.cap_tb.back()
            if self.source.read(buf):
                self.cap_tb.publish(FrameMeta(i, time.perf_counter()))
                i += 1
                self.stats.frames_captured = i
                backoff = 0.5
                continue
            if not self.source.live:
                self._source_ended.set()
                return
            # a live source lost its device: the output keeps sending the last frame meanwhile
            self.stats.camera_losses += 1
            log.warning("%s lost; retrying in %.1f s", self.source.name, backoff)
            if self._stop.wait(backoff):
                return
            if self.source.reopen():
                log.info("%s is back", self.source.name)
            backoff = min(backoff * 2, 5.0)

    # processing thread
    def _process(self) -> None:
        try:
            while not self._stop.is_set():
                item = self.cap_tb.take(timeout=0.1)
                if item is None:
                    if self._source_ended.is_set():
                        self.out_tb.close()
                        return
                    continue
                frame, meta = item
                p = self.engine.process(frame, self.out_tb.back())
                meta.preset = p
                meta.preset_name = self.engine.presets[p].name
                self.out_tb.publish(meta)
                self.stats.dropped_capture = self.cap_tb.dropped
        except BaseException as exc:  # a bug outside the nodes (nodes are bypassed inside the graph)
            self.error = exc
            self.stop()

    # output thread (runs in the caller's thread)
    def _output(self) -> None:
        period = 1.0 / self.fps
        t_next = time.perf_counter()
        t_status = t_next + self.status_every
        t_end = t_next + self.duration if self.duration else None
        current: np.ndarray | None = None
        last_index = -1
        while not self._stop.is_set():
            now = time.perf_counter()
            if t_next > now:
                time.sleep(t_next - now)
            t_next = max(t_next + period, time.perf_counter() - period)  # never try to catch up a backlog
            item = self.out_tb.take(timeout=0 if current is not None else 0.5)
            if item is not None:
                current, meta = item
                if meta.index <= last_index:
                    raise AssertionError("frames out of order")  # cannot happen by construction
                last_index = meta.index
                lat = (time.perf_counter() - meta.t_capture) * 1000.0
                s = self.stats
                s.latency_ms = lat if s.latency_ms == 0 else s.latency_ms + 0.1 * (lat - s.latency_ms)
                s.latency_max_ms = max(s.latency_max_ms, lat)
                s.dropped_processed = self.out_tb.dropped
            elif current is None:
                if self._source_ended.is_set() and self.cap_tb.published == 0:
                    return
                continue
            else:
                if self._source_ended.is_set() and self.out_tb._closed:
                    return
                self.stats.repeated_output += 1
            self.sink.write(current)
            self.stats.frames_output += 1
            if self.on_frame is not None and item is not None:
                self.on_frame(current, meta)
            if self.max_frames is not None and self.stats.frames_output >= self.max_frames:
                return
            if t_end is not None and time.perf_counter() >= t_end:
                return
            if time.perf_counter() >= t_status:
                t_status += self.status_every
                self.stats.node_ms = self.engine.graph.timings()
                log.info("%s | %s", self.engine.preset.name, self.stats.line())

    def open_sink(self) -> None:
        """Open the output now (fail fast, before announcing the stream); run() then uses it as is."""
        if not self._sink_open:
            self.sink.open(self.engine.out_size, self.fps)
            self._sink_open = True

    def run(self) -> Stats:
        """Run until stopped, max_frames/duration reached, or a non-looping source ends."""
        self.open_sink()
        threads = [threading.Thread(target=self._capture, name="capture", daemon=True),
                   threading.Thread(target=self._process, name="process", daemon=True)]
        for t in threads:
            t.start()
        ok = False
        try:
            self._output()
            ok = self.error is None
        finally:
            self.stop()
            for t in threads:
                t.join(timeout=5)
            self.sink.close(ok)
            self.stats.node_ms = self.engine.graph.timings()
            self.stats.dropped_capture = self.cap_tb.dropped
            self.stats.dropped_processed = self.out_tb.dropped
        if self.error is not None:
            raise self.error
        return self.stats


__all__ = ["Engine", "LiveRunner", "render", "TripleBuffer", "Stats", "FrameMeta", "PortType", "SinkError"]
