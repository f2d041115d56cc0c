"""obs_plugin without OBS: settings precedence, scene binding, the CustomEvent format, the MJPEG stream
(read by a real HTTP client and decoded), and every connection failure that needs no OBS."""

from __future__ import annotations

import base64
import hashlib
import logging
import socket
import threading
import time
import urllib.request

import cv2
import numpy as np
import pytest

from engine.control import Command
from engine.errors import CommandError, SinkError, UserError
from engine.preset import loads_preset
from obs_plugin import binding, protocol
from obs_plugin.client import ObsAuthError, ObsProtocolError, ObsUnreachable, handshake
from obs_plugin.settings import ENV_PASSWORD, ObsSettings, resolve
from obs_plugin.stream import StreamServer, StreamSink, parse_stream_arg
from obs_plugin.testing import free_port


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("AVATARCAST_HOME", str(tmp_path))
    monkeypatch.delenv(ENV_PASSWORD, raising=False)
    return tmp_path


# ---- settings ------------------------------------------------------------------------------------

def test_settings_precedence_flag_over_env_over_file(home, monkeypatch):
    (home / "obs.yaml").write_text("host: 10.0.0.5\nport: 4460\npassword: from-file\nstatus_text: true\n")
    s = resolve()
    assert (s.host, s.port, s.password, s.password_from, s.status_text) == ("10.0.0.5", 4460, "from-file", "config", True)
    monkeypatch.setenv(ENV_PASSWORD, "from-env")
    s = resolve()
    assert (s.password, s.password_from) == ("from-env", "env")
    s = resolve(host="127.0.0.1", port=4455, password="from-flag")
    assert (s.host, s.port, s.password, s.password_from) == ("127.0.0.1", 4455, "from-flag", "flag")


def test_settings_never_show_the_password(home):
    s = ObsSettings(password="hunter2")
    assert "hunter2" not in repr(s) and "hunter2" not in str(s)


@pytest.mark.parametrize("text, msg", [
    ("port: 99999\n", "port must be a port number"),
    ("colour: red\n", "unknown key 'colour'"),
    ("status_text: maybe\n", "status_text must be true or false"),
    ("- a\n- b\n", "must be a mapping"),
])
def test_bad_config_file_is_one_clear_error(home, text, msg):
    (home / "obs.yaml").write_text(text)
    with pytest.raises(UserError, match=msg) as exc:
        resolve()
    assert "obs.yaml" in exc.value.render()


# ---- scene binding --------------------------------------------------------------------------------

def preset(name, scenes=()):
    scenes_yaml = f"obs: {{scenes: [{', '.join(scenes)}]}}\n" if scenes else ""
    return loads_preset(f"name: {name}\n{scenes_yaml}pipeline: []\n")


@pytest.fixture
def set3():
    return [preset("Mona", ["Just Chatting"]), preset("Toon", ["Gaming", "Gaming 2"]), preset("Idle")]


def test_bound_scene_switches_by_index(set3):
    cmds = binding.commands_for_scene("Gaming 2", set3)
    assert [c.as_dict() for c in cmds] == [{"command": "switch_preset", "index": 2}]
    assert all(c.source == "obs" for c in cmds)


def test_unbound_scene_policies(set3):
    assert binding.commands_for_scene("BRB", set3, "keep") == []
    assert [c.as_dict() for c in binding.commands_for_scene("BRB", set3, "passthrough")] == [
        {"command": "passthrough", "on": True}]
    assert [c.as_dict() for c in binding.commands_for_scene("Gaming", set3, "passthrough")] == [
        {"command": "passthrough", "on": False}, {"command": "switch_preset", "index": 2}]
    assert [c.as_dict() for c in binding.commands_for_scene("BRB", set3, "Idle")] == [
        {"command": "switch_preset", "name": "Idle"}]


def test_unbound_setting_must_name_a_loaded_preset(set3):
    binding.check_unbound_setting("Idle", set3)
    with pytest.raises(UserError, match="not a loaded preset.*'Mona'"):
        binding.check_unbound_setting("Nobody", set3)


def test_missing_scenes_and_conflicts_are_reported(set3):
    lines = binding.missing_scenes(set3, ["Just Chatting", "Gaming"])
    assert lines == ["preset 'Toon' names OBS scene 'Gaming 2', which OBS does not have "
                     "(OBS has: 'Just Chatting', 'Gaming')"]
    clash = [preset("A", ["S"]), preset("B", ["S"])]
    assert binding.conflicts(clash) and binding.commands_for_scene("S", clash)[0].get("index") == 1


# ---- CustomEvent format ---------------------------------------------------------------------------

def test_custom_event_parsing():
    cmd = protocol.parse_event({"avatarcast": {"command": "switch_preset", "name": "Mona"}})
    assert isinstance(cmd, Command) and cmd.source == "obs" and cmd.get("name") == "Mona"
    assert protocol.parse_event({"avatarcast": {"command": "state"}}) == protocol.STATE_QUERY
    assert protocol.parse_event({"other_tool": 1}) is None
    assert protocol.parse_event("text") is None
    for bad in ({"avatarcast": 3}, {"avatarcast": {"command": "nope"}}, {"avatarcast": {"command": "bypass"}},
                {"avatarcast": {"command": "state", "x": 1}}):
        with pytest.raises(CommandError):
            protocol.parse_event(bad)
    assert protocol.state_event({"preset": "Mona"}) == {"avatarcast_state": {"preset": "Mona"}}


def test_obs_send_takes_only_its_own_commands_echo_as_the_answer(set3):
    """`avatarcast obs send` must not take OBS's own scene binding (which sends switch_preset by index
    when the link connects) or another client's command for the answer to its own."""
    from engine.control import make_command
    from obs_plugin.cli import is_answer

    def echo(cmd, event=None, **state):
        return protocol.state_event({"event": event or cmd.name, "command": cmd.as_dict(), "source": cmd.source,
                                     **state})

    mine = {"command": "switch_preset", "name": "Dark"}
    scene = binding.commands_for_scene("Just Chatting", set3, "keep")[-1]
    assert scene.name == "switch_preset" and not is_answer(mine, echo(scene, preset="Mona"))
    other = make_command("switch_preset", source="obs", name="Cool")
    assert not is_answer(mine, echo(other, preset="Cool"))
    ours = make_command("switch_preset", source="obs", name="Dark")
    assert is_answer(mine, echo(ours, preset="Dark"))
    assert is_answer(mine, echo(ours, event="rejected", reason="no preset named 'Dark'"))
    assert is_answer(mine, protocol.state_event({"event": "preset", "preset": "Dark"}))
    assert is_answer(mine, protocol.error_event("bad", {}))
    assert not is_answer(mine, {"other_tool": 1}) and not is_answer(mine, "text")
    query = {"command": protocol.STATE_QUERY}
    assert is_answer(query, protocol.state_event({"event": "state", "preset": "Warm"}))
    assert not is_answer(query, echo(ours, preset="Dark"))


# ---- the stream -----------------------------------------------------------------------------------

class Feeder:
    """Pushes solid frames of ``color`` at ~50 fps into ``push`` (the engine's output thread's job)."""

    def __init__(self, push, size=(160, 90)):
        self.color = (20, 120, 220)
        self.push, self.size = push, size
        self.stop = threading.Event()
        self.t = threading.Thread(target=self.run, daemon=True)
        self.t.start()

    def run(self):
        w, h = self.size
        f = np.empty((h, w, 3), np.uint8)
        while not self.stop.is_set():
            f[:] = self.color
            self.push(f)
            time.sleep(0.02)

    def close(self):
        self.stop.set()
        self.t.join()


def decode_until(url: str, color, timeout: float = 10.0) -> np.ndarray:
    """Read the stream with OpenCV's FFmpeg backend (a real MPEG-TS/H.264 decoder) until a frame shows
    ``color`` (BGR, +-40: H.264, YUV 4:2:0, and OpenCV decodes with BT.601 whatever the BT.709 tag says; the
    test colours differ by 170+ in some channel, so this still tells them apart)."""
    cap = cv2.VideoCapture(url, cv2.CAP_FFMPEG)
    try:
        assert cap.isOpened(), f"cannot open {url}"
        t_end = time.monotonic() + timeout
        last = None
        while time.monotonic() < t_end:
            ok, frame = cap.read()
            if not ok:
                continue
            last = frame
            if np.abs(frame[frame.shape[0] // 2, frame.shape[1] // 2].astype(int) - color).max() <= 40:
                return frame
        raise AssertionError(f"no frame of colour {color} (last centre pixel "
                             f"{None if last is None else last[last.shape[0] // 2, last.shape[1] // 2]})")
    finally:
        cap.release()


def test_stream_server_serves_the_newest_frames_as_mpegts():
    srv = StreamServer("127.0.0.1", 0, fps=50)
    srv.start()
    feeder = Feeder(srv.push)
    try:
        frame = decode_until(srv.url, (20, 120, 220))
        assert frame.shape == (90, 160, 3)
        feeder.color = (200, 30, 30)
        decode_until(srv.url, (200, 30, 30))
        with pytest.raises(urllib.error.HTTPError):
            urllib.request.urlopen(f"http://127.0.0.1:{srv.port}/other", timeout=5)
        assert srv.viewers_served == 2 and srv.frames_encoded > 0
    finally:
        feeder.close()
        srv.stop()


def test_stream_encodes_only_while_watched_and_survives_viewers_leaving(monkeypatch):
    import obs_plugin.stream as stream

    monkeypatch.setattr(stream, "ENCODER_IDLE_S", 0.3)
    sink = StreamSink("127.0.0.1", 0)
    sink.open((160, 90), 50)
    feeder = Feeder(sink.write)
    try:
        time.sleep(0.3)
        assert sink.server.frames_encoded == 0 and sink.server.encoder_starts == 0  # nobody watches: no ffmpeg
        decode_until(sink.url, (20, 120, 220))
        wait = time.monotonic() + 5
        while sink.server.viewers and time.monotonic() < wait:
            time.sleep(0.05)
        time.sleep(1.0)
        assert sink.server._proc is None  # stopped after the viewer left
        pushed = sink.server.frames_pushed
        feeder.color = (30, 200, 30)
        decode_until(sink.url, (30, 200, 30))  # a new viewer: a fresh encoder
        assert sink.server.encoder_starts == 2 and sink.server.frames_pushed > pushed
    finally:
        feeder.close()
        sink.close()


def test_stream_odd_size_is_a_clear_error():
    with pytest.raises(SinkError, match="must be even"):
        StreamSink("127.0.0.1", 0).open((161, 90), 30)


def test_stream_port_in_use_is_a_clear_error():
    with socket.socket() as other:
        other.bind(("127.0.0.1", 0))
        other.listen(1)
        port = other.getsockname()[1]
        sink = StreamSink("127.0.0.1", port)
        with pytest.raises(SinkError, match=f"stream port {port} on 127.0.0.1 is already in use") as exc:
            sink.open((64, 36), 30)
        assert "--output obs:PORT" in exc.value.render()


def test_cli_run_with_stream_port_in_use_exits_with_one_line(capsys, home):
    from engine.cli import main

    with socket.socket() as other:
        other.bind(("127.0.0.1", 0))
        other.listen(1)
        port = other.getsockname()[1]
        root = logging.getLogger()
        handlers, level = root.handlers[:], root.level
        try:
            code = main(["run", "--output", f"obs:{port}", "--max-frames", "3", "--size", "64x36",
                         "--obs-port", str(free_port())])
        finally:
            root.handlers[:], root.level = handlers, level
    err = capsys.readouterr().err
    assert code == 2 and "already in use" in err and "Traceback" not in err


@pytest.mark.parametrize("arg, want", [("", ("127.0.0.1", None)), ("9000", ("127.0.0.1", 9000)),
                                       ("0.0.0.0:9000", ("0.0.0.0", 9000)),
                                       ("http://127.0.0.1:9001/avatarcast.ts", ("127.0.0.1", 9001))])
def test_parse_stream_arg(arg, want):
    assert parse_stream_arg(arg) == want


@pytest.mark.parametrize("arg", ["srt://127.0.0.1:9000", "port", "70000"])
def test_parse_stream_arg_refuses(arg):
    with pytest.raises(SinkError):
        parse_stream_arg(arg)


# ---- connection failures that need no OBS ---------------------------------------------------------

def test_closed_port_is_unreachable():
    with pytest.raises(ObsUnreachable, match="not reachable"):
        handshake(ObsSettings(port=free_port()), timeout=1)


def test_unreachable_host_is_unreachable():
    # TEST-NET-1 (RFC 5737): never routed, so the connect attempt times out
    with pytest.raises(ObsUnreachable):
        handshake(ObsSettings(host="192.0.2.1", port=4455), timeout=0.5)


class TinyServer:
    """A real local TCP server with a scripted reply, standing in for "something else on that port"."""

    def __init__(self, handler):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(4)
        self.port = self.sock.getsockname()[1]
        self.handler = handler
        self.stop = threading.Event()
        self.t = threading.Thread(target=self.loop, daemon=True)
        self.t.start()

    def loop(self):
        self.sock.settimeout(0.1)
        while not self.stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            with conn:
                try:
                    self.handler(conn)
                except OSError:
                    pass

    def close(self):
        self.stop.set()
        self.t.join()
        self.sock.close()


def _upgrade(conn) -> None:
    req = b""
    while b"\r\n\r\n" not in req:
        chunk = conn.recv(1024)
        if not chunk:  # the port probe: connects and closes
            raise OSError("closed")
        req += chunk
    key = [ln.split(b":", 1)[1].strip() for ln in req.split(b"\r\n") if ln.lower().startswith(b"sec-websocket-key")][0]
    accept = base64.b64encode(hashlib.sha1(key + b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11").digest())
    conn.sendall(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                 b"Sec-WebSocket-Accept: " + accept + b"\r\n\r\n")


def test_http_server_on_the_port_is_not_obs_websocket():
    def http(conn):
        if not conn.recv(4096):
            return
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhi")

    srv = TinyServer(http)
    try:
        with pytest.raises(ObsProtocolError, match="not an obs-websocket server"):
            handshake(ObsSettings(port=srv.port), timeout=2)
    finally:
        srv.close()


def test_websocket_server_without_v5_hello_is_old_obs_websocket():
    """obs-websocket 4.x accepts the websocket and then waits for requests: no Hello ever comes."""
    def silent_ws(conn):
        _upgrade(conn)
        time.sleep(1.5)

    srv = TinyServer(silent_ws)
    try:
        with pytest.raises(ObsProtocolError, match="no obs-websocket v5 greeting.*4.x") as exc:
            handshake(ObsSettings(port=srv.port), timeout=1)
        assert "OBS Studio 28" in exc.value.render()
    finally:
        srv.close()


def test_v4_version_in_hello_is_refused():
    def v4_hello(conn):
        _upgrade(conn)
        payload = b'{"op": 0, "d": {"obsWebSocketVersion": "4.9.1", "rpcVersion": 0}}'
        conn.sendall(bytes([0x81, len(payload)]) + payload)
        time.sleep(0.5)

    srv = TinyServer(v4_hello)
    try:
        with pytest.raises(ObsProtocolError, match="obs-websocket 4.9.1; avatarcast needs version 5"):
            handshake(ObsSettings(port=srv.port), timeout=2)
    finally:
        srv.close()


def test_password_required_but_none_given():
    def hello_auth(conn):
        _upgrade(conn)
        payload = (b'{"op": 0, "d": {"obsWebSocketVersion": "5.1.0", "rpcVersion": 1, '
                   b'"authentication": {"challenge": "c", "salt": "s"}}}')
        conn.sendall(bytes([0x81, len(payload)]) + payload)
        time.sleep(0.5)

    srv = TinyServer(hello_auth)
    try:
        with pytest.raises(ObsAuthError, match="requires a password and none was given") as exc:
            handshake(ObsSettings(port=srv.port), timeout=2)
        assert ENV_PASSWORD in exc.value.render()
    finally:
        srv.close()


def test_cli_status_with_nothing_listening_is_one_clear_line(capsys, home):
    from engine.cli import main

    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    try:
        code = main(["obs", "status", "--obs-port", str(free_port())])
    finally:
        root.handlers[:], root.level = handlers, level
    err = capsys.readouterr().err
    assert code == 2 and "OBS is not reachable" in err and len(err.strip().splitlines()) == 1


def test_a_preset_cannot_carry_the_obs_password():
    from engine.errors import PresetError

    with pytest.raises(PresetError, match="`obs` must be a mapping like"):
        loads_preset("name: X\nobs: {scenes: [A], password: secret}\npipeline: []\n")
