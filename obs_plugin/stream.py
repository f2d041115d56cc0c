"""The driver-free output: a local MJPEG-over-HTTP stream that an OBS Media Source reads.

``--output obs`` (port from ``obs.yaml``'s ``stream_port``, default 8765), ``--output obs:PORT`` or
``--output stream:http://127.0.0.1:PORT`` serve ``http://127.0.0.1:PORT/avatarcast.mjpg``
(``multipart/x-mixed-replace``, one JPEG per frame). It needs no driver and no admin rights, so it
works where no virtual camera can be installed; ``avatarcast obs setup`` creates the matching
``ffmpeg_source`` (input format ``mpjpeg``, no buffering).

Threads: ``write()`` (the engine's output thread) only copies the frame into a slot and returns; one
encoder thread JPEG-encodes the newest frame while a viewer is connected; one thread per viewer sends
the newest JPEG (a slow viewer skips frames, it never slows the engine). Viewers may come and go (OBS
restarting): the server keeps running, so the stream never dies.
"""

from __future__ import annotations

import errno
import logging
import socket
import threading

import cv2
import numpy as np

from engine.errors import SinkError
from engine.sinks import Sink, register_sink

log = logging.getLogger("avatarcast.obs.stream")
BOUNDARY = "avatarcastframe"
STREAM_PATH = "/avatarcast.mjpg"


class MjpegServer:
    """Serves the newest pushed frame as MJPEG on ``http://host:port/avatarcast.mjpg``. Port 0: any free port."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0, quality: int = 90):
        self.host = host
        self.port = port
        self.quality = quality
        self._cond = threading.Condition()
        self._frame: np.ndarray | None = None
        self._seq = 0
        self._jpeg: bytes | None = None
        self._jseq = 0
        self._viewers = 0
        self._stop = threading.Event()
        self._sock: socket.socket | None = None
        self._threads: list[threading.Thread] = []
        self.frames_pushed = 0
        self.frames_encoded = 0
        self.viewers_served = 0

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}{STREAM_PATH}"

    @property
    def viewers(self) -> int:
        return self._viewers

    def start(self) -> None:
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # a restart reuses a TIME_WAIT port
        try:
            s.bind((self.host, self.port))
        except OSError as exc:
            s.close()
            if exc.errno == errno.EADDRINUSE:
                raise SinkError(f"stream port {self.port} on {self.host} is already in use (another avatarcast, or "
                                "another program)", hint="pick another: --output obs:PORT (and the same --stream-port "
                                                         "for `avatarcast obs setup`), or stream_port in obs.yaml") from None
            if exc.errno == errno.EACCES:
                raise SinkError(f"not allowed to open stream port {self.port} on {self.host}",
                                hint="use a port above 1024: --output obs:8765") from None
            raise SinkError(f"cannot open the stream on {self.host}:{self.port}: {exc.strerror or exc}") from None
        s.listen(8)
        s.settimeout(0.2)
        self._sock = s
        self.port = s.getsockname()[1]
        for target, name in ((self._accept_loop, "mjpeg-accept"), (self._encode_loop, "mjpeg-encode")):
            t = threading.Thread(target=target, name=name, daemon=True)
            t.start()
            self._threads.append(t)
        log.info("stream: %s (OBS: Media Source, input format mpjpeg; `avatarcast obs setup` adds it)", self.url)

    def push(self, frame: np.ndarray) -> None:
        """Hand over the newest ``(H, W, 3) uint8`` BGR frame. Copies it; never blocks on viewers."""
        with self._cond:
            if self._frame is None or self._frame.shape != frame.shape:
                self._frame = np.empty_like(frame)
            np.copyto(self._frame, frame)
            self._seq += 1
            self.frames_pushed += 1
            self._cond.notify_all()

    def stop(self) -> None:
        self._stop.set()
        with self._cond:
            self._cond.notify_all()
        if self._sock is not None:
            self._sock.close()
        for t in self._threads:
            t.join(timeout=2)

    # ---- threads -------------------------------------------------------------------------------
    def _encode_loop(self) -> None:
        seen = 0
        buf = None
        params = [cv2.IMWRITE_JPEG_QUALITY, self.quality]
        while not self._stop.is_set():
            with self._cond:
                self._cond.wait_for(lambda seen=seen: self._stop.is_set() or (self._seq != seen and self._viewers > 0), 0.5)
                if self._stop.is_set() or self._seq == seen or self._viewers == 0 or self._frame is None:
                    continue
                seen = self._seq
                if buf is None or buf.shape != self._frame.shape:
                    buf = np.empty_like(self._frame)
                np.copyto(buf, self._frame)
            ok, enc = cv2.imencode(".jpg", buf, params)
            if not ok:
                log.warning("could not JPEG-encode a frame of shape %s", buf.shape)
                continue
            with self._cond:
                self._jpeg = enc.tobytes()
                self._jseq += 1
                self.frames_encoded += 1
                self._cond.notify_all()

    def _accept_loop(self) -> None:
        while not self._stop.is_set():
            try:
                conn, addr = self._sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            t = threading.Thread(target=self._serve, args=(conn, addr), name="mjpeg-viewer", daemon=True)
            t.start()

    def _serve(self, conn: socket.socket, addr) -> None:
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        conn.settimeout(5.0)
        try:
            head = b""
            while b"\r\n\r\n" not in head and len(head) < 8192:
                chunk = conn.recv(1024)
                if not chunk:
                    return
                head += chunk
            parts = head.split(b"\r\n", 1)[0].split()
            path = parts[1].decode(errors="replace").split("?")[0] if len(parts) >= 2 else ""
            if len(parts) < 2 or parts[0] not in (b"GET", b"HEAD") or path not in (STREAM_PATH, "/"):
                conn.sendall(b"HTTP/1.0 404 Not Found\r\nContent-Type: text/plain\r\n\r\n"
                             b"avatarcast stream: GET " + STREAM_PATH.encode() + b"\r\n")
                return
            conn.sendall(("HTTP/1.0 200 OK\r\nServer: avatarcast\r\nCache-Control: no-cache, no-store\r\n"
                          "Pragma: no-cache\r\nConnection: close\r\n"
                          f"Content-Type: multipart/x-mixed-replace; boundary={BOUNDARY}\r\n\r\n").encode())
            if parts[0] == b"HEAD":
                return
            log.info("stream: viewer %s:%d connected", *addr[:2])
            self.viewers_served += 1
            with self._cond:
                self._viewers += 1
                self._cond.notify_all()
            try:
                sent = 0
                while not self._stop.is_set():
                    with self._cond:
                        self._cond.wait_for(lambda sent=sent: self._stop.is_set() or (self._jseq != sent and self._jpeg), 0.5)
                        if self._stop.is_set():
                            return
                        if self._jseq == sent or not self._jpeg:
                            continue
                        jpeg, sent = self._jpeg, self._jseq
                    conn.sendall(f"--{BOUNDARY}\r\nContent-Type: image/jpeg\r\nContent-Length: {len(jpeg)}\r\n\r\n"
                                 .encode() + jpeg + b"\r\n")
            finally:
                with self._cond:
                    self._viewers -= 1
                log.info("stream: viewer %s:%d left", *addr[:2])
        except OSError:
            return
        finally:
            conn.close()


class StreamSink(Sink):
    """``--output obs``: the engine's frames as a local MJPEG stream (see module docstring)."""

    name = "obs-stream"
    paced = False

    def __init__(self, host: str = "127.0.0.1", port: int | None = None, quality: int = 90):
        self.host = host
        self.port = port
        self.quality = quality
        self.server: MjpegServer | None = None

    def open(self, size, fps) -> None:
        port = self.port
        if port is None:
            from .settings import resolve

            port = resolve().stream_port
        self.server = MjpegServer(self.host, port, self.quality)
        self.server.start()

    @property
    def url(self) -> str:
        return self.server.url if self.server else f"http://{self.host}:{self.port}{STREAM_PATH}"

    def write(self, frame: np.ndarray) -> None:
        self.server.push(frame)

    def close(self, ok: bool = True) -> None:
        if self.server is not None:
            self.server.stop()
            self.server = None


def parse_stream_arg(arg: str) -> tuple[str, int | None]:
    """``""`` -> default; ``PORT``; ``HOST:PORT``; ``http://HOST:PORT[/path]`` -> (host, port)."""
    text = arg.strip()
    if text.startswith("http://"):
        text = text[len("http://"):].split("/", 1)[0]
    elif "://" in text:
        raise SinkError(f"unsupported stream {arg!r}", hint="the OBS stream is MJPEG over HTTP: "
                                                           "--output obs, obs:PORT or stream:http://127.0.0.1:PORT")
    if not text:
        return "127.0.0.1", None
    host, _, port_text = text.rpartition(":")
    host = host or "127.0.0.1"
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise SinkError(f"bad stream port in {arg!r}", hint="e.g. --output obs:8765")
    return host, int(port_text)


def _factory(arg: str, opts: dict) -> StreamSink:
    host, port = parse_stream_arg(arg)
    return StreamSink(host, port)


register_sink("obs", _factory)
register_sink("stream", _factory)
