"""The real `avatarcast` command: every user mistake is one clear line on stderr, exit code 2, no
traceback, nothing half-written; renders keep frame count, size and audio."""

import os
import subprocess
import sys

import cv2
import numpy as np
import pytest

from engine.sinks import ffmpeg_exe, has_audio

ENV = {**os.environ, "PYTHONUNBUFFERED": "1"}
ENV.pop("DISPLAY", None)
ENV.pop("WAYLAND_DISPLAY", None)


def cli(*args, cwd=None, timeout=300):
    return subprocess.run([sys.executable, "-m", "engine.cli", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, env=ENV, timeout=timeout)


def one_clear_error(res, *needles):
    assert res.returncode == 2, res.stderr
    assert "Traceback" not in res.stderr
    lines = [ln for ln in res.stderr.strip().splitlines() if ln.strip()]
    assert len(lines) == 1, res.stderr
    for n in needles:
        assert n in lines[0], lines[0]
    return lines[0]


def make_video(path, frames=20, size=(64, 48), audio=False):
    cmd = [ffmpeg_exe(), "-hide_banner", "-loglevel", "error", "-y", "-f", "lavfi", "-i",
           f"testsrc=size={size[0]}x{size[1]}:rate=25:duration={frames / 25}"]
    if audio:
        cmd += ["-f", "lavfi", "-i", f"sine=frequency=440:duration={frames / 25}", "-c:a", "aac", "-shortest"]
    subprocess.run(cmd + ["-pix_fmt", "yuv420p", "-movflags", "+faststart", str(path)], check=True)
    return path


@pytest.fixture(scope="module")
def preset(tmp_path_factory):
    p = tmp_path_factory.mktemp("presets") / "grade.yaml"
    p.write_text("name: Grade\npipeline:\n  - node: color_adjust\n    saturation: 0.5\n")
    return p


def test_missing_input(tmp_path, preset):
    one_clear_error(cli("render", tmp_path / "nope.mp4", "-o", tmp_path / "o.mp4", "--preset", preset),
                    "nope.mp4", "file not found")


def test_corrupt_and_truncated_video(tmp_path, preset):
    (tmp_path / "garbage.mp4").write_bytes(os.urandom(5000))
    one_clear_error(cli("render", tmp_path / "garbage.mp4", "-o", tmp_path / "o.mp4", "--preset", preset),
                    "garbage.mp4", "cannot open as a video")
    good = make_video(tmp_path / "good.mp4", frames=50, size=(320, 240))
    data = good.read_bytes()
    (tmp_path / "cut.mp4").write_bytes(data[: len(data) // 2])  # moov first (faststart): decodes partly
    res = cli("render", tmp_path / "cut.mp4", "-o", tmp_path / "o.mp4", "--preset", preset, "--no-progress")
    one_clear_error(res, "cut.mp4")
    assert not list(tmp_path.glob("o.mp4")) and not list(tmp_path.glob(".o.*"))  # nothing half-written


def test_image_that_is_not_an_image(tmp_path, preset):
    (tmp_path / "photo.png").write_text("not really a png")
    one_clear_error(cli("render", tmp_path / "photo.png", "-o", tmp_path / "o.png", "--preset", preset),
                    "photo.png", "not an image")


def test_camera_that_does_not_exist(tmp_path, preset):
    one_clear_error(cli("run", "--camera", "9", "--preset", preset, "--output", "pipe", "--max-frames", "1"),
                    "camera 9 not found")


def test_bad_preset_lists_every_problem(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("pipeline:\n  - node: color_adjust\n    gamma: 9\n  - node: wobble\n")
    res = cli("preset", "validate", bad)
    assert res.returncode == 2 and "Traceback" not in res.stderr
    lines = res.stderr.strip().splitlines()
    assert any("missing `name`" in ln for ln in lines)
    assert any(f"{bad}:3: pipeline[0].gamma: 9 is out of range -3..3" in ln for ln in lines)
    assert any(f"{bad}:4: pipeline[1].node: unknown node 'wobble'" in ln for ln in lines)


def test_output_folder_missing_and_bad_size(tmp_path, preset):
    make_video(tmp_path / "in.mp4")
    one_clear_error(cli("render", tmp_path / "in.mp4", "-o", tmp_path / "no" / "o.mp4", "--preset", preset),
                    "output folder does not exist")
    res = cli("render", tmp_path / "in.mp4", "-o", tmp_path / "o.mp4", "--preset", preset, "--size", "640by480")
    assert res.returncode == 2 and "expected a size like 1280x720" in res.stderr and "Traceback" not in res.stderr


def test_output_folder_not_writable(tmp_path, preset):
    make_video(tmp_path / "in.mp4")
    if os.geteuid() == 0:  # root can write anywhere a file system allows; /proc refuses new files even to root
        target = "/proc/avatarcast-test.mp4"
    else:
        ro = tmp_path / "ro"
        ro.mkdir()
        ro.chmod(0o500)
        target = ro / "o.mp4"
    one_clear_error(cli("render", tmp_path / "in.mp4", "-o", target, "--preset", preset, "--no-progress"),
                    "avatarcast-test.mp4" if os.geteuid() == 0 else "not writable")


def test_window_on_headless_machine_is_a_clear_error(preset):
    one_clear_error(cli("run", "--source", "demo", "--preset", preset, "--output", "window", "--max-frames", "2"),
                    "no display")


def test_vcam_without_device_says_how_to_install(preset):
    line = one_clear_error(cli("run", "--source", "demo", "--preset", preset, "--output", "vcam", "--max-frames", "2"),
                           "no virtual camera available")
    assert "v4l2loopback" in line and "Windows" in line and "macOS" in line


def test_pipe_output_is_raw_frames(preset):
    res = subprocess.run([sys.executable, "-m", "engine.cli", "-q", "run", "--source", "demo", "--preset", str(preset),
                          "--output", "pipe", "--size", "64x48", "--fps", "60", "--max-frames", "10"],
                         capture_output=True, env=ENV, timeout=120)
    assert res.returncode == 0, res.stderr
    assert len(res.stdout) == 10 * 64 * 48 * 3


def test_render_copies_audio_and_keeps_frames(tmp_path, preset):
    src = make_video(tmp_path / "talk.mp4", frames=30, size=(96, 64), audio=True)
    res = cli("render", src, "-o", tmp_path / "out.mp4", "--preset", preset, "--no-progress")
    assert res.returncode == 0, res.stderr
    cap = cv2.VideoCapture(str(tmp_path / "out.mp4"))
    assert int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) == 30
    assert has_audio(tmp_path / "out.mp4")
    res = cli("render", src, "-o", tmp_path / "still.png", "--preset", preset, "--max-frames", "1", "--no-progress")
    assert res.returncode == 0 and cv2.imread(str(tmp_path / "still.png")).shape == (64, 96, 3)
    umask = os.umask(0)
    os.umask(umask)
    for f in ("out.mp4", "still.png"):  # finished files get the usual mode, not the private temp file's
        assert (tmp_path / f).stat().st_mode & 0o777 == 0o666 & ~umask


@pytest.mark.data
def test_render_real_clip_same_frame_count_and_size(tmp_path, preset, shared_data):
    clip = shared_data / "driving" / "webcam_glasses.mp4"
    res = cli("render", clip, "-o", tmp_path / "out.mp4", "--preset", preset, "--no-progress")
    assert res.returncode == 0, res.stderr
    a, b = cv2.VideoCapture(str(clip)), cv2.VideoCapture(str(tmp_path / "out.mp4"))
    n_out = 0
    while True:
        ok, frame = b.read()
        if not ok:
            break
        n_out += 1
        shape = frame.shape
    assert n_out == int(a.get(cv2.CAP_PROP_FRAME_COUNT)) == 183
    assert shape == (512, 512, 3)
    assert has_audio(tmp_path / "out.mp4")


def test_demo_writes_a_video(tmp_path):
    res = cli("demo", "-o", tmp_path / "demo.mp4", "--frames", "12", "--no-progress")
    assert res.returncode == 0, res.stderr
    assert "wrote" in res.stdout and (tmp_path / "demo.mp4").stat().st_size > 1000
    frames = []
    cap = cv2.VideoCapture(str(tmp_path / "demo.mp4"))
    while True:
        ok, f = cap.read()
        if not ok:
            break
        frames.append(f)
    assert len(frames) == 12 and np.abs(frames[0].astype(int) - frames[-1]).mean() > 1  # it moves


@pytest.mark.parametrize("cmd", [["run"], ["render"], ["demo"], ["nodes"], ["preset", "validate"], ["bench"]])
def test_help_is_complete(cmd):
    res = cli(*cmd, "--help")
    assert res.returncode == 0 and "usage: avatarcast" in res.stdout


def test_nodes_listing_comes_from_declarations():
    res = cli("nodes", "color_adjust")
    assert res.returncode == 0
    assert "param saturation: float -1..5 = 0.0" in res.stdout and "param hue_shift: float -180..180" in res.stdout
