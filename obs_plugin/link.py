"""The live link to OBS: scene binding, remote control through CustomEvents, state answers, status text.

Threads (none of them ever touches the frames going out):

- the link thread owns the connection and every request to OBS: it connects (polling the port first),
  reconnects with backoff when OBS is not running yet, quits or restarts, and sends what the queue
  holds (state answers, status text). A wrong password or a server that is not obs-websocket v5 is
  reported once and ends the link (no retry loop); the stream goes on without OBS control.
- obsws-python's event thread calls ``_on_event``, which only turns OBS events into engine commands
  on the command bus (``engine.control``), or queues an answer for the link thread.
- the engine's processing thread calls ``_on_state`` (``CommandBus.subscribe``), which only queues.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from engine.control import CommandBus
from engine.errors import CommandError
from engine.preset import Preset

from . import binding, protocol
from .client import ObsAuthError, ObsError, ObsProtocolError, ObsUnreachable, connect, request
from .scene_setup import STATUS_SOURCE
from .settings import ObsSettings

log = logging.getLogger("avatarcast.obs")
BACKOFF_FIRST = 0.1
BACKOFF_MAX = 0.5  # polling a TCP port is cheap: OBS coming back is noticed within half a second


class _RawEvents:
    """Stands in for obsws-python's ``Callback``: hands every event to one function as a plain dict,
    and never lets an exception end obsws-python's event thread (which would silently stop events)."""

    def __init__(self, fn: Callable[[str, dict], None]):
        self.fn = fn

    def trigger(self, event_type, data) -> None:
        try:
            self.fn(event_type, data)
        except Exception:
            log.exception("OBS event %s could not be handled", event_type)


@dataclass
class LinkStats:
    connects: int = 0
    disconnects: int = 0
    scene_changes: int = 0
    commands: int = 0
    rejected_payloads: int = 0
    t_connected: float = 0.0  # perf_counter of the last successful connect
    t_lost: float = 0.0


class ObsLink:
    """Keeps the engine and OBS in step. ``presets_fn``/``state_fn`` read the engine (any thread)."""

    def __init__(self, settings: ObsSettings, bus: CommandBus, presets_fn: Callable[[], list[Preset]],
                 state_fn: Callable[[], dict], *, status_every: float = 1.0, connect_timeout: float = 3.0):
        self.settings = settings
        self.bus = bus
        self.presets_fn = presets_fn
        self.state_fn = state_fn
        self.status_every = status_every
        self.connect_timeout = connect_timeout
        self.connected = threading.Event()
        self.stats = LinkStats()
        self.error: ObsError | None = None  # set when the link gave up (wrong password, not v5)
        self.obs_scenes: list[str] = []
        self.program_scene: str | None = None
        self.version = ""
        self._out: queue.SimpleQueue = queue.SimpleQueue()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._req = None
        self._evt = None
        self._status_text = ""
        self._status_missing_warned = False
        self._t_status = 0.0
        self._waiting_logged = False

    # ---- lifecycle -----------------------------------------------------------------------------
    def try_connect(self) -> bool:
        """One synchronous attempt (at start-up). False: OBS not reachable (yet). Raises ObsAuthError /
        ObsProtocolError, which retrying cannot fix."""
        try:
            self._open()
            return True
        except ObsUnreachable:
            return False

    def start(self) -> None:
        self.bus.subscribe(self._on_state)
        self._thread = threading.Thread(target=self._run, name="obs-link", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self.bus.unsubscribe(self._on_state)
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._close()

    # ---- link thread ---------------------------------------------------------------------------
    def _run(self) -> None:
        backoff = BACKOFF_FIRST
        while not self._stop.is_set():
            if self._req is None:
                try:
                    self._open()
                    backoff = BACKOFF_FIRST
                except ObsUnreachable as exc:
                    if not self._waiting_logged:
                        log.info("OBS: %s; connecting when it is up", exc.message)
                        self._waiting_logged = True
                    self._stop.wait(backoff)
                    backoff = min(backoff * 2, BACKOFF_MAX)
                except (ObsAuthError, ObsProtocolError) as exc:
                    self.error = exc
                    log.error("OBS: %s. Not retrying; the output keeps running without OBS control.", exc.render())
                    return
                except Exception:  # a bug, or an OBS answer we did not expect: keep the link thread alive
                    log.exception("OBS: connecting failed unexpectedly; retrying in %.1f s", BACKOFF_MAX)
                    self._close()
                    self._stop.wait(BACKOFF_MAX)
                continue
            try:
                item = self._out.get(timeout=0.1)
            except queue.Empty:
                item = None
            try:
                if self._evt is not None and not self._evt.worker.is_alive():
                    raise ConnectionError("OBS closed the connection")
                if item is not None:
                    self._send(item)
                self._update_status_text()
            except Exception as exc:  # OBS quit or restarted: websocket/socket errors of every kind
                self._lost(exc)

    def _open(self) -> None:
        req, evt, hello = connect(self.settings, timeout=self.connect_timeout)
        try:
            version = request(req, "GetVersion")
            scenes = request(req, "GetSceneList")
        except Exception as exc:
            _quiet_close(req, evt)
            raise ObsUnreachable(f"OBS at {self.settings.host}:{self.settings.port} went away while connecting "
                                 f"({type(exc).__name__})") from None
        self._req, self._evt = req, evt
        self.version = f"OBS {version.get('obsVersion', '?')} (obs-websocket {hello.obs_websocket_version})"
        self.obs_scenes = [s["sceneName"] for s in reversed(scenes.get("scenes", []))]
        self.program_scene = scenes.get("currentProgramSceneName")
        self.stats.connects += 1
        self.stats.t_connected = time.perf_counter()
        self._waiting_logged = False
        while True:  # answers queued while disconnected are stale
            try:
                self._out.get_nowait()
            except queue.Empty:
                break
        log.info("OBS: connected to %s at %s:%d; program scene %r", self.version, self.settings.host,
                 self.settings.port, self.program_scene)
        presets = self.presets_fn()
        for line in binding.conflicts(presets) + binding.missing_scenes(presets, self.obs_scenes):
            log.warning("OBS: %s", line)
        evt.callback = _RawEvents(self._on_event)
        if self.program_scene:
            self._follow_scene(self.program_scene, initial=True)  # start in step with what OBS shows now
        self._status_text = ""
        self.connected.set()

    def _lost(self, exc: BaseException) -> None:
        self.connected.clear()
        self.stats.disconnects += 1
        self.stats.t_lost = time.perf_counter()
        log.warning("OBS: connection lost (%s); reconnecting, the output keeps running", type(exc).__name__
                    if not str(exc) else str(exc)[:120])
        self._close()

    def _close(self) -> None:
        req, evt, self._req, self._evt = self._req, self._evt, None, None
        self.connected.clear()
        _quiet_close(req, evt)

    def _send(self, item: tuple[str, dict]) -> None:
        kind, data = item
        if kind == "broadcast":
            request(self._req, "BroadcastCustomEvent", {"eventData": data})
        elif kind == "rescan":  # scenes were added, removed or renamed in OBS
            scenes = request(self._req, "GetSceneList")
            self.obs_scenes = [sc["sceneName"] for sc in reversed(scenes.get("scenes", []))]

    # ---- status text ---------------------------------------------------------------------------
    def _update_status_text(self) -> None:
        if not self.settings.status_text:
            return
        now = time.perf_counter()
        if now - self._t_status < self.status_every:
            return
        self._t_status = now
        st = self.state_fn()
        text = f"{st['preset']}{'  (passthrough)' if st.get('passthrough') else ''}  {st['fps']:.0f} fps"
        self._set_status_text(text)

    def _set_status_text(self, text: str) -> None:
        if text == self._status_text:
            return
        try:
            request(self._req, "SetInputSettings", {"inputName": STATUS_SOURCE, "inputSettings": {"text": text},
                                                    "overlay": True})
        except ObsError:
            if not self._status_missing_warned:
                log.warning("OBS: no text source %r to show the status in; create it with "
                            "`avatarcast obs setup --status-text`", STATUS_SOURCE)
                self._status_missing_warned = True
            return
        self._status_text = text

    # ---- other threads -------------------------------------------------------------------------
    def _on_event(self, event_type: str, data: dict) -> None:
        """obsws-python's event thread: OBS events -> commands on the bus (or a queued answer)."""
        if event_type == "CurrentProgramSceneChanged":
            scene = data.get("sceneName")
            if isinstance(scene, str):
                self.program_scene = scene
                self.stats.scene_changes += 1
                self._follow_scene(scene)
        elif event_type == "CustomEvent":
            self._on_custom(data)
        elif event_type in ("SceneCreated", "SceneRemoved", "SceneNameChanged"):
            self._out.put(("rescan", {}))

    def _follow_scene(self, scene: str, initial: bool = False) -> None:
        cmds = binding.commands_for_scene(scene, self.presets_fn(), self.settings.unbound_scene)
        if initial:  # on (re)connect: only what changes something (no answer broadcasts for no-ops)
            st = self.state_fn()
            cmds = [c for c in cmds if not (c.name == "switch_preset" and c.get("index") == st.get("index")) and
                    not (c.name == "passthrough" and c.get("on") == st.get("passthrough"))]
        for cmd in cmds:
            self.bus.send(cmd)
        log.debug("OBS scene %r -> %s", scene, [c.as_dict() for c in cmds] or "no change")

    def _on_custom(self, data) -> None:
        try:
            parsed = protocol.parse_event(data)
        except CommandError as exc:
            self.stats.rejected_payloads += 1
            log.warning("OBS: ignored a malformed avatarcast CustomEvent: %s", exc.render())
            self._out.put(("broadcast", protocol.error_event(exc.render(), data)))
            return
        if parsed is None:
            return
        if parsed == protocol.STATE_QUERY:
            self._out.put(("broadcast", protocol.state_event(self.state_fn() | {"event": "state"})))
            return
        self.stats.commands += 1
        self.bus.send(parsed)

    def _on_state(self, state: dict) -> None:
        """The engine's processing thread (CommandBus.publish): queue the answer, never block."""
        if self.connected.is_set():
            self._out.put(("broadcast", protocol.state_event(state)))


def _quiet_close(req, evt) -> None:
    for client in (evt, req):
        if client is None:
            continue
        try:
            client.base_client.ws.close(timeout=0.2)
        except Exception:
            pass
    if evt is not None:
        evt.worker.join(timeout=1)
