"""The command bus and the engine's command handling (no X server needed), hotkey parsing, the hotkey
config file and conflicts."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from engine import hotkeys as hk
from engine.cli import main
from engine.control import CommandBus, make_command, parse_command
from engine.errors import CommandError, UserError
from engine.preset import loads_preset
from engine.runtime import Engine
from nodes.color import color_adjust

SIZE = (64, 48)  # (w, h)
HUES = (0.0, 120.0, -120.0)


def preset_text(i: int, hue: float, extra: str = "") -> str:
    return (f"name: p{i}\n{extra}pipeline:\n  - node: color_adjust\n    id: color\n"
            f"    hue_shift: {hue}\n    saturation: 0.5\n")


def make_presets(n: int = 3):
    return [loads_preset(preset_text(i, HUES[i % 3] + 10 * (i // 3))) for i in range(n)]


def frame_of(seed: int = 0) -> np.ndarray:
    f = np.random.default_rng(seed).integers(0, 256, (SIZE[1], SIZE[0], 3), dtype=np.uint8)
    f.flags.writeable = False
    return f


class Events:
    def __init__(self, bus: CommandBus):
        self.items: list[dict] = []
        bus.subscribe(self.items.append)

    def named(self, name: str) -> list[dict]:
        return [e for e in self.items if e["event"] == name]


@pytest.fixture
def engine():
    eng = Engine(make_presets(3), source_size=SIZE, live=True, prepare="background")
    eng.start()
    assert eng.wait_prepared(30)
    yield eng
    eng.close()


def step(eng: Engine, frame: np.ndarray | None = None) -> np.ndarray:
    out = np.zeros((SIZE[1], SIZE[0], 3), np.uint8)
    eng.process(frame_of() if frame is None else frame, out)
    return out


# ---- parse_command --------------------------------------------------------------------------------

@pytest.mark.parametrize("payload, words", [
    ("next_preset", "must be an object"),
    ({"command": "explode"}, "unknown command"),
    ({"command": "switch_preset"}, "exactly one of name or index"),
    ({"command": "switch_preset", "name": "a", "index": 1}, "exactly one of name or index"),
    ({"command": "switch_preset", "index": True}, "index must be int"),
    ({"command": "passthrough", "on": "yes"}, "on must be bool"),
    ({"command": "set_param", "node": "color", "param": "gamma"}, "missing argument 'value'"),
    ({"command": "nudge_param", "node": "c", "param": "g", "direction": 2}, "direction must be 1 or -1"),
    ({"command": "hud", "colour": "red"}, "unknown argument"),
])
def test_parse_command_rejects_with_reason(payload, words):
    with pytest.raises(CommandError, match=words):
        parse_command(payload)


def test_commands_are_immutable_and_keep_their_source():
    cmd = make_command("set_param", source="obs", node="color", param="gamma", value=0.5)
    assert cmd.source == "obs" and cmd.get("value") == 0.5
    assert cmd.as_dict() == {"command": "set_param", "node": "color", "param": "gamma", "value": 0.5}
    with pytest.raises(AttributeError):
        cmd.name = "hud"  # type: ignore[misc]


# ---- the engine applies commands between frames ----------------------------------------------------

def test_switch_by_index_name_next_prev(engine):
    bus = engine.bus
    for cmd, want in [(make_command("switch_preset", index=3), 2), (make_command("next_preset"), 0),
                      (make_command("prev_preset"), 2), (make_command("switch_preset", name="p1"), 1)]:
        bus.send(cmd)
        step(engine)
        assert engine.active == want, cmd
    f = frame_of(1)
    np.testing.assert_array_equal(step(engine, f), color_adjust(f, hue_shift=HUES[1], saturation=0.5))


def test_out_of_range_param_is_rejected_logged_and_the_stream_continues(engine, caplog):
    ev = Events(engine.bus)
    before = step(engine).copy()
    engine.bus.send(make_command("set_param", source="hotkey", node="color", param="saturation", value=99))
    out = step(engine)
    np.testing.assert_array_equal(out, before)  # unchanged picture, still flowing
    (rej,) = ev.named("rejected")
    assert rej["command"]["value"] == 99 and rej["source"] == "hotkey"
    assert "out of range -1..5" in rej["reason"]
    assert "rejected set_param" in caplog.text and "out of range" in caplog.text
    assert engine.graph.run_by_id["color"].node.p["saturation"] == 0.5
    for bad in ({"node": "nope", "param": "gamma", "value": 0.1}, {"node": "color", "param": "nope", "value": 1},
                {"node": "color", "param": "gamma", "value": "high"}):
        engine.bus.send(make_command("set_param", **bad))
    step(engine)
    reasons = [e["reason"] for e in ev.named("rejected")[1:]]
    assert "has no node 'nope'" in reasons[0] and "has no param 'nope'" in reasons[1]
    assert "expected a number" in reasons[2]


def test_nudge_steps_and_clamps_to_the_param_range(engine):
    node = engine.graph.run_by_id["color"].node
    for _ in range(60):
        engine.bus.send(make_command("nudge_param", node="color", param="saturation", direction=1))
    step(engine)
    assert node.p["saturation"] == 5.0  # max, never beyond
    engine.bus.send(make_command("nudge_param", node="color", param="saturation", direction=-1))
    step(engine)
    assert node.p["saturation"] == pytest.approx(4.9)


def test_passthrough_freeze_mirror_bypass_hud(engine):
    f = frame_of(2)
    engine.bus.send(make_command("passthrough", on=True))
    np.testing.assert_array_equal(step(engine, f), f)
    engine.bus.send(make_command("mirror"))
    np.testing.assert_array_equal(step(engine, f), f[:, ::-1])
    engine.bus.send(make_command("mirror"))
    engine.bus.send(make_command("passthrough"))  # toggles off
    graded = step(engine, f).copy()
    engine.bus.send(make_command("freeze", on=True))
    np.testing.assert_array_equal(step(engine, frame_of(3)), graded)
    engine.bus.send(make_command("freeze", on=False))
    engine.bus.send(make_command("bypass", node="color"))
    np.testing.assert_array_equal(step(engine, f), f)
    engine.bus.send(make_command("bypass", node="color", on=False))
    engine.bus.send(make_command("hud", on=True))
    hud = step(engine, f)
    panel = hud[:10, :20].astype(int)
    assert (panel <= graded[:10, :20].astype(int) // 2 + 255 * (panel > 200)).all()  # darkened, white text
    assert not np.array_equal(hud, graded)
    engine.bus.send(make_command("hud", on=False))
    np.testing.assert_array_equal(step(engine, f), graded)


def test_freeze_with_hud_holds_the_picture_not_the_hud(engine):
    f = frame_of(4)
    clean = step(engine, f).copy()
    engine.bus.send(make_command("freeze", on=True))
    engine.bus.send(make_command("hud", on=True))
    step(engine, frame_of(5))
    engine.bus.send(make_command("hud", on=False))
    np.testing.assert_array_equal(step(engine, frame_of(6)), clean)


def test_recalibrate_without_a_node_that_can_is_rejected_with_reason(engine):
    ev = Events(engine.bus)
    engine.bus.send(make_command("recalibrate"))
    step(engine)
    assert "no node that recalibrates" in ev.named("rejected")[0]["reason"]


def test_commands_from_many_threads_are_all_applied_in_order(engine):
    """Four threads send 200 set_param commands each (increasing values, one param per thread) while
    frames are processed: every command is applied once, each thread's in the order it sent them."""
    applied: list[tuple[str, float]] = []
    engine.bus.subscribe(lambda e: e["event"] == "set_param" and applied.append(
        (e["command"]["param"], e["command"]["value"])))
    params = {"gamma": 0.01, "contrast": 0.01, "brightness": 0.004, "saturation": 0.02}
    n = 200
    start = threading.Barrier(len(params) + 1)
    done = threading.Event()

    def sender(param: str, unit: float) -> None:
        start.wait()
        for k in range(n):
            engine.bus.send(make_command("set_param", node="color", param=param, value=round(-0.5 + k * unit / 2, 4)))
            if k % 20 == 0:
                time.sleep(0.001)

    threads = [threading.Thread(target=sender, args=kv) for kv in params.items()]
    for t in threads:
        t.start()
    start.wait()
    frames = 0
    while not done.is_set():
        step(engine)
        frames += 1
        if not any(t.is_alive() for t in threads):
            done.set()
    step(engine)
    assert len(applied) == n * len(params)
    for param, unit in params.items():
        got = [v for p, v in applied if p == param]
        assert got == [round(-0.5 + k * unit / 2, 4) for k in range(n)]
    assert frames > 1
    for param in params:  # the last value sent is the live one
        assert engine.graph.run_by_id["color"].node.p[param] == applied[-1 - [p for p, _ in applied][::-1].index(param)][1]


def test_switching_to_a_preset_still_being_prepared_happens_when_it_is_ready(tmp_path):
    eng = Engine(make_presets(3), source_size=SIZE, live=True, prepare="background")
    eng.start()
    eng.bus.send(make_command("switch_preset", index=3))
    t_end = time.perf_counter() + 30
    while eng.active != 2 and time.perf_counter() < t_end:
        step(eng)
        time.sleep(0.005)
    assert eng.active == 2
    eng.close()


def test_a_preset_that_fails_to_prepare_is_refused_and_the_stream_goes_on(tmp_path):
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"\xff\xd8\xff" + b"not really a jpeg" * 10)
    p_bad = loads_preset("name: broken\navatar:\n  images: [bad.jpg]\npipeline: []\n", base_dir=tmp_path)
    eng = Engine([make_presets(1)[0], p_bad], source_size=SIZE, live=True, prepare="background")
    eng.start()
    ev = Events(eng.bus)
    eng.bus.send(make_command("switch_preset", name="broken"))
    t_end = time.perf_counter() + 30
    while not ev.named("rejected") and time.perf_counter() < t_end:
        step(eng)
        time.sleep(0.005)
    assert "cannot decode the avatar image" in ev.named("rejected")[0]["reason"]
    assert eng.active == 0
    step(eng)
    eng.close()


def test_prepared_presets_get_decoded_avatar_images(tmp_path):
    import cv2

    img = np.full((40, 30, 3), (10, 200, 30), np.uint8)
    cv2.imwrite(str(tmp_path / "a.png"), img)
    p = loads_preset("name: av\navatar:\n  images: [a.png]\npipeline:\n  - node: color_adjust\n", base_dir=tmp_path)
    eng = Engine([make_presets(1)[0], p], source_size=SIZE, live=True, prepare="background")
    eng.start()
    assert eng.wait_prepared(30)
    (decoded,) = eng.graphs[1].ctx.shared["avatar_images"]
    np.testing.assert_array_equal(decoded, img)
    assert set(eng.prepare_ms) == {"p0", "av"}
    eng.close()


def test_reload_reads_the_files_again_in_the_background_and_a_broken_file_keeps_the_old_set(tmp_path):
    f = tmp_path / "a.yaml"
    f.write_text(preset_text(0, 0.0))
    from engine.preset import load_preset

    eng = Engine([load_preset(f)], source_size=SIZE, live=True, prepare="background",
                 reload=lambda: [load_preset(f)])
    eng.start()
    ev = Events(eng.bus)
    frame = frame_of(7)
    f.write_text(preset_text(0, 90.0))
    eng.bus.send(make_command("reload"))
    t_end = time.perf_counter() + 30
    while not ev.named("reloaded") and time.perf_counter() < t_end:
        out = step(eng, frame)
        time.sleep(0.005)
    out = step(eng, frame)
    np.testing.assert_array_equal(out, color_adjust(frame, hue_shift=90.0, saturation=0.5))
    f.write_text("name: x\npipeline:\n  - node: color_adjust\n    hue_shift: 999\n")
    eng.bus.send(make_command("reload"))
    t_end = time.perf_counter() + 30
    while not ev.named("rejected") and time.perf_counter() < t_end:
        step(eng, frame)
        time.sleep(0.005)
    reason = ev.named("rejected")[0]["reason"]
    assert "a.yaml:4" in reason and "out of range" in reason
    np.testing.assert_array_equal(step(eng, frame), out)  # the old set runs on
    eng.close()


# ---- hotkeys: parsing, config, conflicts -----------------------------------------------------------

@pytest.mark.parametrize("text, want", [("ctrl+alt+1", "ctrl+alt+1"), ("Alt+Ctrl+1", "ctrl+alt+1"),
                                        ("<ctrl>+<alt>+F5", "ctrl+alt+f5"), ("control+option+PgUp", "ctrl+alt+page_up"),
                                        ("shift+f9", "shift+f9"), ("cmd+shift+h", "shift+cmd+h")])
def test_parse_hotkey(text, want):
    assert hk.parse_hotkey(text) == want


@pytest.mark.parametrize("text, words", [("ctrl+alt", "exactly one key"), ("ctrl+alt+1+2", "exactly one key"),
                                         ("ctrl++1", "empty part"), ("shift+a", "fires while you type"),
                                         ("ctrl+alt+bogus", "unknown key 'bogus'"), ("ctrl+ctrl+1", "given twice"),
                                         ("ctrl+alt+shift+1", "shift turns digits"),
                                         (5, r"text like ctrl\+alt\+1")])
def test_parse_hotkey_rejects(text, words):
    with pytest.raises(ValueError, match=words):
        hk.parse_hotkey(text)


def test_to_pynput():
    assert hk.to_pynput("ctrl+alt+shift+r") == "<ctrl>+<alt>+<shift>+r"
    assert hk.to_pynput("cmd+f5") == "<cmd>+<f5>"


def test_defaults_cover_every_command_a_key_makes_sense_for_and_do_not_collide():
    bindings = hk.resolve(make_presets(3))
    keys = [b.keys for b in bindings]
    assert len(keys) == len(set(keys))
    names = {b.command["command"] for b in bindings}
    assert names == {"switch_preset", "passthrough", "next_preset", "prev_preset", "recalibrate", "mirror", "hud",
                     "freeze", "reload"}
    assert all(k.startswith("ctrl+alt+") for k in keys)
    desktop = {"ctrl+alt+t", "ctrl+alt+l", "ctrl+alt+d", "ctrl+alt+delete", "ctrl+alt+backspace", "ctrl+alt+left",
               "ctrl+alt+right", "ctrl+alt+up", "ctrl+alt+down", *(f"ctrl+alt+f{i}" for i in range(1, 13))}
    assert not desktop & set(keys)
    table = hk.format_table(bindings, make_presets(3))
    assert "ctrl+alt+2        switch to preset 2: p1" in table and "preset 4 (not loaded)" in table


def write_config(tmp_path, text: str):
    (tmp_path / "hotkeys.yaml").write_text(text)
    return tmp_path / "hotkeys.yaml"


def test_config_overrides_removes_and_adds(tmp_path, monkeypatch):
    monkeypatch.setenv("AVATARCAST_HOME", str(tmp_path))
    write_config(tmp_path, "bindings:\n  ctrl+alt+0: null\n  ctrl+shift+f9: passthrough\n"
                           "  alt+ctrl+h: {command: nudge_param, node: color, param: gamma, direction: -1}\n")
    cfg = hk.load_config()
    by_keys = {b.keys: b for b in hk.resolve(make_presets(1), cfg)}
    assert "ctrl+alt+0" not in by_keys
    assert by_keys["ctrl+shift+f9"].command == {"command": "passthrough"}
    assert by_keys["ctrl+shift+f9"].origin == f"{tmp_path / 'hotkeys.yaml'}:3"
    assert by_keys["ctrl+alt+h"].describe() == "color.gamma down"
    cmd = by_keys["ctrl+alt+h"].make_command()
    assert (cmd.name, cmd.source, cmd.get("direction")) == ("nudge_param", "hotkey", -1)


def test_config_errors_name_file_line_field_value(tmp_path):
    path = write_config(tmp_path, "enabled: yes please\nbindings:\n  ctrl+alt+1: explode\n"
                                  "  ctrl+alt+2: {command: switch_preset, index: one}\n  ctrl+alt+nope: hud\n"
                                  "colour: red\n")
    with pytest.raises(UserError) as exc:
        hk.load_config(path)
    text = exc.value.render()
    assert f"{path}:1: enabled: `enabled` must be true or false, got 'yes please'" in text
    assert f"{path}:3: bindings.ctrl+alt+1: unknown command 'explode'" in text
    assert f"{path}:4: bindings.ctrl+alt+2: command switch_preset: index must be int, got 'one'" in text
    assert f"{path}:5: bindings.ctrl+alt+nope:" in text and "unknown key 'nope'" in text
    assert f"{path}:6: colour: unknown key 'colour'" in text
    write_config(tmp_path, "bindings:\n  ctrl+alt+1: hud\n  ctrl+alt+1: mirror\n")
    with pytest.raises(UserError, match=r"hotkeys.yaml:3: duplicate key 'ctrl\+alt\+1' \(first on line 2\)"):
        hk.load_config(path)
    with pytest.raises(UserError, match="hotkey config file not found"):
        hk.load_config(tmp_path / "missing.yaml")


def test_conflicting_bindings_are_an_error_listing_both(tmp_path):
    path = write_config(tmp_path, "bindings:\n  ctrl+alt+x: hud\n  alt+ctrl+x: mirror\n  ctrl+shift+f2: freeze\n")
    pdir = tmp_path / "p"
    pdir.mkdir()
    (pdir / "a.yaml").write_text(preset_text(0, 0, extra="hotkey: ctrl+shift+f2\n"))
    (pdir / "b.yaml").write_text(preset_text(1, 0, extra="hotkey: ctrl+alt+1\n"))
    from engine.preset import load_preset

    presets = [load_preset(pdir / "a.yaml"), load_preset(pdir / "b.yaml")]
    with pytest.raises(UserError) as exc:
        hk.resolve(presets, hk.load_config(path))
    text = exc.value.render()
    assert f"ctrl+alt+x is bound twice: 'show/hide the HUD' ({path}:2) and 'mirror on/off' ({path}:3)" in text
    assert (f"ctrl+shift+f2 is bound twice: 'freeze frame on/off' ({path}:4) and 'switch to preset 1: p0' "
            f"(preset 'p0' ({pdir / 'a.yaml'}:2))") in text
    # a preset's own hotkey replaces a default on the same keys (not a conflict)
    ok = {b.keys: b for b in hk.resolve(presets)}
    assert ok["ctrl+alt+1"].command == {"command": "switch_preset", "index": 2}
    assert ok["ctrl+shift+f2"].command == {"command": "switch_preset", "index": 1}


def test_bad_preset_hotkey_names_file_line_field(tmp_path):
    (tmp_path / "a.yaml").write_text(preset_text(0, 0, extra="hotkey: ctrl+alt+banana\n"))
    from engine.preset import load_preset

    with pytest.raises(UserError, match=r"a.yaml:2: hotkey: hotkey 'ctrl\+alt\+banana': unknown key 'banana'"):
        hk.resolve([load_preset(tmp_path / "a.yaml")])


def test_no_display_means_no_hotkeys_but_a_clear_reason(monkeypatch, caplog):
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    monkeypatch.setattr(hk.sys, "platform", "linux")
    ok, why = hk.availability()
    assert not ok and "no display" in why
    listener = hk.HotkeyListener(hk.resolve([]), CommandBus())
    assert listener.start() is False
    assert "global hotkeys are off: no display" in caplog.text
    listener.stop()  # harmless when never started
    monkeypatch.setenv("WAYLAND_DISPLAY", "wayland-0")
    assert "Wayland" in hk.availability()[1]


def test_cli_hotkeys_lists_bindings_and_reports_config_errors(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("AVATARCAST_HOME", str(tmp_path))
    monkeypatch.delenv("DISPLAY", raising=False)
    assert main(["hotkeys"]) == 0
    out = capsys.readouterr().out
    assert "ctrl+alt+0        passthrough (raw camera) on/off" in out and "not present: defaults" in out
    write_config(tmp_path, "bindings:\n  ctrl+alt+f: {command: freeze, on: maybe}\n")
    assert main(["hotkeys"]) == 2
    err = capsys.readouterr().err
    assert "hotkeys.yaml:2: bindings.ctrl+alt+f: command freeze: on must be bool, got 'maybe'" in err
    write_config(tmp_path, "enabled: false\nbindings:\n  ctrl+alt+f: null\n")
    assert main(["hotkeys", "--json"]) == 0
    import json

    data = json.loads(capsys.readouterr().out)
    assert data["enabled"] is False and "ctrl+alt+f" not in {b["keys"] for b in data["bindings"]}


def test_triple_buffer_wait_fresh_wakes_for_a_matching_frame_only():
    from engine.runtime import FrameMeta, TripleBuffer

    tb = TripleBuffer((2, 2, 3))
    assert tb.wait_fresh(lambda m: True, 0.01) is False  # nothing published
    tb.publish(FrameMeta(0, 0.0, look=3))
    assert tb.wait_fresh(lambda m: m.look != 3, 0.01) is False
    threading.Timer(0.05, lambda: tb.publish(FrameMeta(1, 0.0, look=4))).start()
    t0 = time.perf_counter()
    assert tb.wait_fresh(lambda m: m.look != 3, 5.0) is True
    assert time.perf_counter() - t0 < 4.0  # woken by the publish, not the timeout
    assert tb.take(0)[1].index == 1


def test_every_applied_command_and_switch_changes_the_look(engine):
    looks = [engine.look]
    for cmd in (make_command("hud"), make_command("switch_preset", index=2),
                make_command("set_param", node="color", param="gamma", value=0.3)):
        engine.bus.send(cmd)
        step(engine)
        looks.append(engine.look)
    assert looks == sorted(set(looks))  # strictly increasing
    engine.bus.send(make_command("set_param", node="color", param="gamma", value=99))  # rejected
    step(engine)
    assert engine.look == looks[-1]


def test_node_bindings_that_no_preset_accepts_are_warned_about_at_start(tmp_path):
    path = write_config(tmp_path, "bindings:\n  ctrl+alt+x: {command: set_param, node: color, param: saturation, value: 99}\n"
                                  "  ctrl+alt+y: {command: bypass, node: faceswap}\n"
                                  "  ctrl+alt+z: {command: nudge_param, node: color, param: sharpness, direction: 1}\n"
                                  "  ctrl+alt+w: {command: set_param, node: color, param: saturation, value: 2}\n")
    presets = make_presets(2)
    warnings = hk.node_binding_warnings(hk.resolve(presets, hk.load_config(path)), presets)
    assert warnings[0].startswith(f"ctrl+alt+x ({path}:2): color.saturation = 99 will be rejected: 99")
    assert warnings[0].endswith("is out of range -1..5")
    assert warnings[1:] == [
        f"ctrl+alt+y ({path}:3): no preset in this set has a node 'faceswap'",
        f"ctrl+alt+z ({path}:4): node 'color' has no param 'sharpness'",
    ]


def test_the_example_config_printed_by_avatarcast_hotkeys_loads(tmp_path):
    path = write_config(tmp_path, hk.CONFIG_EXAMPLE.format(path=tmp_path / "hotkeys.yaml"))
    cfg = hk.load_config(path)
    keys = {b.keys for b in hk.resolve([], cfg)}
    assert "ctrl+alt+0" not in keys and {"ctrl+shift+f9", "ctrl+alt+up", "ctrl+alt+down"} <= keys
