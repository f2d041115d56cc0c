"""Landmark features and the 3D face model on synthetic faces made from the canonical face, where the
true answer is known."""

from __future__ import annotations

import numpy as np
import pytest

from nodes import face_metrics as fmx
from nodes import face_model


def posed(yaw=0.0, pitch=0.0, roll=0.0, scale=80.0, centre=(320.0, 240.0)) -> np.ndarray:
    """The canonical face rotated, scaled and placed in a 640x480 image: (478, 3) pixels."""
    pts, _ = face_model.canonical()
    r = face_model.rotation_from_euler(yaw, pitch, roll)
    return (scale * pts @ r.T + np.array([centre[0], centre[1], 0.0])).astype(np.float32)


def mirrored(lm: np.ndarray, width: float = 640.0) -> np.ndarray:
    """What mediapipe reports for the horizontally flipped image: x flipped, left and right swapped."""
    _, mirror = face_model.canonical()
    out = lm.copy()
    out[:, 0] = width - 1 - out[:, 0]
    return out[mirror]


def test_canonical_face_is_symmetric_and_normalised():
    pts, mirror = face_model.canonical()
    assert pts.shape == (478, 3) and mirror.shape == (478,)
    assert np.array_equal(mirror[mirror], np.arange(478))
    assert mirror[fmx.EYE_RIGHT_OUTER] == fmx.EYE_LEFT_OUTER and mirror[fmx.IRIS_RIGHT] == fmx.IRIS_LEFT
    assert mirror[fmx.NOSE_TIP] == fmx.NOSE_TIP
    np.testing.assert_allclose(pts[mirror] * [-1, 1, 1], pts, atol=1e-5)
    assert np.linalg.norm(pts[33] - pts[263]) == pytest.approx(1.0, abs=1e-4)
    assert pts[fmx.NOSE_TIP, 2] < -0.2  # the nose points at the camera (-z)
    assert pts[fmx.CHIN, 1] > pts[fmx.FOREHEAD, 1]  # y down


@pytest.mark.parametrize("yaw,pitch,roll", [(0, 0, 0), (25, 0, 0), (0, -20, 0), (0, 0, 30), (-30, 15, -10),
                                            (40, -25, 20)])
def test_pose_fit_recovers_a_known_rotation(yaw, pitch, roll):
    lm = posed(yaw, pitch, roll, scale=93.0, centre=(300, 200))
    s, r, t, err = face_model.fit_pose(lm)
    got = face_model.euler_deg(r)
    np.testing.assert_allclose(got, (yaw, pitch, roll), atol=1e-3)
    assert s == pytest.approx(93.0, rel=1e-4)
    np.testing.assert_allclose(t[:2], (300, 200), atol=1e-2)
    assert err < 1e-4


def test_pose_fit_ignores_expression_points_and_flags_bad_shapes():
    lm = posed(10, 5, 3)
    moved = lm.copy()
    moved[list(fmx.LIP_INNER_BOTTOM) + [fmx.CHIN]] += [0, 25, 0]  # jaw drops: the rigid fit stays
    _, r, _, err = face_model.fit_pose(moved)
    np.testing.assert_allclose(face_model.euler_deg(r), (10, 5, 3), atol=1e-3)
    rng = np.random.default_rng(0)
    noisy = lm + rng.normal(0, 12, lm.shape).astype(np.float32)  # not a face shape
    assert face_model.fit_pose(noisy)[3] > 0.1 > err


def test_mirror_flips_yaw_and_roll_of_both_fit_and_proxies():
    lm = posed(yaw=20, pitch=10, roll=12)
    mi = mirrored(lm)
    a = face_model.euler_deg(face_model.fit_pose(lm)[1])
    b = face_model.euler_deg(face_model.fit_pose(mi)[1])
    np.testing.assert_allclose(b, (-a[0], a[1], -a[2]), atol=1e-3)
    fa, fb = fmx.features(lm), fmx.features(mi)
    assert fa["yaw"] > 0.1 and fb["yaw"] == pytest.approx(-fa["yaw"], abs=1e-4)
    assert fa["roll"] == pytest.approx(12.0, abs=1.5) and fb["roll"] == pytest.approx(-fa["roll"], abs=1e-4)
    assert fb["pitch"] == pytest.approx(fa["pitch"], abs=1e-4)
    assert fb["eye_open_left"] == pytest.approx(fa["eye_open_right"], abs=1e-5)


def test_proxies_follow_the_pose_monotonically():
    yaws = [fmx.yaw_proxy(posed(yaw=a)) for a in (-30, -15, 0, 15, 30)]
    pitches = [fmx.pitch_proxy(posed(pitch=a)) for a in (-20, -10, 0, 10, 20)]
    rolls = [fmx.roll_deg(posed(roll=a)) for a in (-20, 0, 20)]
    assert np.all(np.diff(yaws) > 0.05) and abs(yaws[2]) < 1e-6
    assert np.all(np.diff(pitches) > 0.02)
    np.testing.assert_allclose(rolls, (-20, 0, 20), atol=0.5)


def test_expression_features_measure_what_they_say():
    lm = posed()
    f0 = fmx.features(lm)
    shut = lm.copy()
    shut[list(fmx.EYE_LEFT_UPPER)] = shut[list(fmx.EYE_LEFT_LOWER)]  # close the left lid
    f1 = fmx.features(shut)
    assert f1["eye_open_left"] < 0.01 < 0.1 < f0["eye_open_left"]
    assert f1["eye_open_right"] == pytest.approx(f0["eye_open_right"])
    gape = lm.copy()
    gape[list(fmx.LIP_INNER_BOTTOM)] += [0, 30, 0]
    assert fmx.mouth_open(gape) > f0["mouth_open"] + 0.3
    smile = lm.copy()
    smile[fmx.MOUTH_RIGHT] -= [8, 0, 0]
    smile[fmx.MOUTH_LEFT] += [8, 0, 0]
    assert fmx.mouth_width(smile) > f0["mouth_width"] + 0.05
    raised = lm.copy()
    raised[list(fmx.BROW_RIGHT)] -= [0, 6, 0]
    assert fmx.brow_height(raised, "right") > f0["brow_right"] + 0.02
    look = lm.copy()
    look[[fmx.IRIS_LEFT, fmx.IRIS_RIGHT]] += [6, 0, 0]
    assert fmx.features(look)["gaze_x"] > f0["gaze_x"] + 0.2
    # scale and position do not change any ratio
    big = posed(scale=200.0, centre=(100, 400))
    for k in fmx.MOTION_FEATURES:
        assert fmx.features(big)[k] == pytest.approx(f0[k], abs=1e-4), k


def test_features_are_vectorised_over_clips():
    clip = np.stack([posed(yaw=a) for a in range(-20, 21, 5)])
    m = fmx.feature_matrix(clip)
    assert m.shape == (9, len(fmx.MOTION_FEATURES))
    one = fmx.features(clip[3])
    np.testing.assert_allclose(m[3], [one[k] for k in fmx.MOTION_FEATURES])


def test_pearson_and_jitter():
    t = np.linspace(0, 6, 100)
    assert fmx.pearson(np.sin(t), 3 * np.sin(t) + 1) == pytest.approx(1.0)
    assert fmx.pearson(np.sin(t), -np.sin(t)) == pytest.approx(-1.0)
    assert np.isnan(fmx.pearson(np.ones(50), np.sin(t[:50])))
    still = np.repeat(posed()[None], 20, axis=0)
    assert fmx.jitter(still) == 0.0
    rng = np.random.default_rng(1)
    noisy = still + rng.normal(0, 1.0, still.shape)
    j = fmx.jitter(noisy)
    assert j > 0
    # jitter is relative to face size: the same noise on a face twice as big is half the jitter
    big = np.repeat(posed(scale=160.0)[None], 20, axis=0) + rng.normal(0, 1.0, still.shape)
    assert fmx.jitter(big) == pytest.approx(j / 2, rel=0.15)
    # a smooth, fast move has almost no second difference
    move = still + np.arange(20)[:, None, None] * np.array([5.0, 0, 0])
    assert fmx.jitter(move) < 1e-9


def test_face_region_covers_the_face_inside_its_outline():
    lm = posed(scale=80.0)
    m = fmx.face_region(lm, (480, 640))
    assert m.dtype == bool and m.shape == (480, 640)
    nose = lm[fmx.NOSE_TIP, :2].astype(int)
    assert m[nose[1], nose[0]] and not m[5, 5]
    # about the area of the outline polygon (shoelace)
    p = lm[list(fmx.FACE_OVAL), :2].astype(np.float64)
    area = 0.5 * abs(np.dot(p[:, 0], np.roll(p[:, 1], 1)) - np.dot(p[:, 1], np.roll(p[:, 0], 1)))
    assert m.sum() == pytest.approx(area, rel=0.05)
