"""Typed params and ports: the one source of truth for validation, CLI listing and JSON Schema.

A node declares ``Param`` objects next to its code. The same declaration validates a preset file,
a live ``set_param`` command (hotkey, OBS, CLI), prints in ``avatarcast nodes`` and generates the
published JSON Schema.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any


class PortType(StrEnum):
    """What flows through a port.

    FRAME: ``(H, W, 3) uint8`` BGR image, C-contiguous.
    MASK:  ``(H, W) float32`` in [0, 1] (1 = keep / person / foreground).
    FACES: ``list`` of tracked faces (see ``nodes.face.Face``), landmarks in pixels of the frame.
    """

    FRAME = "frame"
    MASK = "mask"
    FACES = "faces"

    @property
    def is_array(self) -> bool:
        return self in (PortType.FRAME, PortType.MASK)


@dataclass(frozen=True)
class Port:
    name: str
    type: PortType
    description: str = ""
    optional: bool = False


class ParamError(ValueError):
    """A value does not fit a param; the message says what was expected."""


_COLOR_NAMES = {
    "black": (0, 0, 0),
    "white": (255, 255, 255),
    "green": (0, 255, 0),
    "blue": (0, 0, 255),
    "red": (255, 0, 0),
    "magenta": (255, 0, 255),
    "gray": (128, 128, 128),
    "grey": (128, 128, 128),
}
_SIZE_RE = re.compile(r"^\s*(\d{1,5})\s*[xX]\s*(\d{1,5})\s*$")


def parse_size(value: Any) -> tuple[int, int]:
    """'1280x720' or [1280, 720] -> (width, height), each 16..8192."""
    if isinstance(value, str):
        m = _SIZE_RE.match(value)
        if not m:
            raise ParamError(f"expected a size like 1280x720, got {value!r}")
        w, h = int(m.group(1)), int(m.group(2))
    elif isinstance(value, (list, tuple)) and len(value) == 2 and all(type(v) is int for v in value):
        w, h = value
    else:
        raise ParamError(f"expected a size like 1280x720, got {value!r}")
    if not (16 <= w <= 8192 and 16 <= h <= 8192):
        raise ParamError(f"size {w}x{h} is outside 16x16..8192x8192")
    return w, h


def parse_color(value: Any) -> tuple[int, int, int]:
    """'#00ff00', 'green' or [r, g, b] (0..255) -> (r, g, b)."""
    if isinstance(value, str):
        v = value.strip().lower()
        if v in _COLOR_NAMES:
            return _COLOR_NAMES[v]
        if re.fullmatch(r"#[0-9a-f]{6}", v):
            return int(v[1:3], 16), int(v[3:5], 16), int(v[5:7], 16)
    elif isinstance(value, (list, tuple)) and len(value) == 3:
        if all(type(c) is int and 0 <= c <= 255 for c in value):
            return tuple(value)  # type: ignore[return-value]
    raise ParamError(f"expected a colour like '#00ff00', a name ({', '.join(sorted(_COLOR_NAMES))}) "
                     f"or [r, g, b] in 0..255, got {value!r}")


@dataclass(frozen=True)
class Param:
    """One node parameter.

    type: 'float', 'int', 'bool', 'str', 'choice', 'color' (-> (r, g, b)), 'path' (a file, relative to
    the preset's folder), 'size' (-> (w, h)). ``live`` says whether it may change while running.
    ``step`` is the nudge increment for hotkeys (default: 1/20 of the range).
    """

    name: str
    type: str
    default: Any
    description: str
    min: float | None = None
    max: float | None = None
    choices: tuple[str, ...] = ()
    optional: bool = False  # None is allowed (and is the default when default is None)
    live: bool = True
    step: float | None = None
    extra: dict = field(default_factory=dict, compare=False, hash=False)

    def validate(self, value: Any) -> Any:
        """Return the value converted to its Python form, or raise ParamError saying what was expected."""
        if value is None:
            if self.optional:
                return None
            raise ParamError(f"{self.name} needs a value ({self.kind_text()})")
        t = self.type
        if t == "float":
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ParamError(f"expected a number ({self.kind_text()}), got {value!r}")
            if not math.isfinite(value):
                raise ParamError(f"expected a finite number, got {value!r}")
            self._check_range(value)
            return float(value)
        if t == "int":
            if isinstance(value, bool) or not isinstance(value, int):
                if isinstance(value, float) and value.is_integer():
                    value = int(value)
                else:
                    raise ParamError(f"expected a whole number ({self.kind_text()}), got {value!r}")
            self._check_range(value)
            return int(value)
        if t == "bool":
            if not isinstance(value, bool):
                raise ParamError(f"expected true or false, got {value!r}")
            return value
        if t == "str":
            if not isinstance(value, str):
                raise ParamError(f"expected text, got {value!r}")
            return value
        if t == "choice":
            if value not in self.choices:
                raise ParamError(f"expected one of {', '.join(self.choices)}, got {value!r}")
            return value
        if t == "color":
            return parse_color(value)
        if t == "size":
            return parse_size(value)
        if t == "path":
            if not isinstance(value, str) or not value.strip():
                raise ParamError(f"expected a file path, got {value!r}")
            return value
        raise AssertionError(f"unknown param type {t!r} for {self.name}")

    def _check_range(self, value: float) -> None:
        if self.min is not None and value < self.min or self.max is not None and value > self.max:
            raise ParamError(f"{value!r} is out of range {_num(self.min)}..{_num(self.max)}")

    def kind_text(self) -> str:
        if self.type in ("float", "int") and (self.min is not None or self.max is not None):
            return f"{self.type} {_num(self.min)}..{_num(self.max)}"
        if self.type == "choice":
            return "one of " + "|".join(self.choices)
        return self.type

    @property
    def nudge_step(self) -> float:
        if self.step is not None:
            return self.step
        if self.min is not None and self.max is not None:
            s = (self.max - self.min) / 20.0
            return max(1, round(s)) if self.type == "int" else s
        return 1 if self.type == "int" else 0.1

    def json_schema(self) -> dict:
        d: dict[str, Any] = {"description": self.description}
        t = self.type
        if t in ("float", "int"):
            d["type"] = "number" if t == "float" else "integer"
            if self.min is not None:
                d["minimum"] = self.min
            if self.max is not None:
                d["maximum"] = self.max
        elif t == "bool":
            d["type"] = "boolean"
        elif t in ("str", "path"):
            d["type"] = "string"
        elif t == "choice":
            d["enum"] = list(self.choices)
        elif t == "color":
            d["oneOf"] = [
                {"type": "string", "pattern": "^#[0-9a-fA-F]{6}$"},
                {"enum": sorted(_COLOR_NAMES)},
                {"type": "array", "items": {"type": "integer", "minimum": 0, "maximum": 255},
                 "minItems": 3, "maxItems": 3},
            ]
        elif t == "size":
            d["oneOf"] = [{"type": "string", "pattern": r"^\s*\d+\s*[xX]\s*\d+\s*$"},
                          {"type": "array", "items": {"type": "integer"}, "minItems": 2, "maxItems": 2}]
        if self.default is not None:
            d["default"] = list(self.default) if isinstance(self.default, tuple) else self.default
        if self.optional:
            d = {"anyOf": [d, {"type": "null"}], "description": self.description}
        return d


def _num(v: float | None) -> str:
    if v is None:
        return ""
    return str(int(v)) if float(v).is_integer() else f"{v:g}"
