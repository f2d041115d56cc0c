"""Support shared by tests/integration/test_hotkeys.py and tests/bench/bench_hotkeys.py: a private X
server (Xvfb on the first free display), real key events through it (xdotool, XTEST), preset files."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from obs_plugin.testing import start_xvfb as _start_xvfb  # the project's one Xvfb starter

TOOLS = ("Xvfb", "xdotool")


def missing_tools() -> list[str]:
    return [t for t in TOOLS if shutil.which(t) is None]


def start_xvfb() -> tuple[subprocess.Popen, str]:
    """Xvfb on the first free display; returns (process, ":N"). Stop it with ``stop_xvfb``."""
    return _start_xvfb(screen="640x480x24", timeout=10.0)


def stop_xvfb(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(5)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def key(display: str, keys: str) -> None:
    """Press and release a combination (xdotool syntax: ctrl+alt+1, ctrl+shift+F5) on ``display``."""
    subprocess.run(["xdotool", "key", "--delay", "0", keys], check=True, env={**os.environ, "DISPLAY": display},
                   timeout=10)


def write_preset_files(folder: Path, texts: list[str], stem: str = "p") -> list[Path]:
    """Each YAML text as ``folder/{stem}{n}.yaml`` (n from 1); returns the paths in order."""
    files = []
    for i, text in enumerate(texts):
        f = folder / f"{stem}{i + 1}.yaml"
        f.write_text(text)
        files.append(f)
    return files
