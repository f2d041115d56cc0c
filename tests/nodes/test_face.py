"""The face node on real faces from ../shared/data (real mediapipe), plus the tracker's logic on
synthetic landmark streams. Metrics with thresholds, no eyeballing."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from engine.node import BuildContext
from engine.preset import load_preset
from engine.runtime import Engine
from nodes import face_metrics as fmx
from nodes import face_model
from nodes.face import Face, FaceNode, FaceTracker, MeshDetector, OneEuroFilter, detect_landmarks, make_face

pytestmark = pytest.mark.data
HUMAN = ("mona_lisa.jpg", "pearl_earring.jpg", "painted_child.jpg", "cartoon_boy.jpg", "small_face_portrait.jpg")


def node(size=(512, 512), fps=30.0, **params) -> FaceNode:
    n = FaceNode("face", FaceNode.validate_params(params)[0], BuildContext(source_size=size, fps=fps))
    n.open()
    return n


def run(n: FaceNode, frame: np.ndarray) -> list[Face]:
    out = {"frame": np.empty_like(frame), "faces": []}
    frame = np.ascontiguousarray(frame)
    frame.flags.writeable = False  # inputs are read-only
    n.process({"frame": frame}, out)
    np.testing.assert_array_equal(out["frame"], frame)  # draw: none passes the frame through
    return out["faces"]


def image(shared_data, name) -> np.ndarray:
    img = cv2.imread(str(shared_data / "avatars" / name))
    assert img is not None, name
    return img


def clip_frames(path, indices) -> dict[int, np.ndarray]:
    cap = cv2.VideoCapture(str(path))
    want, out, i = set(indices), {}, 0
    while len(out) < len(want):
        ok, f = cap.read()
        if not ok:
            break
        if i in want:
            out[i] = f
        i += 1
    cap.release()
    return out


def test_landmarks_on_every_avatar_but_the_cat(shared_data):
    for name in (*HUMAN, "dog.jpg"):
        img = image(shared_data, name)
        h, w = img.shape[:2]
        lms = detect_landmarks(img)
        assert lms, f"no face found on {name}"
        lm = lms[0]
        assert lm.shape == (478, 3) and lm.dtype == np.float32
        assert (lm[:, 0] > -5).all() and (lm[:, 0] < w + 5).all() and (lm[:, 1] > -5).all() and (lm[:, 1] < h + 5).all()
        f = make_face(lm, (h, w))
        if name != "dog.jpg":
            assert f.confidence > 0.75, (name, f.fit_error)
    assert detect_landmarks(image(shared_data, "cat_no_face.jpg")) == []
    # the 3D fit tells a dog from a person
    dog = make_face(detect_landmarks(image(shared_data, "dog.jpg"))[0], (512, 512))
    assert dog.confidence < 0.7


def test_node_outputs_complete_faces_and_survives_no_face(shared_data):
    n = node(size=(1280, 720))
    try:
        img = image(shared_data, "mona_lisa.jpg")
        faces = run(n, img)
        assert len(faces) == 1
        f = faces[0]
        assert f.landmarks.shape == (478, 3) and f.state == "tracked" and f.track_id >= 1
        assert f.rotation.shape == (3, 3) and np.allclose(f.rotation @ f.rotation.T, np.eye(3), atol=1e-4)
        assert set(fmx.EXPRESSION_FEATURES) <= set(f.expression)
        assert f.box[0] < f.translation[0] < f.box[2] and f.box[1] < f.translation[1] < f.box[3]
        assert 0.5 * f.scale < np.linalg.norm(f.landmarks[33, :2] - f.landmarks[263, :2]) < 1.5 * f.scale
        assert f.frame_size == img.shape[:2]
        # the node's expression equals the plain functions on the same landmarks
        feats = fmx.features(f.landmarks)
        for k in fmx.EXPRESSION_FEATURES:
            assert f.expression[k] == pytest.approx(float(feats[k]), abs=1e-6)
        cat = image(shared_data, "cat_no_face.jpg")
        n.reset()
        assert run(n, cat) == []
        half = np.ascontiguousarray(img[:, : img.shape[1] // 2 - 40])  # half a face: no crash
        run(n, half)
    finally:
        n.close()


@pytest.mark.parametrize("name", ["mona_lisa.jpg", "pearl_earring.jpg"])
def test_pose_flips_with_a_mirrored_image(shared_data, name):
    img = image(shared_data, name)
    a = make_face(detect_landmarks(img)[0], img.shape[:2])
    b = make_face(detect_landmarks(np.ascontiguousarray(img[:, ::-1]))[0], img.shape[:2])
    assert abs(a.yaw) > 10  # both are turned: a real sign to flip
    assert b.yaw == pytest.approx(-a.yaw, abs=5.0)
    assert b.roll == pytest.approx(-a.roll, abs=3.0)
    assert b.pitch == pytest.approx(a.pitch, abs=4.0)
    # the person's left eye in the mirror is their right eye in the original
    assert b.expression["eye_open_left"] == pytest.approx(a.expression["eye_open_right"], abs=0.06)


@pytest.mark.parametrize("angle", [-20.0, 12.0])
def test_in_plane_rotation_shows_up_as_roll_only(shared_data, angle):
    img = image(shared_data, "painted_child.jpg")
    a = make_face(detect_landmarks(img)[0], img.shape[:2])
    h, w = img.shape[:2]
    m = cv2.getRotationMatrix2D((a.translation[0], a.translation[1]), angle, 1.0)  # + = counter-clockwise
    rot = cv2.warpAffine(img, m, (w, h), borderMode=cv2.BORDER_REFLECT)
    b = make_face(detect_landmarks(rot)[0], img.shape[:2])
    assert b.roll - a.roll == pytest.approx(-angle, abs=2.5)
    assert b.yaw == pytest.approx(a.yaw, abs=4.0) and b.pitch == pytest.approx(a.pitch, abs=4.0)
    assert fmx.roll_deg(b.landmarks) - fmx.roll_deg(a.landmarks) == pytest.approx(-angle, abs=2.5)


def test_smoothing_removes_jitter_when_still_and_follows_a_fast_move(shared_data):
    img = image(shared_data, "painted_child.jpg")
    rng = np.random.default_rng(0)
    det = MeshDetector(static=False, max_faces=1)
    n = node(size=(720, 720))
    raw, smooth = [], []
    try:
        for _ in range(30):  # still image, fresh sensor noise every frame
            noisy = np.clip(img + rng.normal(0, 6, img.shape), 0, 255).astype(np.uint8)
            raw.append(det.detect(noisy)[0])
            smooth.append(run(n, noisy)[0].landmarks)
        j_raw, j_smooth = fmx.jitter(np.array(raw[5:])), fmx.jitter(np.array(smooth[5:]))
        assert j_smooth < 0.4 * j_raw, (j_smooth, j_raw)
        # fast move: 9 px per frame (270 px/s) to the right
        lag, lag_fixed, fixed = [], [], OneEuroFilter(min_cutoff=1.0, beta=0.0)
        for k in range(1, 16):
            m = np.float32([[1, 0, 9 * k], [0, 1, 0]])
            moved = cv2.warpAffine(img, m, (720, 720), borderMode=cv2.BORDER_REFLECT)
            r = det.detect(moved)[0]
            s = run(n, moved)[0]
            fx = fixed(r, k / 30.0)
            if k >= 4:
                lag.append(abs(float(s.landmarks[:, 0].mean() - r[:, 0].mean())))
                lag_fixed.append(abs(float(fx[:, 0].mean() - r[:, 0].mean())))
        scale = s.scale
        assert np.mean(lag) < 0.05 * scale, (np.mean(lag), scale)
        assert np.mean(lag) < 0.3 * np.mean(lag_fixed)
    finally:
        det.close()
        n.close()


def two_faces(shared_data, offset=0) -> np.ndarray:
    a = image(shared_data, "painted_child.jpg")[70:470, 154:554]
    b = image(shared_data, "mona_lisa.jpg")[150:650, 110:610]
    b = cv2.resize(b, (400, 400))
    frame = np.full((720, 1280, 3), 40, np.uint8)
    frame[160:560, 100 + offset:500 + offset] = a
    frame[160:560, 780 - offset:1180 - offset] = b
    return frame


def test_track_ids_stay_with_each_person_and_selection_sticks(shared_data):
    n = node(size=(1280, 720), max_faces=2, select="all")
    try:
        seen = []
        for k in range(12):
            faces = run(n, two_faces(shared_data, offset=8 * k))
            assert len(faces) == 2
            seen.append({f.track_id: (f.box[0] + f.box[2]) / 2 for f in faces})
        ids = set(seen[0])
        assert all(set(s) == ids for s in seen)  # the same two ids throughout
        left = min(ids, key=lambda i: seen[0][i])
        assert all(s[left] < 640 for s in seen)  # the left person keeps the left id
    finally:
        n.close()
    n = node(size=(1280, 720), max_faces=2, select="index", index=1)
    try:
        first = run(n, two_faces(shared_data))[0]
        assert first.translation[0] > 640  # the second face from the left
        # the faces slide past the centre towards each other; index 1 stays on the same person
        for k in range(1, 8):
            f = run(n, two_faces(shared_data, offset=30 * k))[0]
            assert f.track_id == first.track_id
    finally:
        n.close()


def test_loss_holds_then_eases_to_neutral_then_drops():
    p = FaceNode.validate_params({"hold_ms": 200, "ease_ms": 400})[0]
    tr = FaceTracker(p)
    pts, _ = face_model.canonical()
    lm = (80 * pts + [300, 200, 0]).astype(np.float32)
    fps = 30.0
    states, weights = [], []
    for k in range(10):
        faces = tr.update([lm], k / fps, (480, 640))
        assert faces[0].state == "tracked" and faces[0].neutral_weight == 0.0
    tid = faces[0].track_id
    for k in range(10, 40):
        faces = tr.update([], k / fps, (480, 640))
        if faces:
            assert faces[0].track_id == tid
            states.append(faces[0].state)
            weights.append(faces[0].neutral_weight)
        else:
            states.append("gone")
    # 200 ms held (6 frames at 30 fps), 400 ms easing, then gone
    assert states[:6] == ["held"] * 6
    easing = [w for s, w in zip(states, weights, strict=False) if s == "easing"]
    assert 10 <= len(easing) <= 13
    assert all(b >= a for a, b in zip(easing, easing[1:], strict=False)) and easing[-1] > 0.9
    assert states[-1] == "gone"
    # the face comes back: tracked again, same pose restored without smoothing lag from before
    faces = tr.update([lm + [50, 0, 0]], 41 / fps, (480, 640))
    assert faces[0].state == "tracked" and faces[0].landmarks[:, 0].mean() == pytest.approx(lm[:, 0].mean() + 50, abs=0.01)


def test_features_on_the_expressions_clip(shared_data):
    """woman_expressions.mp4: she closes her left eye around frame 12, her right around frame 42
    (each while the other stays open) and opens her mouth wide around frame 310."""
    frames = clip_frames(shared_data / "driving" / "woman_expressions.mp4", range(0, 320))
    n = node(size=(512, 512))
    feats = {}
    try:
        for i in sorted(frames):
            faces = run(n, frames[i])
            assert faces, f"no face at frame {i}"
            feats[i] = faces[0].expression
    finally:
        n.close()
    left = np.array([feats[i]["eye_open_left"] for i in range(320)])
    right = np.array([feats[i]["eye_open_right"] for i in range(320)])
    mouth = np.array([feats[i]["mouth_open"] for i in range(320)])
    assert right[38:46].mean() < 0.4 * left[38:46].mean()  # right eye shut, left open
    assert left[12:18].mean() < 0.5 * right[12:18].mean()  # left eye shut, right open
    assert mouth[305:320].mean() > 0.4 > 0.1 > mouth[80:130].mean()


def test_shipped_face_check_preset_tracks_and_draws(shared_data, repo):
    preset = load_preset(repo / "presets" / "face_check.yaml")
    eng = Engine([preset], source_size=(720, 720), live=False)
    eng.start()
    try:
        img = image(shared_data, "painted_child.jpg")
        out = np.zeros_like(img)
        eng.process(img, out)
        assert np.abs(out.astype(int) - img).sum() > 0  # the tracking is drawn
        faces = eng.graph.run_by_id["face"].out["faces"]
        assert len(faces) == 1 and faces[0].state == "tracked"
    finally:
        eng.close()


@pytest.mark.parametrize("select", ["largest", "central"])
def test_selection_picks_then_keeps_following_the_same_person(select):
    pts, _ = face_model.canonical()
    tr = FaceTracker(FaceNode.validate_params({"select": select})[0])

    def face_at(x, scale):
        return (scale * pts + [x, 240, 0]).astype(np.float32)

    # a big face left of centre and a small one at the centre
    first = tr.update([face_at(200, 70), face_at(330, 40)], 0.0, (480, 640))
    assert len(first) == 1
    expect_x = 200 if select == "largest" else 330
    assert first[0].translation[0] == pytest.approx(expect_x, abs=2)
    chosen = first[0].track_id
    # the other face grows and moves to the centre: still the same person is followed
    for k in range(1, 10):
        a, b = face_at(200 - 5 * k, 70 - 3 * k), face_at(330 - 10 * k, 40 + 5 * k)
        faces = tr.update([b, a], k / 30.0, (480, 640))  # detection order does not matter
        assert faces[0].track_id == chosen
    assert tr.update([], 0.5, (480, 640))[0].state == "held"  # lost: held, still the same person


def test_smoothing_on_a_real_clip_halves_jitter_and_keeps_the_expression(shared_data):
    """woman_talking.mp4, 120 frames: smoothed vs raw mediapipe landmarks."""
    frames = clip_frames(shared_data / "driving" / "woman_talking.mp4", range(120))
    det = MeshDetector(static=False, max_faces=1)
    n = node(size=(512, 512))
    raw, smooth = [], []
    try:
        for i in sorted(frames):
            r, s = det.detect(frames[i]), run(n, frames[i])
            assert r and s
            raw.append(r[0])
            smooth.append(s[0].landmarks)
    finally:
        det.close()
        n.close()
    raw, smooth = np.array(raw), np.array(smooth)
    assert fmx.jitter(smooth) < 0.7 * fmx.jitter(raw)
    fr, fs = fmx.feature_matrix(raw), fmx.feature_matrix(smooth)
    rs = [fmx.pearson(fr[:, k], fs[:, k]) for k in range(fr.shape[1])]
    assert np.mean(rs) > 0.95 and min(rs) > 0.85, dict(zip(fmx.MOTION_FEATURES, np.round(rs, 3), strict=True))
