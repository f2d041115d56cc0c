"""Where presets live: shipped with avatarcast, and the user's own folder (installed bundles).

``find_preset(word)`` takes a file path, or a preset name / file stem from the user's folder or the
shipped gallery."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from .errors import UserError
from .preset import Preset, load_preset


def shipped_presets_dir() -> Path:
    """presets/ of a source checkout (or editable install), else the installed data files."""
    here = Path(__file__).resolve().parent.parent / "presets"
    if here.is_dir():
        return here
    return Path(sys.prefix) / "share" / "avatarcast" / "presets"


def user_config_dir() -> Path:
    """The platform's config folder for avatarcast (override with AVATARCAST_HOME)."""
    if os.environ.get("AVATARCAST_HOME"):
        return Path(os.environ["AVATARCAST_HOME"]).expanduser()
    if sys.platform == "win32":
        return Path(os.environ.get("APPDATA", Path.home() / "AppData" / "Roaming")) / "avatarcast"
    if sys.platform == "darwin":
        return Path.home() / "Library" / "Application Support" / "avatarcast"
    return Path(os.environ.get("XDG_CONFIG_HOME", Path.home() / ".config")) / "avatarcast"


def user_presets_dir() -> Path:
    return user_config_dir() / "presets"


def preset_files() -> list[Path]:
    """Every preset file we know of: the user's installed presets first, then the shipped gallery."""
    out: list[Path] = []
    user = user_presets_dir()
    if user.is_dir():
        # folders starting with '.' are installs or removals in progress (engine.bundle)
        out += sorted(f for f in user.glob("*/preset.yaml") if not f.parent.name.startswith(".")) + \
            sorted(user.glob("*.yaml"))
    shipped = shipped_presets_dir()
    if shipped.is_dir():
        out += sorted(shipped.glob("*.yaml"))
    return out


def find_preset_file(word: str) -> Path:
    p = Path(word).expanduser()
    if p.exists() or p.suffix.lower() in (".yaml", ".yml") or os.sep in word:
        return p
    for f in preset_files():
        stem = f.parent.name if f.name == "preset.yaml" else f.stem
        if stem == word:
            return f
    for f in preset_files():  # by display name (slower: parses files)
        try:
            if load_preset(f).name == word:
                return f
        except UserError:
            continue
    names = sorted({(f.parent.name if f.name == "preset.yaml" else f.stem) for f in preset_files()})
    raise UserError(f"no preset named {word!r}", hint=("known presets: " + ", ".join(names)) if names else
                    "give the path to a preset .yaml file")


def find_preset(word: str) -> Preset:
    return load_preset(find_preset_file(word))
