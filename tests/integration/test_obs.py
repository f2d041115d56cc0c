"""avatarcast against a real OBS Studio 29 (obs-websocket 5.1) under Xvfb: scene binding, remote control
through CustomEvents, `obs setup`, the stream output seen in OBS, OBS crashing mid-stream, bad input."""

from __future__ import annotations

import json
import logging
import queue
import time

import numpy as np
import pytest
from conftest import PASSWORD, PRESETS, SCENES, block_colors, make_link

from engine.control import parse_command
from engine.sinks import VCamSink
from obs_plugin.testing import StandInVirtualCamera, free_port, screenshot

pytestmark = [pytest.mark.obs, pytest.mark.timeout(180)]


def wait_for(pred, timeout: float, what: str, step: float = 0.02):
    t_end = time.monotonic() + timeout
    while time.monotonic() < t_end:
        v = pred()
        if v:
            return v
        time.sleep(step)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def cmd(command: str, **args):
    return parse_command({"command": command, **args}, source="api")


def frames_of(rig, t_from: float):
    return [(t, n, f) for t, n, f in list(rig.frames) if t >= t_from]


# ---- scene binding -------------------------------------------------------------------------------

def test_scene_change_switches_preset_glitch_free(obs, req, rig_factory, settings, links, expected):
    rig = rig_factory()
    link = make_link(rig, settings, links)
    assert link.program_scene == SCENES[0]
    for scene, preset in (("Gaming", "Cool"), ("Just Chatting", "Warm"), ("Gaming", "Cool")):
        t0 = time.perf_counter()
        req.send("SetCurrentProgramScene", {"sceneName": scene})
        t_new = rig.wait_preset(preset, after=t0)
        time.sleep(0.15)
        around = frames_of(rig, t0)
        # every frame is exactly the old or the new preset's picture (nothing black, torn or half-applied),
        # and once the new preset showed, no old frame follows
        names = [n for _, n, _ in around]
        first_new = names.index(preset)
        assert all(n == preset for n in names[first_new:]), names
        for _, n, f in around:
            np.testing.assert_array_equal(f, expected[n])
        assert t_new >= t0
    assert link.stats.scene_changes == 3
    assert rig.engine.state()["preset"] == "Cool"


@pytest.mark.parametrize("policy, shows", [("passthrough", "passthrough"), ("Dark", "Dark")])
def test_unbound_scene_policy_and_back_to_a_bound_scene(obs, req, rig_factory, settings, links, policy, shows):
    settings.unbound_scene = policy
    rig = rig_factory()
    make_link(rig, settings, links)
    for scene, want in (("BRB", shows), ("Gaming", "Cool")):
        t0 = time.perf_counter()
        req.send("SetCurrentProgramScene", {"sceneName": scene})
        rig.wait_preset(want, after=t0)
    assert rig.engine.passthrough is False


def test_scene_missing_in_obs_is_a_warning_listing_obs_scenes(obs, req, rig_factory, settings, links, caplog):
    from engine.preset import loads_preset

    odd = loads_preset("name: Odd\nobs: {scenes: [Nope Scene]}\npipeline: []\n")
    rig = rig_factory(presets_=[odd])
    with caplog.at_level(logging.WARNING, logger="avatarcast.obs"):
        make_link(rig, settings, links)
    msgs = [r.getMessage() for r in caplog.records if "Nope Scene" in r.getMessage()]
    assert msgs, caplog.text
    assert all(f"'{s}'" in msgs[0] for s in SCENES), msgs[0]


# ---- remote control through CustomEvents ----------------------------------------------------------

class Listener:
    """Another obs-websocket client (what a Stream Deck plugin is): sends CustomEvents, collects answers."""

    def __init__(self, obs):
        import obsws_python as obsws

        from obs_plugin.link import _RawEvents

        self.req = obs.client()
        self.evt = obsws.EventClient(host="127.0.0.1", port=obs.port, password=PASSWORD, timeout=5)
        self.q: queue.SimpleQueue = queue.SimpleQueue()
        self.evt.callback = _RawEvents(lambda t, d: self.q.put(d) if t == "CustomEvent" else None)

    def send(self, data) -> None:
        self.req.send("BroadcastCustomEvent", {"eventData": data})

    def answer(self, key: str, timeout: float = 5.0, where=lambda d: True) -> dict:
        t_end = time.monotonic() + timeout
        while time.monotonic() < t_end:
            try:
                d = self.q.get(timeout=max(0.01, t_end - time.monotonic()))
            except queue.Empty:
                break
            if isinstance(d, dict) and key in d and where(d[key]):
                return d[key]
        raise AssertionError(f"no {key} event within {timeout} s")

    def close(self) -> None:
        self.req.disconnect()
        self.evt.disconnect()


@pytest.fixture
def listener(obs, req):
    li = Listener(obs)
    yield li
    li.close()


def test_custom_event_command_is_applied_and_answered(obs, req, rig_factory, settings, links, listener):
    rig = rig_factory()
    make_link(rig, settings, links)
    t0 = time.perf_counter()
    listener.send({"avatarcast": {"command": "next_preset"}})
    st = listener.answer("avatarcast_state", where=lambda s: s.get("event") == "next_preset")
    assert st["preset"] == "Cool" and st["index"] == 2 and st["presets"] == 3 and "fps" in st
    rig.wait_preset("Cool", after=t0)

    listener.send({"avatarcast": {"command": "switch_preset", "name": "Dark"}})
    assert listener.answer("avatarcast_state", where=lambda s: s.get("event") == "switch_preset")["preset"] == "Dark"
    rig.wait_preset("Dark", after=t0)

    listener.send({"avatarcast": {"command": "set_param", "node": "grade", "param": "brightness", "value": 0.0}})
    listener.answer("avatarcast_state", where=lambda s: s.get("event") == "set_param")
    assert rig.engine.graph.run_by_id["grade"].node.p["brightness"] == 0.0

    listener.send({"avatarcast": {"command": "state"}})
    st = listener.answer("avatarcast_state", where=lambda s: s.get("event") == "state")
    assert st["preset"] == "Dark" and st["fps"] > 0


@pytest.mark.parametrize("payload", [
    {"avatarcast": "next_preset"},
    {"avatarcast": {"command": "fly_to_the_moon"}},
    {"avatarcast": {"command": "switch_preset", "index": "two"}},
    {"avatarcast": {"command": "switch_preset"}},
    {"avatarcast": {"command": "next_preset", "extra": 1}},
    {"avatarcast": None},
    {"avatarcast": [1, 2, 3]},
])
def test_malformed_custom_event_is_ignored_with_a_warning(obs, req, rig_factory, settings, links, listener, caplog,
                                                          payload):
    rig = rig_factory()
    link = make_link(rig, settings, links)
    with caplog.at_level(logging.WARNING, logger="avatarcast.obs"):
        listener.send(payload)
        err = listener.answer("avatarcast_error")
    assert err["error"]
    assert any("malformed avatarcast CustomEvent" in r.getMessage() for r in caplog.records)
    # still alive and still listening: a good command right after works
    t0 = time.perf_counter()
    listener.send({"avatarcast": {"command": "next_preset"}})
    rig.wait_preset("Cool", after=t0)
    assert link.connected.is_set() and link.stats.rejected_payloads == 1


def test_other_tools_custom_events_are_ignored_silently(obs, req, rig_factory, settings, links, listener, caplog):
    rig = rig_factory()
    link = make_link(rig, settings, links)
    with caplog.at_level(logging.DEBUG, logger="avatarcast.obs"):
        listener.send({"streamerbot": {"action": "x"}})
        listener.send({"weird key with spaces": 1, "__init__": 2})  # would break obsws-python's own dataclasses
        listener.send({"avatarcast": {"command": "next_preset"}})
        listener.answer("avatarcast_state", where=lambda s: s.get("event") == "next_preset")
    assert link.stats.rejected_payloads == 0 and link.stats.commands == 1
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


# ---- the picture in OBS -------------------------------------------------------------------------------

def cli(capsys, *argv):
    from engine.cli import main

    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    try:
        code = main(list(argv))  # sets up logging on the (captured) stderr: put the test's logging back after
    finally:
        root.handlers[:], root.level = handlers, level
    out = capsys.readouterr()
    return code, out.out, out.err


def obs_args(obs):
    return ["--obs-port", str(obs.port)]


def wait_colors(req, source, want: np.ndarray, timeout: float = 10.0, tol: float = 10.0):
    """Poll GetSourceScreenshot until the block colours are within ``tol`` of ``want`` (returns the image)."""
    last = [None]

    def ok():
        img = screenshot(req, source)
        if img is None or img.shape[:2] != (180, 320):
            return None
        last[0] = block_colors(img)
        return (img,) if np.abs(last[0] - want).max() <= tol else None

    try:
        return wait_for(ok, timeout, f"{source} to show colours {want.round().tolist()}", step=0.05)[0]
    except AssertionError as exc:
        raise AssertionError(f"{exc}; last seen {None if last[0] is None else last[0].round().tolist()}") from None


def test_setup_creates_the_stream_source_and_obs_shows_the_engine_frames(obs, req, rig_factory, settings, links,
                                                                         expected, capsys, monkeypatch, tmp_path):
    from obs_plugin.stream import StreamSink

    monkeypatch.setenv("AVATARCAST_OBS_PASSWORD", PASSWORD)
    port = free_port()
    sink = StreamSink("127.0.0.1", port)
    rig = rig_factory(sink=sink)
    make_link(rig, settings, links)
    before = {i["inputName"] for i in req.send("GetInputList", {}, raw=True)["inputs"]}

    code, out, err = cli(capsys, "obs", "setup", "--dry-run", "--stream-port", str(port), *obs_args(obs))
    assert code == 0, err
    assert "would 1 step" in out and "ffmpeg_source 'avatarcast'" in out and f":{port}/" in out
    assert {i["inputName"] for i in req.send("GetInputList", {}, raw=True)["inputs"]} == before

    code, out, err = cli(capsys, "obs", "setup", "--stream-port", str(port), "--status-text", *obs_args(obs))
    assert code == 0, err
    inputs = {i["inputName"]: i["inputKind"] for i in req.send("GetInputList", {}, raw=True)["inputs"]}
    assert inputs["avatarcast"] == "ffmpeg_source" and inputs["avatarcast status"] == "text_ft2_source_v2"
    st = req.send("GetInputSettings", {"inputName": "avatarcast"}, raw=True)["inputSettings"]
    assert st["input"] == sink.url and st["input_format"] == "mpegts" and st["is_local_file"] is False
    items = [i["sourceName"] for i in req.send("GetSceneItemList", {"sceneName": SCENES[0]}, raw=True)["sceneItems"]]
    assert "avatarcast" in items

    # setup is idempotent: a second run updates, it does not duplicate
    code, out, _ = cli(capsys, "obs", "setup", "--stream-port", str(port), *obs_args(obs))
    assert code == 0 and "update the avatar stream" in out
    items2 = [i["sourceName"] for i in req.send("GetSceneItemList", {"sceneName": SCENES[0]}, raw=True)["sceneItems"]]
    assert items2.count("avatarcast") == 1

    # OBS shows the engine's frames (JPEG + OBS's limited-range YUV: a tolerance), and a preset change
    for preset in ("Warm", "Cool", "Dark"):
        rig.engine.bus.send(cmd("switch_preset", name=preset))
        img = wait_colors(req, "avatarcast", block_colors(expected[preset]))
        assert np.abs(img.astype(int) - expected[preset].astype(int)).mean() < 6.0
    assert sink.server.viewers >= 1

    warm = tmp_path / "warm.yaml"
    warm.write_text(PRESETS["Warm"])
    code, out, err = cli(capsys, "obs", "status", "--stream-port", str(port), "--preset", str(warm), *obs_args(obs))
    assert code == 0, err
    assert "* Just Chatting  preset 'Warm'" in out and "Gaming  (no preset: keep)" in out
    assert "obs-websocket 5.1.0" in out and "avatarcast source: 'avatarcast' (ffmpeg_source)" in out
    assert "serving" in out and PASSWORD not in out
    for name in ("avatarcast", "avatarcast status"):
        req.send("RemoveInput", {"inputName": name})


def test_status_text_source_shows_avatar_and_fps(obs, req, rig_factory, settings, links):
    from obs_plugin.scene_setup import STATUS_SOURCE

    req.send("CreateInput", {"sceneName": SCENES[0], "inputName": STATUS_SOURCE, "inputKind": "text_ft2_source_v2",
                             "inputSettings": {"text": "-"}, "sceneItemEnabled": True})
    try:
        settings.status_text = True
        rig = rig_factory()
        make_link(rig, settings, links, status_every=0.2)
        text = wait_for(lambda: (t := req.send("GetInputSettings", {"inputName": STATUS_SOURCE}, raw=True)
                                 ["inputSettings"].get("text", "")) and "Warm" in t and "fps" in t and t, 10,
                        "the status text")
        assert text.startswith("Warm") and text.endswith("fps")
        rig.engine.bus.send(cmd("next_preset"))
        wait_for(lambda: "Cool" in req.send("GetInputSettings", {"inputName": STATUS_SOURCE}, raw=True)
                 ["inputSettings"].get("text", ""), 10, "the status text to follow the preset")
    finally:
        req.send("RemoveInput", {"inputName": STATUS_SOURCE})


def test_virtual_camera_path_through_a_stand_in_backend(obs, req, rig_factory, expected, capsys, monkeypatch):
    """pyvirtualcam's real Camera.send() path with a STAND-IN backend (no v4l2 device can exist here) that
    serves the frames as a local stream; a real OBS reads it. `obs setup --output vcam` makes the real
    v4l2_input users get (it shows nothing here: there is no device)."""
    import pyvirtualcam

    monkeypatch.setenv("AVATARCAST_OBS_PASSWORD", PASSWORD)
    pyvirtualcam.register_backend("avatarcast-standin-network", StandInVirtualCamera)
    sink = VCamSink(backend="avatarcast-standin-network")
    rig = rig_factory(sink=sink)
    assert sink.cam.backend == "avatarcast-standin-network"
    url = sink.cam.device
    assert url.startswith("http://127.0.0.1:")

    code, out, err = cli(capsys, "obs", "setup", "--output", "vcam", "--vcam-device", "/dev/video42", *obs_args(obs))
    assert code == 0, err
    inputs = {i["inputName"]: i["inputKind"] for i in req.send("GetInputList", {}, raw=True)["inputs"]}
    assert inputs["avatarcast camera"] == "v4l2_input"
    assert req.send("GetInputSettings", {"inputName": "avatarcast camera"}, raw=True)["inputSettings"][
        "device_id"] == "/dev/video42"

    from obs_plugin.scene_setup import stream_input_settings

    req.send("CreateInput", {"sceneName": SCENES[0], "inputName": "stand-in vcam reader", "inputKind": "ffmpeg_source",
                             "inputSettings": stream_input_settings(url), "sceneItemEnabled": True})
    try:
        wait_colors(req, "stand-in vcam reader", block_colors(expected["Warm"]))
        rig.engine.bus.send(cmd("switch_preset", name="Dark"))
        wait_colors(req, "stand-in vcam reader", block_colors(expected["Dark"]))
        assert sink.cam.frames_sent > 0  # the frames went through pyvirtualcam's Camera.send()
    finally:
        for name in ("stand-in vcam reader", "avatarcast camera"):
            req.send("RemoveInput", {"inputName": name})


# ---- OBS crashing mid-stream ------------------------------------------------------------------------

def test_obs_killed_and_restarted_mid_stream(obs, req, rig_factory, settings, links, expected):
    from obs_plugin.scene_setup import stream_input_settings
    from obs_plugin.stream import StreamSink

    sink = StreamSink("127.0.0.1", free_port())
    rig = rig_factory(sink=sink)
    link = make_link(rig, settings, links)
    req.send("CreateInput", {"sceneName": SCENES[0], "inputName": "avatarcast", "inputKind": "ffmpeg_source",
                             "inputSettings": stream_input_settings(sink.url), "sceneItemEnabled": True})
    wait_colors(req, "avatarcast", block_colors(expected["Warm"]))

    n0 = rig.runner.stats.frames_output
    obs.kill()
    wait_for(lambda: not link.connected.is_set(), 5, "the link to notice OBS died")
    time.sleep(1.0)  # OBS is down: frames keep going out
    n1 = rig.runner.stats.frames_output
    assert n1 - n0 >= 15, (n0, n1)
    assert rig.runner.error is None and rig.thread.is_alive()

    obs.start_obs()
    wait_for(link.connected.is_set, 10, "the link to reconnect")
    assert link.stats.connects == 2 and link.stats.disconnects == 1
    assert rig.runner.stats.frames_output > n1

    # the binding works again after the restart
    r2 = obs.client()
    try:
        t0 = time.perf_counter()
        r2.send("SetCurrentProgramScene", {"sceneName": "Gaming"})
        rig.wait_preset("Cool", after=t0)
        # the stream is still served: a fresh Media Source in the restarted OBS shows the live frames
        name = "avatarcast after restart"
        r2.send("CreateInput", {"sceneName": "Gaming", "inputName": name, "inputKind": "ffmpeg_source",
                                "inputSettings": stream_input_settings(sink.url), "sceneItemEnabled": True})
        wait_colors(r2, name, block_colors(expected["Cool"]))
        r2.send("RemoveInput", {"inputName": name})
        if "avatarcast" in {i["inputName"] for i in r2.send("GetInputList", {}, raw=True)["inputs"]}:
            r2.send("RemoveInput", {"inputName": "avatarcast"})
    finally:
        r2.disconnect()


# ---- bad input ------------------------------------------------------------------------------------------

def test_wrong_password_is_one_clear_error(obs, req, capsys, caplog):
    code, out, err = cli(capsys, "obs", "status", "--obs-password", "not-the-password", *obs_args(obs))
    assert code == 2
    assert "refused the password" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert "not-the-password" not in err + out + caplog.text


def test_wrong_password_at_run_start_is_an_error_not_a_retry_loop(obs, req, rig_factory, settings):
    from obs_plugin.cli import start_link
    from obs_plugin.client import ObsAuthError

    rig = rig_factory()
    settings.password = "wrong"
    t0 = time.perf_counter()
    with pytest.raises(ObsAuthError, match="refused the password"):
        start_link(rig.engine, settings)
    assert time.perf_counter() - t0 < 5


def test_password_is_never_logged(obs, req, rig_factory, settings, links, caplog, capsys):
    rig = rig_factory()
    with caplog.at_level(logging.DEBUG):
        link = make_link(rig, settings, links)
        req.send("SetCurrentProgramScene", {"sceneName": "Gaming"})
        rig.wait_preset("Cool")
        assert PASSWORD not in repr(settings) and PASSWORD not in repr(link.settings)
    out = capsys.readouterr()
    assert PASSWORD not in caplog.text + out.out + out.err


def test_obs_send_cli_round_trip(obs, req, rig_factory, settings, links, capsys, monkeypatch):
    monkeypatch.setenv("AVATARCAST_OBS_PASSWORD", PASSWORD)
    rig = rig_factory()
    make_link(rig, settings, links)
    code, out, err = cli(capsys, "obs", "send", "switch_preset", "name=Dark", *obs_args(obs))
    assert code == 0, err
    assert json.loads(out.strip().splitlines()[-1])["avatarcast_state"]["preset"] == "Dark"
    code, out, err = cli(capsys, "obs", "send", "switch_preset", "index=two", *obs_args(obs))
    assert code == 2 and "index must be int" in err and "Traceback" not in err


def test_wrong_password_after_a_restart_ends_the_link_without_retrying(obs, req, rig_factory, settings, links, caplog):
    """The link meets a refusing OBS in the background (e.g. the password was changed in OBS): one error,
    no retry loop, and the output keeps going."""
    from obs_plugin.link import ObsLink

    rig = rig_factory()
    settings.password = "changed-in-obs"
    link = links(ObsLink(settings, rig.engine.bus, lambda: rig.engine.presets, rig.engine.state))
    with caplog.at_level(logging.INFO, logger="avatarcast.obs"):
        link.start()
        link._thread.join(timeout=10)
    assert not link._thread.is_alive() and link.error is not None
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and "refused the password" in errors[0].getMessage()
    assert "Not retrying" in errors[0].getMessage() and "changed-in-obs" not in caplog.text
    n = rig.runner.stats.frames_output
    time.sleep(0.3)
    assert rig.runner.stats.frames_output > n
