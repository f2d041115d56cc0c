"""Scene binding: which preset goes with which OBS scene (``obs: {scenes: [...]}`` in a preset).

Pure functions of the preset list, so they are recomputed on every scene change (a ``reload`` may
have changed the presets) and unit-tested without OBS.
"""

from __future__ import annotations

import logging

from engine.control import Command, make_command, parse_command
from engine.preset import Preset

log = logging.getLogger("avatarcast.obs")
KEEP = "keep"
PASSTHROUGH = "passthrough"


def scene_map(presets: list[Preset]) -> dict[str, int]:
    """scene name -> preset index (0-based); the first preset naming a scene wins."""
    out: dict[str, int] = {}
    for i, p in enumerate(presets):
        for scene in p.obs_scenes:
            out.setdefault(scene, i)
    return out


def conflicts(presets: list[Preset]) -> list[str]:
    """Scenes named by more than one preset, as warning lines."""
    owners: dict[str, list[str]] = {}
    for p in presets:
        for scene in p.obs_scenes:
            owners.setdefault(scene, []).append(p.name)
    return [f"OBS scene {s!r} is named by several presets ({', '.join(names)}); {names[0]!r} is used"
            for s, names in owners.items() if len(names) > 1]


def missing_scenes(presets: list[Preset], obs_scenes: list[str]) -> list[str]:
    """Warning lines for scene names in presets that OBS does not have, listing the scenes OBS has."""
    have = set(obs_scenes)
    listing = ", ".join(repr(s) for s in obs_scenes) or "none"
    return [f"preset {p.name!r} names OBS scene {s!r}, which OBS does not have (OBS has: {listing})"
            for p in presets for s in p.obs_scenes if s not in have]


def check_unbound_setting(unbound: str, presets: list[Preset]) -> None:
    from engine.errors import UserError

    if unbound in (KEEP, PASSTHROUGH):
        return
    if not any(p.name == unbound or (p.file is not None and p.file.stem == unbound) for p in presets):
        raise UserError(f"unbound_scene {unbound!r} is not a loaded preset",
                        hint="use keep, passthrough, or one of: " + ", ".join(repr(p.name) for p in presets))


def commands_for_scene(scene: str, presets: list[Preset], unbound: str = KEEP) -> list[Command]:
    """The commands that make the engine follow OBS to ``scene``.

    Bound scene: switch to its preset (and leave passthrough if the binding put the engine there).
    Unbound scene: nothing (``keep``), ``passthrough`` on, or switch to the preset named by ``unbound``."""
    bound = scene_map(presets)
    if scene in bound:
        cmds = [make_command("switch_preset", source="obs", index=bound[scene] + 1)]
        if unbound == PASSTHROUGH:
            cmds.insert(0, make_command("passthrough", source="obs", on=False))
        return cmds
    if unbound == KEEP:
        return []
    if unbound == PASSTHROUGH:
        return [make_command("passthrough", source="obs", on=True)]
    # parse_command, not make_command: make_command's own first parameter is called `name`
    return [parse_command({"command": "switch_preset", "name": unbound}, source="obs")]
