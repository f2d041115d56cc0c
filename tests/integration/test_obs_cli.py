"""`avatarcast run` as a real process against a real OBS: the --obs options, RUN_HOOKS wiring, the stream
output read by an OBS Media Source made by `avatarcast obs setup`, and a wrong password at start."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest
from conftest import PASSWORD, PRESETS, SCENES
from test_obs import Listener, cli, obs_args, wait_for

from obs_plugin.testing import free_port, screenshot

pytestmark = [pytest.mark.obs, pytest.mark.timeout(120)]
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def avatarcast(*argv, env_extra=None):
    env = {**os.environ, "PYTHONPATH": REPO, "AVATARCAST_OBS_PASSWORD": PASSWORD, **(env_extra or {})}
    return subprocess.Popen([sys.executable, "-c", "import sys; from engine.cli import main; sys.exit(main())",
                             *argv], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, cwd=REPO)


def test_run_follows_obs_scenes_and_streams_into_obs(obs, req, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("AVATARCAST_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("AVATARCAST_OBS_PASSWORD", PASSWORD)
    files = []
    for name in ("Warm", "Cool"):
        f = tmp_path / f"{name.lower()}.yaml"
        f.write_text(PRESETS[name])
        files += ["--preset", str(f)]
    port = free_port()
    proc = avatarcast("run", "--source", "demo", "--size", "320x180", "--fps", "15", "--output", f"obs:{port}",
                      "--obs-port", str(obs.port), "--duration", "40", *files,
                      env_extra={"AVATARCAST_HOME": str(tmp_path / "home")})
    listener = Listener(obs)
    try:
        def answered():
            listener.send({"avatarcast": {"command": "state"}})
            try:
                return listener.answer("avatarcast_state", timeout=0.5, where=lambda s: s.get("event") == "state")
            except AssertionError:
                assert proc.poll() is None, proc.stderr.read()
                return None

        st = wait_for(answered, 30, "avatarcast run to connect to OBS", step=0.2)
        assert st["preset"] == "Warm" and st["presets"] == 2

        req.send("SetCurrentProgramScene", {"sceneName": "Gaming"})
        st = listener.answer("avatarcast_state", where=lambda s: s.get("event") == "preset")
        assert st["preset"] == "Cool"

        code, out, err = cli(capsys, "obs", "setup", "--stream-port", str(port), "--scene", "Gaming", *obs_args(obs))
        assert code == 0, err
        shot = wait_for(lambda: (s := screenshot(req, "avatarcast")) is not None and s.mean() > 20 and (s,), 20,
                        "the avatar to show in OBS")[0]
        assert shot.shape[:2] == (180, 320)
    finally:
        listener.close()
        proc.terminate()
        _, err = proc.communicate(timeout=20)
    assert "OBS: connected to OBS 29" in err
    assert PASSWORD not in err


def test_run_with_wrong_password_stops_at_start_with_one_clear_line(obs, req):
    proc = avatarcast("run", "--source", "demo", "--size", "64x36", "--output", f"obs:{free_port()}",
                      "--obs-port", str(obs.port), "--duration", "20", env_extra={"AVATARCAST_OBS_PASSWORD": "nope"})
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 2
    lines = [ln for ln in err.strip().splitlines() if "error" in ln]
    assert lines == [lines[0]] and "refused the password" in lines[0] and "Traceback" not in err
    assert "nope" not in err


def test_run_waits_for_obs_that_is_not_running_yet(obs, req, tmp_path):
    """OBS not up at start: the output runs at once, and the link connects when OBS appears."""
    port = free_port()
    # a second, not-yet-started OBS: the run starts first
    from obs_plugin.testing import HeadlessObs

    late = HeadlessObs(tmp_path / "late", password=PASSWORD, scenes=SCENES)
    late.write_config()
    late.start_xvfb()
    try:
        proc = avatarcast("run", "--source", "demo", "--size", "64x36", "--fps", "15", "--output", f"obs:{port}",
                          "--obs-port", str(late.port), "--duration", "30")
        time.sleep(2.0)
        assert proc.poll() is None
        late.start_obs()
        li = Listener(late)
        try:
            def answered():
                li.send({"avatarcast": {"command": "state"}})
                try:
                    return li.answer("avatarcast_state", timeout=0.5)
                except AssertionError:
                    return None

            wait_for(answered, 20, "the run to connect once OBS is up", step=0.1)
        finally:
            li.close()
            proc.terminate()
            _, err = proc.communicate(timeout=20)
        assert "not running at" in err or "connecting when it is up" in err
        assert "OBS: connected" in err
    finally:
        late.stop()
