"""A private X server for tests and benchmarks: Xvfb on the first free display, and real key events
through it with xdotool (XTEST). Shared by tests/integration/test_hotkeys.py and benchmarks/."""

from __future__ import annotations

import os
import select
import shutil
import subprocess

TOOLS = ("Xvfb", "xdotool")


def missing_tools() -> list[str]:
    return [t for t in TOOLS if shutil.which(t) is None]


def start_xvfb(timeout: float = 10.0) -> tuple[subprocess.Popen, str]:
    """Start Xvfb on the first free display (``-displayfd``: it writes the number when it is ready, so
    parallel runs never race for a display). Returns (process, ":N"); the caller terminates it."""
    r, w = os.pipe()
    proc = subprocess.Popen(["Xvfb", "-displayfd", str(w), "-screen", "0", "640x480x24", "-nolisten", "tcp"],
                            pass_fds=(w,), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    os.close(w)
    buf = b""
    try:
        while not buf.endswith(b"\n"):
            ready, _, _ = select.select([r], [], [], timeout)
            if not ready:
                raise RuntimeError(f"Xvfb did not report a display within {timeout:g} s")
            chunk = os.read(r, 16)
            if not chunk:
                raise RuntimeError(f"Xvfb exited (code {proc.poll()}) before reporting a display")
            buf += chunk
    except BaseException:
        stop_xvfb(proc)
        raise
    finally:
        os.close(r)
    return proc, f":{buf.decode().strip()}"


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
