"""Where frames come from: camera, video file, still image, and the built-in demo.

Every source fills a caller-owned ``(H, W, 3) uint8`` BGR buffer (``read(out)``), so the capture loop
allocates nothing per frame. ``open()`` raises ``SourceError`` with one clear message.
"""

from __future__ import annotations

import logging
import math
import os
import sys
import time
from pathlib import Path

import cv2
import numpy as np

from .errors import SourceError, Where
from .graph import fit_into
from .preset import IMAGE_SUFFIXES, is_image_file

log = logging.getLogger("avatarcast.source")
cv2.setLogLevel(2) if hasattr(cv2, "setLogLevel") else None  # errors only: we print our own messages
VIDEO_SUFFIXES = {".mp4", ".mov", ".mkv", ".avi", ".webm", ".m4v", ".mpg", ".mpeg", ".ts", ".flv", ".gif"}


class Source:
    """A stream of frames. ``size`` is (w, h); ``frame_count`` is None when endless."""

    name = "source"
    live = False  # a live source runs at its own pace and never ends (camera, demo)

    def __init__(self) -> None:
        self.size: tuple[int, int] = (0, 0)
        self.fps: float = 30.0
        self.frame_count: int | None = None

    def open(self) -> None:
        raise NotImplementedError

    def read(self, out: np.ndarray) -> bool:
        """Fill ``out`` with the next frame; False at the end (or when a live source lost its device)."""
        raise NotImplementedError

    def close(self) -> None:
        pass

    def reopen(self) -> bool:
        """Try to get a lost device back (cameras). True when frames flow again."""
        return False

    def __enter__(self):
        self.open()
        return self

    def __exit__(self, *exc):
        self.close()


class Pacer:
    """Sleeps so that successive ``wait()`` calls happen ``fps`` times a second (a file or a still
    image used as a live camera). Never tries to catch up more than half a second of backlog."""

    def __init__(self, fps: float):
        self.period = 1.0 / fps
        self._next = 0.0

    def wait(self) -> None:
        now = time.perf_counter()
        if self._next == 0.0:
            self._next = now
        if self._next > now:
            time.sleep(self._next - now)
        self._next = max(self._next + self.period, time.perf_counter() - 0.5)


class ImageSource(Source):
    """A still image, repeated (``frames`` times, or forever when live, paced at ``fps``)."""

    name = "image"

    def __init__(self, path: str | Path, frames: int | None = 1, fps: float = 30.0):
        super().__init__()
        self.path = Path(path)
        self.fps = fps
        self.frame_count = frames
        self.live = frames is None
        self._pacer = Pacer(fps) if frames is None else None
        self._img: np.ndarray | None = None
        self._i = 0

    def open(self) -> None:
        _check_readable(self.path)
        img = cv2.imread(str(self.path), cv2.IMREAD_COLOR) if is_image_file(self.path) else None
        if img is None:
            raise SourceError("not an image (or a corrupt one)", Where(self.path),
                              "use a JPEG, PNG, BMP, WebP or TIFF file")
        self._img = img
        self.size = (img.shape[1], img.shape[0])

    def read(self, out: np.ndarray) -> bool:
        if self.frame_count is not None and self._i >= self.frame_count:
            return False
        if self._pacer is not None:
            self._pacer.wait()
        self._i += 1
        fit_into(self._img, out, "fit")
        return True


class VideoSource(Source):
    """A video file read with OpenCV's FFmpeg backend; ``loop`` restarts it at the end (live use)."""

    name = "video"

    def __init__(self, path: str | Path, loop: bool = False, paced: bool = False):
        super().__init__()
        self.path = Path(path)
        self.loop = loop
        self.paced = paced  # sleep to play at the file's fps (a video used as a live camera)
        self.live = loop
        self._cap: cv2.VideoCapture | None = None
        self._read = 0
        self._pacer: Pacer | None = None

    def open(self) -> None:
        _check_readable(self.path)
        cap = cv2.VideoCapture(str(self.path), cv2.CAP_FFMPEG)
        if not cap.isOpened():
            raise SourceError("cannot open as a video (corrupt, truncated, or not a video file)", Where(self.path),
                              "check the file plays in a media player, or re-encode it with ffmpeg")
        w = int(cap.get(cv2.CAP_PROP_FRAME_WIDTH))
        h = int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT))
        fps = cap.get(cv2.CAP_PROP_FPS)
        n = int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
        ok, first = cap.read()
        if not ok or first is None or w <= 0 or h <= 0:
            cap.release()
            raise SourceError("no video frames could be decoded (corrupt, truncated, or audio only)", Where(self.path),
                              "check the file plays in a media player, or re-encode it with ffmpeg")
        cap.set(cv2.CAP_PROP_POS_FRAMES, 0)
        self._cap = cap
        self.size = (first.shape[1], first.shape[0])
        self.fps = fps if fps and 1.0 <= fps <= 240.0 else 30.0
        self.frame_count = None if self.loop else (n if n > 0 else None)
        self._first = first
        self._pending_first = True
        self._read = 0

    def read(self, out: np.ndarray) -> bool:
        if self.paced:
            if self._pacer is None:
                self._pacer = Pacer(self.fps)
            self._pacer.wait()
        if self._pending_first:  # the frame decoded in open() (seeking back is unreliable on some files)
            self._pending_first = False
            ok, frame = True, self._first
            self._cap.grab()
        else:
            ok, frame = self._cap.read()
        if not ok:
            if self.loop and self._read > 0:
                self._cap.set(cv2.CAP_PROP_POS_FRAMES, 0)
                ok, frame = self._cap.read()
            if not ok:
                return False
        self._read += 1
        fit_into(frame, out, "fit")
        return True

    @property
    def frames_read(self) -> int:
        return self._read

    def close(self) -> None:
        if self._cap is not None:
            self._cap.release()
            self._cap = None


class CameraSource(Source):
    """A webcam by index (0, 1, ...) or device path (/dev/video2). Asks for a size and fps; what the
    camera gives is scaled to the requested size. Lost camera: ``read`` returns False and ``reopen``
    retries (the live runtime keeps the output going meanwhile)."""

    name = "camera"
    live = True

    def __init__(self, device: int | str = 0, size: tuple[int, int] | None = (1280, 720), fps: float = 30.0):
        super().__init__()
        self.device = device
        self.want_size = size
        self.fps = fps
        self._cap: cv2.VideoCapture | None = None

    def _describe(self) -> str:
        return f"camera {self.device}"

    def _open_cap(self) -> cv2.VideoCapture | None:
        dev = self.device
        if isinstance(dev, str) and dev.startswith("/dev/") and not os.path.exists(dev):
            return None
        backend = cv2.CAP_V4L2 if sys.platform.startswith("linux") else (
            cv2.CAP_DSHOW if sys.platform == "win32" else cv2.CAP_AVFOUNDATION)
        cap = cv2.VideoCapture(dev, backend)
        if not cap.isOpened():
            cap.release()
            return None
        if self.want_size:
            cap.set(cv2.CAP_PROP_FRAME_WIDTH, self.want_size[0])
            cap.set(cv2.CAP_PROP_FRAME_HEIGHT, self.want_size[1])
        cap.set(cv2.CAP_PROP_FPS, self.fps)
        cap.set(cv2.CAP_PROP_BUFFERSIZE, 1)  # newest frame, not a queue
        return cap

    def open(self) -> None:
        cap = self._open_cap()
        ok, frame = (cap.read() if cap is not None else (False, None))
        if not ok or frame is None:
            if cap is not None:
                cap.release()
            devices = sorted(p for p in os.listdir("/dev") if p.startswith("video")) if os.path.isdir("/dev") else []
            seen = ", ".join("/dev/" + d for d in devices) if devices else "none"
            raise SourceError(f"{self._describe()} not found or gives no frames (video devices here: {seen})",
                              hint="pick another with --camera N or a /dev/videoN path, close other apps using it, "
                                   "or try `avatarcast demo` / --source FILE without a camera")
        self._cap = cap
        self.size = self.want_size or (frame.shape[1], frame.shape[0])
        got = cap.get(cv2.CAP_PROP_FPS)
        self.fps = got if got and 1 <= got <= 240 else self.fps

    def read(self, out: np.ndarray) -> bool:
        if self._cap is None:
            return False
        ok, frame = self._cap.read()
        if not ok or frame is None:
            return False
        fit_into(frame, out, "fill")
        return True

    def reopen(self) -> bool:
        if self._cap is not None:
            self._cap.release()
        self._cap = self._open_cap()
        return self._cap is not None

    def close(self) -> None:
        if self._cap is not None:
            self._cap.release()
            self._cap = None


class DemoSource(Source):
    """A built-in animated test scene (no camera, no files): moving colour bars, a bouncing disc and a
    frame counter. Deterministic: frame i is always the same picture."""

    name = "demo"

    def __init__(self, size: tuple[int, int] = (1280, 720), fps: float = 30.0, frames: int | None = None,
                 paced: bool = False):
        super().__init__()
        self.size = size
        self.fps = fps
        self.frame_count = frames
        self.live = frames is None
        self.paced = paced
        self._pacer = Pacer(fps) if paced else None
        self._i = 0

    def open(self) -> None:
        w, h = self.size
        x = np.linspace(0, 1, w, dtype=np.float32)
        y = np.linspace(0, 1, h, dtype=np.float32)[:, None]
        self._base = np.empty((h, w, 3), np.uint8)
        self._base[..., 0] = (255 * (0.5 + 0.5 * np.sin(6.28 * x))).astype(np.uint8)
        self._base[..., 1] = (255 * y * np.ones_like(x)).astype(np.uint8)
        self._base[..., 2] = (255 * (1 - x) * (1 - y)).astype(np.uint8)

    def read(self, out: np.ndarray) -> bool:
        if self.frame_count is not None and self._i >= self.frame_count:
            return False
        if self._pacer is not None:
            self._pacer.wait()
        i = self._i
        self._i += 1
        h, w = out.shape[:2]
        fit_into(self._base, out, "stretch")
        t = i / self.fps
        cx = int(w * (0.5 + 0.35 * math.sin(t * 1.3)))
        cy = int(h * (0.5 + 0.3 * math.sin(t * 2.1)))
        cv2.circle(out, (cx, cy), max(8, h // 8), (255, 255, 255), -1, cv2.LINE_AA)
        cv2.putText(out, f"avatarcast demo  frame {i}", (max(4, w // 40), max(20, h // 12)),
                    cv2.FONT_HERSHEY_SIMPLEX, max(0.4, h / 900), (20, 20, 20), max(1, h // 360), cv2.LINE_AA)
        return True


def read_frames(path: str | Path, limit: int | None = None, step: int = 1) -> list[np.ndarray]:
    """Every ``step``-th frame of a video file (at most ``limit``), as BGR arrays: for tests, tools and
    evaluations that want a clip in memory."""
    cap = cv2.VideoCapture(str(path), cv2.CAP_FFMPEG)
    frames: list[np.ndarray] = []
    i = 0
    try:
        while limit is None or len(frames) < limit:
            ok, frame = cap.read()
            if not ok:
                break
            if i % step == 0:
                frames.append(frame)
            i += 1
    finally:
        cap.release()
    return frames


def _check_readable(path: Path) -> None:
    if not path.exists():
        raise SourceError("file not found", Where(path), "check the path")
    if path.is_dir():
        raise SourceError("is a folder, not a file", Where(path))
    if not os.access(path, os.R_OK):
        raise SourceError("file is not readable (permissions)", Where(path))


def open_source(spec: str | None, *, camera: str | None = None, size: tuple[int, int] | None = None,
                fps: float | None = None, live: bool = False, frames: int | None = None) -> Source:
    """Build a source from CLI words: ``demo``, a video or image file, ``camera:N`` / a device path,
    or ``--camera N``. ``live`` makes files loop and play at their own pace."""
    if camera is not None or (spec or "").startswith("camera:") or (spec or "").startswith("/dev/video"):
        dev = camera if camera is not None else spec.split(":", 1)[1] if spec.startswith("camera:") else spec
        device: int | str = int(dev) if str(dev).isdigit() else str(dev)
        return CameraSource(device, size or (1280, 720), fps or 30.0)
    if spec in (None, "demo"):
        return DemoSource(size or (1280, 720), fps or 30.0, frames=None if live else (frames or 150), paced=live)
    path = Path(spec)
    suffix = path.suffix.lower()
    if suffix in IMAGE_SUFFIXES:
        return ImageSource(path, frames=None if live else (frames or 1), fps=fps or 30.0)
    if suffix in VIDEO_SUFFIXES or path.exists():
        return VideoSource(path, loop=live, paced=live)
    raise SourceError("file not found", Where(path), "give a video, an image, `demo`, or --camera N")
