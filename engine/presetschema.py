"""The preset JSON Schema, generated from the node declarations (params, ports) and the preset format's
top-level keys. Shipped as ``presets/preset.schema.json`` and printed by ``avatarcast preset schema``
so YAML language servers complete and check presets (``# yaml-language-server: $schema=...``).

The schema describes the current format (``schema: 1``); older files are migrated by the loader. The
loader stays the judge (it also checks files exist, wiring and cycles); the schema never accepts a
value the loader refuses for type or range.
"""

from __future__ import annotations

import json
from typing import Any

from .node import BUILTIN_NODE_PACKAGES, Node, discover
from .params import PortType
from .preset import ENTRY_KEYS, SCHEMA_VERSION, SOURCE_ID, TOP_LEVEL_KEYS

SCHEMA_FILE_NAME = "preset.schema.json"
_ID_PATTERN = r"^[A-Za-z0-9_-]+$"
_TEXT = {"type": "string"}
_NONEMPTY = {"type": "string", "minLength": 1}


def _ref_text(port_type: PortType) -> str:
    source = f", or `{SOURCE_ID}` (the camera frame)" if port_type is PortType.FRAME else ""
    return f"a node id (or id.port) giving {port_type.value}{source}"


def _inputs_schema(cls: type[Node]) -> dict:
    desc = "wire inputs to other nodes' outputs: {port: node_id}"
    if not cls.inputs:
        return {"description": f"{cls.kind} takes no inputs", "type": "object", "maxProperties": 0}
    ports = {p.name: {"description": f"{p.type.value}: {p.description} ({_ref_text(p.type)})".replace(" ()", ""),
                      **_NONEMPTY} for p in cls.inputs}
    return {"description": desc, "oneOf": [
        {"description": f"the node id for the first input ({cls.inputs[0].name})", **_NONEMPTY},
        {"type": "object", "properties": ports, "additionalProperties": False},
    ]}


def node_schema(cls: type[Node]) -> dict:
    """Schema of one pipeline entry for this node kind: its params beside ``node``, plus the entry keys."""
    props: dict[str, Any] = {
        "node": {"const": cls.kind, "description": cls.description},
        "id": {"description": "a name for this node, used by `inputs`, `output` and live commands",
               "type": "string", "pattern": _ID_PATTERN, "not": {"const": SOURCE_ID}},
        "enabled": {"description": "false skips the node (its input passes through)", "type": "boolean"},
        "inputs": _inputs_schema(cls),
    }
    assert set(props) == ENTRY_KEYS, "entry keys changed: update node_schema"
    for p in cls.params:
        props[p.name] = p.json_schema()
    outs = ", ".join(f"{p.name} ({p.type.value})" for p in cls.outputs) or "none"
    return {"title": cls.kind, "description": f"{cls.description} Outputs: {outs}.", "type": "object",
            "required": ["node"], "properties": props, "additionalProperties": False}


def builtin_registry() -> dict[str, type[Node]]:
    """The node kinds avatarcast itself ships (what presets/preset.schema.json describes)."""
    return {k: c for k, c in discover().items() if c.__module__.split(".")[0] in BUILTIN_NODE_PACKAGES}


def preset_schema(registry: dict[str, type[Node]] | None = None) -> dict:
    """The JSON Schema (draft 2020-12) for preset files, for every registered node kind (built-in and
    installed node packs) unless ``registry`` says which."""
    reg = discover() if registry is None else registry
    kinds = sorted(reg)
    defs = {f"node_{k}": node_schema(reg[k]) for k in kinds}
    entry = {
        "description": "one node: `node: KIND` and its params beside it",
        "type": "object",
        "required": ["node"],
        "properties": {"node": {"description": "the node type (`avatarcast nodes` lists them)", "enum": kinds}},
        "allOf": [{"if": {"properties": {"node": {"const": k}}, "required": ["node"]},
                   "then": {"$ref": f"#/$defs/node_{k}"}} for k in kinds],
    }
    images = {"oneOf": [{"description": "one image file", **_NONEMPTY},
                        {"type": "array", "items": _NONEMPTY, "minItems": 1}]}
    props: dict[str, Any] = {
        "schema": {"const": SCHEMA_VERSION},
        "name": {"type": "string", "pattern": r"\S"},
        "description": _TEXT, "author": _TEXT, "license": _TEXT, "hotkey": _TEXT,
        "avatar": {"type": "object", "required": ["images"], "properties": {
            "images": {"description": "image files (JPEG, PNG, BMP, WebP), relative to the preset file", **images}}},
        "pipeline": {"type": "array", "items": {"$ref": "#/$defs/entry"}},
        "output": {"type": "string", "minLength": 1},
        "obs": {"type": "object", "additionalProperties": False, "properties": {
            "scenes": {"oneOf": [_NONEMPTY, {"type": "array", "items": _NONEMPTY}]}}},
    }
    assert set(props) == set(TOP_LEVEL_KEYS), "top-level keys changed: update preset_schema"
    for key, text in TOP_LEVEL_KEYS.items():
        props[key] = {"description": text, **props[key]}
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "avatarcast preset",
        "description": f"An avatarcast preset, format version {SCHEMA_VERSION}. Generated from the node "
                       "declarations: regenerate with `avatarcast preset schema -o presets/preset.schema.json`.",
        "type": "object",
        "required": ["name", "pipeline"],
        "properties": props,
        "additionalProperties": False,
        "$defs": {"entry": entry, **defs},
    }


def preset_schema_text(registry: dict[str, type[Node]] | None = None) -> str:
    """The schema as the shipped file's exact text (stable key order, trailing newline)."""
    return json.dumps(preset_schema(registry), indent=2, ensure_ascii=False) + "\n"
