"""The driver-free output: a low-latency local stream that an OBS Media Source reads.

``--output obs`` (port from ``obs.yaml``'s ``stream_port``, default 8765), ``--output obs:PORT`` or
``--output stream:http://127.0.0.1:PORT`` serve ``http://127.0.0.1:PORT/avatarcast.ts``: MPEG-TS
with H.264 (x264 ``ultrafast``/``zerolatency``, no B-frames, a keyframe every half second), encoded
by ffmpeg (``engine.sinks.ffmpeg_exe()``, the imageio-ffmpeg binary). It needs no driver and no admin
rights, so it works where no virtual camera can be installed; ``avatarcast obs setup`` creates the
matching ``ffmpeg_source`` (input format ``mpegts``, no buffering).

Why not MJPEG over HTTP: it carries no timestamps, ffmpeg assumes 25 fps, and OBS plays frames at that
pace, so at 30 fps the delay grows by ~0.2 s every second (measured: 0.24 s -> 5 s in 15 s). MPEG-TS
carries each frame's capture time (wall clock), so OBS plays at the real rate and the delay stays flat.

Threads: ``write()`` (the engine's output thread) only copies the frame into a slot and returns; the
encoder thread feeds the newest frame to ffmpeg (only while a viewer is connected: no CPU spent
otherwise); a reader thread hands ffmpeg's output to every viewer's queue; one thread per viewer sends
it (a slow viewer loses its backlog, it never slows the engine or other viewers). Viewers may come and
go (OBS restarting): the server keeps running, so the stream never dies.
"""

from __future__ import annotations

import collections
import errno
import logging
import socket
import subprocess
import threading
import time

import numpy as np

from engine.errors import SinkError
from engine.sinks import Sink, ffmpeg_exe, register_sink

log = logging.getLogger("avatarcast.obs.stream")
STREAM_PATH = "/avatarcast.ts"
TS_PACKET = 188
VIEWER_BACKLOG = 4 << 20  # bytes a viewer may fall behind before its backlog is dropped (it resyncs)
ENCODER_IDLE_S = 2.0  # stop ffmpeg this long after the last viewer left


def encoder_command(size: tuple[int, int], fps: float, gop_s: float = 0.5, crf: int = 18) -> list[str]:
    """ffmpeg: raw bgr24 frames on stdin (timestamped by arrival) -> MPEG-TS H.264 on stdout."""
    w, h = size
    gop = max(1, round(fps * gop_s))
    return [ffmpeg_exe(), "-hide_banner", "-loglevel", "error", "-nostdin",
            "-f", "rawvideo", "-use_wallclock_as_timestamps", "1", "-framerate", f"{fps:.6g}",
            "-pix_fmt", "bgr24", "-s", f"{w}x{h}", "-i", "pipe:0",
            # BT.709 limited range, converted and tagged, so OBS's decoder uses the same matrix (untagged
            # streams come out of ffmpeg as BT.601 and OBS may read them as 709: greens shift by ~20)
            "-vf", "scale=out_color_matrix=bt709:out_range=tv,format=yuv420p", "-colorspace", "bt709",
            "-color_primaries", "bt709", "-color_trc", "bt709", "-color_range", "tv",
            "-fps_mode", "passthrough", "-c:v", "libx264", "-preset", "ultrafast", "-tune", "zerolatency",
            "-g", str(gop), "-keyint_min", str(gop), "-sc_threshold", "0", "-bf", "0", "-crf", str(crf),
            "-f", "mpegts", "-muxdelay", "0", "-muxpreload", "0", "-flush_packets", "1",
            "pipe:1"]


class _Viewer:
    def __init__(self, addr):
        self.addr = addr
        self.chunks: collections.deque[bytes] = collections.deque()
        self.queued = 0
        self.dropped = 0
        self.cond = threading.Condition()
        self.closed = False

    def put(self, chunk: bytes) -> None:
        with self.cond:
            if self.queued + len(chunk) > VIEWER_BACKLOG:  # too slow: skip ahead (decoders resync)
                self.chunks.clear()
                self.queued = 0
                self.dropped += 1
            self.chunks.append(chunk)
            self.queued += len(chunk)
            self.cond.notify()

    def get(self, timeout: float) -> bytes | None:
        with self.cond:
            if not self.chunks:
                self.cond.wait(timeout)
            if not self.chunks:
                return None
            chunk = self.chunks.popleft()
            self.queued -= len(chunk)
            return chunk

    def close(self) -> None:
        with self.cond:
            self.closed = True
            self.cond.notify()


class StreamServer:
    """Serves the newest pushed frames as MPEG-TS (H.264) on ``http://host:port/avatarcast.ts``.
    Port 0: any free port (see ``port`` after ``start``)."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0, fps: float = 30.0, gop_s: float = 0.5):
        self.host = host
        self.port = port
        self.fps = fps
        self.gop_s = gop_s
        self._cond = threading.Condition()
        self._frame: np.ndarray | None = None
        self._seq = 0
        self._viewers: list[_Viewer] = []
        self._vlock = threading.Lock()
        self._stop = threading.Event()
        self._sock: socket.socket | None = None
        self._threads: list[threading.Thread] = []
        self._proc: subprocess.Popen | None = None
        self._size: tuple[int, ...] | None = None
        self.frames_pushed = 0
        self.frames_encoded = 0
        self.viewers_served = 0
        self.encoder_starts = 0

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}{STREAM_PATH}"

    @property
    def viewers(self) -> int:
        return len(self._viewers)

    def start(self) -> None:
        ffmpeg_exe()  # no ffmpeg: a clear SinkError now, not in a thread later
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
        for target, name in ((self._accept_loop, "stream-accept"), (self._encode_loop, "stream-encode")):
            t = threading.Thread(target=target, name=name, daemon=True)
            t.start()
            self._threads.append(t)
        log.info("stream: %s (OBS: Media Source, input format mpegts; `avatarcast obs setup` adds it)", self.url)

    def push(self, frame: np.ndarray) -> None:
        """Hand over the newest ``(H, W, 3) uint8`` BGR frame. Copies it; never blocks on ffmpeg or viewers."""
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
            t.join(timeout=3)
        self._stop_encoder()
        with self._vlock:
            for v in self._viewers:
                v.close()

    # ---- encoder -------------------------------------------------------------------------------
    def _start_encoder(self, shape: tuple[int, ...]) -> None:
        h, w = shape[:2]
        if w % 2 or h % 2:
            log.error("stream: %dx%d cannot be encoded (H.264 needs even sizes); use --size with even numbers", w, h)
            return
        self._proc = subprocess.Popen(encoder_command((w, h), self.fps, self.gop_s), stdin=subprocess.PIPE,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self.encoder_starts += 1
        t = threading.Thread(target=self._read_loop, args=(self._proc,), name="stream-read", daemon=True)
        t.start()
        log.debug("stream: encoder started (%dx%d at %g fps)", w, h, self.fps)

    def _stop_encoder(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        try:
            proc.stdin.close()
        except OSError:
            pass
        try:
            proc.wait(timeout=3)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=3)

    def _encode_loop(self) -> None:
        seen = 0
        buf = None
        t_idle = None
        while not self._stop.is_set():
            with self._cond:
                self._cond.wait_for(lambda seen=seen: self._stop.is_set() or self._seq != seen, 0.5)
                if self._stop.is_set():
                    return
                fresh = self._seq != seen and self._frame is not None
                if fresh:
                    seen = self._seq
                    if buf is None or buf.shape != self._frame.shape:
                        buf = np.empty_like(self._frame)
                    np.copyto(buf, self._frame)
            if not self._viewers:
                t_idle = t_idle or time.monotonic()
                if self._proc is not None and time.monotonic() - t_idle > ENCODER_IDLE_S:
                    self._stop_encoder()
                    log.debug("stream: encoder stopped (no viewer)")
                continue
            t_idle = None
            if not fresh:
                continue
            if self._proc is not None and self._proc.poll() is None and self._size != buf.shape:
                self._stop_encoder()  # the output size changed
            if self._proc is None or self._proc.poll() is not None:
                if self._proc is not None:
                    err = self._proc.stderr.read().decode(errors="replace").strip()
                    log.warning("stream: the encoder stopped (%s); restarting it", err[-200:] or self._proc.returncode)
                    self._proc = None
                    self._drop_viewers()  # they reconnect and start clean on the new stream
                    continue
                self._size = buf.shape
                self._start_encoder(buf.shape)
                if self._proc is None:
                    continue
            try:
                self._proc.stdin.write(memoryview(buf).cast("B"))
                self._proc.stdin.flush()
                self.frames_encoded += 1
            except (BrokenPipeError, OSError, ValueError):
                pass  # noticed through poll() on the next frame

    def _read_loop(self, proc: subprocess.Popen) -> None:
        rest = b""
        out = proc.stdout
        while True:
            try:
                data = out.read1(65536)
            except (OSError, ValueError):
                return
            if not data:
                return
            data = rest + data
            cut = len(data) - len(data) % TS_PACKET  # whole TS packets only: a new viewer starts on a boundary
            rest = data[cut:]
            if cut:
                chunk = data[:cut]
                with self._vlock:
                    viewers = list(self._viewers)
                for v in viewers:
                    v.put(chunk)

    def _drop_viewers(self) -> None:
        with self._vlock:
            viewers, self._viewers = self._viewers, []
        for v in viewers:
            v.close()

    # ---- HTTP ----------------------------------------------------------------------------------
    def _accept_loop(self) -> None:
        while not self._stop.is_set():
            try:
                conn, addr = self._sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            t = threading.Thread(target=self._serve, args=(conn, addr), name="stream-viewer", daemon=True)
            t.start()

    def _serve(self, conn: socket.socket, addr) -> None:
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        conn.settimeout(5.0)
        viewer = None
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
            conn.sendall(b"HTTP/1.0 200 OK\r\nServer: avatarcast\r\nContent-Type: video/mp2t\r\n"
                         b"Cache-Control: no-cache, no-store\r\nConnection: close\r\n\r\n")
            if parts[0] == b"HEAD":
                return
            viewer = _Viewer(addr)
            with self._vlock:
                self._viewers.append(viewer)
            self.viewers_served += 1
            with self._cond:
                self._cond.notify_all()
            log.info("stream: viewer %s:%d connected", *addr[:2])
            while not self._stop.is_set() and not viewer.closed:
                chunk = viewer.get(0.5)
                if chunk:
                    conn.sendall(chunk)
        except OSError:
            return
        finally:
            if viewer is not None:
                with self._vlock:
                    if viewer in self._viewers:
                        self._viewers.remove(viewer)
                log.info("stream: viewer %s:%d left", *addr[:2])
            conn.close()


class StreamSink(Sink):
    """``--output obs``: the engine's frames as a local MPEG-TS stream (see module docstring)."""

    name = "obs-stream"
    paced = False

    def __init__(self, host: str = "127.0.0.1", port: int | None = None):
        self.host = host
        self.port = port
        self.server: StreamServer | None = None

    def open(self, size, fps) -> None:
        port = self.port
        if port is None:
            from .settings import resolve

            port = resolve().stream_port
        w, h = size
        if w % 2 or h % 2:
            raise SinkError(f"stream size {w}x{h} must be even for H.264", hint="use --size with even numbers")
        self.server = StreamServer(self.host, port, fps=fps)
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
        raise SinkError(f"unsupported stream {arg!r}", hint="the OBS stream is MPEG-TS over HTTP: "
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
