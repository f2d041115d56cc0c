"""Global hotkeys: keys pressed in any application (the game, OBS) become commands on the bus.

Bindings come from three places, weakest first: the defaults below, the user's config file
(``hotkeys.yaml`` in ``engine.library.user_config_dir()``), and a preset's own ``hotkey:``. A config
or preset binding replaces a default on the same keys; two explicit bindings on the same keys that do
different things are an error at start that lists both.

The listener is a pynput keyboard ``Listener`` matching exact key sets (X11 on Linux, Win32 hooks on Windows, Quartz event taps on
macOS). Its callbacks run on pynput's thread and only put a ``Command`` on the bus; the runtime applies
it between frames. pynput is imported only when the listener starts: its X11 backend needs a display
at import time, and the engine must run (without hotkeys) when there is none.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .control import Command, CommandBus, parse_command
from .errors import CommandError, PresetError, UserError, Where, show_value
from .library import user_config_dir
from .params import ParamError
from .preset import Preset
from .yamlsafe import line_of, load_file

log = logging.getLogger("avatarcast.hotkeys")

CONFIG_NAME = "hotkeys.yaml"
MODIFIERS = ("ctrl", "alt", "shift", "cmd")  # canonical order
_MODIFIER_WORDS = {"ctrl": "ctrl", "control": "ctrl", "alt": "alt", "option": "alt", "opt": "alt",
                   "shift": "shift", "cmd": "cmd", "command": "cmd", "super": "cmd", "win": "cmd", "meta": "cmd"}
# named keys that pynput has on Linux, Windows and macOS alike
NAMED_KEYS = frozenset({*(f"f{i}" for i in range(1, 21)), "up", "down", "left", "right", "home", "end",
                        "page_up", "page_down", "delete", "space", "tab", "enter", "backspace", "esc"})
_KEY_ALIASES = {"pgup": "page_up", "pageup": "page_up", "pgdn": "page_down", "pagedown": "page_down",
                "escape": "esc", "return": "enter", "del": "delete"}
_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789[];',./-=`\\")

# (keys, command): the defaults. Ctrl+Alt+key: games and OBS rarely use it; the Linux desktop combos
# (Ctrl+Alt+T/L/D/Del/Backspace/arrows/F1-F12) are left alone.
DEFAULT_BINDINGS: tuple[tuple[str, dict], ...] = (
    *((f"ctrl+alt+{n}", {"command": "switch_preset", "index": n}) for n in range(1, 10)),
    ("ctrl+alt+0", {"command": "passthrough"}),
    ("ctrl+alt+n", {"command": "next_preset"}),
    ("ctrl+alt+p", {"command": "prev_preset"}),
    ("ctrl+alt+r", {"command": "recalibrate"}),
    ("ctrl+alt+m", {"command": "mirror"}),
    ("ctrl+alt+h", {"command": "hud"}),
    ("ctrl+alt+f", {"command": "freeze"}),
    ("ctrl+alt+shift+r", {"command": "reload"}),
)


def parse_hotkey(text: Any) -> str:
    """'Ctrl+Alt+1', 'alt+ctrl+1', '<ctrl>+<alt>+1' -> canonical 'ctrl+alt+1'. Raises ValueError."""
    if not isinstance(text, str) or not text.strip():
        raise ValueError(f"a hotkey is text like ctrl+alt+1, got {text!r}")
    parts = [p.strip().lower().strip("<>") for p in text.strip().split("+")]
    if any(not p for p in parts):
        raise ValueError(f"hotkey {text!r}: empty part (write keys joined by +, like ctrl+alt+1)")
    mods, keys = set(), []
    for p in parts:
        if p in _MODIFIER_WORDS:
            mod = _MODIFIER_WORDS[p]
            if mod in mods:
                raise ValueError(f"hotkey {text!r}: {p} given twice")
            mods.add(mod)
        else:
            keys.append(_KEY_ALIASES.get(p, p))
    if len(keys) != 1:
        raise ValueError(f"hotkey {text!r}: needs exactly one key besides the modifiers "
                         f"({', '.join(MODIFIERS)}), got {len(keys)}")
    key = keys[0]
    if key not in NAMED_KEYS and not (len(key) == 1 and key in _CHARS):
        raise ValueError(f"hotkey {text!r}: unknown key {key!r} (a letter, a digit, one of "
                         f"{''.join(sorted(_CHARS - set('abcdefghijklmnopqrstuvwxyz0123456789')))}, "
                         f"or {', '.join(sorted(NAMED_KEYS, key=_named_order))})")
    if "shift" in mods and len(key) == 1 and not key.isalpha():
        raise ValueError(f"hotkey {text!r}: shift turns digits and punctuation into other characters on most "
                         "keyboard layouts; use shift with a letter or a named key (f1, up, ...)")
    if len(key) == 1 and not mods & {"ctrl", "alt", "cmd"}:
        raise ValueError(f"hotkey {text!r}: a global hotkey on a typing key fires while you type in any "
                         "app; add ctrl, alt or cmd")
    return "+".join([m for m in MODIFIERS if m in mods] + [key])


def _named_order(k: str) -> tuple:
    return (0, int(k[1:])) if k[0] == "f" and k[1:].isdigit() else (1, k)


def to_pynput(keys: str) -> str:
    """Canonical 'ctrl+alt+f5' -> pynput's '<ctrl>+<alt>+<f5>'."""
    return "+".join(p if len(p) == 1 else f"<{p}>" for p in keys.split("+"))


@dataclass(frozen=True)
class Binding:
    keys: str  # canonical, e.g. "ctrl+alt+1"
    command: dict  # {"command": NAME, **args}, validated by parse_command
    origin: str  # "default", "FILE:LINE", or "preset NAME (FILE:LINE)"

    def make_command(self) -> Command:
        """A fresh command (its time stamp is the key press)."""
        return Command(self.command["command"], tuple((k, v) for k, v in self.command.items() if k != "command"),
                       "hotkey")

    def describe(self, presets: list[Preset] | None = None) -> str:
        c = self.command
        name = c["command"]
        if name == "switch_preset":
            if "index" in c:
                i = c["index"]
                if presets is None:
                    return f"switch to preset {i}"
                return f"switch to preset {i}: {presets[i - 1].name}" if i <= len(presets) else \
                    f"switch to preset {i} (not loaded)"
            return f"switch to preset {c['name']!r}"
        words = {"next_preset": "next preset", "prev_preset": "previous preset", "reload": "reload presets from disk",
                 "recalibrate": "recalibrate the neutral pose", "passthrough": "passthrough (raw camera)",
                 "freeze": "freeze frame", "mirror": "mirror", "hud": "show/hide the HUD"}
        text = words.get(name, name.replace("_", " "))
        args = {k: v for k, v in c.items() if k != "command"}
        if "on" in args:
            text += " on" if args.pop("on") else " off"
        elif name in ("passthrough", "freeze", "mirror", "bypass"):
            text += " on/off"
        if name == "nudge_param":
            return f"{args['node']}.{args['param']} {'up' if args['direction'] > 0 else 'down'}"
        if name == "set_param":
            return f"set {args['node']}.{args['param']} = {args['value']!r}"
        if args:
            text += " (" + ", ".join(f"{k}={v!r}" for k, v in args.items()) + ")"
        return text


@dataclass
class HotkeyConfig:
    """The user's hotkey file: ``enabled`` and ``bindings`` (keys -> command, or null to remove)."""

    file: Path | None = None
    enabled: bool = True
    bindings: tuple[Binding, ...] = ()
    removed: frozenset[str] = frozenset()


def config_path() -> Path:
    return user_config_dir() / CONFIG_NAME


CONFIG_EXAMPLE = """\
# avatarcast global hotkeys (this file: {path})
enabled: true                 # false: no global hotkeys at all
bindings:                     # keys -> command; null removes a default
  ctrl+alt+0: null
  ctrl+shift+f9: passthrough  # a command without arguments
  ctrl+alt+up: {{command: nudge_param, node: color, param: saturation, direction: 1}}
  ctrl+alt+down: {{command: nudge_param, node: color, param: saturation, direction: -1}}
"""


def load_config(path: Path | None = None) -> HotkeyConfig:
    """Read the hotkey config file (absent: defaults only). Raises UserError with file, line, field, value."""
    explicit = path is not None
    path = Path(path) if explicit else config_path()
    if not path.exists():
        if explicit:
            raise UserError("hotkey config file not found", Where(path), "check the path")
        return HotkeyConfig()
    data = load_file(path)
    if data is None:
        return HotkeyConfig(file=path)
    problems: list[UserError] = []
    if not isinstance(data, dict):
        raise UserError(f"the hotkey config must be a mapping with `bindings:`, got {show_value(data)}", Where(path, 1),
                        "example:\n" + CONFIG_EXAMPLE.format(path=path))
    for key in data:
        if key not in ("enabled", "bindings"):
            problems.append(UserError(f"unknown key {key!r}", Where(path, line_of(data, key), key),
                                      "known keys: enabled, bindings"))
    enabled = data.get("enabled", True)
    if not isinstance(enabled, bool):
        problems.append(UserError(f"`enabled` must be true or false, got {enabled!r}",
                                  Where(path, line_of(data, "enabled"), "enabled")))
        enabled = True
    raw = data.get("bindings", {})
    bindings: list[Binding] = []
    removed: set[str] = set()
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        problems.append(UserError(f"`bindings` must map hotkeys to commands, got {show_value(raw)}",
                                  Where(path, line_of(data, "bindings"), "bindings")))
        raw = {}
    for keys_text, value in raw.items():
        line = line_of(raw, keys_text)
        where = Where(path, line, f"bindings.{keys_text}")
        try:
            keys = parse_hotkey(keys_text)
        except ValueError as exc:
            problems.append(UserError(str(exc), where))
            continue
        if value is None:
            removed.add(keys)
            continue
        payload = {"command": value} if isinstance(value, str) else value
        try:
            parse_command(payload, "hotkey")
            payload = dict(payload)
        except CommandError as exc:
            shown = show_value(value if isinstance(value, str) or not isinstance(value, dict) else dict(value), 90)
            problems.append(UserError(f"{exc.message} (got {shown})", where, exc.hint))
            continue
        bindings.append(Binding(keys, payload, f"{path}:{line}"))
    if problems:
        raise PresetError(problems)
    return HotkeyConfig(path, enabled, tuple(bindings), frozenset(removed))


def preset_bindings(presets: list[Preset]) -> list[Binding]:
    """Each preset's own ``hotkey:`` switches to it (by its place in the set)."""
    out = []
    problems = []
    for i, p in enumerate(presets):
        if not p.hotkey:
            continue
        line = line_of(p.raw, "hotkey") if p.raw else None
        try:
            keys = parse_hotkey(p.hotkey)
        except ValueError as exc:
            problems.append(UserError(str(exc), Where(p.file, line, "hotkey")))
            continue
        where = f"{p.file}:{line}" if p.file else "built in"
        out.append(Binding(keys, {"command": "switch_preset", "index": i + 1}, f"preset {p.name!r} ({where})"))
    if problems:
        raise PresetError(problems)
    return out


def resolve(presets: list[Preset], config: HotkeyConfig | None = None) -> list[Binding]:
    """The active bindings, sorted by keys. Raises UserError listing every conflict (both sides)."""
    config = config or HotkeyConfig()
    active: dict[str, Binding] = {k: Binding(k, c, "default") for k, c in DEFAULT_BINDINGS}
    for keys in config.removed:
        active.pop(keys, None)
    explicit: dict[str, Binding] = {}
    conflicts: list[str] = []
    for b in (*config.bindings, *preset_bindings(presets)):
        first = explicit.get(b.keys)
        if first is not None and first.command != b.command:
            conflicts.append(f"{b.keys} is bound twice: {first.describe(presets)!r} ({first.origin}) and "
                             f"{b.describe(presets)!r} ({b.origin})")
            continue
        explicit[b.keys] = b
        replaced = active.get(b.keys)
        if replaced is not None and replaced.origin == "default" and replaced.command != b.command:
            log.debug("%s: %s replaces the default %s", b.keys, b.describe(presets), replaced.describe(presets))
        active[b.keys] = b
    if conflicts:
        raise UserError("conflicting hotkeys:\n  " + "\n  ".join(conflicts),
                        hint="give one of each pair other keys (or `null` in the hotkey config to free keys)")
    return sorted(active.values(), key=lambda b: _sort_key(b.keys))


def node_binding_warnings(bindings: list[Binding], presets: list[Preset]) -> list[str]:
    """Bindings aimed at a node that no preset of the set has, or with a value no preset accepts. Not
    errors (the set may be reloaded or switched later; the runtime rejects such a press with its
    reason), but worth saying at start."""
    out = []
    for b in bindings:
        node_id = b.command.get("node")
        if node_id is None or not presets:
            continue
        specs = [spec for p in presets for spec in p.nodes if spec.id == node_id]
        if not specs:
            out.append(f"{b.keys} ({b.origin}): no preset in this set has a node {node_id!r}")
            continue
        pname = b.command.get("param")
        if pname is None:
            continue
        params = [spec.cls.param(pname) for spec in specs if pname in {p.name for p in spec.cls.params}]
        if not params:
            out.append(f"{b.keys} ({b.origin}): node {node_id!r} has no param {pname!r}")
        elif b.command["command"] == "set_param":
            reasons = []
            for param in params:
                try:
                    param.validate(b.command["value"])
                    break
                except ParamError as exc:
                    reasons.append(str(exc))
            else:
                out.append(f"{b.keys} ({b.origin}): {node_id}.{pname} = {show_value(b.command['value'])} will be "
                           f"rejected: {reasons[0]}")
    return out


def _sort_key(keys: str) -> tuple:
    parts = keys.split("+")
    return (len(parts), parts[:-1], _named_order(parts[-1]) if len(parts[-1]) > 1 else (-1, parts[-1]))


def format_table(bindings: list[Binding], presets: list[Preset] | None = None) -> str:
    width = max((len(b.keys) for b in bindings), default=4)
    rows = []
    for b in bindings:
        origin = "" if b.origin == "default" else f"   [{b.origin}]"
        rows.append(f"  {b.keys:<{width}}  {b.describe(presets)}{origin}")
    return "\n".join(rows)


# ---- the listener ---------------------------------------------------------------------------------

def availability() -> tuple[bool, str]:
    """Whether global hotkeys can work in this session, and why not (or a caveat)."""
    if sys.platform.startswith("linux"):
        if not os.environ.get("DISPLAY"):
            if os.environ.get("WAYLAND_DISPLAY"):
                return False, ("Wayland session without XWayland (DISPLAY is not set): Wayland does not let an "
                               "app read keys pressed in other apps")
            return False, "no display (DISPLAY is not set; e.g. an SSH or headless session)"
    try:
        from pynput import keyboard  # noqa: F401
    except Exception as exc:  # ImportError, Xlib display errors
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return False, f"pynput cannot start here: {first}"
    if sys.platform.startswith("linux") and os.environ.get("XDG_SESSION_TYPE") == "wayland":
        return True, ("Wayland session: keys are seen only while an X11 (XWayland) window has focus; "
                      "use an X11 session, or OBS hotkeys/websocket commands")
    return True, ""


class HotkeyListener:
    """Listens to global keys (pynput) for a list of bindings; each press sends one command on ``bus``."""

    def __init__(self, bindings: list[Binding], bus: CommandBus):
        self.bindings = list(bindings)
        self.bus = bus
        self._listener = None
        self.presses = 0
        self.why = ""  # why the listener is not running (or a caveat when it is)

    def start(self, quiet: bool = False) -> bool:
        """Start listening. False when this session has no usable keyboard hook (the reason is in ``why``,
        and logged unless ``quiet``): the engine runs on without hotkeys."""
        ok, why = availability()
        self.why = why
        if not ok:
            if not quiet:
                log.warning("global hotkeys are off: %s", why)
            return False
        if why:
            log.warning("%s", why)
        mapping = {to_pynput(b.keys): self._callback(b) for b in self.bindings}
        try:
            listener = _exact_hotkeys_class()(mapping)
            listener.start()
            listener.wait()
        except Exception as exc:
            self.why = f"the keyboard listener failed to start: {exc}"
            if not quiet:
                log.warning("global hotkeys are off: %s", self.why)
            return False
        self._listener = listener
        if sys.platform == "darwin" and not getattr(listener, "IS_TRUSTED", True):
            log.warning("macOS does not let avatarcast read global keys yet: allow your terminal (or Python) in "
                        "System Settings > Privacy & Security > Accessibility (and Input Monitoring), then restart")
        log.debug("listening for %d hotkeys", len(mapping))
        return True

    def _callback(self, binding: Binding):
        def fire() -> None:  # pynput's thread: build the command, queue it, nothing else
            try:
                self.bus.send(binding.make_command())
                self.presses += 1
            except Exception:
                log.exception("hotkey %s failed", binding.keys)

        return fire

    @property
    def running(self) -> bool:
        return self._listener is not None and self._listener.is_alive()

    def stop(self, timeout: float = 1.0) -> None:
        """Stop listening. On X11 the listener thread ends at the next X event: a shift tap wakes it."""
        listener, self._listener = self._listener, None
        if listener is None:
            return
        listener.stop()
        if sys.platform.startswith("linux") and listener.is_alive():
            try:
                from pynput.keyboard import Controller, Key

                Controller().tap(Key.shift)
            except Exception as exc:
                log.debug("could not wake the X11 listener: %s", exc)
        listener.join(timeout)


def _exact_hotkeys_class():
    """pynput's GlobalHotKeys fires a combination whenever its keys are down, also with more keys down:
    ctrl+alt+shift+r would fire ctrl+alt+r too. This listener fires a binding only when exactly its keys
    are down (once per press; key repeat does not fire again), ignoring injected events."""
    from pynput import keyboard

    class ExactHotKeys(keyboard.Listener):
        def __init__(self, hotkeys: dict[str, Any]):
            self._combos = {frozenset(keyboard.HotKey.parse(k)): fn for k, fn in hotkeys.items()}
            self._down: set = set()
            super().__init__(on_press=self._on_press, on_release=self._on_release)

        def _on_press(self, key, injected) -> None:
            if injected or key is None:
                return
            k = self.canonical(key)
            if k in self._down:
                return
            self._down.add(k)
            fn = self._combos.get(frozenset(self._down))
            if fn is not None:
                fn()

        def _on_release(self, key, injected) -> None:
            if not injected and key is not None:
                self._down.discard(self.canonical(key))

    return ExactHotKeys


# ---- CLI ------------------------------------------------------------------------------------------

_LISTENERS: dict[int, HotkeyListener] = {}


def _bindings_for(presets: list[Preset], config_file: str | None) -> tuple[HotkeyConfig, list[Binding]]:
    config = load_config(Path(config_file) if config_file else None)
    return config, resolve(presets, config)


def _run_hook(engine, args) -> None:
    """Start the listener with the running engine and print the active bindings."""
    if getattr(args, "no_hotkeys", False):
        log.info("global hotkeys off (--no-hotkeys)")
        return
    config, bindings = _bindings_for(engine.presets, getattr(args, "hotkeys_config", None))
    if not config.enabled:
        log.info("global hotkeys off (enabled: false in %s)", config.file)
        return
    out = sys.stderr if getattr(args, "output", "") == "pipe" else sys.stdout  # pipe: stdout carries frames
    listener = HotkeyListener(bindings, engine.bus)
    if not listener.start(quiet=True):  # one line, no table: nothing is listening
        print(f"global hotkeys: off: {listener.why}", file=out, flush=True)
        return
    for warning in node_binding_warnings(bindings, engine.presets):
        log.warning("hotkey %s", warning)
    source = f"config {config.file}" if config.file else f"defaults; no config at {config_path()}"
    print(f"global hotkeys: active; {source}\n{format_table(bindings, engine.presets)}", file=out, flush=True)
    _LISTENERS[id(engine)] = listener


def _stop_hook(engine) -> None:
    listener = _LISTENERS.pop(id(engine), None)
    if listener is not None:
        listener.stop()


def cmd_hotkeys(args) -> int:
    from .cli import load_presets

    presets = load_presets(args.preset) if args.preset else []
    config, bindings = _bindings_for(presets, args.config)
    if args.json:
        print(json.dumps({"config": str(config.file or config_path()), "config_present": config.file is not None,
                          "enabled": config.enabled,
                          "bindings": [{"keys": b.keys, **b.command, "description": b.describe(presets or None),
                                        "origin": b.origin} for b in bindings]}, indent=2))
        return 0
    ok, why = availability()
    print(f"config: {config.file or config_path()}" + ("" if config.file else " (not present: defaults)"))
    if not config.enabled:
        print("global hotkeys are turned off in the config (enabled: false)")
    print(f"listener: {'available' if ok else 'NOT available'}{': ' + why if why else ''}")
    print(format_table(bindings, presets or None))
    for warning in node_binding_warnings(bindings, presets):
        print(f"warning: {warning}")
    if args.example:
        print("\nexample config:\n" + CONFIG_EXAMPLE.format(path=config_path()))
    return 0


def add_commands(sub, parsers) -> None:
    h = sub.add_parser("hotkeys", help="list the global hotkeys (defaults, your config, presets' own)",
                       description="List the global hotkeys that `avatarcast run` would listen to, with where "
                                   f"each comes from. Your overrides: {CONFIG_NAME} in the avatarcast config folder.")
    h.add_argument("--preset", action="append", metavar="PRESET", help="the preset set (as for run), to show "
                   "preset names and the presets' own hotkeys")
    h.add_argument("--config", metavar="FILE", help=f"hotkey config file (default: {CONFIG_NAME} in the config folder)")
    h.add_argument("--json", action="store_true", help="machine-readable")
    h.add_argument("--example", action="store_true", help="also print an example config file")
    h.set_defaults(func=cmd_hotkeys)
    r = parsers["run"]
    r.add_argument("--no-hotkeys", action="store_true", help="do not listen to global hotkeys")
    r.add_argument("--hotkeys-config", metavar="FILE", help=f"hotkey config file (default: {CONFIG_NAME} in the "
                   "avatarcast config folder)")
    # the hook lists of the module that runs `run`: engine.cli, or __main__ under `python -m engine.cli`
    cli_globals = r.get_default("func").__globals__
    for name, hook in (("RUN_HOOKS", _run_hook), ("STOP_HOOKS", _stop_hook)):
        hooks = cli_globals[name]
        if hook not in hooks:
            hooks.append(hook)
