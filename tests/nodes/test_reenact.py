"""The reenact node on real faces: identity, synthetic motions, holes and folds over a real clip, bad
avatars, no-face drivers, idle animation, few-shot shots, the demo driver and presets."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from engine.errors import UserError
from engine.graph import build_graph
from engine.kernels import warp as wk
from engine.node import Avatar, BuildContext
from engine.preset import load_preset, loads_preset
from engine.sources import read_frames
from nodes import face_metrics as fmx
from nodes import reenact as rk
from nodes.face import Face, MeshDetector


def make_node(images: list[Path], fps: float = 30.0, **params) -> rk.Reenact:
    ctx = BuildContext(avatar=Avatar(images=list(images)), fps=fps)
    values, problems = rk.Reenact.validate_params(params)
    assert not problems
    node = rk.Reenact("reenact", values, ctx)
    node.out_shapes = node.configure({})
    node.open()
    return node


def face_of(lm: np.ndarray, **kw) -> Face:
    lm = np.asarray(lm, np.float32)
    return Face(landmarks=lm, box=(*lm[:, :2].min(0), *lm[:, :2].max(0)), **kw)


def run(node: rk.Reenact, faces: list) -> np.ndarray:
    h, w = node.out_shapes["frame"]
    out = np.zeros((h, w, 3), np.uint8)
    node.process({"frame": None, "faces": faces}, {"frame": out})
    return out


def no_holes(node: rk.Reenact, out: np.ndarray) -> bool:
    """Warp this frame's mesh with every triangle (the node warps only the moving ones) and check that
    each pixel of the mesh's rectangle is covered, and that the node's frame is that warp (up to the
    quarter-pixel motion of the triangles it left as they are)."""
    full = np.empty_like(node.canvas)
    np.copyto(full, node.canvas)
    state = wk.MeshWarp(full.shape[:2], len(node.rig.tris))
    wk.warp_mesh_numba(node.canvas, node.rig.src2, node.dst, node.rig.order_tris, full, node.rig.region, state)
    x0, y0, x1, y1 = node.rig.region
    covered = bool(state.cover[y0:y1, x0:x1].all())
    painted = node.mouth.amount > 0 or bool(node.shots.used)  # the mouth / extra shots drawn on top
    close = painted or np.abs(full.astype(np.int16) - out).mean() < 0.5
    return covered and close


def clip_frames(path: Path, n: int, step: int = 1) -> list[np.ndarray]:
    return read_frames(path, n, step)


def track(frames: list[np.ndarray]) -> list[np.ndarray | None]:
    det = MeshDetector(static=False, max_faces=1)
    try:
        return [next(iter(det.detect(f)), None) for f in frames]
    finally:
        det.close()


@pytest.fixture(scope="session")
def talking(shared_data):
    """woman_talking.mp4: its first 240 frames and their landmarks (mediapipe tracking mode)."""
    frames = clip_frames(shared_data / "driving" / "woman_talking.mp4", 240)
    return frames, track(frames)


@pytest.fixture(scope="session")
def webcam(shared_data):
    """webcam_glasses.mp4 (183 frames, talking with a wide-open mouth) and its landmarks."""
    frames = clip_frames(shared_data / "driving" / "webcam_glasses.mp4", 183)
    return frames, track(frames)


@pytest.fixture(scope="session")
def child(shared_data):
    return shared_data / "avatars" / "painted_child.jpg"


@pytest.fixture(autouse=True)
def _cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("AVATARCAST_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))


# ---- preparation -------------------------------------------------------------------------------

def test_no_face_avatar_fails_when_the_preset_opens(shared_data, tmp_path):
    cat = shared_data / "avatars" / "cat_no_face.jpg"
    preset = loads_preset(f"name: cat\navatar:\n  images: ['{cat}']\npipeline:\n  - node: face\n  - node: reenact\n")
    graph = build_graph(preset, BuildContext(source_size=(256, 256)))
    with pytest.raises(UserError) as exc:
        graph.open()
    assert "cat_no_face.jpg" in str(exc.value) and "no face" in str(exc.value)


def test_preparation_is_a_pure_cached_function(child):
    img = cv2.imread(str(child))
    direct = rk.prepare_avatar([img], [str(child)])
    via_cache = rk.load_avatar_data([child], [None])
    again = rk.load_avatar_data([child], [None])
    assert again is via_cache  # in memory the second time
    for key in ("landmarks", "verts", "tris", "rect", "features"):
        assert np.allclose(direct[key], via_cache[key]), key
    assert direct["landmarks"].shape == (1, 478, 3)
    tris = direct["tris"]
    assert tris.min() >= 0 and tris.max() < len(direct["verts"])


# ---- identity and synthetic motions --------------------------------------------------------------

def test_driver_at_its_neutral_reproduces_the_avatar(child):
    node = make_node([child], idle=False)
    lm = node.rig.lm.copy()
    lm[:, :2] = lm[:, :2] * 1.7 + [40, -25]  # another face size and place: only the change matters
    lm[:, 2] *= 1.7
    for _ in range(3):
        out = run(node, [face_of(lm)])
    l1 = np.abs(out.astype(np.float32) - node.canvas).mean() / 255.0
    assert l1 < 0.002


def _mouth_open(lm: np.ndarray, amount: float) -> np.ndarray:
    """Drop the lower lip and the jaw below the mouth by ``amount`` x mouth width."""
    out = lm.copy()
    mw = np.linalg.norm(lm[rk.MOUTH_R, :2] - lm[rk.MOUTH_L, :2])
    y_mouth = lm[[rk.LIP_TOP, rk.LIP_BOTTOM], 1].mean()
    y_chin = lm[152, 1]
    below = (lm[:, 1] > y_mouth) & (np.abs(lm[:, 0] - lm[rk.LIP_BOTTOM, 0]) < 1.6 * mw)
    fall = np.clip(1.0 - (lm[:, 1] - y_mouth) / (y_chin - y_mouth + 1e-6) * 0.3, 0.6, 1.0)
    out[below, 1] += amount * mw * fall[below]
    out[rk.INNER_LOWER, 1] = np.maximum(out[rk.INNER_LOWER, 1], lm[rk.INNER_LOWER, 1] + amount * mw)
    return out


def test_mouth_open_moves_the_mouth_and_paints_a_cavity(child):
    node = make_node([child], idle=False)
    lm = node.rig.lm.copy()
    run(node, [face_of(lm)])
    out = run(node, [face_of(_mouth_open(lm, 0.35))])
    diff = np.abs(out.astype(np.int16) - node.canvas).max(axis=2)
    mouth = node.rig.lm[rk.OUTER_LIPS, :2]
    x0, y0 = mouth.min(0).astype(int) - 5
    x1, y1 = mouth.max(0).astype(int) + 5
    fw = node.rig.fw
    assert diff[y0:y1 + int(0.3 * fw), x0:x1].mean() > 10  # the mouth and chin changed
    eyes = node.rig.lm[np.r_[rk.EYE_R_RING, rk.EYE_L_RING], :2]
    ex0, ey0 = eyes.min(0).astype(int)
    ex1, ey1 = eyes.max(0).astype(int)
    assert diff[ey0 - 10:ey0 - 3, ex0:ex1].mean() < 2  # above the eyes nothing moved
    # the open mouth is dark inside (a cavity), not stretched lip colour, with lighter teeth at its top
    inside = np.zeros(out.shape[:2], np.uint8)
    cv2.fillPoly(inside, [np.round(node.dst[rk.INNER_LIPS]).astype(np.int32)], 1)
    gray = cv2.cvtColor(out, cv2.COLOR_BGR2GRAY)[inside > 0]
    lips = cv2.cvtColor(node.canvas, cv2.COLOR_BGR2GRAY)[
        int(mouth[:, 1].min()):int(mouth[:, 1].max()) + 1, int(mouth[:, 0].min()):int(mouth[:, 0].max()) + 1].mean()
    assert np.percentile(gray, 20) < 0.5 * lips
    assert np.percentile(gray, 95) > lips  # teeth
    assert node.mouth.amount > 0.9


def test_parted_lips_show_a_dark_slit_and_teeth_are_lit_in_the_middle(child):
    """Lips just parted (3% of the mouth width): a dark line between them, no teeth yet. Wide open:
    teeth, brighter in the middle of the mouth than towards its corners."""
    node = make_node([child], idle=False)
    lm = node.rig.lm.copy()
    run(node, [face_of(lm)])
    out = run(node, [face_of(_mouth_open(lm, 0.03))])
    assert node.mouth.amount > 0.5
    assert node.mouth.teeth_amount == 0.0
    inside = np.zeros(out.shape[:2], np.uint8)
    cv2.fillPoly(inside, [np.round(node.dst[rk.INNER_LIPS]).astype(np.int32)], 1)
    gray = cv2.cvtColor(out, cv2.COLOR_BGR2GRAY).astype(np.float32)
    lips = cv2.cvtColor(node.canvas, cv2.COLOR_BGR2GRAY)[inside > 0].mean()
    assert gray[inside > 0].min() < 0.6 * lips
    out = run(node, [face_of(_mouth_open(lm, 0.35))])
    assert node.mouth.teeth_amount == 1.0
    gray = cv2.cvtColor(out, cv2.COLOR_BGR2GRAY).astype(np.float32)
    d = node.dst
    mw = float(np.linalg.norm(d[rk.MOUTH_R] - d[rk.MOUTH_L]))
    up = d[rk.INNER_UPPER]  # just below the upper inner lip: the upper teeth
    xs = np.linspace(up[:, 0].min(), up[:, 0].max(), 41)
    order = np.argsort(up[:, 0])
    ys = np.interp(xs, up[order, 0], up[order, 1]) + 0.04 * mw
    row = gray[np.round(ys).astype(int), np.round(xs).astype(int)]
    assert row[15:26].mean() > row[[0, 1, 2, 38, 39, 40]].mean() + 20


def _yaw(lm: np.ndarray, deg: float) -> np.ndarray:
    c = lm[rk.RIGID].mean(0) + [0, 0, 0.45 * np.ptp(lm[rk.FACE_OVAL, 0])]
    r = cv2.Rodrigues(np.array([0.0, np.radians(deg), 0.0]))[0]
    return ((lm - c) @ r.T + c).astype(np.float32)


def test_head_turn_moves_the_face_sideways_in_3d_and_keeps_far_background(child):
    node = make_node([child], idle=False, follow=0.0)
    lm = node.rig.lm.copy()
    run(node, [face_of(lm)])
    out = run(node, [face_of(_yaw(lm, 20))])
    nose0, nose1 = node.rig.src2[1], node.dst[1]
    cheek_l0, cheek_l1 = node.rig.src2[234], node.dst[234]
    cheek_r0, cheek_r1 = node.rig.src2[454], node.dst[454]
    # the nose (near the camera) moves more than the cheeks: a rotation, not a 2D shift
    assert abs(nose1[0] - nose0[0]) > 3
    assert abs(nose1[0] - nose0[0]) > abs(cheek_l1[0] - cheek_l0[0]) + 1
    # the far cheek comes closer to the nose, the near one goes further: foreshortening
    w0 = cheek_r0[0] - cheek_l0[0]
    w1 = cheek_r1[0] - cheek_l1[0]
    assert w1 < w0
    # outside the warped area the avatar is untouched
    x0, y0, x1, y1 = node.rig.region
    mask = np.ones(out.shape[:2], bool)
    mask[y0:y1, x0:x1] = False
    assert np.array_equal(out[mask], node.canvas[mask])
    assert no_holes(node, out)


def test_big_turns_are_clamped_gracefully(child):
    node = make_node([child], idle=False, max_turn=30.0)
    lm = node.rig.lm.copy()
    run(node, [face_of(lm)])
    run(node, [face_of(_yaw(lm, 80))])
    ang = np.degrees(np.linalg.norm(cv2.Rodrigues(node.last_pose.rot)[0]))
    assert 20 < ang <= 30.0 + 1e-6
    out = run(node, [face_of(_yaw(lm, 80))])
    assert no_holes(node, out)


def test_blink_and_wink_close_each_eye(child):
    node = make_node([child], idle=False)
    lm = node.rig.lm.copy()
    run(node, [face_of(lm)])
    wink = lm.copy()
    wink[rk.EYE_L_UP] = lm[rk.EYE_L_LO] + 0.05 * (lm[rk.EYE_L_UP] - lm[rk.EYE_L_LO])
    run(node, [face_of(wink)])
    gaps = rk._eye_gaps(node.dst)
    assert gaps[1] < 0.08 * rk._eye_gaps(node.rig.lm)[1] + 0.01  # the left eye closed
    assert abs(gaps[0] - rk._eye_gaps(node.rig.lm)[0]) < 0.02  # the right one stayed open



@pytest.mark.parametrize("avatar", ["painted_child.jpg", "cartoon_boy.jpg"])
def test_a_closing_lid_slides_down_whole_and_closes_to_the_corners(shared_data, avatar):
    """Both eyes shut: every column of each upper lid meets its lower lid (the cartoon's big eyes too,
    whose outer lid passes below the corner), the row above the lid travels down with it (the lashes
    and lid margin slide over the eye instead of stretching) and nothing is left folded."""
    node = make_node([shared_data / "avatars" / avatar], idle=False)
    lm = node.rig.lm.copy()
    run(node, [face_of(lm)])
    shut = lm.copy()
    for up, lo in ((rk.EYE_R_UP, rk.EYE_R_LO), (rk.EYE_L_UP, rk.EYE_L_LO)):
        shut[up] = lm[lo]
    out = run(node, [face_of(shut)])
    for up, lo, up1 in ((rk.EYE_R_UP, rk.EYE_R_LO, rk.EYE_R_UP1), (rk.EYE_L_UP, rk.EYE_L_LO, rk.EYE_L_UP1)):
        rest = lm[lo, 1] - lm[up, 1]
        gap = node.dst[lo, 1] - node.dst[up, 1]
        assert np.all(np.abs(gap) < 0.1 * rest.max()), (avatar, gap, rest)
        lid_down = node.dst[up[3], 1] - lm[up[3], 1]
        row_down = node.dst[up1[3], 1] - lm[up1[3], 1]
        assert row_down > 0.5 * lid_down > 0
    assert no_holes(node, out)
    assert (rk.signed_areas(node.dst, node.rig.tris) * node.rig.src_sign < 0)[node.rig.check].sum() == 0


# ---- a real clip: no holes, no folds; drivers with no face or two faces ---------------------------

def test_real_clip_has_no_holes_and_no_fold_overs(shared_data, talking):
    frames, lms = talking
    node = make_node([shared_data / "avatars" / "mona_lisa.jpg"])
    src_area = rk.signed_areas(node.rig.src2, node.rig.tris)
    checked = node.rig.check & (np.abs(src_area) > 1.0)
    moved = 0.0
    for lm in lms[::2]:
        out = run(node, [face_of(lm)] if lm is not None else [])
        assert no_holes(node, out)
        d_area = rk.signed_areas(node.dst, node.rig.tris)
        base = node.rig.last_base
        base_ok = rk.signed_areas(base, node.rig.tris) * np.sign(src_area) >= 0.02 * np.abs(src_area)
        flipped = checked & base_ok & (d_area * np.sign(src_area) < 0.02 * np.abs(src_area))
        assert not flipped.any()
        moved = max(moved, float(np.abs(node.dst - node.rig.src2).max()))
        assert np.isfinite(out).all()
    assert moved > 3  # it did move


def test_the_node_reports_the_face_it_drew_in_output_pixels(shared_data, talking):
    # the `faces` output is the avatar's face where this frame drew it: a re-detection of the output
    # frame finds it there, turned the way the node reports, for nodes after reenact and for eval
    frames, lms = talking
    node = make_node([shared_data / "avatars" / "small_face_portrait.jpg"])
    det = MeshDetector(static=True, max_faces=1)
    h, w = node.out_shapes["frame"]
    for k in (0, 60, 120):
        out = np.zeros((h, w, 3), np.uint8)
        ports = {"frame": out}
        node.process({"frame": None, "faces": [face_of(lms[k])]}, ports)
        drawn = ports["faces"][0]
        assert drawn.frame_size == (w, h)
        seen = det.detect(out)[0]
        fw = float(np.ptp(seen[list(fmx.FACE_OVAL), 0]))
        err = np.linalg.norm(drawn.landmarks[:, :2] - seen[:, :2], axis=1)
        assert np.median(err) < 0.03 * fw, (k, np.median(err) / fw)
    # with no driver the idle avatar is still reported where it is drawn
    ports = {"frame": np.zeros((h, w, 3), np.uint8)}
    node.process({"frame": None, "faces": []}, ports)
    assert len(ports["faces"]) == 1 and np.isfinite(ports["faces"][0].landmarks).all()


def test_a_face_effect_after_reenact_gets_the_avatars_face(child):
    # the nearest earlier faces output is reenact's: a face swap after it works on the drawn avatar
    preset = loads_preset(f"name: x\navatar: {{images: [{child}]}}\n"
                          "pipeline: [{node: face}, {node: reenact}, {node: faceswap}]\n")
    swap = next(n for n in preset.nodes if n.kind == "faceswap")
    assert swap.inputs == {"frame": ("reenact", "frame"), "faces": ("reenact", "faces")}


def test_driver_with_no_face_half_a_face_and_two_faces(child, talking):
    frames, lms = talking
    node = make_node([child])
    lm = next(x for x in lms if x is not None)
    run(node, [face_of(lm)])
    run(node, [])  # no face
    half = lm.copy()
    half[:, 0] = np.minimum(half[:, 0], np.median(half[:, 0]))  # half the face squashed onto the midline
    out = run(node, [face_of(half)])
    assert out.shape == node.canvas.shape
    other = lm.copy()
    other[:, :2] = other[:, :2] * 0.5 + 3
    out = run(node, [face_of(other, track_id=7), face_of(lm, track_id=0)])
    assert node.track_id == 0  # keeps following the same person
    bad = lm.copy()
    bad[5] = np.nan
    run(node, [face_of(bad)])  # a broken record does not stop the stream


def test_no_face_driver_breathes_and_blinks(child):
    node = make_node([child], fps=30.0)
    outs = [run(node, []).astype(np.int16) for _ in range(150)]
    diffs = [np.abs(outs[i] - outs[0]).mean() for i in range(1, 150)]
    assert max(diffs) > 0.5  # the avatar is not frozen
    gaps = []
    node.reset()
    for _ in range(150):
        run(node, [])
        gaps.append(rk._eye_gaps(node.dst).mean())
    assert min(gaps) < 0.3 * max(gaps)  # a blink happened within 5 s


def test_easing_face_blends_towards_idle(child):
    node = make_node([child], idle=False)
    lm = node.rig.lm.copy()
    run(node, [face_of(lm)])
    run(node, [face_of(_mouth_open(lm, 0.3))])
    open_gap = np.linalg.norm(node.dst[rk.LIP_BOTTOM] - node.dst[rk.LIP_TOP])
    run(node, [face_of(_mouth_open(lm, 0.3), state="easing", neutral_weight=0.5)])
    half_gap = np.linalg.norm(node.dst[rk.LIP_BOTTOM] - node.dst[rk.LIP_TOP])
    assert 0.3 * open_gap < half_gap < 0.7 * open_gap


def sharpness(img: np.ndarray) -> float:
    return float(np.abs(cv2.Laplacian(cv2.cvtColor(img, cv2.COLOR_BGR2GRAY), cv2.CV_32F)).mean())


def test_non_human_face_is_sane(shared_data, talking):
    frames, lms = talking
    node = make_node([shared_data / "avatars" / "dog.jpg"])
    for lm in lms[:120:4]:
        out = run(node, [face_of(lm)] if lm is not None else [])
        assert no_holes(node, out)
        # no tear: a torn frame has edges the picture has not (and a smeared one loses most of them)
        assert 0.6 < sharpness(out) / sharpness(node.canvas) < 1.2


def test_recalibrate_takes_a_new_neutral(child):
    node = make_node([child], idle=False, neutral="first")
    lm = node.rig.lm.copy()
    run(node, [face_of(lm)])
    raised = lm.copy()
    raised[np.r_[rk.BROW_R, rk.BROW_L], 1] -= 0.1 * np.ptp(lm[rk.FACE_OVAL, 0])
    run(node, [face_of(raised)])
    assert np.abs(node.dst - node.rig.src2).max() > 2.0
    node.command("recalibrate", {})
    out = run(node, [face_of(raised)])  # the raised brows are the new neutral
    assert np.abs(node.dst - node.rig.src2).max() < 0.25
    assert np.abs(out.astype(np.float32) - node.canvas).mean() < 0.5


def test_a_neutral_taken_mid_word_opens_the_avatars_mouth_and_never_crosses_the_lips(child):
    """The first tracked frame has the mouth open: the avatar's mouth is as open as the driver's, and
    when the driver closes the mouth the avatar's closes to its own rest, the lower lip never above the
    upper one (relative motion alone would push it through by the neutral's opening)."""
    node = make_node([child], idle=False, neutral="first")
    lm = node.rig.lm.copy()
    rest = float(rk.lip_gap(lm))
    opened = _mouth_open(lm, 0.2)
    want = float(rk.lip_gap(opened))
    run(node, [face_of(opened)])  # the neutral
    assert want - rest > 0.1
    assert abs(float(rk.lip_gap(_placed(node))) - want) < 0.2 * (want - rest)
    assert node.mouth.amount > 0.5
    run(node, [face_of(lm)])  # the driver closes the mouth
    placed = _placed(node)
    assert abs(float(rk.lip_gap(placed)) - rest) < 0.02
    below = placed[rk.INNER_LOWER[2:7], 1] - placed[rk.INNER_UPPER[3:8], 1]  # facing inner-lip points
    assert below.min() > -1.0
    assert node.mouth.amount == 0.0


def test_auto_neutral_picks_the_frame_most_like_the_avatar(child):
    node = make_node([child], idle=False, neutral="auto", calibrate_s=1.0)
    lm = node.rig.lm.copy()
    run(node, [face_of(_mouth_open(lm, 0.3))])  # the streamer starts with an open mouth
    run(node, [face_of(lm)])  # then shows a face like the avatar's
    assert np.allclose(node.motion.neutral, lm)


# ---- torch path and few-shot ---------------------------------------------------------------------

def test_torch_warp_matches_numba_on_a_real_avatar_mesh(child, talking):
    torch = pytest.importorskip("torch")
    frames, lms = talking
    node = make_node([child], idle=False)
    run(node, [face_of(lms[0])])
    run(node, [face_of(lms[40])])
    dst, tris = node.dst, node.rig.order_tris
    a = node.canvas.copy()
    wk.warp_mesh_numba(node.canvas, node.rig.src2, dst, tris, a, node.rig.region)
    b = wk.warp_mesh_torch(torch.from_numpy(node.canvas), node.rig.src2, dst, tris, None, node.rig.region).numpy()
    assert np.abs(a.astype(int) - b).max() <= 1


def test_node_torch_path_gives_the_same_frames(child, talking):
    pytest.importorskip("torch")
    frames, lms = talking
    node = make_node([child])
    for lm in [lms[0], lms[60], lms[120], None]:
        run(node, [face_of(lm)] if lm is not None else [])
        a = np.empty_like(node.canvas)
        b = np.empty_like(node.canvas)
        node._render(node.last_pose, a)
        node._render_torch(node.last_pose, b, device="cpu")
        assert np.abs(a.astype(int) - b).max() <= 1


def test_an_extra_mouth_open_shot_makes_the_mouth_measurably_better(tmp_path, webcam):
    """Self-reenactment: the avatar is a frame of the clip with the mouth closed; the clip drives it.
    With a second shot of the same person with an open mouth, the mouth region of the output is closer
    to the real frames (real teeth and mouth interior instead of a synthesised one)."""
    frames, lms = webcam
    feats = np.array([rk.expression_features(m)[0] if m is not None else np.nan for m in lms])
    idx = np.arange(len(feats))
    closed = int(np.nanargmin(np.where(idx < 90, feats, np.nan)))
    shot = int(np.nanargmax(np.where(idx < 90, feats, np.nan)))
    targets = [i for i in range(90, len(feats)) if feats[i] > 0.5 * feats[shot]][::3]
    assert len(targets) >= 3, "the clip needs open-mouth frames"
    cv2.imwrite(str(tmp_path / "closed.png"), frames[closed])
    cv2.imwrite(str(tmp_path / "open.png"), frames[shot])
    errs = {}
    for name, images in (("one", ["closed.png"]), ("few", ["closed.png", "open.png"])):
        node = make_node([tmp_path / i for i in images], idle=False, neutral="first")
        run(node, [face_of(lms[closed])])
        e = []
        for i in targets:
            out = run(node, [face_of(lms[i])])
            lips = lms[i][rk.OUTER_LIPS, :2]
            x0, y0 = np.floor(lips.min(0)).astype(int) - 2
            x1, y1 = np.ceil(lips.max(0)).astype(int) + 2
            e.append(np.abs(out[y0:y1, x0:x1].astype(np.float32) - frames[i][y0:y1, x0:x1]).mean() / 255.0)
        errs[name] = float(np.mean(e))
    assert errs["few"] < 0.85 * errs["one"], errs


# ---- demo and presets ------------------------------------------------------------------------------

def test_shipped_presets_validate(repo):
    for f in sorted((repo / "presets").glob("*.yaml")):
        text = f.read_text()
        if "reenact" not in text:
            continue
        assert text.lstrip().startswith("#"), f"{f.name}: needs a comment block saying what it does"
        if "~/" in text:
            continue  # points at the streamer's own picture
        load_preset(f)


def test_scripted_driver_animates_the_demo_avatar(repo):
    graph = build_graph(load_preset(repo / "presets" / "demo.yaml"), BuildContext(source_size=(256, 256)))
    with graph:
        frame = np.zeros((256, 256, 3), np.uint8)
        frame.flags.writeable = False
        node = graph.run_by_id[next(r.spec.id for r in graph.runs if r.spec.kind == "reenact")].node
        outs, mouths, eyes = [], [], []
        for _ in range(90):
            outs.append(graph.process(frame, strict=True).copy())
            mouths.append(node.mouth.amount)
            eyes.append(rk._eye_gaps(node.dst).min())
            assert no_holes(node, outs[-1])
    assert outs[0].shape == (512, 512, 3)
    assert np.abs(outs[45].astype(int) - outs[0]).mean() > 2  # it moves
    assert max(mouths) > 0.5  # it talks
    assert min(eyes) < 0.3 * max(eyes)  # it blinks
    # the scripted faces are what a face node gives: a pose from the 3D fit
    faces = graph.run_by_id[graph.runs[0].spec.id].out["faces"]
    assert len(faces) == 1 and faces[0].landmarks.shape == (478, 3) and abs(faces[0].yaw) < 30


def test_avatarcast_demo_writes_a_reenactment_video(tmp_path):
    from engine.cli import build_parser

    out = tmp_path / "demo.mp4"
    args = build_parser().parse_args(["demo", "-o", str(out), "--frames", "24", "--no-progress"])
    assert args.func(args) == 0
    cap = cv2.VideoCapture(str(out))
    frames = []
    while True:
        ok, f = cap.read()
        if not ok:
            break
        frames.append(f)
    assert len(frames) == 24 and frames[0].shape == (512, 512, 3)
    assert np.abs(frames[-1].astype(int) - frames[0]).mean() > 1


def test_a_bundled_reenact_preset_opens_without_the_detector(child, tmp_path, monkeypatch):
    from engine import cache
    from engine.bundle import install, pack
    from engine.library import find_preset

    monkeypatch.setenv("AVATARCAST_HOME", str(tmp_path / "home"))
    src = tmp_path / "src"
    src.mkdir()
    (src / "child.jpg").write_bytes(child.read_bytes())
    (src / "my.yaml").write_text("# reenact the painted child with the webcam face, a bundle round trip test\n"
                                 "schema: 1\nname: bundled child\navatar:\n  images: [child.jpg]\n"
                                 "pipeline:\n  - node: face\n  - node: reenact\n")
    out = pack(src / "my.yaml", tmp_path / "child.avatar", creator="avatarcast tests", license="CC0-1.0")
    monkeypatch.setenv("AVATARCAST_CACHE", str(tmp_path / "fresh-cache"))
    cache.clear_memory()
    install(out)
    assert len(list((tmp_path / "fresh-cache" / rk.CACHE_NAMESPACE).glob("*.npz"))) == 1
    monkeypatch.setattr(rk, "detect_landmarks", lambda *a, **k: pytest.fail("the detector ran"))
    preset = find_preset("bundled child")
    node = make_node(preset.avatar.images, idle=False)
    assert node.rig.lm.shape == (478, 3)


# ---- amplitude: the avatar's measured features change as much as the driver's ---------------------

def _placed(node: rk.Reenact) -> np.ndarray:
    lm = node.rig.lm.copy()
    lm[:, :2] = node.dst[:rk.N_LM]
    return lm


def test_a_drivers_mouth_opening_changes_the_avatars_mouth_open_as_much(shared_data, talking):
    """A real driver (another face shape) opens the mouth by X of its mouth_open measure: the painting's
    placed mouth changes by about X, and its re-detected mouth by the same sign and most of X."""
    from nodes import face_metrics as fmx

    _, lms = talking
    drv = next(x for x in lms if x is not None).astype(np.float64)
    node = make_node([shared_data / "avatars" / "mona_lisa.jpg"], idle=False, teeth=False)
    det = MeshDetector(static=True, max_faces=1)
    try:
        rest = run(node, [face_of(drv)])
        seen0 = fmx.mouth_open(det.detect(rest)[0])
        placed0 = fmx.mouth_open(_placed(node))
        opened = _mouth_open(drv, 0.12)
        want = float(fmx.mouth_open(opened) - fmx.mouth_open(drv))
        out = run(node, [face_of(opened)])
        placed = float(fmx.mouth_open(_placed(node)) - placed0)
        seen = float(fmx.mouth_open(det.detect(out)[0]) - seen0)
    finally:
        det.close()
    assert want > 0.05
    assert 0.8 * want < placed < 1.25 * want
    assert seen > 0.5 * want
    assert 0.6 <= node.motion.gains["mouth_open"] <= 2.5


def test_expression_gains_make_each_probe_match_the_driver(child):
    """Every synthetic probe expression, mapped onto the avatar, changes its feature as the driver's."""
    node = make_node([child], idle=False)
    lm = node.rig.lm.copy()
    drv = lm.astype(np.float64).copy()
    drv[:, :2] = drv[:, :2] * [1.3, 1.1] + [30, 10]  # a wider face with another mouth / brow layout
    run(node, [face_of(drv)])
    m = node.motion
    for name, e in rk.expression_probes(drv).items():
        want = rk._probe_feature(name, drv + e) - rk._probe_feature(name, drv)
        got = rk._probe_feature(name, m.avatar + m.map_expression(e) * [1, 1, 0.3]) - rk._probe_feature(name, m.avatar)
        assert abs(got - want) < 0.1 * abs(want), name


def test_nods_of_a_three_quarter_portrait_are_not_cut_down(shared_data):
    """Pearl earring (three quarters): an 8 degree nod moves the nose towards the chin as the driver's
    does; the hair and neck around the face follow without folding."""
    from nodes import face_metrics as fmx

    node = make_node([shared_data / "avatars" / "pearl_earring.jpg"], idle=False, follow=0.0)
    lm = node.rig.lm.astype(np.float64).copy()
    run(node, [face_of(lm)])
    pv = node.motion.pivot_n
    r = cv2.Rodrigues(np.radians([8.0, 0.0, 0.0]))[0]
    nod = (lm - pv) @ r.T + pv
    out = run(node, [face_of(nod)])
    want = float(fmx.pitch_proxy(nod) - fmx.pitch_proxy(lm))
    got = float(fmx.pitch_proxy(_placed(node)) - fmx.pitch_proxy(lm))
    assert node.rig.turn_scale == 1.0
    assert abs(want) > 0.05
    assert 0.75 < got / want < 1.25
    assert no_holes(node, out)


def test_the_avatars_eye_line_tilts_as_the_drivers_in_the_picture(shared_data, talking):
    """A frontal driver nods and tilts; on the three-quarter pearl earring (and the frontal child) the
    eye line's angle in the picture changes as the driver's does: a nod adds no tilt, a tilt is kept."""
    from nodes import face_metrics as fmx

    _, lms = talking
    drv = next(x for x in lms if x is not None).astype(np.float64)
    pv = rk.Motion._pivot(drv)
    for avatar in ("pearl_earring.jpg", "painted_child.jpg"):
        node = make_node([shared_data / "avatars" / avatar], idle=False, follow=0.0)
        run(node, [face_of(drv)])
        roll0 = float(fmx.roll_deg(_placed(node)))
        for pitch, roll in ((10.0, 0.0), (-10.0, 0.0), (0.0, 6.0), (8.0, -5.0)):
            r = cv2.Rodrigues(np.radians([pitch, 0.0, roll]))[0]
            moved = (drv - pv) @ r.T + pv
            run(node, [face_of(moved)])
            want = float(fmx.roll_deg(moved) - fmx.roll_deg(drv))
            got = float(fmx.roll_deg(_placed(node))) - roll0
            assert abs(got - want) < 0.5, (avatar, pitch, roll, got, want)


def test_mouth_cavity_never_paints_outside_the_lips():
    """An inner-lip corner placed past the outer one (a turn, a wide smile) must not put a dark wedge
    on the cheek: the cavity is clipped to the outer-lip polygon."""
    repo = Path(__file__).resolve().parents[2]
    img = cv2.imread(str(repo / "presets" / "assets" / "demo_avatar.png"))
    lm = np.load(repo / "presets" / "assets" / "demo_avatar.npz")["landmarks"].astype(np.float64)
    painter = rk.MouthPainter(img.shape[:2], lm, img, teeth=False)
    dst = lm[:, :2].copy()
    mw = np.linalg.norm(dst[rk.MOUTH_R] - dst[rk.MOUTH_L])
    dst[rk.LIP_BOTTOM] += (0, 0.3 * mw)  # open the mouth
    for i in (14, 87, 178, 317, 402):  # the lower inner lip with it
        dst[i] += (0, 0.25 * mw)
    dst[308] += (0.3 * mw, 0.1 * mw)  # the right inner corner far past the outer corner
    out = img.copy()
    painter.paint(out, dst)
    assert painter.amount > 0.5
    changed = np.abs(out.astype(int) - img).sum(-1) > 0
    lips = np.zeros(img.shape[:2], np.uint8)
    cv2.fillPoly(lips, [np.round(dst[rk.OUTER_LIPS]).astype(np.int32)], 1)
    lips = cv2.dilate(lips, np.ones((3, 3), np.uint8)).astype(bool)  # the polygon's anti-aliased rim
    assert changed.any() and not (changed & ~lips).any()


def test_a_turn_shows_no_more_of_a_three_quarter_avatars_hidden_side_than_its_pixels_hold(shared_data, child):
    """Pearl earring turned 25 degrees towards her hidden cheek (a thin strip of pixels in the painting):
    the turn stops where the face would be stretched past ``max_stretch`` (no streaks), continuously and
    without holes; with no limit it turns all the way. A frontal avatar turns 20 degrees uncut."""
    def excess(node) -> float:
        rig = node.rig
        a = rk.signed_areas(rig.last_base, rig.skin_tris) * rig.skin_sign
        return float(np.maximum(a - rig.max_stretch * rig.skin_area, 0.0).sum() / rig.face_area)

    pearl = shared_data / "avatars" / "pearl_earring.jpg"
    turns = {}
    for limit in (3.0, 50.0):
        node = make_node([pearl], idle=False, follow=0.0, max_stretch=limit)
        lm = node.rig.lm.copy()
        run(node, [face_of(lm)])
        out = run(node, [face_of(_yaw(lm, -25))])
        turns[limit] = node.rig.turn_scale
        assert no_holes(node, out)
        if limit == 3.0:
            assert excess(node) <= rk.STRETCH_SLACK + 1e-9
    assert turns[50.0] == 1.0
    assert 0.1 < turns[3.0] < 0.8  # turned less, but still turned
    node = make_node([child], idle=False, follow=0.0)
    lm = node.rig.lm.copy()
    run(node, [face_of(lm)])
    run(node, [face_of(_yaw(lm, 20))])
    assert node.rig.turn_scale == 1.0


def test_the_lips_never_cross_when_a_thin_lipped_avatar_pouts(shared_data, talking):
    """The cartoon's lips are thinner than the driver's: each lip vertex's own deformation map once
    magnified the driver's downward mouth motion 1.5x on the upper lip and 0.6x on the lower one, so
    a pout pushed the upper lip through the lower one at the corners (a saw-tooth). Over 120 real
    frames, every outer upper-lip point stays above the lower-lip point beneath it."""
    frames, lms = talking
    node = make_node([shared_data / "avatars" / "cartoon_boy.jpg"], idle=False)
    pairs = np.array([(185, 146), (40, 91), (39, 181), (37, 84), (0, 17), (267, 314), (269, 405), (270, 321),
                      (409, 375)])
    worst = np.inf
    for lm in lms[:120]:
        run(node, [face_of(lm)] if lm is not None else [])
        d = node.dst
        _, v = rk.fmx.face_axes(_placed(node))
        gap = ((d[pairs[:, 1]] - d[pairs[:, 0]]) @ v)  # down the face: lower minus upper
        worst = min(worst, float(gap.min()))
    assert worst > -0.5, worst


def test_teeth_take_the_pictures_own_light_and_show_where_they_meet(shared_data, child):
    """Teeth are near-white in each picture's own light: warm under Mona's yellow varnish, never brighter
    than its brightest skin. Wide open, the upper row darkens slightly where one tooth meets the next."""
    mona = cv2.imread(str(shared_data / "avatars" / "mona_lisa.jpg"))
    lm = rk.detect_landmarks(mona)
    face = np.zeros(mona.shape[:2], np.uint8)
    cv2.fillPoly(face, [np.round(lm[rk.FACE_OVAL, :2]).astype(np.int32)], 1)
    b, g, r = rk.tooth_colour(mona, face > 0)
    assert r > g > b + 15  # warm, as the varnish makes white
    assert (b + g + r) / 3 < np.percentile(mona[face > 0].mean(1), 99.5)
    node = make_node([child], idle=False)
    lm = node.rig.lm.copy()
    run(node, [face_of(lm)])
    out = run(node, [face_of(_mouth_open(lm, 0.35))])
    gray = cv2.cvtColor(out, cv2.COLOR_BGR2GRAY).astype(np.float32)
    d = node.dst
    mw = float(np.linalg.norm(d[rk.MOUTH_R] - d[rk.MOUTH_L]))
    mid = 0.5 * (d[rk.MOUTH_L] + d[rk.MOUTH_R])
    up = d[rk.INNER_UPPER]
    order = np.argsort(up[:, 0])

    def at(u: float) -> float:  # just below the upper lip, u mouth widths right of the middle
        x = mid[0] + u * mw
        y = np.interp(x, up[order, 0], up[order, 1]) + 0.03 * mw
        return float(gray[int(round(y)), int(round(x))])

    for edge in (-0.105, 0.0, 0.105):
        assert at(edge) < 0.5 * (at(edge - 0.05) + at(edge + 0.05)) - 3


def _silhouette_on_outline(node: rk.Reenact, out: np.ndarray) -> float:
    """The fraction of the far side's outline points (cheek, eyes to mouth) of the frame's mesh with the
    painted face inside them and the dark background beyond them (3% of the face width either side)."""
    p = node.dst[:rk.N_LM]
    ov = p[rk.FACE_OVAL]
    fw = float(np.ptp(ov[:, 0]))
    c = ov.mean(0)
    grey = cv2.cvtColor(out, cv2.COLOR_BGR2GRAY)
    y0, y1 = p[rk.EYE_R_LO, 1].max(), p[rk.CHIN_LIP, 1]
    hits = []
    for q in ov[(ov[:, 0] < c[0]) & (ov[:, 1] > y0) & (ov[:, 1] < y1)]:
        d = (q - c) / np.linalg.norm(q - c)
        (xi, yi), (xo, yo) = (np.round(q - 0.03 * fw * d).astype(int), np.round(q + 0.03 * fw * d).astype(int))
        hits.append(grey[yi, xi] > 60 and grey[yo, xo] < 40)
    assert len(hits) >= 4
    return float(np.mean(hits))


def test_the_far_cheek_of_a_three_quarter_avatar_is_fitted_and_turns_without_a_jagged_edge(
        shared_data, monkeypatch):
    """Pearl earring: the detector draws her far outline through the far eye and the nose, leaving the
    far cheek outside the face mesh. ``fit_far_outline`` moves it out to the painted silhouette (skin
    inside, background beyond), and a turn towards that side then keeps a smooth edge; with the
    detector's outline the silhouette lies inside the hair-and-background triangles and is cut into a
    saw-tooth. Frontal avatars keep their outline."""
    from nodes.faceswap import lab_stats, occlusion_distance, skin_region

    pearl = shared_data / "avatars" / "pearl_earring.jpg"
    img = cv2.imread(str(pearl))
    lm = rk.detect_landmarks(img)
    fitted = rk.fit_far_outline(img, lm)
    ov, fo = lm[rk.FACE_OVAL, :2].astype(np.float64), fitted[rk.FACE_OVAL, :2].astype(np.float64)
    fw = float(np.ptp(ov[:, 0]))
    moved = np.linalg.norm(fo - ov, axis=1)
    assert moved.max() > 0.1 * fw  # the far cheek is about a ninth of her face wide
    p = lm[:, :2].astype(np.float64)
    skin = occlusion_distance(img, lab_stats(img, skin_region(p, img.shape[:2], fw))) < 3.0
    between = np.zeros(img.shape[:2], np.uint8)
    cv2.fillPoly(between, [np.round(fo).astype(np.int32)], 1)
    cv2.fillPoly(between, [np.round(ov).astype(np.int32)], 0)
    assert skin[between.astype(bool)].mean() > 0.8  # what the fit took in is her skin
    c = ov.mean(0)
    for k in np.nonzero(moved > 0.05 * fw)[0]:  # and just beyond the new outline is the background
        out_dir = (fo[k] - c) / np.linalg.norm(fo[k] - c)
        x, y = np.round(fo[k] + 0.04 * fw * out_dir).astype(int)
        assert not skin[y, x]
    assert abs(float(fitted[rk.FACE_OVAL, 2].mean() - lm[rk.FACE_OVAL, 2].mean())) > 0  # depth follows
    for name in ("painted_child.jpg", "cartoon_boy.jpg"):
        im = cv2.imread(str(shared_data / "avatars" / name))
        l2 = rk.detect_landmarks(im)
        f2 = rk.fit_far_outline(im, l2)
        assert np.abs(f2[:, :2] - l2[:, :2]).max() < 0.01 * np.ptp(l2[rk.FACE_OVAL, 0])

    on = {}
    for fit in (True, False):
        if not fit:
            monkeypatch.setattr(rk, "fit_far_outline", lambda image, lm: lm)
            monkeypatch.setattr(rk, "PREP_VERSION", rk.PREP_VERSION + "-unfitted")  # not the cached fit
        node = make_node([pearl], idle=False, follow=0.0)
        rest = node.rig.lm.copy()
        run(node, [face_of(rest)])
        out = run(node, [face_of(_yaw(rest, -20))])
        assert no_holes(node, out)
        on[fit] = _silhouette_on_outline(node, out)
    assert on[True] >= 0.8  # turned, the painted edge is still the mesh's outline
    assert on[False] <= 0.2  # the detector's outline runs through the cheek


# ---- a portrait cropped close to the face ----------------------------------------------------------

def _cropped_at_chin(src: Path, dst: Path, below: float = 0.08) -> np.ndarray:
    """``src`` cut off ``below`` face widths under the chin (as a webcam frame or a tight portrait is);
    returns the cut image's landmarks."""
    img = cv2.imread(str(src))
    lm = rk.detect_landmarks(img)
    fw = float(np.ptp(lm[rk.FACE_OVAL, 0]))
    cv2.imwrite(str(dst), img[:int(lm[152, 1] + below * fw)])
    return lm


def test_a_head_moving_towards_the_pictures_edge_pushes_the_neck_out_instead_of_stopping(child, tmp_path):
    """The chin a few pixels above the bottom edge; the driver nods down and moves down by a third of a
    face width. The avatar follows all of it (before, the neck folded against the fixed edge and the
    whole motion was cut down), the picture stays covered, and the edge's pixels slide out of it, never
    in: moving back up pulls nothing from beyond the edge into view."""
    cut = tmp_path / "cut.png"
    _cropped_at_chin(child, cut)
    node = make_node([cut], idle=False)
    lm = node.rig.lm.copy()
    h, w = node.out_shapes["frame"]
    assert h - lm[152, 1] < 0.1 * node.rig.fw
    run(node, [face_of(lm)])
    pv = node.motion.pivot_n
    r = cv2.Rodrigues(np.radians([-10.0, 0.0, 0.0]))[0]
    down = (lm - pv) @ r.T + pv + [0.0, node.rig.fw / 3, 0.0]
    out = run(node, [face_of(down)])
    assert node.rig.turn_scale == 1.0
    moved = node.dst[152, 1] - lm[152, 1]
    assert moved > 0.25 * node.rig.fw  # the chin went down (and out of the picture), as the driver's did
    assert no_holes(node, out)
    edge = (node.rig.out_y > 0) & (np.arange(len(node.dst)) >= rk.N_LM)
    assert edge.any()
    assert (node.dst[edge, 1] >= node.rig.src2[edge, 1] - 1e-9).all()
    assert (node.dst[edge, 1] > node.rig.src2[edge, 1] + 1.0).any()  # pushed out ahead of the chin
    up = lm - [0.0, node.rig.fw / 3, 0.0]
    out = run(node, [face_of(up)])
    assert (node.dst[edge, 1] >= node.rig.src2[edge, 1] - 1e-9).all()  # never pulled in
    assert no_holes(node, out)
    # the bottom row: the picture's own, nothing from beyond the edge stretched in
    assert np.abs(out[-1].astype(np.int16) - node.canvas[-1]).max() <= 2


def test_a_head_shift_is_followed_until_the_face_nears_the_pictures_edge(child):
    """A driver moving sideways by 45% of a face width moves the avatar by as much (scaled to its face):
    the soft limit is the room left in the picture, not a fixed half face width (which took a fifth
    off this shift). A shift that would take the face out of the picture stops short of its edge."""
    node = make_node([child], idle=False)
    lm = node.rig.lm.copy()
    h, w = node.out_shapes["frame"]
    fw = node.rig.fw
    run(node, [face_of(lm)])
    run(node, [face_of(lm + [0.45 * fw, 0.0, 0.0])])
    moved = float(np.mean(node.dst[rk.RIGID, 0] - lm[rk.RIGID, 0]))
    assert 0.42 * fw < moved < 0.5 * fw  # (the neutral-to-avatar fit scales it by about 1.05)
    run(node, [face_of(lm + [3.0 * w, 0.0, 0.0])])
    centre = 0.5 * (node.dst[rk.FACE_OVAL, 0].min() + node.dst[rk.FACE_OVAL, 0].max())
    assert centre < w - 0.25 * fw + 1.0
