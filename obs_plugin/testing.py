"""Test support owned by the project: a real, headless OBS Studio 29 (obs-websocket 5.1) under Xvfb with
a throwaway config, and a *stand-in* virtual-camera backend for machines without v4l2loopback.

``HeadlessObs`` does what ``../shared/obs/start_obs_headless.sh`` does, from Python: it writes
``global.ini`` (no first-run wizard, websocket on), a small profile and an empty scene collection under
a temporary folder, starts ``Xvfb -displayfd`` (a free display, chosen by the X server itself, so
parallel Xvfb users never collide) and OBS with ``--multi``, and waits for the websocket port. The
port comes from binding port 0. ``kill()`` / ``start_obs()`` restart OBS on the same display and port
(crash tests); ``stop()`` ends everything it started (OBS, then Xvfb) and is safe to call twice.

Nothing here is used by the engine at run time.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np

from .client import port_open

log = logging.getLogger("avatarcast.obs.testing")
OBS_29_LAST_VERSION = 486539266  # 29.0.2: stops the "what's new" / first-run dialogs


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on right now (the kernel picks it: bind port 0)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def obs_installed() -> tuple[bool, str]:
    missing = [exe for exe in ("obs", "Xvfb") if shutil.which(exe) is None]
    if missing:
        return False, (f"{' and '.join(missing)} not installed (apt-get install -y obs-studio xvfb); "
                       "these tests drive a real OBS Studio under a real X server")
    return True, ""


class HeadlessObs:
    """A real OBS Studio on its own Xvfb display, websocket on ``port`` with ``password``."""

    def __init__(self, workdir: str | Path | None = None, *, port: int | None = None, password: str = "ci-secret",
                 canvas: tuple[int, int] = (640, 360), fps: int = 15, scenes: tuple[str, ...] = ("Scene",)):
        self._own_dir = workdir is None
        self.dir = Path(workdir or tempfile.mkdtemp(prefix="avatarcast-obs-"))
        self.port = port or free_port()
        self.password = password
        self.canvas = canvas
        self.fps = fps
        self.scenes = scenes
        self.display: str | None = None
        self.xvfb: subprocess.Popen | None = None
        self.obs: subprocess.Popen | None = None
        self.starts = 0

    # ---- config --------------------------------------------------------------------------------
    def write_config(self) -> None:
        d = self.dir
        for sub in ("home", "runtime", "recordings", "logs", "xdg/obs-studio/basic/profiles/CI",
                    "xdg/obs-studio/basic/scenes"):
            (d / sub).mkdir(parents=True, exist_ok=True)
        os.chmod(d / "runtime", 0o700)
        c = d / "xdg" / "obs-studio"
        (c / "global.ini").write_text(
            "[General]\nFirstRun=true\n"
            f"LastVersion={OBS_29_LAST_VERSION}\nEnableAutoUpdates=false\nConfirmOnExit=false\n\n"
            "[Basic]\nProfile=CI\nProfileDir=CI\nSceneCollection=CI\nSceneCollectionFile=CI\n\n"
            "[BasicWindow]\nPreviewEnabled=false\nsysTrayEnabled=false\n\n"
            "[OBSWebSocket]\nFirstLoad=false\nServerEnabled=true\n"
            f"ServerPort={self.port}\nAlertsEnabled=false\nAuthRequired=true\nServerPassword={self.password}\n")
        w, h = self.canvas
        (c / "basic/profiles/CI/basic.ini").write_text(
            f"[General]\nName=CI\n\n[Video]\nBaseCX={w}\nBaseCY={h}\nOutputCX={w}\nOutputCY={h}\n"
            f"FPSType=1\nFPSInt={self.fps}\n\n[Output]\nMode=Simple\n\n[SimpleOutput]\nFilePath={d / 'recordings'}\n")
        import json

        sources = [{"id": "scene", "versioned_id": "scene", "name": s,
                    "settings": {"items": [], "id_counter": 0, "custom_size": False}} for s in self.scenes]
        (c / "basic/scenes/CI.json").write_text(json.dumps({
            "name": "CI", "current_scene": self.scenes[0], "current_program_scene": self.scenes[0],
            "scene_order": [{"name": s} for s in self.scenes], "sources": sources, "groups": [],
            "transitions": [], "current_transition": "Cut", "transition_duration": 0, "modules": {}}))

    # ---- processes -----------------------------------------------------------------------------
    def start_xvfb(self, timeout: float = 15.0) -> None:
        r, w = os.pipe()
        self.xvfb = subprocess.Popen(["Xvfb", "-displayfd", str(w), "-screen", "0", "1280x720x24", "-nolisten", "tcp"],
                                     pass_fds=(w,), stdout=subprocess.DEVNULL,
                                     stderr=open(self.dir / "logs" / "xvfb.log", "wb"))
        os.close(w)
        try:
            buf = b""
            t_end = time.monotonic() + timeout
            import select

            while not buf.endswith(b"\n"):
                ready, _, _ = select.select([r], [], [], max(0.0, t_end - time.monotonic()))
                if not ready:
                    raise RuntimeError(f"Xvfb gave no display number in {timeout:.0f} s")
                chunk = os.read(r, 64)
                if not chunk:
                    raise RuntimeError(f"Xvfb exited ({self.xvfb.poll()}), see {self.dir / 'logs' / 'xvfb.log'}")
                buf += chunk
        finally:
            os.close(r)
        self.display = ":" + buf.decode().strip()

    def env(self) -> dict:
        d = self.dir
        # importing cv2 (opencv-python) points QT_QPA_PLATFORM_PLUGIN_PATH at its own Qt plugins, which
        # make OBS's Qt abort: OBS gets an environment without any of those
        base = {k: v for k, v in os.environ.items() if not k.startswith("QT_")}
        return {**base, "DISPLAY": self.display, "LIBGL_ALWAYS_SOFTWARE": "1", "QT_QPA_PLATFORM": "xcb",
                "HOME": str(d / "home"), "XDG_CONFIG_HOME": str(d / "xdg"), "XDG_RUNTIME_DIR": str(d / "runtime")}

    def start_obs(self, timeout: float = 60.0) -> float:
        """Start OBS (Xvfb must run) and wait until the websocket port accepts. Returns seconds taken."""
        t0 = time.perf_counter()
        self.starts += 1
        logf = open(self.dir / "logs" / f"obs-{self.starts}.log", "wb")
        self.obs = subprocess.Popen(["obs", "--multi", "--disable-missing-files-check", "--collection", "CI",
                                     "--profile", "CI", "--scene", self.scenes[0]],
                                    env=self.env(), stdout=logf, stderr=subprocess.STDOUT, cwd=self.dir,
                                    start_new_session=True)
        logf.close()
        t_end = time.monotonic() + timeout
        while time.monotonic() < t_end:
            if self.obs.poll() is not None:
                tail = (self.dir / "logs" / f"obs-{self.starts}.log").read_text(errors="replace")[-1500:]
                raise RuntimeError(f"OBS exited with {self.obs.returncode}; its log ends:\n{tail}")
            if port_open("127.0.0.1", self.port, 0.2):
                return time.perf_counter() - t0
            time.sleep(0.05)
        raise RuntimeError(f"obs-websocket did not open port {self.port} within {timeout:.0f} s")

    def start(self) -> HeadlessObs:
        self.write_config()
        try:
            self.start_xvfb()
            self.start_obs()
        except BaseException:
            self.stop()
            raise
        return self

    def kill(self) -> None:
        """Kill OBS hard (a crash), leaving Xvfb running for a restart."""
        if self.obs is not None and self.obs.poll() is None:
            self.obs.send_signal(signal.SIGKILL)
            self.obs.wait(10)

    def stop_obs(self, timeout: float = 10.0) -> None:
        if self.obs is None or self.obs.poll() is not None:
            return
        self.obs.send_signal(signal.SIGTERM)
        try:
            self.obs.wait(timeout)
        except subprocess.TimeoutExpired:
            self.obs.kill()
            self.obs.wait(10)

    def stop(self) -> None:
        self.stop_obs()
        if self.xvfb is not None and self.xvfb.poll() is None:
            self.xvfb.terminate()
            try:
                self.xvfb.wait(10)
            except subprocess.TimeoutExpired:
                self.xvfb.kill()
                self.xvfb.wait(10)
        if self._own_dir:
            shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> HeadlessObs:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # ---- helpers -------------------------------------------------------------------------------
    def client(self, timeout: float = 5.0):
        import obsws_python as obs

        return obs.ReqClient(host="127.0.0.1", port=self.port, password=self.password, timeout=timeout)


def screenshot(req, source: str, width: int | None = None, height: int | None = None) -> np.ndarray | None:
    """``GetSourceScreenshot`` of ``source`` as a ``(H, W, 3) uint8`` BGR array (None before its first frame)."""
    import base64

    import cv2

    data = {"sourceName": source, "imageFormat": "png"}
    if width:
        data["imageWidth"] = width
    if height:
        data["imageHeight"] = height
    from obsws_python.error import OBSSDKRequestError

    try:
        res = req.send("GetSourceScreenshot", data, raw=True)
    except OBSSDKRequestError as exc:
        if exc.code == 702:  # "Failed to render screenshot": the source has no frame (no size) yet
            return None
        raise
    b64 = res["imageData"].split(",", 1)[1]
    img = cv2.imdecode(np.frombuffer(base64.b64decode(b64), np.uint8), cv2.IMREAD_COLOR)
    return img


class StandInVirtualCamera:
    """STAND-IN for a v4l2loopback device, registered with ``pyvirtualcam.register_backend``.

    This machine has no v4l2 (no kernel module loading), so the real virtual-camera device cannot
    exist. This backend receives exactly what pyvirtualcam's real ``Camera.send()`` hands a backend and
    serves it as a local MPEG-TS stream (``obs_plugin.stream.StreamServer``) that OBS reads, so the engine's real ``VCamSink`` and a real OBS
    are exercised; only the kernel device is replaced. Users never get this backend.
    """

    port: int = 0  # set before use (the test picks a free port)

    def __init__(self, *, width: int, height: int, fps: float, fourcc: int, device: str | None = None, **kw):
        import pyvirtualcam
        from pyvirtualcam.util import encode_fourcc

        from .stream import StreamServer

        if fourcc != encode_fourcc(pyvirtualcam.PixelFormat.BGR.value):
            raise RuntimeError("the stand-in virtual camera takes BGR frames only")
        self.w, self.h = width, height
        self.server = StreamServer("127.0.0.1", self.port or free_port(), fps=fps)
        self.server.start()

    def device(self) -> str:
        return self.server.url

    def native_fourcc(self):
        return None

    def send(self, frame: np.ndarray) -> None:
        self.server.push(frame.reshape(self.h, self.w, 3))

    def close(self) -> None:
        self.server.stop()
