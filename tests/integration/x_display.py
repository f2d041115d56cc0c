"""A private X server for tests and benchmarks: Xvfb on the first free display, and real key events
through it with xdotool (XTEST). Shared by tests/integration/test_hotkeys.py and tests/bench/bench_hotkeys.py."""

from __future__ import annotations

import os
import shutil
import subprocess

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
