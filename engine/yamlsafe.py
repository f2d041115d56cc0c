"""Safe YAML for presets: plain data only, with line numbers for every key and list item.

Refused: anchors and aliases (the "billion laughs" expansion), any tag beyond YAML's plain scalars,
duplicate keys, non-string keys. Loading never constructs Python objects or runs code.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from yaml.constructor import ConstructorError
from yaml.nodes import MappingNode, ScalarNode, SequenceNode

from .errors import UserError, Where

_PLAIN_TAGS = {
    "tag:yaml.org,2002:str",
    "tag:yaml.org,2002:int",
    "tag:yaml.org,2002:float",
    "tag:yaml.org,2002:bool",
    "tag:yaml.org,2002:null",
    "tag:yaml.org,2002:map",
    "tag:yaml.org,2002:seq",
}
MAX_YAML_BYTES = 1 << 20
MAX_DEPTH = 32


class LocDict(dict):
    """A dict that remembers the 1-based line of itself and of each key."""

    line: int | None = None
    lines: dict[str, int]


class LocList(list):
    """A list that remembers the 1-based line of itself and of each item."""

    line: int | None = None
    lines: list[int]


def line_of(container: Any, key: Any = None) -> int | None:
    if key is not None:
        lines = getattr(container, "lines", None)
        try:
            return lines[key] if lines is not None else None
        except (KeyError, IndexError, TypeError):
            return None
    return getattr(container, "line", None)


class _Loader(yaml.SafeLoader):
    def compose_node(self, parent, index):  # refuse aliases before they can expand
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise _Refused("aliases (*name) are not allowed in presets: write the value out",
                           event.start_mark.line + 1)
        event = self.peek_event()
        anchor = getattr(event, "anchor", None)
        if anchor is not None:
            raise _Refused(f"anchors (&{anchor}) are not allowed in presets: write the value out",
                           event.start_mark.line + 1)
        return super().compose_node(parent, index)


class _Refused(Exception):
    def __init__(self, message: str, line: int | None):
        super().__init__(message)
        self.message = message
        self.line = line


def _build(node: Any, depth: int = 0) -> Any:
    if depth > MAX_DEPTH:
        raise _Refused(f"nesting deeper than {MAX_DEPTH} levels", node.start_mark.line + 1)
    if node.tag not in _PLAIN_TAGS:
        raise _Refused(f"the tag {node.tag!r} is not allowed: presets hold plain data only",
                       node.start_mark.line + 1)
    if isinstance(node, ScalarNode):
        return _Loader.construct_scalar_value(node)
    if isinstance(node, SequenceNode):
        out = LocList()
        out.line = node.start_mark.line + 1
        out.lines = []
        for item in node.value:
            out.append(_build(item, depth + 1))
            out.lines.append(item.start_mark.line + 1)
        return out
    if isinstance(node, MappingNode):
        out = LocDict()
        out.line = node.start_mark.line + 1
        out.lines = {}
        for k_node, v_node in node.value:
            if k_node.tag == "tag:yaml.org,2002:merge":
                raise _Refused("merge keys (<<) are not allowed in presets", k_node.start_mark.line + 1)
            key = _build(k_node, depth + 1)
            if not isinstance(key, str):
                raise _Refused(f"keys must be text, got {key!r}", k_node.start_mark.line + 1)
            if key in out:
                raise _Refused(f"duplicate key {key!r} (first on line {out.lines[key]})",
                               k_node.start_mark.line + 1)
            out[key] = _build(v_node, depth + 1)
            out.lines[key] = k_node.start_mark.line + 1
        return out
    raise _Refused("unsupported YAML node", node.start_mark.line + 1)


_scalar_constructor = yaml.SafeLoader(" ")


def _construct_scalar_value(node: ScalarNode) -> Any:
    try:
        return _scalar_constructor.construct_object(node, deep=True)
    except ConstructorError as exc:
        raise _Refused(f"bad value: {exc.problem}", node.start_mark.line + 1) from None


_Loader.construct_scalar_value = staticmethod(_construct_scalar_value)


def loads(text: str, file: str | Path | None = None) -> Any:
    """Parse YAML text into LocDict/LocList/plain scalars, or raise UserError with file and line."""
    if len(text.encode("utf-8", "replace")) > MAX_YAML_BYTES:
        raise UserError(f"file is larger than {MAX_YAML_BYTES // 1024} KiB; a preset is a small text file",
                        Where(file))
    loader = None
    try:
        loader = _Loader(text)  # the reader refuses control characters here, as a YAMLError
        root = loader.get_single_node()
        if root is None:
            return None
        return _build(root)
    except _Refused as exc:
        raise UserError(exc.message, Where(file, exc.line)) from None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark else None
        problem = exc.problem or exc.context or "not valid YAML"
        raise UserError(f"not valid YAML: {problem}", Where(file, line)) from None
    except yaml.YAMLError as exc:
        raise UserError(f"not valid YAML: {exc}", Where(file)) from None
    except RecursionError:  # PyYAML composes nested collections recursively, before _build's depth check
        raise UserError(f"not valid YAML: nested deeper than {MAX_DEPTH} levels", Where(file)) from None
    except (ValueError, OverflowError) as exc:  # PyYAML's scanner, e.g. an escape like "\U10001000"
        raise UserError(f"not valid YAML: {exc}", Where(file)) from None
    finally:
        if loader is not None:
            loader.dispose()


def load_file(path: str | Path) -> Any:
    p = Path(path)
    try:
        raw = p.read_bytes()
    except FileNotFoundError:
        raise UserError("file not found", Where(p), "check the path") from None
    except IsADirectoryError:
        raise UserError("is a folder, not a preset file", Where(p)) from None
    except OSError as exc:
        raise UserError(f"cannot read: {exc.strerror}", Where(p)) from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise UserError(f"not UTF-8 text (byte {exc.start})", Where(p), "save the preset as UTF-8") from None
    return loads(text, p)
