"""Preset files: load, validate (collecting every problem), and describe the node graph.

Minimal contract other tools depend on (extend, never break)::

    name: Mona Lisa              # required, shown to the streamer
    avatar:
      images: [mona.jpg]         # one or more shots; paths relative to the preset file
    pipeline:                    # nodes applied in order to each input frame
      - node: color_adjust
        saturation: 0.2          # params sit beside `node`

A pipeline entry may carry ``id:`` and ``inputs:`` (``{port: "other_id"}`` or ``"other_id.port"`` or
``source``) to wire a node to any other node's output. Unwired inputs take the nearest earlier
output of the same type (frames fall back to ``source``, the camera frame).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import PresetError, UserError, Where
from .node import Avatar, Node, discover
from .params import PortType
from .yamlsafe import LocDict, LocList, line_of, load_file, loads

SCHEMA_VERSION = 1
SOURCE_ID = "source"
TOP_LEVEL_KEYS = {
    "schema": "format version of this file (currently 1)",
    "name": "name shown to the streamer (required)",
    "description": "what this preset does",
    "author": "who made it",
    "license": "licence of the preset and its files",
    "avatar": "the avatar: images (one or more shots of it)",
    "pipeline": "nodes applied in order to each frame",
    "output": "id of the node whose frame is the output (default: the last node)",
    "hotkey": "global hotkey that switches to this preset, e.g. ctrl+alt+1",
    "obs": "OBS binding: {scenes: [scene names]}",
}
ENTRY_KEYS = {"node", "id", "inputs", "enabled"}
IMAGE_MAGIC = (b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n", b"BM", b"RIFF", b"II*\x00", b"MM\x00*")
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"}


@dataclass
class NodeSpec:
    """One pipeline entry, validated."""

    id: str
    kind: str
    cls: type[Node]
    params: dict[str, Any]
    inputs: dict[str, tuple[str, str]]  # port name -> (node id or 'source', output port name)
    enabled: bool = True
    line: int | None = None


@dataclass
class Preset:
    name: str
    file: Path | None
    dir: Path
    avatar: Avatar
    nodes: list[NodeSpec]  # in execution (topological) order
    output: tuple[str, str]  # (node id or 'source', port)
    description: str = ""
    hotkey: str | None = None
    obs_scenes: list[str] = field(default_factory=list)
    schema: int = SCHEMA_VERSION  # the version the file declared (0: written before versioning); raw is migrated
    raw: dict = field(default_factory=dict)

    def node(self, node_id: str) -> NodeSpec | None:
        return next((n for n in self.nodes if n.id == node_id), None)


class _Problems:
    def __init__(self, file: Path | None):
        self.file = file
        self.items: list[UserError] = []

    def add(self, message: str, line: int | None = None, field_path: str | None = None, hint: str | None = None):
        self.items.append(UserError(message, Where(self.file, line, field_path), hint))

    def raise_if_any(self) -> None:
        if self.items:
            raise PresetError(self.items)


def is_image_file(path: Path) -> bool:
    """Cheap check (magic bytes) that a file is an image we can decode."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(16)
    except OSError:
        return False
    if head.startswith(b"RIFF"):
        return head[8:12] == b"WEBP"
    return any(head.startswith(m) for m in IMAGE_MAGIC)


def load_preset(path: str | Path) -> Preset:
    """Load and validate a preset file; raise PresetError listing every problem found."""
    p = Path(path)
    data = load_file(p)
    return parse_preset(data, file=p, base_dir=p.parent)


def loads_preset(text: str, base_dir: str | Path = ".", file: str | Path | None = None) -> Preset:
    return parse_preset(loads(text, file), file=Path(file) if file else None, base_dir=Path(base_dir))


# Schema 0 is every preset written before the format was versioned (no `schema:` key): the minimal
# contract in this module's docstring, plus two spellings that early files used and schema 1 dropped:
#   avatar: mona.jpg                          (one image as text)  ->  avatar: {images: [mona.jpg]}
#   - {node: crop, params: {x: 10}}           (nested params)      ->  - {node: crop, x: 10}


def _migrate_0_to_1(data: LocDict) -> LocDict:
    """Schema 0 -> 1: spell the avatar as a mapping and lift nested ``params:`` beside ``node``."""
    out = LocDict(data)
    out.line, out.lines = line_of(data), dict(getattr(data, "lines", {}))
    av = data.get("avatar")
    if isinstance(av, str):
        images = LocList([av])
        images.line = images_line = line_of(data, "avatar")
        images.lines = [images_line]
        new_av = LocDict(images=images)
        new_av.line, new_av.lines = images_line, {"images": images_line}
        out["avatar"] = new_av
    pipe = data.get("pipeline")
    if isinstance(pipe, list):
        new_pipe = LocList()
        new_pipe.line, new_pipe.lines = line_of(pipe), list(getattr(pipe, "lines", []))
        for entry in pipe:
            nested = entry.get("params") if isinstance(entry, dict) else None
            cls = discover().get(entry.get("node")) if isinstance(entry, dict) and isinstance(
                entry.get("node"), str) else None
            declares_params = cls is not None and any(p.name == "params" for p in cls.params)
            if isinstance(nested, dict) and not declares_params:
                lifted = LocDict((k, v) for k, v in entry.items() if k != "params")
                lifted.line = line_of(entry)
                lifted.lines = {k: v for k, v in getattr(entry, "lines", {}).items() if k != "params"}
                for k, v in nested.items():
                    if k not in lifted:  # a param written both ways: the one beside `node` wins
                        lifted[k] = v
                        lifted.lines[k] = line_of(nested, k)
                entry = lifted
            new_pipe.append(entry)
        out["pipeline"] = new_pipe
    out["schema"] = 1
    out.lines.setdefault("schema", line_of(data))
    return out


# MIGRATIONS[n] turns a schema-n preset into a schema-(n+1) one; each step is small and tested.
MIGRATIONS = {0: _migrate_0_to_1}


def schema_of(data: dict) -> Any:
    """The format version a preset file declares; files without ``schema:`` are schema 0."""
    return data.get("schema", 0)


def migrate(data: LocDict, probs: _Problems) -> LocDict:
    """Bring an older preset up to the current schema, one step at a time; refuse newer ones (the only
    problem reported then: the rest of a newer file cannot be judged by this version)."""
    schema = schema_of(data)
    if isinstance(schema, bool) or not isinstance(schema, int) or schema < 0:
        probs.add(f"schema must be a whole number (this version reads 0 to {SCHEMA_VERSION}), got {schema!r}",
                  line_of(data, "schema"), "schema", f"write `schema: {SCHEMA_VERSION}`")
        return data
    if schema > SCHEMA_VERSION:
        probs.items.clear()
        probs.add(f"preset format version {schema} is newer than this avatarcast understands "
                  f"(it reads up to {SCHEMA_VERSION})", line_of(data, "schema"), "schema",
                  "upgrade avatarcast: pip install -U avatarcast")
        probs.raise_if_any()
    while schema < SCHEMA_VERSION:
        data = MIGRATIONS[schema](data)
        schema += 1
    return data


@dataclass(frozen=True)
class FileRef:
    """A file a preset names: an avatar image or a node param of type ``path``."""

    field: str  # e.g. ``avatar.images[0]`` or ``pipeline[2].lut``
    value: str  # as written in the preset
    line: int | None
    kind: str  # 'avatar' or 'param'
    keys: tuple = ()  # where the value sits in the mapping, e.g. ('pipeline', 2, 'lut')


def file_refs(data: Any) -> list[FileRef]:
    """Every file a (migrated) preset mapping names, found from the node declarations (params of type
    ``path``). Values that are not text are skipped (the loader reports them)."""
    refs: list[FileRef] = []
    if not isinstance(data, dict):
        return refs
    av = data.get("avatar")
    images = av.get("images") if isinstance(av, dict) else None
    if isinstance(images, str):
        refs.append(FileRef("avatar.images", images, line_of(av, "images"), "avatar", ("avatar", "images")))
    elif isinstance(images, list):
        refs += [FileRef(f"avatar.images[{i}]", v, line_of(images, i), "avatar", ("avatar", "images", i))
                 for i, v in enumerate(images) if isinstance(v, str)]
    pipe = data.get("pipeline")
    registry = discover()
    for i, entry in enumerate(pipe if isinstance(pipe, list) else []):
        cls = registry.get(entry.get("node")) if isinstance(entry, dict) and isinstance(entry.get("node"), str) \
            else None
        for p in cls.params if cls is not None else ():
            value = entry.get(p.name)
            if p.type == "path" and isinstance(value, str):
                refs.append(FileRef(f"pipeline[{i}].{p.name}", value, line_of(entry, p.name), "param",
                                    ("pipeline", i, p.name)))
    return refs


def upgrade(data: Any, file: Path | None = None) -> Any:
    """``data`` migrated to the current schema (PresetError for a bad or newer ``schema``)."""
    if not isinstance(data, dict):
        return data
    probs = _Problems(file)
    data = migrate(data, probs)
    probs.raise_if_any()
    return data


def parse_preset(data: Any, file: Path | None = None, base_dir: Path = Path(".")) -> Preset:
    probs = _Problems(file)
    if not isinstance(data, dict):
        probs.add("a preset must be a mapping with at least `name` and `pipeline`", line_of(data))
        probs.raise_if_any()
    file_schema = schema_of(data)
    data = migrate(data, probs)
    for key in data:
        if key not in TOP_LEVEL_KEYS:
            probs.add(f"unknown key {key!r}", line_of(data, key), key,
                      "known keys: " + ", ".join(TOP_LEVEL_KEYS))

    name = data.get("name")
    if "name" not in data:
        probs.add("missing `name` (the name shown to the streamer)", line_of(data), "name")
    elif not isinstance(name, str) or not name.strip():
        probs.add(f"`name` must be non-empty text, got {name!r}", line_of(data, "name"), "name")
    for key in ("description", "author", "license", "hotkey"):
        if key in data and not isinstance(data[key], str):
            probs.add(f"`{key}` must be text, got {data[key]!r}", line_of(data, key), key)

    avatar = _parse_avatar(data.get("avatar"), data, base_dir, probs)
    obs_scenes = _parse_obs(data.get("obs"), data, probs)
    specs = _parse_pipeline(data.get("pipeline"), data, probs)
    out_ref = _parse_output(data, specs, probs)
    ordered = _wire_and_sort(specs, data, probs)
    probs.raise_if_any()
    return Preset(
        name=str(name).strip(), file=file, dir=base_dir, avatar=avatar, nodes=ordered, output=out_ref,
        description=data.get("description", "") or "", hotkey=data.get("hotkey"), obs_scenes=obs_scenes,
        schema=file_schema, raw=data,
    )


def _parse_avatar(av: Any, data: dict, base_dir: Path, probs: _Problems) -> Avatar:
    if av is None:
        return Avatar()
    if not isinstance(av, dict):
        probs.add(f"`avatar` must be a mapping like {{images: [face.jpg]}}, got {av!r}", line_of(data, "avatar"), "avatar")
        return Avatar()
    images = av.get("images")
    if isinstance(images, str):
        images = LocList([images])
        images.lines = [line_of(av, "images")]
    if not isinstance(images, list) or not images:
        probs.add("`avatar.images` must list one or more image files", line_of(av, "images") or line_of(av),
                  "avatar.images")
        return Avatar(raw=dict(av))
    paths = []
    for i, item in enumerate(images):
        ln = line_of(images, i)
        fld = f"avatar.images[{i}]"
        if not isinstance(item, str) or not item.strip():
            probs.add(f"expected an image file name, got {item!r}", ln, fld)
            continue
        path = Path(item).expanduser()
        path = path if path.is_absolute() else base_dir / path
        if not path.exists():
            probs.add(f"image not found: {item!r} (looked in {path.parent})", ln, fld,
                      "paths are relative to the preset file")
        elif not path.is_file():
            probs.add(f"not a file: {item!r}", ln, fld)
        elif not is_image_file(path):
            probs.add(f"not an image (JPEG, PNG, BMP, WebP or TIFF): {item!r}", ln, fld)
        else:
            paths.append(path)
    return Avatar(images=paths, raw=dict(av))


def _parse_obs(obs: Any, data: dict, probs: _Problems) -> list[str]:
    if obs is None:
        return []
    if not isinstance(obs, dict) or set(obs) - {"scenes"}:
        probs.add(f"`obs` must be a mapping like {{scenes: [Just Chatting]}}, got {obs!r}", line_of(data, "obs"), "obs")
        return []
    scenes = obs.get("scenes", [])
    if isinstance(scenes, str):
        scenes = [scenes]
    if not isinstance(scenes, list) or not all(isinstance(s, str) and s for s in scenes):
        probs.add(f"`obs.scenes` must be a list of scene names, got {scenes!r}", line_of(obs, "scenes"), "obs.scenes")
        return []
    return list(scenes)


def _parse_pipeline(pipe: Any, data: dict, probs: _Problems) -> list[NodeSpec]:
    registry = discover()
    if "pipeline" not in data:
        probs.add("missing `pipeline` (a list of nodes; may be empty: [])", line_of(data), "pipeline")
        return []
    if not isinstance(pipe, list):
        probs.add(f"`pipeline` must be a list of nodes, got {pipe!r}", line_of(data, "pipeline"), "pipeline")
        return []
    specs: list[NodeSpec] = []
    seen_ids: dict[str, int | None] = {}
    counts: dict[str, int] = {}
    for i, entry in enumerate(pipe):
        fld = f"pipeline[{i}]"
        ln = line_of(pipe, i)
        if not isinstance(entry, dict):
            probs.add(f"each pipeline entry must be a mapping with `node:`, got {entry!r}", ln, fld)
            continue
        kind = entry.get("node")
        cls = registry.get(kind) if isinstance(kind, str) else None
        if cls is None:
            if "node" not in entry:
                probs.add("missing `node:` (the node type)", ln, fld)
            else:
                probs.add(f"unknown node {kind!r}", line_of(entry, "node"), f"{fld}.node",
                          "run `avatarcast nodes` to list them")
            continue
        counts[kind] = counts.get(kind, 0) + 1
        node_id = entry.get("id")
        if node_id is None:
            node_id = kind if counts[kind] == 1 else f"{kind}_{counts[kind]}"
        if not isinstance(node_id, str) or not node_id.replace("_", "").replace("-", "").isalnum():
            probs.add(f"`id` must be a short name of letters, digits, _ or -, got {node_id!r}",
                      line_of(entry, "id"), f"{fld}.id")
            continue
        if node_id == SOURCE_ID:
            probs.add(f"`id` {SOURCE_ID!r} is reserved for the input frames", line_of(entry, "id"), f"{fld}.id")
            continue
        if node_id in seen_ids:
            probs.add(f"duplicate id {node_id!r} (first used on line {seen_ids[node_id]})",
                      line_of(entry, "id") or ln, f"{fld}.id", "give each node its own `id`")
            continue
        seen_ids[node_id] = line_of(entry, "id") or ln
        given = {k: v for k, v in entry.items() if k not in ENTRY_KEYS}
        values, param_problems = cls.validate_params(given)
        for pname, msg in param_problems:
            probs.add(msg, line_of(entry, pname) or ln, f"{fld}.{pname}")
        enabled = entry.get("enabled", True)
        if not isinstance(enabled, bool):
            probs.add(f"`enabled` must be true or false, got {enabled!r}", line_of(entry, "enabled"), f"{fld}.enabled")
            enabled = True
        raw_inputs = entry.get("inputs", {})
        inputs = _parse_inputs(raw_inputs, cls, entry, fld, probs)
        specs.append(NodeSpec(node_id, kind, cls, values, inputs, enabled, ln))
    return specs


def _split_ref(ref: str) -> tuple[str, str]:
    if "." in ref:
        a, b = ref.split(".", 1)
        return a, b
    return ref, ""


def _parse_inputs(raw: Any, cls: type[Node], entry: dict, fld: str, probs: _Problems) -> dict[str, tuple[str, str]]:
    ln = line_of(entry, "inputs")
    ports = [p for p in cls.inputs]
    if isinstance(raw, str):
        if not ports:
            probs.add(f"node {cls.kind} takes no inputs", ln, f"{fld}.inputs")
            return {}
        return {ports[0].name: _split_ref(raw)}
    if not isinstance(raw, dict):
        probs.add(f"`inputs` must map input ports to node ids, like {{frame: source}}, got {raw!r}", ln, f"{fld}.inputs")
        return {}
    out = {}
    names = {p.name for p in ports}
    for port, ref in raw.items():
        if port not in names:
            probs.add(f"node {cls.kind} has no input {port!r} (its inputs: {', '.join(sorted(names)) or 'none'})",
                      line_of(raw, port) or ln, f"{fld}.inputs.{port}")
        elif not isinstance(ref, str) or not ref:
            probs.add(f"expected a node id (or id.port, or `source`), got {ref!r}", line_of(raw, port) or ln,
                      f"{fld}.inputs.{port}")
        else:
            out[port] = _split_ref(ref)
    return out


def _parse_output(data: dict, specs: list[NodeSpec], probs: _Problems) -> tuple[str, str]:
    ref = data.get("output")
    if ref is None:
        for spec in reversed(specs):
            port = next((p for p in spec.cls.outputs if p.type is PortType.FRAME), None)
            if port is not None:
                return spec.id, port.name
        return SOURCE_ID, "frame"
    if not isinstance(ref, str):
        probs.add(f"`output` must be a node id, got {ref!r}", line_of(data, "output"), "output")
        return SOURCE_ID, "frame"
    nid, port = _split_ref(ref)
    if nid == SOURCE_ID:
        return SOURCE_ID, "frame"
    spec = next((s for s in specs if s.id == nid), None)
    if spec is None:
        probs.add(f"`output` names {nid!r}, which is not a node id in the pipeline", line_of(data, "output"), "output")
        return SOURCE_ID, "frame"
    frame_ports = [p.name for p in spec.cls.outputs if p.type is PortType.FRAME]
    if port and port not in frame_ports or not frame_ports:
        probs.add(f"`output` {ref!r}: node {nid} has no frame output {port or ''}".rstrip(),
                  line_of(data, "output"), "output")
        return SOURCE_ID, "frame"
    return nid, port or frame_ports[0]


def _wire_and_sort(specs: list[NodeSpec], data: dict, probs: _Problems) -> list[NodeSpec]:
    """Resolve explicit and implicit inputs, check types, order nodes so inputs come first."""
    by_id = {s.id: s for s in specs}
    pipe = data.get("pipeline") if isinstance(data.get("pipeline"), list) else []
    for idx, spec in enumerate(specs):
        fld = f"pipeline[{_entry_index(pipe, spec)}]"
        for port in spec.cls.inputs:
            if port.name in spec.inputs:
                src_id, src_port = spec.inputs[port.name]
                entry = pipe[_entry_index(pipe, spec)] if pipe else {}
                ln = line_of(entry.get("inputs"), port.name) if isinstance(entry.get("inputs"), dict) else \
                    line_of(entry, "inputs")
                if src_id == SOURCE_ID:
                    if port.type is not PortType.FRAME:
                        probs.add(f"input {port.name!r} needs {port.type.value}, but `source` gives frames",
                                  ln, f"{fld}.inputs.{port.name}")
                    spec.inputs[port.name] = (SOURCE_ID, "frame")
                    continue
                src = by_id.get(src_id)
                if src is None:
                    probs.add(f"input {port.name!r} refers to {src_id!r}, which is not a node id in this pipeline",
                              ln, f"{fld}.inputs.{port.name}", "ids: " + ", ".join([SOURCE_ID, *by_id]))
                    continue
                candidates = [o for o in src.cls.outputs if (o.name == src_port if src_port else o.type is port.type)]
                if not candidates:
                    what = f"output {src_port!r}" if src_port else f"a {port.type.value} output"
                    probs.add(f"input {port.name!r}: node {src_id} ({src.kind}) has no {what}", ln,
                              f"{fld}.inputs.{port.name}")
                    continue
                if candidates[0].type is not port.type:
                    probs.add(f"input {port.name!r} needs {port.type.value}, but {src_id}.{candidates[0].name} gives "
                              f"{candidates[0].type.value}", ln, f"{fld}.inputs.{port.name}")
                    continue
                spec.inputs[port.name] = (src_id, candidates[0].name)
            else:
                found = None
                for prev in reversed(specs[:idx]):
                    o = next((o for o in prev.cls.outputs if o.type is port.type), None)
                    if o is not None:
                        found = (prev.id, o.name)
                        break
                if found is None and port.type is PortType.FRAME:
                    found = (SOURCE_ID, "frame")
                if found is not None:
                    spec.inputs[port.name] = found
                elif not port.optional:
                    producers = sorted(k for k, c in discover().items()
                                       if any(o.type is port.type for o in c.outputs))
                    probs.add(f"node {spec.kind} needs a {port.type.value} input ({port.name!r}) and no earlier node "
                              f"gives one", spec.line, fld,
                              f"add one of these before it: {', '.join(producers)}" if producers else None)
    # topological order (Kahn), stable with respect to the pipeline order
    deps = {s.id: {src for src, _ in s.inputs.values() if src != SOURCE_ID and src in by_id} for s in specs}
    ordered: list[NodeSpec] = []
    done: set[str] = set()
    remaining = list(specs)
    while remaining:
        ready = [s for s in remaining if deps[s.id] <= done]
        if not ready:
            cyc = ", ".join(s.id for s in remaining)
            probs.add(f"the inputs form a cycle between: {cyc}", remaining[0].line, "pipeline",
                      "a node cannot take input from itself or from a node that depends on it")
            return ordered + remaining
        for s in ready:
            ordered.append(s)
            done.add(s.id)
        remaining = [s for s in remaining if s.id not in done]
    return ordered


def _entry_index(pipe: list, spec: NodeSpec) -> int:
    for i, e in enumerate(pipe):
        if isinstance(e, dict) and getattr(pipe, "lines", None) and pipe.lines[i] == spec.line:
            return i
    return 0
