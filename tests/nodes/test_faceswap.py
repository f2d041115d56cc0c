"""The faceswap node on real faces from ../shared/data (real mediapipe): expression kept, identity
moved, pass-through without a face, bad avatars, awkward faces, mouth mask, occlusion, selection,
few-shot, and the torch path giving the numba path's frames. Frame subsets keep it quick."""

from __future__ import annotations

import os
from dataclasses import replace

import cv2
import numpy as np
import pytest

from engine.errors import UserError
from engine.node import Avatar, BuildContext
from engine.preset import loads_preset
from engine.runtime import Engine
from engine.sources import read_frames
from nodes import face_metrics as fmx
from nodes import face_model
from nodes.evaluate import FaceNormaliser, motion_transfer
from nodes.face import FaceNode, MeshDetector, detect_landmarks, make_face
from nodes.faceswap import (
    BROW_LEFT,
    BROW_RIGHT,
    EYE_LEFT,
    EYE_RIGHT,
    LIPS_INNER,
    LIPS_OUTER,
    FaceSwap,
    _TrackState,
    clean_lids,
    face_triangles,
    lab_stats,
    texture_seen,
)

pytestmark = pytest.mark.data


@pytest.fixture(scope="module", autouse=True)
def _private_cache(tmp_path_factory):
    old = os.environ.get("AVATARCAST_CACHE")
    os.environ["AVATARCAST_CACHE"] = str(tmp_path_factory.mktemp("cache"))
    yield
    if old is None:
        os.environ.pop("AVATARCAST_CACHE", None)
    else:
        os.environ["AVATARCAST_CACHE"] = old


def swap_node(shared_data, size, avatars=("mona_lisa.jpg",), device="cpu", **params) -> FaceSwap:
    ctx = BuildContext(source_size=size, fps=30.0, device=device,
                       avatar=Avatar(images=[shared_data / "avatars" / a for a in avatars]))
    n = FaceSwap("faceswap", FaceSwap.validate_params(params)[0], ctx)
    n.open()
    return n


def swap(n: FaceSwap, frame: np.ndarray, faces) -> np.ndarray:
    frame = np.ascontiguousarray(frame)
    frame.flags.writeable = False
    out = {"frame": np.empty_like(frame)}
    n.process({"frame": frame, "faces": faces}, out)
    return out["frame"]


@pytest.fixture(scope="module")
def talking(shared_data):
    """Every third of the first 120 frames of woman_expressions (wink, frown, turns, talking) with
    their tracked faces."""
    frames = read_frames(shared_data / "driving" / "woman_expressions.mp4", 40, step=3)
    fn = FaceNode("face", FaceNode.validate_params({"max_faces": 1})[0],
                  BuildContext(source_size=frames[0].shape[:2], fps=10.0))
    fn.open()
    faces = []
    out = {"frame": np.empty_like(frames[0]), "faces": []}
    for f in frames:
        fn.process({"frame": f}, out)
        faces.append(list(out["faces"]))
    fn.close()
    assert all(faces)
    return frames, faces


def test_mesh_triangles_leave_eyes_and_mouth_open():
    from nodes.face_model import canonical

    tris = face_triangles()
    assert tris.shape == (852, 3)
    p = canonical()[0][:, :2]
    e1, e2 = p[tris[:, 1]] - p[tris[:, 0]], p[tris[:, 2]] - p[tris[:, 0]]
    assert (e1[:, 0] * e2[:, 1] - e1[:, 1] * e2[:, 0] > 0).all()  # all front-facing, counter-clockwise
    for loop in (EYE_LEFT, EYE_RIGHT):  # no triangle covers an eye's centre
        c = p[list(loop)].mean(0)
        a, b, d = p[tris[:, 0]], p[tris[:, 1]], p[tris[:, 2]]

        def side(u, v, c=c):
            return (v[:, 0] - u[:, 0]) * (c[1] - u[:, 1]) - (v[:, 1] - u[:, 1]) * (c[0] - u[:, 0])

        inside = (side(a, b) > 0) & (side(b, d) > 0) & (side(d, a) > 0)
        assert not inside.any()
    inner = set(LIPS_INNER)
    assert not any(set(t) <= inner for t in tris.tolist())  # nothing spans the lips' opening


def test_swap_keeps_expression_and_moves_identity(shared_data, talking):
    frames, faces = talking
    avatar = "painted_child.jpg"
    n = swap_node(shared_data, frames[0].shape[:2], (avatar,))
    det_in, det_out = MeshDetector(max_faces=1), MeshDetector(max_faces=1)
    img = cv2.imread(str(shared_data / "avatars" / avatar))
    norm = FaceNormaliser(img, detect_landmarks(img)[0])
    lin, lout, to_av, to_orig, changed = [], [], [], [], []
    for f, fc in zip(frames, faces, strict=True):
        o = swap(n, f, fc)
        changed.append(float(np.abs(o.astype(int) - f).mean()))
        a, b = det_in.detect(f), det_out.detect(o)
        assert b, "the swapped face must still be a face"
        lin.append(a[0])
        lout.append(b[0])
        no = norm(o, b[0])
        to_av.append(norm.distance(no, norm.avatar))
        to_orig.append(norm.distance(no, norm(f, a[0])))
    det_in.close()
    det_out.close()
    assert np.mean(changed) > 2.0  # something was swapped
    r = motion_transfer(np.array(lin), np.array(lout))
    assert r["motion_r"] >= 0.9, r  # 40 frames: a noisier estimate than the eval's whole clips
    assert r["r_mouth_open"] >= 0.95 and r["r_yaw"] >= 0.9, r
    assert np.mean(to_av) < np.mean(to_orig), (np.mean(to_av), np.mean(to_orig))


def test_no_face_passes_the_frame_through_untouched(shared_data, talking):
    frames, faces = talking
    n = swap_node(shared_data, frames[0].shape[:2])
    rng = np.random.default_rng(0)
    noise = rng.integers(0, 256, frames[0].shape, dtype=np.uint8)
    assert np.array_equal(swap(n, noise, []), noise)
    assert np.array_equal(swap(n, frames[0], []), frames[0])
    # through the engine: face node finds nothing in a blank frame
    text = (f"name: t\navatar:\n  images: [{shared_data / 'avatars' / 'mona_lisa.jpg'}]\n"
            "pipeline:\n  - node: face\n  - node: faceswap\n")
    eng = Engine([loads_preset(text)], source_size=(320, 240), live=False)
    eng.start()
    try:
        blank = np.full((240, 320, 3), 77, np.uint8)
        out = np.empty_like(blank)
        eng.process(blank, out)
        assert np.array_equal(out, blank)
    finally:
        eng.close()


def test_avatar_without_a_face_is_a_clear_error_at_open(shared_data):
    cat = shared_data / "avatars" / "cat_no_face.jpg"
    with pytest.raises(UserError, match="cat_no_face.jpg") as ei:
        swap_node(shared_data, (240, 320), ("cat_no_face.jpg",))
    assert "no face" in str(ei.value)
    text = f"name: t\navatar:\n  images: [{cat}]\npipeline:\n  - node: face\n  - node: faceswap\n"
    eng = Engine([loads_preset(text)], source_size=(320, 240), live=False)
    with pytest.raises(UserError, match="cat_no_face.jpg"):
        eng.start()
    eng.close()


def test_tiny_border_and_profile_faces(shared_data, talking):
    frames, faces = talking
    f, face = frames[10], faces[10][0]
    h, w = f.shape[:2]
    n = swap_node(shared_data, (h, w))
    lm = face.landmarks.copy()
    c = lm[:, :2].mean(0)
    # tiny: 30 px wide -> left alone
    tiny = lm.copy()
    tiny[:, :2] = (lm[:, :2] - c) * (30.0 / face.width) + c
    assert np.array_equal(swap(n, f, [replace(face, landmarks=tiny, box=(0, 0, 30, 30), track_id=50)]), f)
    # at the border: half the face outside the frame -> no crash, changes only inside the face box
    for dx, dy in ((-0.6 * face.width - c[0], 0), (w - c[0] + 0.3 * face.width, 0), (0, h - c[1])):
        moved = lm.copy()
        moved[:, 0] += dx
        moved[:, 1] += dy
        o = swap(n, f, [make_face(moved, (h, w), track_id=60)])
        diff = np.abs(o.astype(int) - f).sum(-1) > 0
        x0, y0 = np.floor(moved[:, :2].min(0)).astype(int)
        x1, y1 = np.ceil(moved[:, :2].max(0)).astype(int) + 1
        inside = np.zeros_like(diff)
        inside[max(y0, 0):max(y1, 0), max(x0, 0):max(x1, 0)] = True
        assert not (diff & ~inside).any()
    # profile: past the yaw limit the swap has faded out completely
    assert np.array_equal(swap(n, f, [replace(face, yaw=85.0, track_id=70)]), f)
    # a collapsed (edge-on) mesh: no crash, nothing outside the face box
    flat = lm.copy()
    flat[:, 0] = (lm[:, 0] - c[0]) * 0.08 + c[0]
    o = swap(n, f, [replace(make_face(flat, (h, w), track_id=80), yaw=30.0)])
    diff = np.abs(o.astype(int) - f).sum(-1) > 0
    ys, xs = np.nonzero(diff)
    if len(xs):
        assert xs.min() >= flat[:, 0].min() - 1 and xs.max() <= flat[:, 0].max() + 1


def assert_kept(kept, painted, live, where, tol) -> None:
    """``kept`` shows the live pixels at ``where`` (mean difference under ``tol``); ``painted``
    (the same swap without the protection) clearly does not."""
    d_kept = np.abs(kept[where].astype(int) - live[where]).mean()
    d_painted = np.abs(painted[where].astype(int) - live[where]).mean()
    assert d_kept < tol and d_painted > 4.0 * max(d_kept, 1.0), (d_kept, d_painted)


def _open_mouth_frame(shared_data):
    frames = read_frames(shared_data / "driving" / "woman_expressions.mp4", 60, step=5)
    best = None
    for f in frames:
        found = detect_landmarks(f)
        if found:
            mo = float(fmx.mouth_open(found[0]))
            if best is None or mo > best[0]:
                best = (mo, f, found[0])
    return best


def test_mouth_mask_keeps_the_real_mouth_when_open(shared_data):
    mo, f, lm = _open_mouth_frame(shared_data)
    assert mo > 0.2, mo
    face = make_face(lm, f.shape[:2], track_id=1)
    inner = lm[list(LIPS_INNER), :2]
    c = inner.mean(0)
    m = np.zeros(f.shape[:2], np.uint8)
    cv2.fillPoly(m, [np.round(c + (inner - c) * 0.8).astype(np.int32)], 1)
    lips = np.zeros(f.shape[:2], np.uint8)
    outer = lm[list(LIPS_OUTER), :2]
    cv2.fillPoly(lips, [np.round(outer).astype(np.int32)], 1)
    cv2.fillPoly(lips, [np.round(inner).astype(np.int32)], 0)
    lips = cv2.erode(lips, np.ones((3, 3), np.uint8)).astype(bool)
    on = swap(swap_node(shared_data, f.shape[:2], mouth_mask=True), f, [face])
    off = swap(swap_node(shared_data, f.shape[:2], mouth_mask=False), f, [face])
    inside = m.astype(bool)
    # the mouth's opening is always the streamer's own (no stretched avatar lips across it)
    assert np.array_equal(on[inside], f[inside]) and np.array_equal(off[inside], f[inside])
    # mouth mask on: the lips are the streamer's too (nearly: soft edge); off: the avatar's lips
    assert_kept(on, off, f, lips, 2.0)


def test_a_shut_eye_shows_the_streamers_own_lash_line(shared_data, talking):
    # frame 60 of woman_expressions: both eyes shut. Where the upper and lower lid meet, and at the eyes'
    # corners, the swap shows the streamer's own lids: Mona's lid triangles meeting there would draw her
    # own lash line crushed into a hard streak and the pale corner of her painted eye as a bright sliver
    frames, faces = talking
    f, face = frames[20], faces[20][0]
    lm = face.landmarks
    line = np.zeros(f.shape[:2], np.uint8)
    for loop in (EYE_RIGHT, EYE_LEFT):
        e = lm[list(loop), :2]
        ew = float(np.linalg.norm(e[0] - e[8]))
        assert fmx.eye_open(lm, "right" if loop == EYE_RIGHT else "left") < 0.1  # shut
        cv2.polylines(line, [np.round(e).astype(np.int32)], True, 1, max(1, round(0.04 * ew)))
        for k in (0, 8):
            cv2.circle(line, tuple(int(v) for v in np.round(e[k])), round(0.06 * ew), 1, -1)
    line = line.astype(bool)
    out = swap(swap_node(shared_data, f.shape[:2]), f, [face])
    diff = np.abs(out.astype(int) - f.astype(int)).max(2)
    assert diff[line].mean() < 3.0 and np.percentile(diff[line], 99) < 25, (diff[line].mean(), np.percentile(diff[line], 99))


def test_brow_show_lets_the_streamers_brows_through(shared_data, talking):
    frames, faces = talking
    f, face = frames[5], faces[5][0]
    lm = face.landmarks
    core = np.zeros(f.shape[:2], np.uint8)
    for loop in (BROW_RIGHT, BROW_LEFT):
        b = lm[list(loop), :2]
        c = b.mean(0)
        cv2.fillPoly(core, [np.round(c + (b - c) * 0.9).astype(np.int32)], 1)
    core = core.astype(bool)
    assert core.sum() > 50
    full = swap(swap_node(shared_data, f.shape[:2], brow_show=1.0, blend="alpha"), f, [face])
    part = swap(swap_node(shared_data, f.shape[:2], brow_show=0.5, blend="alpha"), f, [face])
    off = swap(swap_node(shared_data, f.shape[:2], brow_show=0.0, blend="alpha"), f, [face])
    # fully shown: the brows are the streamer's (nearly: soft edge); off: the avatar paints them
    assert_kept(full, off, f, core, 6.0)
    # half shown: in between
    d = [np.abs(x[core].astype(int) - f[core]).mean() for x in (full, part, off)]
    assert d[0] < d[1] < d[2], d
    # away from the brows (the chin) nothing changes
    chin = (slice(int(lm[152, 1]) - 12, int(lm[152, 1]) - 4), slice(int(lm[152, 0]) - 4, int(lm[152, 0]) + 4))
    assert np.array_equal(full[chin], off[chin])


def test_occluder_in_front_of_the_face_is_not_painted_over(shared_data, talking):
    frames, faces = talking
    f, face = frames[5], faces[5][0]
    lm = face.landmarks
    n = swap_node(shared_data, f.shape[:2], occlusion="skin")
    n2 = swap_node(shared_data, f.shape[:2], occlusion="off")
    for _ in range(3):  # let the colour statistics settle on the plain face
        swap(n, f, [face])
    # a dark microphone over the cheek
    occluded = f.copy()
    cx, cy = lm[205, :2].astype(int)
    r = int(0.1 * face.width)
    occluded[cy - r:cy + r, cx - r:cx + r] = (40, 40, 45)
    core = (slice(cy - r // 2, cy + r // 2), slice(cx - r // 2, cx + r // 2))  # the soft edge aside
    assert_kept(swap(n, occluded, [face]), swap(n2, occluded, [face]), occluded, core, 6.0)


def test_no_hole_in_the_swapped_nose(shared_data, talking):
    """Where the avatar's shot shows neither a part of the face nor its mirror twin (the dog's folds
    beside its muzzle), the swap must still paint that part: no sliver of the live face may show
    through the avatar's nose. The live face is painted green (its landmarks kept) and the swap
    drawn opaque over it; no green may be left around the nose."""
    frames, faces = talking
    avatar = "dog.jpg"
    n = swap_node(shared_data, frames[0].shape[:2], avatars=(avatar,), blend="alpha", color="none",
                  occlusion="off", expression_detail=0.0, mouth_mask=False)
    nose = [1, 2, 4, 5, 6, 45, 275, 48, 278, 64, 294, 98, 327, 97, 326, 129, 358, 196, 419, 3, 248, 51, 281]
    worst = 0
    for f, fs in list(zip(frames, faces, strict=True))[::3]:
        lm = fs[0].landmarks[:, :2]
        green = f.copy()
        face_poly = np.round(lm[list(fmx.FACE_OVAL)]).astype(np.int32)
        cv2.fillPoly(green, [face_poly], (0, 255, 0))
        o = swap(n, green, fs).astype(np.int16)
        region = np.zeros(f.shape[:2], np.uint8)
        cv2.fillPoly(region, [cv2.convexHull(np.round(lm[nose]).astype(np.int32))], 1)
        left = (o[..., 1] > o[..., 2] + 60) & (o[..., 1] > o[..., 0] + 60) & (region > 0)
        worst = max(worst, int(left.sum()))
    assert worst == 0, f"{worst} live pixels show through the {avatar} swap's nose"


def test_clean_lids_paints_a_painted_eyes_white_out_of_the_lid_band_only():
    # a skin-coloured face with a white blob in the band above the right upper lid (where a painting's
    # eye white lies when the detector puts the lid inside the painted eye) and one on the cheek
    pts = face_model.canonical()[0]
    lm2 = 100.0 * pts[:, :2] + 150.0
    if lm2[10, 1] > lm2[152, 1]:  # forehead above the chin in the picture
        lm2[:, 1] = 300.0 - lm2[:, 1]
    rng = np.random.default_rng(0)
    tex = np.clip(np.array([120, 150, 200]) + rng.normal(0, 3, (300, 300, 3)), 0, 255).astype(np.uint8)
    lid = np.round((lm2[159] + lm2[27]) / 2).astype(int)
    cheek = np.round(lm2[205]).astype(int)
    for c in (lid, cheek):
        cv2.circle(tex, tuple(int(v) for v in c), 2, (250, 250, 250), -1)
    stats = lab_stats(tex, np.ones(tex.shape[:2], bool))
    out = clean_lids(tex, lm2, stats, 200.0)
    assert out[lid[1], lid[0]].max() < 215  # the band's white is skin now
    assert (out[cheek[1], cheek[0]] == 250).all()  # not the cheek's
    # nothing changes away from the eyes' lids (in the band, a noisy pixel may count as unlike skin)
    changed = np.argwhere(np.abs(out.astype(int) - tex).sum(2) > 0)[:, ::-1]
    eyes = lm2[list(EYE_RIGHT) + list(EYE_LEFT) + list(fmx.EYE_RIGHT_ABOVE) + list(fmx.EYE_LEFT_ABOVE)]
    near = np.linalg.norm(changed[:, None, :] - eyes[None], axis=2).min(1)
    assert len(changed) and near.max() < 6, near.max()


def test_texture_seen_counts_what_nearer_triangles_cover():
    # a triangle half behind a nearer one, the nearer one, one facing away, one far off on its own
    pts = np.array([[0, 0, 5], [40, 0, 5], [0, 40, 5],  # behind (depth 5)
                    [0, 0, 1], [40, 0, 1], [40, 40, 1],  # in front (depth 1), over half of it
                    [60, 0, 0], [60, 40, 0], [100, 0, 0],  # facing away (clockwise)
                    [0, 60, 9], [40, 60, 9], [0, 100, 9]], np.float64)
    tris = np.array([[0, 1, 2], [3, 4, 5], [6, 7, 8], [9, 10, 11]], np.int32)  # the third one clockwise
    seen = texture_seen(pts, tris, (110, 110))
    assert seen[1] == pytest.approx(1.0, abs=0.03) and seen[3] == pytest.approx(1.0, abs=0.03)
    assert seen[0] == pytest.approx(0.5, abs=0.05)
    assert seen[2] == 0.0


def test_no_triangle_takes_its_pixels_from_a_twin_the_shot_hides(shared_data):
    """Pearl's near nostril faces away from the painter, so it is drawn from its mirror twin; but her
    far nostril lies behind her nose's tip, and taking it would paint the cheek beyond the nose into
    the nostril (a bright sliver). Every triangle drawn from its twin, in every view, has a twin the
    shot shows; the rest are drawn from their own place, after all the others."""
    from nodes.faceswap import OWN, SYMMETRIC, mirror_triangles

    n = swap_node(shared_data, (512, 512), avatars=("pearl_earring.jpg",))
    pearl = n.shots[0]
    twin = mirror_triangles()
    hidden_twin = pearl.seen[np.maximum(twin, 0)] < 0.5
    assert hidden_twin.sum() >= 5  # around her nose and her far cheek
    for view in (OWN, SYMMETRIC):  # (FLIPPED draws the whole shot's mirror image)
        assert not ((pearl.tri_offsets[view] > 0) & hidden_twin & (twin >= 0) & pearl.shown).any(), view
    use, fill = pearl.drawn
    assert len(fill) and not np.intersect1d(use, fill).size and len(use) + len(fill) == len(n.tris)


def test_selection_keeps_the_same_person_and_all_swaps_everyone(shared_data, talking):
    frames, faces = talking
    f, face = frames[0], faces[0][0]
    h, w = f.shape[:2]
    lm = face.landmarks
    c = lm[:, :2].mean(0)

    def person(scale, x, tid):
        q = lm.copy()
        q[:, :2] = (lm[:, :2] - c) * scale + (x, c[1])
        return make_face(q, (h, w), track_id=tid)

    big, small = person(0.45, w * 0.28, 1), person(0.35, w * 0.72, 2)
    n = swap_node(shared_data, (h, w), select="largest")
    o = swap(n, f, [big, small])
    left, right = np.abs(o.astype(int) - f)[:, : w // 2].sum(), np.abs(o.astype(int) - f)[:, w // 2:].sum()
    assert left > 0 and right == 0
    # the people change sizes: the avatar stays on person 1
    o = swap(n, f, [person(0.3, w * 0.28, 1), person(0.45, w * 0.72, 2)])
    assert np.abs(o.astype(int) - f)[:, : w // 2].sum() > 0 and np.abs(o.astype(int) - f)[:, w // 2:].sum() == 0
    o = swap(swap_node(shared_data, (h, w), select="all"), f, [big, small])
    assert np.abs(o.astype(int) - f)[:, : w // 2].sum() > 0 and np.abs(o.astype(int) - f)[:, w // 2:].sum() > 0
    o = swap(swap_node(shared_data, (h, w), select="index", index=1), f, [big, small])
    assert np.abs(o.astype(int) - f)[:, : w // 2].sum() == 0 and np.abs(o.astype(int) - f)[:, w // 2:].sum() > 0
    # the node hands on the faces it swapped (the avatar's face is drawn at their landmarks)
    for sel, want in (("largest", [big]), ("all", [big, small]), ("index", [small])):
        ports = {"frame": np.empty_like(f)}
        swap_node(shared_data, (h, w), select=sel, index=1).process({"frame": f, "faces": [big, small]}, ports)
        assert [x.track_id for x in ports["faces"]] == [x.track_id for x in want]


def test_few_shot_uses_the_shot_nearest_the_pose(shared_data, talking):
    frames, faces = talking
    n = swap_node(shared_data, frames[0].shape[:2], ("mona_lisa.jpg", "pearl_earring.jpg"))
    poses = [s.pose for s in n.shots]
    assert abs(poses[0][0] - poses[1][0]) > 10  # a frontal and a three-quarter shot
    face = faces[0][0]
    # from a state on the other shot, a head posed like each shot switches to it
    picks = [n._pick_shot(_TrackState(shot=1 - k), replace(face, yaw=float(poses[k][0]), pitch=float(poses[k][1])))
             for k in range(2)]
    assert picks == [0, 1]


@pytest.mark.parametrize("blend", ["seamless", "relight"])
def test_torch_path_gives_the_numba_frames(shared_data, talking, blend):
    torch = pytest.importorskip("torch")
    frames, faces = talking
    a = swap_node(shared_data, frames[0].shape[:2], blend=blend)
    b = swap_node(shared_data, frames[0].shape[:2], blend=blend)
    b._torch, b._dev = torch, torch.device("cpu")  # the CUDA code path, run on the CPU
    for f, fc in zip(frames[:4], faces[:4], strict=True):
        oa, ob = swap(a, f, fc), swap(b, f, fc)
        assert np.abs(oa.astype(int) - ob).max() <= 1


def test_texture_softens_to_the_cameras_detail(shared_data, talking):
    from nodes.faceswap import detail

    frames, faces = talking
    n = swap_node(shared_data, frames[0].shape[:2])
    shot = n.shots[0]
    d = [lv[3] for lv in shot.levels]
    assert all(a > b for a, b in zip(d, d[1:], strict=False))  # each level softer than the last
    shot.choose_level(1e9)
    assert shot.level == 0  # a sharp camera: the avatar's own texture
    shot.choose_level(d[3])
    assert shot.level == 3
    # a blurred camera frame measures less detail than the same frame sharp
    f, face = frames[0], faces[0][0]
    from nodes.faceswap import skin_region

    region = skin_region(face.landmarks[:, :2], f.shape[:2], face.width)
    assert detail(cv2.GaussianBlur(f, (0, 0), 2.0), region, face.width) < 0.8 * detail(f, region, face.width)


def test_seamless_blend_runs_and_differs_only_inside_the_face(shared_data, talking):
    frames, faces = talking
    f, fc = frames[8], faces[8]
    a = swap(swap_node(shared_data, f.shape[:2], blend="alpha"), f, fc)
    s = swap(swap_node(shared_data, f.shape[:2], blend="seamless"), f, fc)
    diff = np.abs(a.astype(int) - s).sum(-1) > 0
    assert diff.any()
    x0, y0, x1, y1 = (int(v) for v in fc[0].box)
    assert not diff[: max(y0 - 2, 0)].any() and not diff[y1 + 3:].any()
    assert not diff[:, : max(x0 - 2, 0)].any() and not diff[:, x1 + 3:].any()


def _dim_room(shared_data, talking, blend):
    """A frame darkened to a dim room, swapped with ``blend`` and with ``alpha`` (the avatar not
    recoloured). Returns the frame's face, the dim frame, both swaps, the last (offset, gain) and
    how far each swap's face brightness is from the dim live face's."""
    frames, faces = talking
    f, fc = frames[8], faces[8]
    dark = np.ascontiguousarray((f * 0.3).astype(np.uint8))
    n = swap_node(shared_data, f.shape[:2], color="none", blend=blend)
    got = []
    build = n.mask.lighting_offset
    n.mask.lighting_offset = lambda *a, **k: got.append(build(*a, **k)) or got[-1]
    s = swap(n, dark, fc)
    a = swap(swap_node(shared_data, f.shape[:2], color="none", blend="alpha"), dark, fc)
    x0, y0, x1, y1 = (int(v) for v in fc[0].box)
    roi = (slice(y0, y1), slice(x0, x1))
    live = dark[roi].astype(float).mean()
    gaps = [abs(img[roi].astype(float).mean() - live) for img in (s, a)]
    return f, fc, got[-1], gaps


def test_seamless_membrane_corrects_a_strong_lighting_difference(shared_data, talking):
    from nodes.faceswap import MEMBRANE_LIMIT

    _, _, (off, gain), (gap, gap_alpha) = _dim_room(shared_data, talking, "seamless")
    # the membrane darkens the avatar by more than the old 30-level cap, never past its limit
    assert gain is None and off.min() < -40.0 and np.abs(off).max() <= MEMBRANE_LIMIT + 1e-3
    # so the swapped face's brightness is nearer the dim live face's than the alpha blend's
    assert gap < 0.6 * gap_alpha


def test_relight_takes_the_live_light_and_keeps_the_avatars_features(shared_data, talking):
    from nodes.faceswap import CHANNEL_SPREAD, RELIGHT_GAIN

    f, fc, (off, gain), (gap, gap_alpha) = _dim_room(shared_data, talking, "relight")
    assert gain is not None and gain.shape == off.shape
    assert gain.min() >= 0.0 and gain.max() <= RELIGHT_GAIN * CHANNEL_SPREAD + 1e-4
    assert gain.min() < 0.6  # a dim room: darkened
    lit = gain.min(-1) > 1e-3
    assert (gain.max(-1)[lit] <= gain.min(-1)[lit] * CHANNEL_SPREAD ** 2 + 1e-4).all()  # channels stay together
    assert gap < 0.3 * gap_alpha
    # the avatar's features are drawn at the live face's own fine-detail contrast (within limits): a
    # crisper live face gets crisper features
    from nodes.faceswap import CONTRAST_RANGE

    boosted = np.clip(f.astype(np.float32) + 1.5 * (f.astype(np.float32) - cv2.GaussianBlur(f, (0, 0), 3.0)),
                      0, 255).astype(np.uint8)
    got = []
    for img in (f, boosted):
        m = swap_node(shared_data, f.shape[:2], blend="relight")
        swap(m, img, fc)
        got.append(m.tracks[fc[0].track_id].contrast)
    assert all(CONTRAST_RANGE[0] <= c <= CONTRAST_RANGE[1] for c in got)
    assert got[1] > got[0] + 0.02


def test_relight_recolour_turns_chroma_about_grey():
    from nodes.faceswap import Shot

    lab = np.zeros((8, 8, 3), np.float32)
    lab[..., 0] = 60.0
    lab[:4, :, 1:] = (10.0, 30.0)  # yellowish skin
    lab[4:, :, 1:] = 0.0  # neutral grey
    bgr = (cv2.cvtColor(lab, cv2.COLOR_LAB2BGR) * 255).round().astype(np.uint8)
    lab = cv2.cvtColor(bgr.astype(np.float32) / 255.0, cv2.COLOR_BGR2LAB)
    lm = np.zeros((478, 3), np.float32)
    lm[:, 0] = np.linspace(0, 7, 478)
    lm[:, 1] = np.linspace(0, 7, 478)[::-1]
    stats = np.array([lab[:4].reshape(-1, 3).mean(0), [5.0, 5.0, 5.0]], np.float32)
    shot = Shot("t", bgr, lm, np.zeros(2, np.float32), np.ones(852, bool), np.zeros(852, bool),
                np.arange(478, dtype=np.int32), lab, stats)
    def recoloured(live):
        shot._key = None
        out = shot.recolour(np.array([live, [5.0, 5.0, 5.0]], np.float32), 1.0, keep_contrast=True)
        return cv2.cvtColor(out.astype(np.float32) / 255.0, cv2.COLOR_BGR2LAB)

    live = (70.0, 18.0, 20.0)  # pinker, lighter skin
    out = recoloured(live)
    assert np.abs(out[:4].reshape(-1, 3).mean(0) - live).max() < 2.0  # the skin lands on the live skin
    assert np.abs(out[4:, :, 1:]).max() < 1.5  # grey stays grey
    assert abs(out[4:, :, 0].mean() - 70.0) < 2.0  # lightness only shifted (+10)
    # a far-off hue (fur, paint) turns the chroma by at most MAX_HUE_TURN
    from nodes.faceswap import MAX_HUE_TURN

    a, b = recoloured((70.0, 20.0, -10.0))[:4].reshape(-1, 3).mean(0)[1:]
    turn = np.arctan2(30.0, 10.0) - np.arctan2(b, a)
    assert abs(turn - MAX_HUE_TURN) < np.radians(2.0)


def test_a_three_quarter_avatar_is_flipped_to_face_the_way_the_head_turns(shared_data, talking):
    from nodes.faceswap import FLIP_MIN_YAW, FLIPPED, OWN

    frames, faces = talking
    n = swap_node(shared_data, frames[0].shape[:2], avatars=("pearl_earring.jpg", "painted_child.jpg"))
    pearl, child = n.shots
    assert pearl.flippable and abs(pearl.pose[0]) >= FLIP_MIN_YAW and not child.flippable
    yaw = float(pearl.pose[0])  # pearl turns this way; the flipped pearl the other way
    face = faces[0][0]
    st = _TrackState()
    assert n._pick_shot(st, replace(face, yaw=0.0, pitch=0.0)) == 1 and st.view == OWN  # frontal: the child
    st = _TrackState()
    assert n._pick_shot(st, replace(face, yaw=yaw, pitch=float(pearl.pose[1]))) == 0 and st.view == OWN
    st.stats = np.zeros((2, 3), np.float32)  # seen before: hysteresis applies from now on
    assert n._pick_shot(st, replace(face, yaw=-yaw, pitch=float(pearl.pose[1]))) == 0 and st.view == FLIPPED
    # the flipped shot draws nearly every triangle from its mirror twin, the unflipped one few
    assert (pearl.tri_offsets[FLIPPED] > 0).mean() > 0.8 and (pearl.tri_offsets[OWN] > 0).mean() < 0.5
    # and a swap with it runs
    o = swap(n, frames[0], [replace(face, yaw=-yaw)])
    assert np.abs(o.astype(int) - frames[0]).mean() > 1.0


def test_a_strongly_turned_avatar_is_drawn_symmetric_on_a_head_facing_the_camera(shared_data, talking):
    """Pearl (turned 34 degrees) on a head facing the camera: her far cheek is a foreshortened strip cut
    by her painted nose's outline, so her near half is drawn on both sides. The swapped face then looks
    more like her, in the identity measure's terms, than her mirror image drawn whole (FLIPPED)."""
    from nodes.face_model import canonical
    from nodes.faceswap import FLIPPED, OWN, SYMMETRIC

    frames, faces = talking
    n = swap_node(shared_data, frames[0].shape[:2], avatars=("pearl_earring.jpg",))
    pearl = n.shots[0]
    assert pearl.symmetric_ok
    yaw, pitch = (float(v) for v in pearl.pose)
    face = faces[0][0]
    for live_yaw, view in ((0.0, SYMMETRIC), (0.25 * yaw, SYMMETRIC), (-0.25 * yaw, SYMMETRIC),
                           (yaw, OWN), (-yaw, FLIPPED)):
        st = _TrackState()
        n._pick_shot(st, replace(face, yaw=live_yaw, pitch=pitch))
        assert st.view == view, (live_yaw, st.view)
    # the symmetric view: the far half's triangles take their near twins' pixels, the near half its own
    cx = canonical()[0][n.tris, 0].mean(1)
    sym = pearl.tri_offsets[SYMMETRIC] > 0
    far = cx * np.sign(yaw) > 0  # pearl turns to negative yaw: her far half is on the positive side
    assert sym[far & (np.abs(cx) > 0.05)].mean() > 0.95 and sym[~far & (np.abs(cx) > 0.05)].mean() < 0.05
    # a real frontal shot beats the stand-in
    n2 = swap_node(shared_data, frames[0].shape[:2], avatars=("pearl_earring.jpg", "painted_child.jpg"))
    st = _TrackState()
    assert n2._pick_shot(st, replace(face, yaw=0.0, pitch=0.0)) == 1
    # on the clip's near-frontal frames the symmetric face is nearer Pearl than the flipped one
    img = cv2.imread(str(shared_data / "avatars" / "pearl_earring.jpg"))
    norm = FaceNormaliser(img, detect_landmarks(img)[0])
    dist = {}
    for view in (SYMMETRIC, FLIPPED):
        n._pick_shot = lambda st, face, view=view: setattr(st, "view", view) or 0
        n.tracks.clear()
        d = []
        for f, fs in list(zip(frames, faces, strict=True))[::4]:
            o = swap(n, f, fs)
            lm = detect_landmarks(o)
            if lm:
                a = norm(o, lm[0])
                d.append(min(norm.distance(a, norm.avatar), norm.distance(a, norm.avatar_mirrored)))
        assert len(d) >= 8
        dist[view] = float(np.mean(d))
    assert dist[SYMMETRIC] < dist[FLIPPED] - 0.05, dist


def test_identity_reference_mirrored_avatar_matches_a_mirrored_image(shared_data):
    img = cv2.imread(str(shared_data / "avatars" / "pearl_earring.jpg"))
    norm = FaceNormaliser(img, detect_landmarks(img)[0])
    flipped = np.ascontiguousarray(img[:, ::-1])
    lm_f = detect_landmarks(flipped)[0]
    # the flipped photo, mapped into the avatar's geometry, is near the mirrored reference, far from the
    # unmirrored one
    nf = norm(flipped, lm_f)
    assert norm.distance(nf, norm.avatar_mirrored) < 0.5 * norm.distance(nf, norm.avatar)


def test_a_shot_change_crossfades_instead_of_popping(shared_data, talking):
    from nodes.faceswap import XFADE_S

    frames, faces = talking
    f = frames[0]
    face = faces[0][0]
    n = swap_node(shared_data, f.shape[:2], ("mona_lisa.jpg", "painted_child.jpg"))
    poses = [s.pose for s in n.shots]
    at = [replace(face, yaw=float(p[0]), pitch=float(p[1])) for p in poses]
    ends = [swap(swap_node(shared_data, f.shape[:2], (a,)), f, [at[k]]) for k, a in
            enumerate(("mona_lisa.jpg", "painted_child.jpg"))]  # each shot alone, steady
    for _ in range(3):
        first = swap(n, f, [at[0]])
    assert np.abs(first.astype(int) - ends[0]).mean() < 0.5
    steps = [swap(n, f, [at[1]]) for _ in range(int(XFADE_S * 30) + 3)]  # the pose of the other shot
    st = n.tracks[face.track_id]
    assert st.shot == 1 and st.xfade == 1.0
    # distance from the old look grows over several frames (no single-frame jump), ending on the new shot
    d_old = [np.abs(s.astype(int) - ends[0]).mean() for s in steps]
    total = np.abs(ends[1].astype(int) - ends[0]).mean()
    assert total > 1.0
    assert d_old[0] < 0.3 * total and np.abs(steps[-1].astype(int) - ends[1]).mean() < 0.5
    assert max(np.diff([0.0] + d_old)) < 0.4 * total


def test_expression_detail_draws_the_streamers_creases_not_their_skin(shared_data, talking):
    frames, faces = talking
    f, fc = frames[8], faces[8]
    lm = fc[0].landmarks
    fw = float(fc[0].width)
    # a new crease on the live cheek (as a smile line appears): a dark stroke below the near cheekbone
    top = lm[280, :2] + (0.0, 0.04 * fw)
    line = np.zeros(f.shape[:2], np.uint8)
    cv2.line(line, tuple(np.round(top).astype(int)), tuple(np.round(top + (-0.03 * fw, 0.15 * fw)).astype(int)), 1,
             max(2, int(0.02 * fw)))
    creased = f.copy()
    creased[line.astype(bool)] = (creased[line.astype(bool)] * 0.6).astype(np.uint8)
    core = cv2.erode(line, np.ones((3, 3), np.uint8)).astype(bool)
    assert core.sum() > 10
    on = swap_node(shared_data, f.shape[:2], expression_detail=1.0)
    off = swap_node(shared_data, f.shape[:2], expression_detail=0.0)
    for _ in range(5):  # the face at rest
        same_on, same_off = swap(on, f, fc), swap(off, f, fc)
    # what stays still on the streamer's face (their own skin, moles, light) is not drawn at all
    assert np.array_equal(same_on, same_off)
    a, b = swap(on, creased, fc).astype(float), swap(off, creased, fc).astype(float)
    # the crease darkens the avatar's cheek where it appeared...
    assert a[core].mean() < 0.85 * b[core].mean(), (a[core].mean(), b[core].mean())
    # ...and nothing else: the forehead is untouched
    x, y = (int(v) for v in lm[151, :2])
    forehead = (slice(y - 3, y + 3), slice(x - 6, x + 6))
    assert np.abs(a[forehead] - b[forehead]).max() <= 1.0
