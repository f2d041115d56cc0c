"""The command bus: every control surface (hotkeys, OBS, CLI, scripts) sends the same small immutable
commands on one thread-safe queue; the runtime applies them between frames.

Callbacks from other threads (pynput, obsws-python) only build a ``Command`` (``parse_command`` for
untrusted dicts) and ``bus.send()`` it. Nothing outside the runtime touches a node.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .errors import CommandError

log = logging.getLogger("avatarcast.control")

# name -> {arg: (python types, required)}; the documented command set
COMMANDS: dict[str, dict[str, tuple[tuple[type, ...], bool]]] = {
    "switch_preset": {"name": ((str,), False), "index": ((int,), False)},
    "next_preset": {},
    "prev_preset": {},
    "passthrough": {"on": ((bool,), False)},  # omitted: toggle
    "freeze": {"on": ((bool,), False)},
    "recalibrate": {"node": ((str,), False)},
    "bypass": {"node": ((str,), True), "on": ((bool,), False)},
    "set_param": {"node": ((str,), True), "param": ((str,), True), "value": ((object,), True)},
    "nudge_param": {"node": ((str,), True), "param": ((str,), True), "direction": ((int,), True)},
    "mirror": {"on": ((bool,), False)},
    "hud": {"on": ((bool,), False)},
    "reload": {},
}
COMMAND_HELP = {
    "switch_preset": "switch to a preset by name or by index (1-based, as the hotkeys)",
    "next_preset": "switch to the next preset in the set",
    "prev_preset": "switch to the previous preset in the set",
    "passthrough": "panic button: the raw camera, instantly (on/off; omit to toggle)",
    "freeze": "hold the current output frame (on/off; omit to toggle)",
    "recalibrate": "capture the streamer's neutral pose again (all nodes, or one node id)",
    "bypass": "skip a node (on/off; omit to toggle)",
    "set_param": "set a node param (validated like the preset file)",
    "nudge_param": "step a numeric param up (+1) or down (-1)",
    "mirror": "flip the camera image (on/off; omit to toggle)",
    "hud": "show a small on-screen status (avatar, fps, per-node ms); omit to toggle",
    "reload": "reload the presets from disk",
}


@dataclass(frozen=True)
class Command:
    name: str
    args: tuple[tuple[str, Any], ...] = ()
    source: str = "api"  # hotkey | obs | cli | api
    t: float = field(default_factory=time.perf_counter, compare=False)

    def get(self, key: str, default: Any = None) -> Any:
        for k, v in self.args:
            if k == key:
                return v
        return default

    def as_dict(self) -> dict:
        return {"command": self.name, **dict(self.args)}


def make_command(command: str, /, source: str = "api", **args: Any) -> Command:
    """Build and validate a command (raises CommandError)."""
    return parse_command({"command": command, **args}, source)


def parse_command(payload: Any, source: str = "api") -> Command:
    """Validate an untrusted dict ``{"command": NAME, ...args}`` into a Command, or raise CommandError."""
    if not isinstance(payload, dict):
        raise CommandError(f"a command must be an object like {{\"command\": \"next_preset\"}}, got {payload!r:.80}")
    name = payload.get("command")
    if name not in COMMANDS:
        raise CommandError(f"unknown command {name!r:.40}", hint="commands: " + ", ".join(COMMANDS))
    spec = COMMANDS[name]
    args = []
    for key, value in payload.items():
        if key == "command":
            continue
        if key not in spec:
            raise CommandError(f"command {name}: unknown argument {key!r:.40}",
                               hint=f"arguments: {', '.join(spec) or 'none'}")
        types, _ = spec[key]
        if object not in types and (not isinstance(value, types) or (bool not in types and isinstance(value, bool))):
            raise CommandError(f"command {name}: {key} must be {'/'.join(t.__name__ for t in types)}, got {value!r:.40}")
        args.append((key, value))
    for key, (_, required) in spec.items():
        if required and key not in payload:
            raise CommandError(f"command {name}: missing argument {key!r}")
    if name == "switch_preset" and ("name" in payload) == ("index" in payload):
        raise CommandError("command switch_preset: give exactly one of name or index")
    if name == "nudge_param" and payload["direction"] not in (-1, 1):
        raise CommandError("command nudge_param: direction must be 1 or -1")
    return Command(name, tuple(args), source)


class CommandBus:
    """Thread-safe queue of commands in, state events out. ``send`` never blocks."""

    def __init__(self) -> None:
        self._q: queue.SimpleQueue[Command] = queue.SimpleQueue()
        self._listeners: list[Callable[[dict], None]] = []
        self._lock = threading.Lock()

    def send(self, cmd: Command) -> None:
        self._q.put(cmd)

    def drain(self) -> list[Command]:
        out = []
        while True:
            try:
                out.append(self._q.get_nowait())
            except queue.Empty:
                return out

    def subscribe(self, fn: Callable[[dict], None]) -> None:
        with self._lock:
            self._listeners.append(fn)

    def unsubscribe(self, fn: Callable[[dict], None]) -> None:
        with self._lock:
            if fn in self._listeners:
                self._listeners.remove(fn)

    def publish(self, event: dict) -> None:
        """Tell listeners (OBS status, HUD, tests) what changed. Listener errors are logged, never raised."""
        with self._lock:
            listeners = list(self._listeners)
        for fn in listeners:
            try:
                fn(event)
            except Exception:
                log.exception("state listener failed")
