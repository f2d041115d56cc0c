"""The quality evaluation: pipelines with a known answer (identity: r = 1, nothing lost; mirror: yaw
and roll correlations flip sign, self-reenactment fails), the measures on synthetic series, the CLI
and the extension point issue 4 uses."""

from __future__ import annotations

import json

import numpy as np
import pytest

from engine.cli import main
from engine.preset import loads_preset
from nodes import evaluate as ev
from nodes import face_metrics as fmx
from nodes import face_model

pytestmark = pytest.mark.data
FRAMES = 36


@pytest.fixture(scope="module")
def clips(request):
    data = request.getfixturevalue("shared_data")
    return [data / "driving" / "woman_expressions.mp4", data / "driving" / "webcam_glasses.mp4"]


def evaluate(preset, clips, avatars=(None,), suite="reenact", frames=FRAMES, self_reenact=True):
    with ev.Evaluator(preset, ev.SUITES[suite], max_frames=frames, progress=lambda s: None) as e:
        return e.run(list(clips), list(avatars), self_reenact=self_reenact)


def by_kind(result, kind):
    return [r for r in result["runs"] if r["kind"] == kind]


def test_identity_pipeline_transfers_everything(clips):
    res = evaluate(ev.pipeline_preset("[]"), clips)
    cross, self_ = by_kind(res, "cross"), by_kind(res, "self")
    assert len(cross) == 2 and len(self_) == 2
    for r in cross:
        f = r["figures"]
        assert f["frames"] == FRAMES and f["found_rate"] == 1.0
        assert f["motion_r"] > 0.999
        assert f["jitter_ratio"] == pytest.approx(1.0, abs=1e-6)
    for r in self_:
        assert r["figures"]["l1"] == 0.0 and r["figures"]["landmark_px"] == pytest.approx(0.0, abs=1e-6)
    assert all(s["pass"] for s in res["summary"])


def test_mirror_pipeline_flips_yaw_and_roll_and_fails_the_targets(clips):
    res = evaluate(ev.pipeline_preset("[{node: mirror}]"), clips[:1], frames=60)
    f = by_kind(res, "cross")[0]["figures"]
    assert f["r_yaw"] < -0.9 and f["r_roll"] < -0.7  # woman_expressions turns and tilts her head
    assert f["r_mouth_open"] > 0.9  # the mouth is the same in a mirror
    assert f["motion_r"] < 0.5
    s = by_kind(res, "self")[0]["figures"]
    assert s["l1"] > 0.03 and s["landmark_px"] > 5.0
    verdict = {(x["figure"], x["over"]): x["pass"] for x in res["summary"]}
    assert verdict[("motion_r", "mean")] is False and verdict[("l1", "mean")] is False
    assert verdict[("found_rate", "min")] is True


def test_ceiling_measures_the_measurement_against_itself(clips):
    with ev.Evaluator(ev.pipeline_preset("[]"), ev.SUITES["reenact"], max_frames=60, progress=lambda s: None) as e:
        rec = e.ceiling(clips[0])
    f = rec["figures"]
    assert rec["kind"] == "ceiling"
    # independent detections of the same face agree well, not perfectly (detector noise)
    assert 0.8 < f["motion_r"] < 0.999
    assert f["r_yaw"] > 0.9 and f["r_mouth_open"] > 0.9


def test_preset_avatar_is_replaced_by_each_avatar(clips, shared_data):
    avatars = [shared_data / "avatars" / "mona_lisa.jpg", shared_data / "avatars" / "dog.jpg"]
    preset = loads_preset(f"name: av\navatar: {{images: [{avatars[0]}]}}\npipeline: []\n")
    assert ev.uses_avatar(preset)
    swapped = ev.with_avatar(preset, avatars[1])
    assert swapped.avatar.images == [avatars[1]] and preset.avatar.images == [avatars[0]]
    res = evaluate(preset, clips[1:], avatars, frames=10, self_reenact=False)
    assert [r["avatar"] for r in res["runs"]] == ["mona_lisa.jpg", "dog.jpg"]
    # the driver's landmarks are detected once per clip and reused: same figures for the same output
    a, b = (r["figures"] for r in res["runs"])
    assert a == b and a["motion_r"] > 0.999


def synthetic_clip(n=40, noise=0.0, seed=0):
    """Landmark series of a face nodding and opening its mouth (canonical face, known motion)."""
    pts, _ = face_model.canonical()
    rng = np.random.default_rng(seed)
    out = []
    for t in range(n):
        r = face_model.rotation_from_euler(15 * np.sin(t / 6), 8 * np.sin(t / 9), 5 * np.cos(t / 7))
        lm = 90 * pts @ r.T + [250, 250, 0]
        lm[list(fmx.LIP_INNER_BOTTOM)] += [0, 12 * (1 + np.sin(t / 4)), 0]
        lm[list(fmx.EYE_LEFT_UPPER)] += [0, 3 * (1 + np.sin(t / 5)), 0]
        lm[list(fmx.EYE_RIGHT_UPPER)] += [0, 3 * (1 + np.cos(t / 5)), 0]
        lm[list(fmx.BROW_LEFT) + list(fmx.BROW_RIGHT)] -= [0, 3 * (1 + np.sin(t / 8)), 0]
        lm[[fmx.MOUTH_LEFT]] += [4 * np.sin(t / 3), 0, 0]
        out.append(lm + rng.normal(0, noise, lm.shape))
    return np.array(out, np.float32)


def test_motion_transfer_and_stability_measures():
    drv = synthetic_clip()
    same = ev.motion_transfer(drv, drv)
    assert same["motion_r"] == pytest.approx(1.0)
    frozen = ev.motion_transfer(drv, np.repeat(drv[:1], len(drv), 0))  # the avatar does not move
    assert frozen["motion_r"] == 0.0
    noisy = ev.motion_transfer(drv, synthetic_clip(noise=2.0, seed=1))
    assert 0.3 < noisy["motion_r"] < 0.99
    lost = drv.copy()
    lost[5:9] = np.nan  # frames without a face are skipped, not fatal
    assert ev.motion_transfer(drv, lost)["motion_r"] > 0.999
    st = ev.Stability()
    st.start(None)
    shaky = synthetic_clip(noise=1.0, seed=2)
    for d, o in zip(synthetic_clip(noise=0.2, seed=3), shaky, strict=True):
        st.frame(0, None, None, d, o)
    assert st.finish()["jitter_ratio"] > 3.0


def test_drawn_motion_splits_what_was_drawn_from_what_the_detector_reads():
    drv = synthetic_clip()
    res = ev.drawn_motion(drv, drv, synthetic_clip(noise=2.0, seed=1))
    assert res["drawn_motion_r"] == pytest.approx(1.0)  # drawn exactly as the driver moved
    assert 0.3 < res["redetect_r"] < 0.99  # read back with noise
    assert all(k.startswith("drawn_") or k == "redetect_r" for k in res)
    assert res["drawn_jitter_ratio"] == pytest.approx(1.0)
    assert ev.drawn_motion(drv, synthetic_clip(noise=1.0, seed=2), drv)["drawn_jitter_ratio"] > 3.0


def test_a_node_that_reports_its_drawn_face_gets_drawn_figures(clips, shared_data):
    preset = loads_preset("name: re\npipeline: [{node: face}, {node: reenact}]\n")
    res = evaluate(preset, clips[:1], [shared_data / "avatars" / "painted_child.jpg"], frames=30, self_reenact=False)
    f = by_kind(res, "cross")[0]["figures"]
    assert 0.5 < f["drawn_motion_r"] <= 1.0 and -1.0 <= f["redetect_r"] <= 1.0
    # a pipeline whose last node reports no face of its own has none
    plain = evaluate(ev.pipeline_preset("[]"), clips[:1], frames=10, self_reenact=False)
    assert not any(k.startswith("drawn_") for k in by_kind(plain, "cross")[0]["figures"])


def test_cli_writes_json_and_check_fails_on_missed_targets(clips, tmp_path, capsys):
    out = tmp_path / "id.json"
    args = ["eval", "--driving", str(clips[1]), "--max-frames", "12", "--no-self", "--json", str(out), "--check"]
    assert main([*args, "--pipeline", "[]"]) == 0
    data = json.loads(out.read_text())
    assert data["runs"][0]["figures"]["motion_r"] > 0.999 and "machine" in data
    text = capsys.readouterr().out
    assert "pass  motion transfer r" in text
    assert main([*args, "--pipeline", "[{node: mirror}]", "--driving", str(clips[0])]) == 1
    assert main(["eval", "--pipeline", "[]", "--driving", str(tmp_path / "nope.mp4")]) == 2
    assert "driving clip not found" in capsys.readouterr().err
    assert main(["eval", "--pipeline", "[]", "--suite", "nope"]) == 2
    assert "unknown suite 'nope'" in capsys.readouterr().err
    assert main(["eval"]) == 2
    assert "nothing to evaluate" in capsys.readouterr().err


def test_a_new_suite_plugs_in(clips):
    """Issue 4 registers its own measures (e.g. identity moved, flicker) the same way."""

    class MeanBrightness(ev.Measure):
        name = "brightness"

        def start(self, run):
            super().start(run)
            self.v = []

        def frame(self, i, driver, output, driver_lm, output_lm):
            self.v.append(float(output.mean()) - float(driver.mean()))

        def finish(self):
            return {"brightness_gain": float(np.mean(self.v))}

    suite = ev.register_suite(ev.Suite("test_brightness", "test", cross=[MeanBrightness, ev.FaceFound],
                                       targets=[ev.Target("cross", "brightness_gain", "max", "<=", 1.0, "no gain")]))
    try:
        res = evaluate(loads_preset("name: b\npipeline:\n  - node: color_adjust\n    brightness: 0.2\n"),
                       clips[1:], suite="test_brightness", frames=5)
        gain = res["runs"][0]["figures"]["brightness_gain"]
        assert gain > 20
        assert res["summary"][0]["pass"] is False and res["summary"][0]["got"] == pytest.approx(gain)
    finally:
        ev.SUITES.pop(suite.name)


def test_jitter_floor_is_the_detectors_own_noise_on_a_still_avatar(shared_data):
    with ev.Evaluator(ev.pipeline_preset("[]"), ev.SUITES["reenact"], max_frames=10, progress=lambda s: None) as e:
        child = shared_data / "avatars" / "painted_child.jpg"
        rec = e.jitter_floor(child, frames=30)
        dog = e.jitter_floor(shared_data / "avatars" / "dog.jpg", frames=30)["figures"]["jitter_floor"]
    assert rec["kind"] == "floor" and rec["avatar"] == "painted_child.jpg"
    child_floor = rec["figures"]["jitter_floor"]
    # nothing moves, yet the landmarks do: camera noise alone, on a dog far more than on a portrait
    assert 0.0 < child_floor < 0.5 * dog
