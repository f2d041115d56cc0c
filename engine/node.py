"""The node contract and the node registry.

A node class declares, next to its code:
  ``kind``         the name used in presets (``node: color_adjust``)
  ``family``       the module family (color, transform, face, ...)
  ``description``  one line for ``avatarcast nodes``
  ``inputs``/``outputs``  typed ports (``engine.params.Port``)
  ``params``       typed params (``engine.params.Param``)
  ``commands``     names of node commands it understands (e.g. ``recalibrate``)

Lifecycle (as in MediaPipe calculators): the class is validated when the graph is built,
``configure()`` agrees output sizes at build time, ``open()`` loads models, allocates buffers and
compiles kernels (never at import), ``process()`` runs per frame writing into the ``out`` arrays it is
handed, ``close()`` runs exactly once.
"""

from __future__ import annotations

import importlib
import logging
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any, ClassVar

from .params import Param, ParamError, Port, PortType

log = logging.getLogger("avatarcast.engine")

Shape = tuple[int, int]  # (height, width) of an array port


@dataclass
class Avatar:
    """The avatar a preset names: its image files (one or more shots of the same avatar)."""

    images: list[Path] = field(default_factory=list)
    raw: dict = field(default_factory=dict)  # the whole avatar section, for nodes that read more


@dataclass
class BuildContext:
    """What a node may know about the world when it is built and opened."""

    preset_name: str = ""
    preset_dir: Path = Path(".")
    preset_file: Path | None = None
    avatar: Avatar = field(default_factory=Avatar)
    source_size: Shape = (720, 1280)  # (h, w) of the frames the graph receives
    fps: float = 30.0
    device: str = "cpu"  # 'cpu' (numba) or 'cuda' (torch)
    live: bool = False
    cache_dir: Path | None = None
    shared: dict = field(default_factory=dict)  # per-preset data shared between nodes (e.g. avatar mesh)

    def resolve(self, relpath: str) -> Path:
        """A file path from a preset, relative to the preset's folder."""
        p = Path(relpath).expanduser()
        return p if p.is_absolute() else (self.preset_dir / p)


class Node:
    kind: ClassVar[str] = ""
    family: ClassVar[str] = ""
    description: ClassVar[str] = ""
    inputs: ClassVar[tuple[Port, ...]] = ()
    outputs: ClassVar[tuple[Port, ...]] = ()
    params: ClassVar[tuple[Param, ...]] = ()
    commands: ClassVar[tuple[str, ...]] = ()

    def __init__(self, node_id: str, params: dict[str, Any], ctx: BuildContext):
        self.id = node_id
        self.p: dict[str, Any] = dict(params)  # validated values, by param name
        self.ctx = ctx
        self.in_shapes: dict[str, Shape] = {}
        self.out_shapes: dict[str, Shape] = {}

    # ---- build time -------------------------------------------------------------------------
    @classmethod
    def param(cls, name: str) -> Param:
        for p in cls.params:
            if p.name == name:
                return p
        raise KeyError(name)

    @classmethod
    def validate_params(cls, given: dict[str, Any]) -> tuple[dict[str, Any], list[tuple[str, str]]]:
        """Defaults filled in and values converted; problems as (param name, message)."""
        values: dict[str, Any] = {}
        problems: list[tuple[str, str]] = []
        known = {p.name for p in cls.params}
        for key in given:
            if key not in known:
                names = ", ".join(sorted(known)) or "none"
                problems.append((key, f"unknown param {key!r} for node {cls.kind} (its params: {names})"))
        for p in cls.params:
            if p.name in given:
                try:
                    values[p.name] = p.validate(given[p.name])
                except ParamError as exc:
                    problems.append((p.name, str(exc)))
            else:
                values[p.name] = p.default if p.default is None else p.validate(p.default)
        return values, problems

    def configure(self, in_shapes: dict[str, Shape]) -> dict[str, Shape]:
        """Agree array sizes once, at build time. Default: every array output takes the size of the
        first array input. Raise ``ParamError`` with a message for a size problem."""
        self.in_shapes = dict(in_shapes)
        first = next((in_shapes[p.name] for p in self.inputs if p.type.is_array and p.name in in_shapes),
                     self.ctx.source_size)
        return {p.name: first for p in self.outputs if p.type.is_array}

    # ---- run time ---------------------------------------------------------------------------
    def open(self) -> None:
        """Load models, allocate buffers, warm up (compile) kernels."""

    def process(self, inputs: dict[str, Any], out: dict[str, Any]) -> None:
        """One frame. ``inputs`` are read-only. ``out`` holds a preallocated array for every array
        output (write into it); set non-array outputs (faces) by assigning ``out[name] = value``."""
        raise NotImplementedError

    def close(self) -> None:
        """Release what open() took. Called exactly once, also after a failed open()."""

    def set_param(self, name: str, value: Any) -> None:
        """Apply an already validated live param change."""
        self.p[name] = value
        self.params_changed({name})

    def params_changed(self, names: set[str]) -> None:
        """Hook: recompute what depends on the named params."""

    def command(self, name: str, args: dict[str, Any]) -> None:
        """Hook for node commands listed in ``commands`` (e.g. ``recalibrate``)."""

    def reset(self) -> None:
        """Forget temporal state (smoothing, tracking), e.g. after a preset switch or a seek."""


# ---- registry --------------------------------------------------------------------------------

_REGISTRY: dict[str, type[Node]] = {}
_DISCOVERED = False
BUILTIN_NODE_PACKAGES = ("nodes",)


def register(cls: type[Node]) -> type[Node]:
    """Class decorator: add a node class to the registry (checks its declarations)."""
    if not cls.kind or not cls.kind.replace("_", "").isalnum() or cls.kind != cls.kind.lower():
        raise TypeError(f"{cls.__name__}: kind must be a lower_snake name, got {cls.kind!r}")
    if cls.kind in _REGISTRY and _REGISTRY[cls.kind] is not cls:
        raise TypeError(f"node kind {cls.kind!r} registered twice ({_REGISTRY[cls.kind].__name__}, {cls.__name__})")
    if not cls.description:
        raise TypeError(f"{cls.__name__}: a node needs a one-line description")
    names = [p.name for p in cls.params]
    reserved = {"node", "id", "inputs", "enabled"}
    if len(set(names)) != len(names) or reserved & set(names):
        raise TypeError(f"{cls.__name__}: duplicate or reserved param names in {names}")
    for p in cls.params:
        if p.default is not None:
            p.validate(p.default)  # a declaration bug fails loudly at import
    for port in (*cls.inputs, *cls.outputs):
        if not isinstance(port.type, PortType):
            raise TypeError(f"{cls.__name__}: port {port.name} has no PortType")
    _REGISTRY[cls.kind] = cls
    return cls


def discover() -> dict[str, type[Node]]:
    """Import the built-in node packages and any installed node packs (entry point group
    ``avatarcast.nodes``). Imports are cheap: nodes load models in ``open()``."""
    global _DISCOVERED
    if not _DISCOVERED:
        _DISCOVERED = True
        names = list(BUILTIN_NODE_PACKAGES)
        try:
            names += [ep.value for ep in entry_points(group="avatarcast.nodes") if ep.value not in names]
        except Exception as exc:  # broken metadata must not stop the built-ins
            log.warning("could not read installed node packs: %s", exc)
        for name in names:
            importlib.import_module(name)
    return dict(_REGISTRY)


def node_class(kind: str) -> type[Node] | None:
    return discover().get(kind)
