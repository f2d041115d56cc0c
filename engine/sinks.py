"""Where frames go: a video or image file, a preview window, raw frames on stdout, a virtual camera.

Sinks take ``(H, W, 3) uint8`` BGR frames of the size given to ``open()``. Files are written to a
temporary name beside the target and renamed into place only when complete: nothing half-written.
Other packages add sinks with ``register_sink(scheme, factory)`` (e.g. OBS's network stream).
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np

from .errors import SinkError, Where

log = logging.getLogger("avatarcast.sink")
_UMASK = os.umask(0)  # read once at import (single-threaded); temp files are private, finished ones are not
os.umask(_UMASK)
IMAGE_OUT = {".png", ".jpg", ".jpeg", ".bmp", ".webp"}


class Sink:
    name = "sink"
    paced = False  # True when the sink paces itself (e.g. pyvirtualcam's sleep_until_next_frame)

    def open(self, size: tuple[int, int], fps: float) -> None:
        raise NotImplementedError

    def write(self, frame: np.ndarray) -> None:
        raise NotImplementedError

    def close(self, ok: bool = True) -> None:
        """Finish. ok=False discards partial output (failed or interrupted render)."""


def ffmpeg_exe() -> str:
    try:
        import imageio_ffmpeg

        return imageio_ffmpeg.get_ffmpeg_exe()
    except Exception as exc:  # the wheel carries a binary; fall back to a system ffmpeg
        from shutil import which

        exe = which("ffmpeg")
        if exe:
            return exe
        raise SinkError(f"no ffmpeg found ({exc})", hint="pip install imageio-ffmpeg, or install ffmpeg") from None


def check_output_path(path: Path) -> None:
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.exists():
        raise SinkError(f"output folder does not exist: {parent}", Where(path), "create it first or pick another path")
    if not parent.is_dir():
        raise SinkError(f"not a folder: {parent}", Where(path))
    if not os.access(parent, os.W_OK):
        raise SinkError(f"output folder is not writable: {parent}", Where(path))
    if path.is_dir():
        raise SinkError("output path is a folder; give a file name like out.mp4", Where(path))


def has_audio(path: Path) -> bool:
    """True when ``path`` has an audio stream (asks ffmpeg; no ffprobe needed)."""
    try:
        res = subprocess.run([ffmpeg_exe(), "-hide_banner", "-i", str(path)], capture_output=True, text=True,
                             timeout=30)
    except (OSError, subprocess.TimeoutExpired, SinkError):
        return False
    return "Audio:" in res.stderr


class FileSink(Sink):
    """An mp4 (H.264, yuv420p: plays everywhere) through ffmpeg, or a still image for image suffixes.
    ``audio_from``: copy that file's audio track (when it has one) into the output."""

    name = "file"

    def __init__(self, path: str | Path, audio_from: str | Path | None = None, crf: int = 18):
        self.path = Path(path)
        self.audio_from = Path(audio_from) if audio_from else None
        self.crf = crf
        self._proc: subprocess.Popen | None = None
        self._tmp: Path | None = None
        self._last: np.ndarray | None = None
        self.frames = 0

    def open(self, size, fps) -> None:
        check_output_path(self.path)
        suffix = self.path.suffix.lower()
        try:
            fd, tmp = tempfile.mkstemp(prefix=f".{self.path.stem}.", suffix=f".part{suffix}",
                                       dir=self.path.parent or ".")
        except OSError as exc:
            raise SinkError(f"cannot write in {self.path.parent or '.'}: {exc.strerror}", Where(self.path),
                            "pick a folder you can write to") from None
        os.close(fd)
        self._tmp = Path(tmp)
        self.size = size
        if suffix in IMAGE_OUT:
            return
        w, h = size
        if w % 2 or h % 2:
            raise SinkError(f"video size {w}x{h} must be even for H.264", Where(self.path), "use --size with even numbers")
        self.fps = fps
        cmd = [ffmpeg_exe(), "-hide_banner", "-loglevel", "error", "-y",
               "-f", "rawvideo", "-pix_fmt", "bgr24", "-s", f"{w}x{h}", "-r", f"{fps:.6g}", "-i", "-",
               "-c:v", "libx264", "-preset", "veryfast", "-crf", str(self.crf), "-pix_fmt", "yuv420p",
               "-movflags", "+faststart", "-f", self._format(), str(self._tmp)]
        self._proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stderr=subprocess.PIPE)

    def write(self, frame: np.ndarray) -> None:
        self.frames += 1
        if self._proc is None:
            self._last = frame.copy() if self._last is None or self._last.shape != frame.shape else \
                np.copyto(self._last, frame) or self._last
            return
        try:
            self._proc.stdin.write(memoryview(np.ascontiguousarray(frame)).cast("B"))
        except BrokenPipeError:
            err = self._proc.stderr.read().decode(errors="replace").strip()
            raise SinkError(f"the video encoder stopped: {err[-300:]}", Where(self.path)) from None

    def close(self, ok: bool = True) -> None:
        tmp, self._tmp = self._tmp, None
        if tmp is None:
            return
        try:
            self._proc_was_video = self._proc is not None
            if self._proc is not None:
                proc, self._proc = self._proc, None
                try:
                    proc.stdin.close()
                except BrokenPipeError:
                    pass
                err = proc.stderr.read().decode(errors="replace").strip()
                code = proc.wait()
                if ok and code != 0:
                    raise SinkError(f"the video encoder failed: {err[-300:]}", Where(self.path))
            elif ok:
                if self._last is None:
                    raise SinkError("no frame to write", Where(self.path))
                if not cv2.imwrite(str(tmp), self._last):
                    raise SinkError("could not encode the image", Where(self.path))
            if ok and self.frames > 0:
                if self._proc_was_video and self.audio_from is not None and has_audio(self.audio_from):
                    self._mux_audio(tmp)
                os.chmod(tmp, 0o666 & ~_UMASK)  # as a plainly created file would be, not mkstemp's 0600
                os.replace(tmp, self.path)
                tmp = None
        finally:
            if tmp is not None and tmp.exists():
                tmp.unlink()


    def _format(self) -> str:
        return {".mkv": "matroska", ".webm": "matroska", ".avi": "avi"}.get(self.path.suffix.lower(), "mp4")

    def _mux_audio(self, video: Path) -> None:
        """Second pass: copy the video stream as is and add the source's audio, cut to the video's length
        (every frame kept: no -shortest, which trims video to a shorter audio track)."""
        muxed = video.with_name(video.name + ".mux")
        cmd = [ffmpeg_exe(), "-hide_banner", "-loglevel", "error", "-y", "-i", str(video), "-i", str(self.audio_from),
               "-map", "0:v:0", "-map", "1:a:0", "-c:v", "copy", "-c:a", "aac", "-b:a", "160k",
               "-t", f"{self.frames / self.fps:.6f}", "-movflags", "+faststart", "-f", self._format(), str(muxed)]
        try:
            res = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
            if res.returncode != 0:
                log.warning("could not copy the audio track (%s); the video has no sound", res.stderr.strip()[-200:])
                return
            os.replace(muxed, video)
        finally:
            if muxed.exists():
                muxed.unlink()


class PipeSink(Sink):
    """Raw bgr24 frames on stdout, for ffmpeg: ``... --output pipe | ffmpeg -f rawvideo -pix_fmt bgr24
    -s WxH -r FPS -i - ...``. Logs go to stderr."""

    name = "pipe"

    def __init__(self, stream=None):
        self.stream = stream

    def open(self, size, fps) -> None:
        self.out = self.stream or sys.stdout.buffer
        log.info("writing raw bgr24 %dx%d at %.3g fps to stdout", size[0], size[1], fps)

    def write(self, frame: np.ndarray) -> None:
        try:
            self.out.write(memoryview(np.ascontiguousarray(frame)).cast("B"))
        except BrokenPipeError:
            raise SinkError("the program reading our frames closed the pipe") from None

    def close(self, ok: bool = True) -> None:
        try:
            self.out.flush()
        except (BrokenPipeError, ValueError, AttributeError):
            pass


def display_available() -> tuple[bool, str]:
    if sys.platform.startswith("linux") and not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
        return False, "no display (DISPLAY and WAYLAND_DISPLAY are unset)"
    return True, ""


class WindowSink(Sink):
    """A preview window (OpenCV HighGUI). On a machine without a display: a clear error."""

    name = "window"

    def __init__(self, title: str = "avatarcast"):
        self.title = title

    def open(self, size, fps) -> None:
        ok, why = display_available()
        if not ok:
            raise SinkError(f"cannot open a preview window: {why}",
                            hint="use --output file:out.mp4, --output vcam, or run on a desktop session")
        try:
            cv2.namedWindow(self.title, cv2.WINDOW_NORMAL)
            cv2.resizeWindow(self.title, *size)
        except cv2.error as exc:
            raise SinkError(f"cannot open a preview window: {exc.msg.strip()}",
                            hint="this OpenCV has no GUI support; pip install opencv-python (not -headless)") from None

    def write(self, frame: np.ndarray) -> None:
        cv2.imshow(self.title, frame)
        cv2.waitKey(1)

    def close(self, ok: bool = True) -> None:
        try:
            cv2.destroyWindow(self.title)
        except cv2.error:
            pass


VCAM_HELP = (
    "Linux: sudo apt install v4l2loopback-dkms && sudo modprobe v4l2loopback devices=1 exclusive_caps=1 "
    "card_label=avatarcast; Windows: install OBS Studio 26+ and start its Virtual Camera once (or Unity Capture); "
    "macOS: install OBS Studio 30+ and start its Virtual Camera once. "
    "No virtual camera possible? use --output obs (a local network stream OBS reads)")


class VCamSink(Sink):
    """A virtual webcam through pyvirtualcam (v4l2loopback, OBS Virtual Camera, Unity Capture)."""

    name = "vcam"
    paced = False

    def __init__(self, device: str | None = None, backend: str | None = None):
        self.device = device
        self.backend = backend
        self.cam = None

    def open(self, size, fps) -> None:
        try:
            import pyvirtualcam
        except ImportError as exc:
            raise SinkError(f"pyvirtualcam is not installed ({exc})", hint="pip install pyvirtualcam") from None
        try:
            self.cam = pyvirtualcam.Camera(width=size[0], height=size[1], fps=fps, fmt=pyvirtualcam.PixelFormat.BGR,
                                           device=self.device, backend=self.backend, print_fps=False)
        except (RuntimeError, ValueError) as exc:
            reason = " ".join(str(exc).split())
            raise SinkError(f"no virtual camera available: {reason[:400]}", hint=VCAM_HELP) from None
        log.info("virtual camera: %s (%s backend)", self.cam.device, self.cam.backend)

    def write(self, frame: np.ndarray) -> None:
        self.cam.send(frame)

    def close(self, ok: bool = True) -> None:
        if self.cam is not None:
            self.cam.close()
            self.cam = None


SinkFactory = Callable[[str, dict], Sink]
_SINKS: dict[str, SinkFactory] = {
    "file": lambda arg, opts: FileSink(arg, audio_from=opts.get("audio_from")),
    "pipe": lambda arg, opts: PipeSink(),
    "window": lambda arg, opts: WindowSink(),
    "vcam": lambda arg, opts: VCamSink(arg or opts.get("vcam_device"), opts.get("vcam_backend")),
}


def register_sink(scheme: str, factory: SinkFactory) -> None:
    _SINKS[scheme] = factory


def sink_schemes() -> list[str]:
    return sorted(_SINKS)


def open_sink_spec(spec: str, **opts) -> Sink:
    """``file:PATH`` (or a bare path ending in a known suffix), ``pipe``, ``window``, ``vcam[:DEVICE]``, and
    schemes other packages registered."""
    scheme, _, arg = spec.partition(":")
    if scheme not in _SINKS:
        if Path(spec).suffix.lower() in IMAGE_OUT | {".mp4", ".mkv", ".mov", ".avi", ".webm", ".m4v"}:
            scheme, arg = "file", spec
        else:
            raise SinkError(f"unknown output {spec!r}", hint="use one of: " + ", ".join(
                "file:PATH" if s == "file" else s for s in sink_schemes()))
    if scheme == "file" and not arg:
        raise SinkError("file output needs a path: --output file:out.mp4")
    return _SINKS[scheme](arg, opts)
