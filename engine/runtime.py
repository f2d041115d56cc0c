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
import os
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
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
PREPARE_SWITCH_INTERVAL = 0.0005  # s: the GIL switch interval while a preset is prepared in the background
PREPARE_STEP_WAIT = 0.1  # s: the longest a preparation step waits for a frame to finish (no frames: goes on)


def _no_pause() -> None:
    pass


_DECODER: ThreadPoolExecutor | None = None


def decode_image(path, low_priority: bool = False) -> np.ndarray | None:
    """``cv2.imread`` (BGR), or None when the file cannot be decoded. ``low_priority``: decode on a
    helper thread with a lower OS priority (Linux nice 10), so that decoding avatars in the background
    leaves the cores to the live threads. Safe because the decoder holds no GIL while it decodes: a
    low-priority thread must never hold the GIL (a live thread would wait until the OS runs it again)."""
    global _DECODER
    if not low_priority:
        return cv2.imread(str(path), cv2.IMREAD_COLOR)
    if _DECODER is None:
        _DECODER = ThreadPoolExecutor(1, thread_name_prefix="decode", initializer=_lower_priority)
    return _DECODER.submit(cv2.imread, str(path), cv2.IMREAD_COLOR).result()


def _lower_priority(niceness: int = 10) -> None:
    if sys.platform.startswith("linux"):
        try:
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), niceness)
        except OSError as exc:
            log.debug("cannot lower the decoding thread's priority: %s", exc)


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

    def wait_fresh(self, pred: Callable[[Any], bool], timeout: float) -> bool:
        """Wait up to ``timeout`` for an untaken frame whose meta satisfies ``pred``; True if one is there."""
        with self._cond:
            self._cond.wait_for(lambda: self._closed or (self._fresh and pred(self.meta[self._mid])), timeout)
            return self._fresh and pred(self.meta[self._mid])

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
    look: int = 0  # Engine.look when it was processed: changes with every applied command and switch


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
    late_output: int = 0  # output frames sent more than half a frame interval after their tick
    instant_output: int = 0  # frames sent between ticks: the first frame after a command or a switch
    tick_late_max_ms: float = 0.0  # the latest an output frame was sent after its tick
    node_ms: dict[str, float] = field(default_factory=dict)

    def line(self) -> str:
        nodes = " ".join(f"{k} {v:.1f}ms" for k, v in self.node_ms.items())
        return (f"{self.fps:5.1f} fps | latency {self.latency_ms:5.1f} ms | dropped {self.dropped_capture}+"
                f"{self.dropped_processed} | {nodes}")


class Engine:
    """Processes one frame at a time with the active preset; applies commands between frames.

    presets: the active set (switchable by index/name/next/prev). All are built, opened and warmed up
    front (``prepare='all'``) or the first up front and the rest by one background thread
    (``'background'``), one preset at a time, each step in the idle time right after a processed frame,
    so that a switch shows the new preset on the next frame and no live frame waits for preparation.

    Preparing a preset: decode its avatar images into ``BuildContext.shared["avatar_images"]`` (a list
    of ``(H, W, 3) uint8`` BGR arrays, for nodes that precompute avatar data in ``open()``, cached on
    disk with ``engine.cache.cached``), build the graph, ``open()`` it, run one black frame through it
    (lazy initialisation and kernel compilation happen here, never on a live frame), then ``reset()``.

    Thread contract: ``process`` and ``apply`` run on the processing thread; other threads only
    ``bus.send()`` commands. The preparing thread touches nothing the processing thread reads except
    ``graphs`` (whole entries added under ``_lock``) and ``_swap`` (a reload's new set).
    """

    def __init__(self, presets: list[Preset], *, source_size: tuple[int, int], fps: float = 30.0,
                 out_size: tuple[int, int] | None = None, device: str = "cpu", live: bool = False,
                 bus: CommandBus | None = None, start: int = 0, prepare: str = "all",
                 reload: Callable[[], list[Preset]] | None = None):
        if not presets:
            raise UserError("no preset given", hint="use --preset FILE (see presets/ for examples)")
        if prepare not in ("all", "background"):
            raise ValueError(f"prepare must be 'all' or 'background', got {prepare!r}")
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
        self.look = 0  # counts applied commands and switches: a frame with a new look goes out at once
        self.prepare_ms: dict[str, float] = {}  # preset name -> wall time its preparation took
        self._fps_t = 0.0
        self._out_size_req = out_size
        # the preparing thread: a to-do list of preset indices (a pending switch jumps the queue),
        # a reload request, and the reloaded set waiting for the processing thread to take it over
        self._prep_thread: threading.Thread | None = None
        self._prep_cond = threading.Condition(self._lock)
        self._prep_todo: list[int] = []
        self._reload_wanted = False
        self._swap: tuple[list[Preset], dict[int, Graph], dict[int, str]] | None = None
        self._reload_error: str | None = None
        self._frame_done = threading.Event()  # set after every processed frame (paces the preparing thread)
        self._closed = False
        self._message = ""  # the HUD's last event line (switch, rejected command), shown for a few s
        self._message_until = 0.0
        self._hud_lines: list[str] = []
        self._hud_t = 0.0

    # ---- set-up -----------------------------------------------------------------------------
    def _context(self) -> BuildContext:
        w, h = self.source_size
        return BuildContext(source_size=(h, w), fps=self.fps, device=self.device, live=self.live)

    def _build(self, preset: Preset, background: bool = False) -> Graph:
        """Decode the avatar, build, open and warm up one preset's graph (raises AvatarcastError).
        ``background``: on the preparing thread, which pauses between steps and decodes at low priority."""
        pause = self._pause if background else _no_pause
        t0 = time.perf_counter()
        ctx = self._context()
        images = []
        for path in preset.avatar.images:
            img = decode_image(path, low_priority=background)
            if img is None:
                raise UserError("cannot decode the avatar image (corrupt?)", Where(path))
            images.append(img)
            pause()
        ctx.shared["avatar_images"] = images
        g = build_graph(preset, ctx)
        pause()
        g.open()
        pause()
        try:
            w, h = self.source_size
            black = np.zeros((h, w, 3), np.uint8)
            black.flags.writeable = False
            g.process(black)
            for run in g.runs:  # the warm-up frame does not count in the live timings
                run.ms, run.calls = 0.0, 0
            g.reset()
        except BaseException:
            g.close()
            raise
        self.prepare_ms[preset.name] = (time.perf_counter() - t0) * 1000.0
        log.debug("prepared preset %r in %.0f ms", preset.name, self.prepare_ms[preset.name])
        return g

    def start(self) -> None:
        """Build and open the active preset's graph (errors raise: bad preset, missing model), then
        prepare the others (now, or in the background)."""
        self.graphs[self.active] = self._build(self.presets[self.active])
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
            with self._lock:
                self._prep_todo = others
            self._ensure_worker()

    def _prepare_one(self, i: int, background: bool = False) -> None:
        """Prepare preset ``i`` of the current set into ``graphs`` (errors are remembered, not raised)."""
        preset = self.presets[i]
        try:
            g = self._build(preset, background)
        except AvatarcastError as exc:
            msg = exc.render() if isinstance(exc, UserError) else str(exc)
            with self._lock:
                if self.presets[i] is preset:
                    self._graph_errors[i] = msg
            log.error("preset %r cannot be used: %s", preset.name, msg)
            return
        with self._lock:
            if self._closed or i >= len(self.presets) or self.presets[i] is not preset:
                g.close()  # closed, or a reload replaced the set meanwhile
            else:
                self.graphs[i] = g

    # the preparing thread
    def _ensure_worker(self) -> None:
        if self._prep_thread is None or not self._prep_thread.is_alive():
            self._prep_thread = threading.Thread(target=self._worker, name="prepare", daemon=True)
            self._prep_thread.start()

    def _pause(self) -> None:
        """Between preparation steps: wait until the processing thread has finished a frame, so the next
        step runs in the idle time before the next camera frame instead of competing with it."""
        self._frame_done.clear()
        self._frame_done.wait(PREPARE_STEP_WAIT)

    def _worker(self) -> None:
        calm_preparing_thread()
        while True:
            with self._prep_cond:
                while not (self._closed or self._reload_wanted or self._prep_todo):
                    self._prep_cond.wait()
                if self._closed:
                    return
                reload, self._reload_wanted = self._reload_wanted, False
                i = None
                if not reload:
                    # a requested switch first, then the set in order
                    pend = self._pending_switch
                    i = pend if pend in self._prep_todo else self._prep_todo[0]
                    self._prep_todo.remove(i)
                    if i in self.graphs or i in self._graph_errors:
                        continue
            # While this thread runs Python code, a live thread that wants the GIL back waits up to the
            # switch interval (5 ms by default) each time: shorten it while preparing.
            interval = sys.getswitchinterval()
            sys.setswitchinterval(min(interval, PREPARE_SWITCH_INTERVAL))
            try:
                if reload:
                    self._prepare_reload()
                else:
                    self._prepare_one(i, background=True)
            except Exception:  # a bug in a node's open(): logged, the live stream goes on
                log.exception("preparing in the background failed")
                if i is not None:
                    with self._lock:
                        self._graph_errors.setdefault(i, "preparation failed (see the log)")
            finally:
                sys.setswitchinterval(interval)

    def wait_prepared(self, timeout: float | None = None) -> bool:
        """Wait until every preset is prepared (or failed) and no reload is under way. True if so."""
        t_end = None if timeout is None else time.perf_counter() + timeout
        while True:
            with self._lock:
                done = (not self._prep_todo and not self._reload_wanted and self._swap is None and
                        all(i in self.graphs or i in self._graph_errors for i in range(len(self.presets))))
            if done or self._closed:
                return done
            if t_end is not None and time.perf_counter() >= t_end:
                return False
            time.sleep(0.01)

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
        if self._swap is not None:
            self._take_reload()
        elif self._reload_error is not None:
            msg, self._reload_error = self._reload_error, None
            self._reject_note(f"reload: {msg}", Command("reload", (), "engine"))
        for cmd in self.bus.drain():
            self.apply(cmd)
        pend = self._pending_switch
        if pend is not None:
            if pend in self.graphs:
                self._switch_now(pend)
            elif pend in self._graph_errors:
                self._pending_switch = None
                self._reject_note(f"preset {self.presets[pend].name!r} failed to load: {self._graph_errors[pend]}")
        if self.frozen:
            np.copyto(out, self._last_out)
        else:
            src = frame
            if self.mirror:
                tk.mirror_numba(frame, self._mirror_buf, True)
                src = self._mirror_buf
            if self.passthrough:
                fit_into(src, out, "fill")
            else:
                res = self.graph.process(src, strict=not self.live)
                fit_into(res, out, "fit")
            if self.hud:
                np.copyto(self._last_out, out)  # freeze holds the picture, not the HUD
        if self.hud:
            self._draw_hud(out)
        elif not self.frozen:
            np.copyto(self._last_out, out)
        now = time.perf_counter()
        if self._fps_t:
            dt = now - self._fps_t
            if dt > 0:
                inst = 1.0 / dt
                self.stats.fps = inst if self.stats.fps == 0 else self.stats.fps + 0.1 * (inst - self.stats.fps)
        self._fps_t = now
        self.stats.frames_processed += 1
        self._frame_done.set()
        return self.active

    def _draw_hud(self, out: np.ndarray) -> None:
        """A small translucent panel, top left: avatar (preset) name and number, fps, modes, per-node ms,
        the last event (a switch, a rejected command). Text refreshes 4 times a second."""
        now = time.perf_counter()
        if now - self._hud_t > 0.25 or not self._hud_lines:
            self._hud_t = now
            s = self.stats
            lines = [f"{self.active + 1}/{len(self.presets)} {self.preset.name}",
                     f"{s.fps:4.1f} fps  latency {s.latency_ms:3.0f} ms  dropped {s.dropped_capture + s.dropped_processed}"]
            modes = [m for m, on in (("PASSTHROUGH", self.passthrough), ("FROZEN", self.frozen),
                                     ("MIRROR", self.mirror)) if on]
            if modes:
                lines.append(" ".join(modes))
            if not self.passthrough:
                for run in self.graph.runs:
                    lines.append(f"{run.spec.id} {run.ms:5.1f} ms" if run.enabled else f"{run.spec.id}  (bypassed)")
            if self._message and now < self._message_until:
                lines.append(self._message)
            self._hud_lines = lines
        h, w = out.shape[:2]
        scale = max(0.35, h / 1800)
        thick = 1 if h < 1000 else 2
        line_h = int(round(28 * scale / 0.5))
        pad = max(4, line_h // 3)
        width = max(cv2.getTextSize(t, cv2.FONT_HERSHEY_SIMPLEX, scale, thick)[0][0] for t in self._hud_lines)
        x1, y1 = min(w, width + 3 * pad), min(h, len(self._hud_lines) * line_h + 2 * pad)
        panel = out[:y1, :x1]
        panel >>= 1  # darken to half: readable over any picture, the picture stays visible
        y = pad + line_h - line_h // 4
        for text in self._hud_lines:
            cv2.putText(out, text, (pad, y), cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 255), thick, cv2.LINE_AA)
            y += line_h

    def _note(self, text: str) -> None:
        self._message = text
        self._message_until = time.perf_counter() + 3.0
        self._hud_t = 0.0

    def _reject_note(self, msg: str, cmd: Command | None = None) -> None:
        self._note(f"rejected: {msg}"[:80])
        event = self.state(event="rejected")
        event["reason"] = msg
        if cmd is not None:
            event["command"] = cmd.as_dict()
            event["source"] = cmd.source
        log.warning("rejected %s: %s", f"{cmd.name} command {dict(cmd.args)} from {cmd.source}" if cmd else
                    "switch", msg)
        self.bus.publish(event)

    # ---- commands ---------------------------------------------------------------------------
    def apply(self, cmd: Command) -> bool:
        """Apply one command; a bad one is logged with its reason, published as a ``rejected`` event
        and ignored (never raises). Applied commands publish an event named after the command."""
        try:
            self._apply(cmd)
        except (CommandError, ParamError, UserError) as exc:
            self._reject_note(exc.render() if isinstance(exc, UserError) else str(exc), cmd)
            return False
        self.look += 1
        event = self.state(event=cmd.name)
        event["command"] = cmd.as_dict()
        event["source"] = cmd.source
        self.bus.publish(event)
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
            self._note(f"{n} {'on' if getattr(self, attr) else 'off'}")
        elif n == "recalibrate":
            target = cmd.get("node")
            runs = [self._run(target)] if target else [r for r in self.graph.runs if "recalibrate" in r.spec.cls.commands]
            if not runs:
                raise CommandError(f"preset {self.preset.name!r} has no node that recalibrates")
            for run in runs:
                if "recalibrate" not in run.spec.cls.commands:
                    raise CommandError(f"node {run.spec.id} has nothing to recalibrate")
                run.node.command("recalibrate", {})
            self._note("recalibrated")
        elif n == "bypass":
            run = self._run(cmd.get("node"))
            on = cmd.get("on")
            run.enabled = (not run.enabled) if on is None else not on
            self._note(f"{run.spec.id} {'on' if run.enabled else 'bypassed'}")
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
                try:
                    value = param.validate(cmd.get("value"))
                except ParamError as exc:
                    raise CommandError(f"{run.spec.id}.{pname}: {exc}") from None
            else:
                if param.type not in ("float", "int"):
                    raise CommandError(f"{run.spec.id}.{pname} is not a number; use set_param")
                value = run.node.p[pname] + cmd.get("direction") * param.nudge_step
                lo = param.min if param.min is not None else value
                hi = param.max if param.max is not None else value
                value = param.validate(min(max(value, lo), hi))
            run.node.set_param(pname, value)
            log.info("%s.%s = %r", run.spec.id, pname, value)
            self._note(f"{run.spec.id}.{pname} = {value:.3g}" if isinstance(value, float) else
                       f"{run.spec.id}.{pname} = {value!r}")
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
        """Switch now when preset ``i`` is prepared; else (live) on the first frame after it is, with
        its preparation moved to the front of the queue."""
        if i in self._graph_errors:
            raise CommandError(f"preset {self.presets[i].name!r} failed to load: {self._graph_errors[i]}")
        if i in self.graphs:
            self._switch_now(i)
        elif self.live:
            with self._prep_cond:
                self._pending_switch = i
                if i not in self._prep_todo:
                    self._prep_todo.insert(0, i)
                self._prep_cond.notify_all()
            self._ensure_worker()
            log.info("preset %r is still being prepared; switching as soon as it is ready", self.presets[i].name)
        else:
            self._prepare_one(i)
            if i in self._graph_errors:
                raise CommandError(f"preset {self.presets[i].name!r} failed to load: {self._graph_errors[i]}")
            self._switch_now(i)

    def _switch_now(self, i: int) -> None:
        self._pending_switch = None
        if i == self.active:
            return
        self.graphs[i].reset()
        self.active = i
        self.look += 1
        log.info("preset: %s", self.presets[i].name)
        self._note(f"preset {i + 1}: {self.presets[i].name}")
        self.bus.publish(self.state(event="preset"))

    # reload: files are read and every preset is prepared off the processing thread (live), then the
    # new set takes over between two frames; a broken file leaves the old set running.
    def _reload(self) -> None:
        if self.reload_fn is None:
            raise CommandError("these presets were not loaded from files; nothing to reload")
        if not self.live:
            self._swap = self._load_new_set(background=False)
            self._take_reload()
            return
        with self._prep_cond:
            self._reload_wanted = True
            self._prep_cond.notify_all()
        self._ensure_worker()
        self._note("reloading presets...")

    def _load_new_set(self, background: bool) -> tuple[list[Preset], dict[int, Graph], dict[int, str]]:
        presets = self.reload_fn()  # raises PresetError -> rejected, the old set stays
        name = self.preset.name
        first = next((i for i, p in enumerate(presets) if p.name == name), 0)
        graphs: dict[int, Graph] = {}
        errors: dict[int, str] = {}
        try:
            for i in [first] + [j for j in range(len(presets)) if j != first]:
                if self._closed:
                    break
                try:
                    graphs[i] = self._build(presets[i], background)
                except AvatarcastError as exc:
                    if i == first:
                        raise
                    errors[i] = exc.render() if isinstance(exc, UserError) else str(exc)
                    log.error("preset %r cannot be used: %s", presets[i].name, errors[i])
        except BaseException:
            for g in graphs.values():
                g.close()
            raise
        return presets, graphs, errors

    def _prepare_reload(self) -> None:
        try:
            new = self._load_new_set(background=True)
        except AvatarcastError as exc:
            msg = exc.render() if isinstance(exc, UserError) else str(exc)
            with self._lock:
                self._reload_error = msg
            return
        with self._lock:
            if self._closed:
                for g in new[1].values():
                    g.close()
                return
            self._swap = new

    def _take_reload(self) -> None:
        """On the processing thread: the reloaded set takes over (the old graphs close in the background)."""
        with self._lock:
            presets, graphs, errors = self._swap
            self._swap = None
            old = list(self.graphs.values())
            name = self.preset.name
            self.presets, self.graphs, self._graph_errors = presets, graphs, errors
            self._prep_todo = []
            self._pending_switch = None
            self.active = next((i for i, p in enumerate(presets) if p.name == name and i in graphs), min(graphs))
            self.look += 1
        threading.Thread(target=lambda: [g.close() for g in old], name="close-old", daemon=True).start()
        log.info("reloaded %d presets from disk", len(presets))
        self._note(f"reloaded {len(presets)} presets")
        self.bus.publish(self.state(event="reloaded"))

    def state(self, event: str = "state") -> dict:
        return {"event": event, "preset": self.preset.name, "index": self.active + 1, "presets": len(self.presets),
                "passthrough": self.passthrough, "frozen": self.frozen, "mirror": self.mirror, "hud": self.hud,
                "fps": round(self.stats.fps, 1), "prepared": len(self.graphs),
                # a switch to a preset still being prepared: it shows on the first frame after that
                "switching_to": None if self._pending_switch is None else self.presets[self._pending_switch].name}

    def close(self) -> None:
        with self._prep_cond:
            self._closed = True
            self._prep_cond.notify_all()
        if self._prep_thread is not None:
            self._prep_thread.join(timeout=30)
        with self._lock:
            graphs = list(self.graphs.values())
            swap, self._swap = self._swap, None
        if swap is not None:
            graphs += list(swap[1].values())
        for g in graphs:
            g.close()


def calm_preparing_thread() -> None:
    """Make the calling (preparing) thread take as few cores as it can from the live threads: the numba
    kernels it calls (a warm-up frame) run on one core; numba's thread count is per calling thread.
    (Not a lower OS priority: a low-priority thread descheduled while holding the GIL stalls the live
    threads until the OS runs it again; measured in tests/bench/bench_hotkeys.py.)"""
    try:
        import numba

        numba.set_num_threads(1)
    except Exception as exc:  # no numba threading layer: kernels run serially anyway
        log.debug("cannot limit the preparing thread's numba threads: %s", exc)


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
                 on_frame: Callable[[np.ndarray, FrameMeta], None] | None = None, instant_switch: bool = True):
        self.source = source
        self.engine = engine
        self.sink = sink
        self.fps = fps or source.fps or 30.0
        self.max_frames = max_frames
        self.duration = duration
        self.status_every = status_every
        self.on_frame = on_frame  # called on the output thread with each sent frame (tests, OBS status)
        # the first frame after a command or a preset switch goes out as soon as it is processed, between
        # two ticks, instead of waiting up to a frame interval for the next tick (the tick then sends
        # nothing more: the frame count stays that of the camera)
        self.instant_switch = instant_switch
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
                meta.look = self.engine.look
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
        shown = -1  # the look (Engine.look) of the frame on screen
        ahead = False  # a switch frame went out before this tick: the tick has nothing more to send
        while not self._stop.is_set():
            now = time.perf_counter()
            early = False
            if t_next > now:
                if self.instant_switch and current is not None and not ahead:
                    early = self.out_tb.wait_fresh(lambda m, on=shown: m.look != on, t_next - now)
                else:
                    time.sleep(t_next - now)
            if early:
                t_tick = None  # between ticks: never late; the schedule stays
                ahead = True
                self.stats.instant_output += 1
            else:
                t_tick = t_next if current is not None else None  # the wait for the very first frame is not late
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
                if ahead:  # this tick's frame went out early
                    ahead = False
                    continue
                self.stats.repeated_output += 1
            if item is not None:
                shown = meta.look
                if not early:
                    ahead = False
            self.sink.write(current)
            if t_tick is not None:
                late = time.perf_counter() - t_tick
                if late > period / 2:
                    self.stats.late_output += 1
                self.stats.tick_late_max_ms = max(self.stats.tick_late_max_ms, late * 1000.0)
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
