"""One error hierarchy for the whole project.

`UserError` and its subclasses are mistakes a streamer can fix (bad preset, missing file, no camera,
wrong OBS password). The CLI prints them as one clear message and exits non-zero, no traceback.
Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any


class AvatarcastError(Exception):
    """Root of every error the project raises on purpose."""


@dataclass(frozen=True)
class Where:
    """Where a problem is: file, line (1-based), field path (e.g. ``pipeline[2].saturation``)."""

    file: str | Path | None = None
    line: int | None = None
    field: str | None = None

    def __str__(self) -> str:
        parts = []
        if self.file is not None:
            loc = str(self.file)
            if self.line is not None:
                loc += f":{self.line}"
            parts.append(loc)
        if self.field:
            parts.append(self.field)
        return ": ".join(parts)


def show_value(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


class UserError(AvatarcastError):
    """A mistake the user can fix. ``str()`` is the full one-line message, with where and how to fix."""

    def __init__(self, message: str, where: Where | None = None, hint: str | None = None):
        self.message = message
        self.where = where
        self.hint = hint
        super().__init__(self.render())

    def render(self) -> str:
        loc = str(self.where) if self.where else ""
        text = f"{loc}: {self.message}" if loc else self.message
        if self.hint:
            text += f" ({self.hint})"
        return text


class PresetError(UserError):
    """One or more problems in a preset file. ``problems`` lists every one found."""

    def __init__(self, problems: list[UserError] | UserError):
        self.problems = problems if isinstance(problems, list) else [problems]
        first = self.problems[0]
        super().__init__(first.message, first.where, first.hint)

    def render(self) -> str:
        return "\n".join(p.render() for p in getattr(self, "problems", [])) or super().render()


class SourceError(UserError):
    """An input (camera, video, image) cannot be opened or read."""


class SinkError(UserError):
    """An output (file, window, pipe, virtual camera, stream) cannot be opened or written."""


class CommandError(UserError):
    """A control command (hotkey, OBS, CLI) is malformed or names something that does not exist."""


class NodeError(AvatarcastError):
    """A node failed while processing a frame (logged and bypassed in live mode)."""
