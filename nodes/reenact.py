"""Reenactment: a still avatar animated by the tracked driver face. Exports: Reenact, ScriptedDriver,
prepare_avatar, detect_landmarks, AvatarRig, Motion.

How it works (all geometry, no neural network, so it runs on a CPU):
  1. ``prepare_avatar`` finds the avatar's 478 face-mesh landmarks in every shot (mediapipe, or
     precomputed ones the preset names) and builds a dense mesh: the landmarks, two rings around the
     face (hair, ears, neck) and points on the border of a support rectangle. Cached by file content.
  2. ``Motion`` turns the driver's landmarks into the avatar's, relative to a driver neutral (FOMM's
     relative mode): a 3D similarity fit gives the driver's head rotation, scale and shift since the
     neutral; what remains is expression, mapped into the avatar's face frame and size (through the
     local shape difference of the two faces, one shared map for the whole mouth), with mouth and
     brow gains calibrated at the neutral (``calibrate_gains``) so that the avatar's mouth width, mouth
     opening and brow height change by as much, relative to its face, as the driver's. A neutral taken
     with the mouth open is closed first (``close_mouth``): the avatar's mouth opens as far as the
     driver's is open, and its lips never cross when the driver closes the mouth. Eyelids move by
     the driver's openness ratio, so blinks and winks close the avatar's eyes whatever their size; a
     closing lid slides down with the skin rows above it (its lashes keep their shape over the eye).
     Rotations are applied in 3D about a pivot behind the face, then projected, turned about the view
     axis so that the eye line tilts in the picture as the driver's does (``Motion.match_roll``); big
     turns are clamped, and a turn towards a three-quarter avatar's hidden side stops where its thin
     strip of far-cheek pixels would be stretched past ``max_stretch`` (``AvatarRig._overstretched``).
  3. The mesh warp (``engine.kernels.warp``) moves the face; ring vertices follow the head motion of
     their nearest face landmark partly and the border not at all, so hair, neck and background bend
     smoothly; where the border is the picture's edge it gives way outwards ahead of the face (a chin
     near the bottom of a tight crop goes out of the picture). Triangles that would flip have their
     displacement shrunk (no folds). Only the support rectangle is warped; the rest is copied.
  4. An open mouth gets a dark cavity and a teeth band; extra shots (mouth open, eyes closed) supply
     their mouth or eye pixels when the expression is nearer to them than to the main shot.
  5. With no driver face (or a face the tracker is easing out), the avatar breathes and blinks.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from engine import bench
from engine.cache import cached, content_key
from engine.errors import UserError, Where
from engine.kernels import warp as wk
from engine.node import Node, register
from engine.params import Param, Port, PortType

from . import face_metrics as fmx
from .face import Face, make_face

log = logging.getLogger("avatarcast.reenact")

N_LM = 478
PREP_VERSION = "reenact-8"
CACHE_NAMESPACE = "reenact_avatar"  # engine.cache namespace of prepare_avatar's arrays

# ---- face-mesh index sets (mediapipe order) ----------------------------------------------------
FACE_OVAL = np.array([10, 338, 297, 332, 284, 251, 389, 356, 454, 323, 361, 288, 397, 365, 379, 378, 400, 377,
                      152, 148, 176, 149, 150, 136, 172, 58, 132, 93, 234, 127, 162, 21, 54, 103, 67, 109])
# points that move with the skull, not with expressions: forehead, nose bridge, eye corners, cheekbones
RIGID = np.array([10, 151, 9, 8, 168, 6, 197, 195, 5, 4, 1, 109, 67, 103, 338, 297, 332, 33, 133, 362, 263,
                  127, 356, 234, 454, 93, 323, 116, 345, 50, 280, 98, 327, 129, 358, 64, 294])
INNER_LIPS = np.array([78, 191, 80, 81, 82, 13, 312, 311, 310, 415, 308, 324, 318, 402, 317, 14, 87, 178, 88, 95])
INNER_UPPER = np.array([78, 191, 80, 81, 82, 13, 312, 311, 310, 415, 308])
INNER_LOWER = np.array([95, 88, 178, 87, 14, 317, 402, 318, 324])
OUTER_LIPS = np.array([61, 185, 40, 39, 37, 0, 267, 269, 270, 409, 291, 375, 321, 405, 314, 17, 84, 181, 91, 146])
MOUTH_L, MOUTH_R, LIP_TOP, LIP_BOTTOM = 78, 308, 13, 14
NOSE_TIP, CHIN_LIP = 1, 17  # the nose's tip; the outer lower lip's lowest point
# eyelid pairs (upper, lower) from the outer corner inwards; the subject's right eye is on image left
EYE_R_UP = np.array([246, 161, 160, 159, 158, 157, 173])
EYE_R_LO = np.array([7, 163, 144, 145, 153, 154, 155])
EYE_L_UP = np.array([466, 388, 387, 386, 385, 384, 398])
EYE_L_LO = np.array([249, 390, 373, 374, 380, 381, 382])
# the rows of points above each upper lid (mediapipe's eyeUpper1 / eyeUpper2), column for column with it
EYE_R_UP1 = np.array(fmx.EYE_RIGHT_ABOVE)
EYE_R_UP2 = np.array([113, 225, 224, 223, 222, 221, 189])
EYE_L_UP1 = np.array(fmx.EYE_LEFT_ABOVE)
EYE_L_UP2 = np.array([342, 445, 444, 443, 442, 441, 413])
LID_FOLLOW = (0.6, 0.25)  # how much of a closing lid's travel those rows take (the lid slides, not stretches)
LID_SLIDE_FROM = 0.8  # they start sliding below this openness (a squint, or tracker noise, leaves them be)
LID_TAPER = np.array([0.0, 1.0, 1.0, 1.0, 1.0, 1.0, 0.0])  # none at the corners: those rows reach past them
EYE_R_CORNERS = (33, 133)
EYE_L_CORNERS = (263, 362)
IRIS_A = np.arange(468, 473)
IRIS_B = np.arange(473, 478)
BROW_R = np.array([70, 63, 105, 66, 107, 55, 65, 52, 53, 46])
BROW_L = np.array([300, 293, 334, 296, 336, 285, 295, 282, 283, 276])
EYE_R_RING = np.array([33, 246, 161, 160, 159, 158, 157, 173, 133, 155, 154, 153, 145, 144, 163, 7])
EYE_L_RING = np.array([263, 466, 388, 387, 386, 385, 384, 398, 362, 382, 381, 380, 374, 373, 390, 249])

OUTLINE_REACH = 0.2  # fit_far_outline: the furthest an outline point moves, in face widths
OUTLINE_GAP = 0.08  # fit_far_outline: a run of non-skin this long (face widths) is the background, a shorter
# one a feature inside the face (the far eye, the nose's shadow)
OUTLINE_DEPTH_FROM = 6  # fit_far_outline: a moved point's depth is the median of this many nearest inner points
OUTLINE_TURN = 2.0  # fit_far_outline: full move once the near side is this many times the far side
RING1, RING2 = 1.35, 1.85  # ring radii, relative to the face oval, about the face centre
RING_WEIGHTS = (0.8, 0.35)  # how much of the head's rigid motion each ring follows (the border: 0)
EDGE_NEAR = 2.5  # px: a mesh vertex this near the picture's edge is on it (``AvatarRig``)
PUSH_KEEP = 0.5  # a point around the face keeps this much of its gap when the face comes towards it
STRETCH_SLACK = 0.01  # a turn may stretch this fraction of the face area past ``max_stretch`` (a few slivers)
RELIEF = 1.0  # depth relief of the avatar's face used for rotations (1 = as detected)


# ---- avatar preparation (pure, cached) ---------------------------------------------------------

def detect_landmarks(image: np.ndarray, min_confidence: float = 0.5) -> np.ndarray | None:
    """(478, 3) float32 landmarks in pixels (z at x's scale) of the largest face, or None."""
    from .face import detect_landmarks as detect_all

    faces = detect_all(image, max_faces=3, detection_confidence=min_confidence)
    return faces[0] if faces else None


def _open_for_layout(lm: np.ndarray) -> np.ndarray:
    """Landmark positions used only to choose triangles: inner lips pulled apart and eyelids opened a
    little, so every triangle across the mouth or an eye joins an upper point to a lower one (a closed
    mouth opening then never flips a triangle)."""
    p = lm[:, :2].astype(np.float64).copy()
    mw = np.linalg.norm(p[MOUTH_R] - p[MOUTH_L])
    gap = max(0.0, 0.06 * mw - (p[LIP_BOTTOM, 1] - p[LIP_TOP, 1]))
    p[INNER_UPPER[1:-1], 1] -= gap / 2 + 0.5
    p[INNER_LOWER, 1] += gap / 2 + 0.5
    for up, lo in ((EYE_R_UP, EYE_R_LO), (EYE_L_UP, EYE_L_LO)):
        p[up, 1] -= 0.5
        p[lo, 1] += 0.5
    return p


def build_mesh(lm: np.ndarray, shape: tuple[int, int]) -> dict[str, np.ndarray]:
    """Mesh for landmarks ``lm`` (478, 3) in an image of ``shape`` (h, w): vertices (V, 3) float64,
    per-vertex head-motion weights (V,), triangles (T, 3) int32, support rectangle (x0, y0, x1, y1)."""
    from scipy.spatial import Delaunay

    h, w = shape
    p = lm.astype(np.float64)
    oval = p[FACE_OVAL]
    c = oval.mean(axis=0)
    rings, weights = [], []
    # ring points sit at the depth of the head's pivot: turning the head swings the face in front of
    # it, while hair and neck around it stay put (no shearing between face edge and hair)
    pivot_z = Motion._pivot(p)[2]
    for r, wt in zip((RING1, RING2), RING_WEIGHTS, strict=True):
        ring = c + (oval - c) * [r, r, 1.0]
        ring[:, 2] = pivot_z
        rings.append(ring)
        weights.append(np.full(len(ring), wt))
    outer = rings[-1]
    fw = np.ptp(oval[:, 0])
    x0 = max(0.0, min(outer[:, 0].min(), p[:, 0].min()) - 0.4 * fw)
    x1 = min(w - 1.0, max(outer[:, 0].max(), p[:, 0].max()) + 0.4 * fw)
    y0 = max(0.0, min(outer[:, 1].min(), p[:, 1].min()) - 0.4 * fw)
    y1 = min(h - 1.0, max(outer[:, 1].max(), p[:, 1].max()) + 0.6 * fw)  # more room below: neck
    x0, y0, x1, y1 = float(math.floor(x0)), float(math.floor(y0)), float(math.ceil(x1)), float(math.ceil(y1))
    x1, y1 = min(x1, w - 1.0), min(y1, h - 1.0)
    # ring points outside the rectangle (beyond the picture's edge on a cropped portrait) are left out: the
    # border there carries the motion (``AvatarRig`` lets it move outwards)
    inset = 2.0
    inside = [(r[:, 0] >= x0 + inset) & (r[:, 0] <= x1 - inset) & (r[:, 1] >= y0 + inset) & (r[:, 1] <= y1 - inset)
              for r in rings]
    nb_x = max(2, int(round((x1 - x0) / max(fw / 3, 8))))
    nb_y = max(2, int(round((y1 - y0) / max(fw / 3, 8))))
    xs = np.linspace(x0, x1, nb_x + 1)
    ys = np.linspace(y0, y1, nb_y + 1)
    border = [(x, y0) for x in xs] + [(x, y1) for x in xs] + [(x0, y) for y in ys[1:-1]] + [(x1, y) for y in ys[1:-1]]
    border = np.array([(x, y, 0.0) for x, y in border])
    for ring, wt in zip(rings, weights, strict=True):  # near the border a ring point follows less
        room = np.minimum.reduce([ring[:, 0] - x0, x1 - ring[:, 0], ring[:, 1] - y0, y1 - ring[:, 1]])
        wt *= np.clip(room / (0.25 * fw), 0.0, 1.0)
    verts = np.concatenate([p, *rings, border])
    weight = np.concatenate([np.ones(len(p)), *weights, np.zeros(len(border))])
    layout = verts[:, :2].copy()
    layout[:len(p)] = _open_for_layout(lm)
    # ring points on top of others would make a degenerate layout
    keep = np.concatenate([np.ones(len(p), bool), *inside, np.ones(len(border), bool)])
    for i in range(len(p), len(verts)):
        d = np.abs(layout[:i][keep[:i]] - layout[i]).max(axis=1)
        if keep[i] and d.size and d.min() < 1.0:
            keep[i] = False
    idx = np.nonzero(keep)[0]
    verts, weight, layout = verts[idx], weight[idx], layout[idx]
    tri = Delaunay(layout).simplices.astype(np.int32)
    a = layout[tri]
    area = (a[:, 1, 0] - a[:, 0, 0]) * (a[:, 2, 1] - a[:, 0, 1]) - (a[:, 1, 1] - a[:, 0, 1]) * (a[:, 2, 0] - a[:, 0, 0])
    tri[area < 0] = tri[area < 0][:, [0, 2, 1]]  # every triangle counter-clockwise (in image axes)
    return {"verts": verts, "weight": weight, "tris": tri,
            "rect": np.array([x0, y0, x1, y1], np.float64)}


def expression_features(lm: np.ndarray) -> np.ndarray:
    """[mouth open, right eye open, left eye open] from landmarks: gap / width ratios."""
    p = lm[:, :2].astype(np.float64)
    mw = np.linalg.norm(p[MOUTH_R] - p[MOUTH_L]) + 1e-6
    mouth = np.linalg.norm(p[INNER_LOWER[3:6]] - p[INNER_UPPER[4:7]], axis=1).mean() / mw
    eyes = []
    for up, lo, (a, b) in ((EYE_R_UP, EYE_R_LO, EYE_R_CORNERS), (EYE_L_UP, EYE_L_LO, EYE_L_CORNERS)):
        ew = np.linalg.norm(p[a] - p[b]) + 1e-6
        eyes.append(np.linalg.norm(p[up[2:5]] - p[lo[2:5]], axis=1).mean() / ew)
    return np.array([mouth, *eyes])


def fit_far_outline(image: np.ndarray, lm: np.ndarray) -> np.ndarray:
    """``lm`` with the far side's outline moved out to the painted cheek's edge on a turned face.

    On a portrait seen from three quarters the detector draws the far side's outline too far in (on
    Pearl's earring girl it runs through the far eye and the nose), so the far cheek's strip of skin
    lies outside the face mesh: the warp moves it as hair and background, and a turn towards that side
    leaves a jagged edge between the two. Each outline point of the far side, between the temples and
    the mouth, moves outwards along its normal to the last skin-coloured pixel (LAB distance from the
    face's skin, as in the face swap's occlusion test) before the background (a run of OUTLINE_GAP of
    non-skin), by at most OUTLINE_REACH of the face width; where no background is found within that
    reach (a wall of skin's colour) it stays. A frontal face keeps its outline: the move fades in as
    the near side grows to OUTLINE_TURN times the far side's width."""
    from .faceswap import lab_stats, occlusion_distance, skin_region

    out = np.array(lm, np.float64, copy=True)
    p = out[:, :2]
    idx = np.array(FACE_OVAL)
    oval = p[idx]
    fw = float(np.ptp(oval[:, 0]))
    nose = p[NOSE_TIP]
    left, right = nose[0] - oval[:, 0].min(), oval[:, 0].max() - nose[0]
    near, far = max(left, right), max(min(left, right), 1e-6)
    amount = float(np.clip((near / far - 1.0) / (OUTLINE_TURN - 1.0), 0.0, 1.0))
    if amount <= 0.0 or fw < 16:
        return out.astype(lm.dtype)
    side = -1.0 if left < right else 1.0  # the far side's direction in x
    stats = lab_stats(image, skin_region(p, image.shape[:2], fw))
    skin = cv2.GaussianBlur(occlusion_distance(image, stats), (0, 0), max(1.0, 0.004 * fw)) < 3.0
    h, w = skin.shape
    top = min(p[EYE_R_UP, 1].min(), p[EYE_L_UP, 1].min()) - 0.15 * fw
    bottom = p[CHIN_LIP, 1] + 0.05 * fw
    c = oval.mean(0)
    n = len(oval)
    tangent = np.roll(oval, -1, axis=0) - np.roll(oval, 1, axis=0)
    normal = np.stack([tangent[:, 1], -tangent[:, 0]], 1) / np.maximum(np.linalg.norm(tangent, axis=1), 1e-9)[:, None]
    normal *= np.where(((oval - c) * normal).sum(1) < 0, -1.0, 1.0)[:, None]  # outwards
    moves = np.zeros(n)
    for k in range(n):
        q0 = oval[k]
        if (q0[0] - c[0]) * side <= 0 or not top <= q0[1] <= bottom:
            continue
        last, miss, hit = 0.0, 0.0, False
        for d in np.arange(0.0, (OUTLINE_REACH + OUTLINE_GAP) * fw, 0.5):
            x, y = (int(round(v)) for v in q0 + normal[k] * d)
            if not (0 <= x < w and 0 <= y < h):
                break
            if skin[y, x]:
                if d > OUTLINE_REACH * fw:
                    break
                last, miss = d, 0.0
            else:
                miss += 0.5
                if miss > OUTLINE_GAP * fw:
                    hit = True
                    break
        if hit:
            moves[k] = last
    # along the outline: no single point sticks out, and the moved stretch ends smoothly
    moves = np.minimum(moves, np.maximum(np.roll(moves, 1), np.roll(moves, -1)))
    moves = np.convolve(np.r_[moves[-1:], moves, moves[:1]], [0.25, 0.5, 0.25], mode="valid")
    # a moved point takes the depth of the skin just inside it (the detector put the far outline deep
    # behind the nose; left there, a turn would swing the new silhouette past the far eye's corner)
    inner = np.setdiff1d(np.arange(468), idx)
    for k in range(n):
        if moves[k] > 0:
            p[idx[k]] = oval[k] + amount * moves[k] * normal[k]
            near = inner[np.argsort(((out[inner, :2] - p[idx[k]]) ** 2).sum(1))[:OUTLINE_DEPTH_FROM]]
            z_in = float(np.median(out[near, 2]))
            f = amount * min(1.0, moves[k] / (0.05 * fw))
            out[idx[k], 2] += f * (z_in - out[idx[k], 2])
    return out.astype(lm.dtype)


def prepare_avatar(images: list[np.ndarray], names: list[str],
                   landmarks: list[np.ndarray | None] | None = None) -> dict[str, np.ndarray]:
    """Pure avatar preparation: landmarks of every shot (detected, or given), expression features of
    every shot and the mesh of the main (first) shot. Raises UserError naming a shot with no face."""
    given = landmarks or [None] * len(images)
    lms = []
    for img, name, lm in zip(images, names, given, strict=True):
        detected = lm is None
        if detected:
            lm = detect_landmarks(img)
        if lm is None:
            raise UserError(f"no face found in the avatar image {name}",
                            Where(name), "use a picture where a face is clearly visible, facing the camera")
        if detected and not lms:  # the main shot's mesh: its whole cheek (given landmarks are exact)
            lm = fit_far_outline(img, lm)
        lm = np.asarray(lm, np.float32)
        if lm.shape != (N_LM, 3):
            raise UserError(f"avatar landmarks for {name} must be (478, 3), got {lm.shape}", Where(name))
        lms.append(lm)
    mesh = build_mesh(lms[0], images[0].shape[:2])
    return {"landmarks": np.stack(lms), "features": np.stack([expression_features(m) for m in lms]),
            "sizes": np.array([i.shape[:2] for i in images], np.int64), **mesh}


# ---- geometry ------------------------------------------------------------------------------------

def similarity_3d(src: np.ndarray, dst: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
    """Umeyama: s, R, t minimising |dst - (s R src + t)|^2 over the rows (N, 3)."""
    ms, md = src.mean(0), dst.mean(0)
    a, b = src - ms, dst - md
    cov = b.T @ a / len(src)
    u, d, vt = np.linalg.svd(cov)
    sgn = np.ones(3)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:
        sgn[2] = -1.0
    r = (u * sgn) @ vt
    var = (a ** 2).sum() / len(src)
    s = float((d * sgn).sum() / max(var, 1e-12))
    return s, r, md - s * r @ ms


def rotation_clamp(r: np.ndarray, max_deg: float) -> np.ndarray:
    """The same rotation axis with the angle softly limited to ``max_deg`` (linear up to 70%)."""
    vec, _ = cv2.Rodrigues(r)
    ang = float(np.linalg.norm(vec))
    lim = math.radians(max_deg)
    knee = 0.7 * lim
    if ang <= knee or ang < 1e-9:
        return r
    new = knee + (lim - knee) * math.tanh((ang - knee) / (lim - knee))
    out, _ = cv2.Rodrigues(vec * (new / ang))
    return out


def rotation_scale(r: np.ndarray, f: float) -> np.ndarray:
    vec, _ = cv2.Rodrigues(r)
    out, _ = cv2.Rodrigues(vec * f)
    return out


def signed_areas(pts: np.ndarray, tris: np.ndarray) -> np.ndarray:
    a = pts[tris]
    return (a[:, 1, 0] - a[:, 0, 0]) * (a[:, 2, 1] - a[:, 0, 1]) - (a[:, 1, 1] - a[:, 0, 1]) * (a[:, 2, 0] - a[:, 0, 0])


def unfold(src: np.ndarray, base: np.ndarray, dst: np.ndarray, tris: np.ndarray, check: np.ndarray,
           nb_idx: np.ndarray, nb_mask: np.ndarray, iters: int = 12) -> tuple[np.ndarray, int]:
    """Fold-over guard. ``base`` is the fold-free placement without expression (the head's rigid motion).
    A checked triangle whose orientation flips (or that collapses below 2% of its area) in ``dst`` but
    not in ``base`` gets the expression offsets of its face vertices smoothed with their mesh neighbours
    (so a lower lip pulled over the chin drags the chin along instead of folding), and after a few rounds
    halved towards ``base``, until no triangle flips. Returns the fixed destination and the number of
    triangles that needed it."""
    s_area = signed_areas(src, tris)
    sgn = np.sign(s_area)
    lim = 0.02 * np.abs(s_area)
    chk = check & (signed_areas(base, tris) * sgn >= lim)
    off = None
    fixed = 0
    for it in range(iters + 1):
        cur = dst if off is None else base + off
        bad = chk & (signed_areas(cur, tris) * sgn < lim)
        if not bad.any():
            return cur, fixed
        if off is None:
            off = dst - base
        fixed = max(fixed, int(bad.sum()))
        v = np.unique(tris[bad])
        if it == iters:  # last resort: those vertices take the fold-free base, until nothing flips
            while bad.any():
                off[np.unique(tris[bad])] = 0.0
                bad = chk & (signed_areas(base + off, tris) * sgn < lim)
            return base + off, fixed
        face_v = v[v < 468]
        if it < iters // 2 and face_v.size:
            m = nb_mask[face_v]
            mean = (off[nb_idx[face_v]] * m[..., None]).sum(1) / np.maximum(m.sum(1), 1)[:, None]
            off[face_v] = 0.5 * off[face_v] + 0.5 * mean
            other = v[v >= 468]
            off[other] *= 0.5
        else:
            off[v] *= 0.5
    return base + off, fixed


@dataclass
class Pose:
    """The avatar's motion in its own frame: expression offsets (478, 3) px, eye openness ratios, head
    rotation (3, 3), scale, image shift (2,) px."""

    expr: np.ndarray
    eyes: np.ndarray
    rot: np.ndarray
    scale: float
    shift: np.ndarray

    @staticmethod
    def rest() -> Pose:
        return Pose(np.zeros((N_LM, 3)), np.ones(2), np.eye(3), 1.0, np.zeros(2))

    def head_part(self, f: float) -> Pose:
        """The same expression with a fraction ``f`` of the head motion (turn, scale, shift)."""
        return Pose(self.expr, self.eyes, rotation_scale(self.rot, f), 1.0 + f * (self.scale - 1.0), f * self.shift)

    def mix(self, other: Pose, w: float) -> Pose:
        """(1 - w) * self + w * other (rotation along the geodesic)."""
        rel = other.rot @ self.rot.T
        return Pose(self.expr + w * (other.expr - self.expr), self.eyes + w * (other.eyes - self.eyes),
                    rotation_scale(rel, w) @ self.rot, self.scale + w * (other.scale - self.scale),
                    self.shift + w * (other.shift - self.shift))


def _eye_gaps(p: np.ndarray) -> np.ndarray:
    out = []
    for up, lo, (a, b) in ((EYE_R_UP, EYE_R_LO, EYE_R_CORNERS), (EYE_L_UP, EYE_L_LO, EYE_L_CORNERS)):
        ew = np.linalg.norm(p[a, :2] - p[b, :2]) + 1e-6
        out.append(np.linalg.norm(p[up[2:5], :2] - p[lo[2:5], :2], axis=1).mean() / ew)
    return np.array(out)


def mesh_neighbours() -> tuple[np.ndarray, np.ndarray]:
    """Face-mesh edges (mediapipe's tesselation, which never crosses the mouth or an eye) as padded
    neighbour lists: idx (468, K) int64 (self where padded) and mask (468, K) bool."""
    from mediapipe.python.solutions.face_mesh_connections import FACEMESH_TESSELATION

    nb: list[set[int]] = [set() for _ in range(468)]
    for a, b in FACEMESH_TESSELATION:
        nb[a].add(b)
        nb[b].add(a)
    k = max(len(x) for x in nb)
    idx = np.tile(np.arange(468)[:, None], (1, k))
    mask = np.zeros((468, k), bool)
    for i, x in enumerate(nb):
        idx[i, :len(x)] = sorted(x)
        mask[i, :len(x)] = True
    return idx, mask


def local_jacobians(src: np.ndarray, dst: np.ndarray, idx: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Per vertex, the 2x2 map J with dst edges ~= J @ src edges over its mesh neighbours (least squares,
    singular values kept in [0.4, 2.5]): how a small offset at that vertex of ``src`` looks on ``dst``."""
    ds = (src[idx, :2] - src[:468, None, :2]) * mask[..., None]
    dd = (dst[idx, :2] - dst[:468, None, :2]) * mask[..., None]
    sts = np.einsum("nki,nkj->nij", ds, ds)
    std = np.einsum("nki,nkj->nij", ds, dd)
    scale = np.trace(sts, axis1=1, axis2=2)[:, None, None] * 1e-3 + 1e-9
    jt = np.linalg.solve(sts + scale * np.eye(2), std)  # J^T
    u, sv, vt = np.linalg.svd(np.transpose(jt, (0, 2, 1)))
    med = np.median(sv)
    sv = np.clip(sv, 0.4 * med, 2.5 * med)
    j = u @ (sv[..., None] * vt)
    # one smoothing pass: landmark noise must not make neighbouring vertices disagree
    j = 0.5 * j + 0.5 * (j[idx] * mask[..., None, None]).sum(1) / mask.sum(1)[:, None, None]
    return j


def mouth_weights(lm: np.ndarray) -> np.ndarray:
    """(468,) 0..1 per vertex of the face ``lm``: 1 on the lips (their outline grown by 15%), fading to 0
    over a third of the mouth's width outside them (``mouth_coherent``). Depends on the avatar alone."""
    p = lm[:468, :2]
    lips = p[OUTER_LIPS]
    c = lips.mean(0)
    mw = float(np.ptp(lips[:, 0])) + 1e-6
    inside = np.zeros(468)
    poly = (c + (lips - c) * 1.15).astype(np.float32)
    for i in range(468):
        d = cv2.pointPolygonTest(poly, (float(p[i, 0]), float(p[i, 1])), True)  # > 0 inside, px
        inside[i] = np.clip(1.0 + d / (0.33 * mw), 0.0, 1.0)
    return inside


def mouth_coherent(jac: np.ndarray, inside: np.ndarray) -> np.ndarray:
    """The local maps ``jac`` (468, 2, 2) with those of the mouth replaced by one shared map (their
    mean), fading back to the local ones by ``inside`` (``mouth_weights``). Per vertex, the lips' maps
    differ as the two faces' lip thicknesses do: a thin-lipped avatar's upper lip magnified the
    driver's downward motion 1.5 times and its lower lip 0.6 times, so a mouth moving down as a whole
    (a pout, the jaw) pushed the upper lip through the lower one at the corners, drawn as a saw-tooth.
    One map keeps the lips' motion coherent; their shape still maps through it."""
    core = inside >= 1.0
    if not core.any():  # degenerate landmarks: nothing to share
        return jac
    shared = jac[core].mean(0)
    return jac + inside[:, None, None] * (shared - jac)


def _gauss(p: np.ndarray, centre: np.ndarray, sigma: float) -> np.ndarray:
    return np.exp(-((p - centre) ** 2).sum(-1) / (2.0 * sigma * sigma))


def expression_probes(lm: np.ndarray) -> dict[str, np.ndarray]:
    """Small synthetic expressions on landmarks ``lm`` (478, 3): offsets (478, 3) px for a smile
    (mouth corners out), an opening mouth (lower lip and jaw down) and raised brows."""
    p = lm[:, :2].astype(np.float64)
    mw = float(np.linalg.norm(p[fmx.MOUTH_LEFT] - p[fmx.MOUTH_RIGHT]))
    fh = float(np.linalg.norm(p[fmx.FOREHEAD] - p[fmx.CHIN]))
    c = p[OUTER_LIPS].mean(0)
    w = _gauss(p, c, 0.45 * mw)
    width = np.zeros((N_LM, 3))
    width[:, 0] = 0.1 * (p[:, 0] - c[0]) * w
    below = np.clip((p[:, 1] - c[1]) / (0.15 * mw) + 0.5, 0.0, 1.0)
    opening = np.zeros((N_LM, 3))
    opening[:, 1] = 0.12 * mw * below * _gauss(p, c + [0.0, 0.3 * mw], 0.7 * mw)
    opening[INNER_UPPER, 1] = 0.0
    brows = np.zeros((N_LM, 3))
    for brow, eye in ((BROW_R, EYE_R_RING), (BROW_L, EYE_L_RING)):
        wb = _gauss(p, p[brow].mean(0), 0.45 * np.ptp(p[brow, 0]))
        wb[p[:, 1] > p[eye, 1].min()] = 0.0
        brows[:, 1] -= 0.03 * fh * wb
    return {"mouth_width": width, "mouth_open": opening, "brows": brows}


def lip_gap(lm: np.ndarray) -> np.ndarray:
    """Signed inner-lip gap / mouth width of landmarks (..., 478, 2|3), measured down the face (along
    ``face_metrics.face_axes``' v) between the points ``face_metrics.mouth_open`` uses: negative when
    the lower lip is above the upper one."""
    _, v = fmx.face_axes(lm)
    top = lm[..., list(fmx.LIP_INNER_TOP), :2].mean(-2)
    bottom = lm[..., list(fmx.LIP_INNER_BOTTOM), :2].mean(-2)
    gap = ((bottom - top) * v).sum(-1)
    width = np.linalg.norm(lm[..., fmx.MOUTH_LEFT, :2] - lm[..., fmx.MOUTH_RIGHT, :2], axis=-1)
    return gap / np.maximum(width, 1e-6)


def close_mouth(lm: np.ndarray, keep: float = 0.0) -> np.ndarray:
    """Landmarks (478, 3) with the mouth closed down to an inner-lip gap (``lip_gap``) of ``keep``:
    the jaw-drop probe (``expression_probes``) run backwards. Unchanged when the gap is not larger.

    For the driver's neutral, with ``keep`` the avatar's own gap: a neutral taken mid-word would
    otherwise push the avatar's lower lip through the upper one whenever the driver closes the mouth
    (relative motion gives the avatar ``g_a + g_d - g_n``), and the opening at the neutral would be
    lost. With the neutral closed to ``min(g_n, g_a)`` the avatar's gap is ``max(g_a + g_d - g_n,
    g_d)`` (about, through the expression gains): never below the driver's own, continuous, and the
    plain relative motion whenever the driver's neutral mouth was not more open than the avatar's."""
    gap = float(lip_gap(lm))
    if gap <= keep:
        return lm
    jaw = expression_probes(lm)["mouth_open"]
    unit = float(lip_gap(lm + jaw)) - gap
    return lm - ((gap - keep) / unit) * jaw if unit > 1e-6 else lm


def _probe_feature(name: str, lm: np.ndarray) -> float:
    if name == "brows":
        return float(fmx.brow_height(lm, "left") + fmx.brow_height(lm, "right"))
    return float(fmx.features(lm)[name])


GAIN_RANGE = (0.6, 2.5)


def calibrate_gains(motion: Motion, neutral: np.ndarray, rounds: int = 3) -> dict[str, float]:
    """Expression gains so that the avatar's measured features (mouth width / face width, inner-lip gap
    / mouth width, brow height / face height) change by as much as the driver's do: each synthetic
    driver expression (``expression_probes`` on the neutral) goes through the same mapping as a real
    one (frame, size, local shape transfer) and the gain of its region is the driver's feature change
    over the avatar's (a few fixed-point rounds; kept in ``GAIN_RANGE``). Sets ``motion.gain_x`` /
    ``gain_y`` (478,): horizontal gain around the mouth, vertical around the mouth and on the brows,
    faded out smoothly (no seams)."""
    a = motion.avatar
    p = a[:, :2]
    mw = float(np.linalg.norm(p[fmx.MOUTH_LEFT] - p[fmx.MOUTH_RIGHT]))
    mouth_w = _gauss(p, p[OUTER_LIPS].mean(0) + [0.0, 0.3 * mw], 0.8 * mw)
    brow_w = np.zeros(N_LM)
    for brow, eye in ((BROW_R, EYE_R_RING), (BROW_L, EYE_L_RING)):
        wb = _gauss(p, p[brow].mean(0), 0.6 * np.ptp(p[brow, 0]))
        wb[p[:, 1] > p[eye, 1].mean()] = 0.0
        brow_w = np.maximum(brow_w, wb)
    probes = expression_probes(neutral)
    gains = {"mouth_width": 1.0, "mouth_open": 1.0, "brows": 1.0}
    ref_d = {k: _probe_feature(k, neutral) for k in gains}
    ref_a = {k: _probe_feature(k, a) for k in gains}
    for _ in range(rounds):
        motion.gain_x = 1.0 + mouth_w * (gains["mouth_width"] - 1.0)
        motion.gain_y = 1.0 + mouth_w * (gains["mouth_open"] - 1.0) + brow_w * (gains["brows"] - 1.0)
        for k in gains:
            want = _probe_feature(k, neutral + probes[k]) - ref_d[k]
            got = _probe_feature(k, a + motion.map_expression(probes[k]) * [1.0, 1.0, 0.3]) - ref_a[k]
            if abs(got) > 1e-9 and want * got > 0:
                gains[k] = float(np.clip(gains[k] * want / got, *GAIN_RANGE))
    motion.gain_x = 1.0 + mouth_w * (gains["mouth_width"] - 1.0)
    motion.gain_y = 1.0 + mouth_w * (gains["mouth_open"] - 1.0) + brow_w * (gains["brows"] - 1.0)
    return gains


class Motion:
    """Driver landmarks -> avatar ``Pose``, relative to a driver neutral.

    avatar: (478, 3) avatar landmarks (main shot, output pixels). ``capture(d)`` sets the neutral;
    ``pose(d)`` gives the avatar's pose for driver landmarks ``d`` (478, 3) px."""

    def __init__(self, avatar: np.ndarray, max_turn: float = 35.0, follow: float = 1.0,
                 size: tuple[int, int] | None = None):
        self.avatar = avatar.astype(np.float64)
        self.max_turn = max_turn
        self.follow = follow
        # how far the head may shift, each way on each axis (soft limits): until the face's centre is a
        # quarter face width from the picture's edge (``size`` (w, h)), or half a face width without one
        fw = float(np.ptp(self.avatar[FACE_OVAL, 0]))
        c = 0.5 * (self.avatar[FACE_OVAL, :2].min(0) + self.avatar[FACE_OVAL, :2].max(0))
        if size is None:
            self.room = np.full((2, 2), 0.5 * fw)
        else:
            self.room = np.maximum(np.array([c, np.asarray(size, np.float64) - c]) - 0.25 * fw, 0.1 * fw)
        self.neutral: np.ndarray | None = None
        self.nb_idx, self.nb_mask = mesh_neighbours()
        self.lip_weights = mouth_weights(self.avatar)  # once: a neutral may be captured many times (auto)

    def capture(self, d: np.ndarray) -> None:
        n = close_mouth(d.astype(np.float64), max(float(lip_gap(self.avatar)), 0.0))
        self.neutral = n
        # neutral -> avatar: maps driver-frame offsets into the avatar's frame and size
        self.s_na, self.r_na, t_na = similarity_3d(n[RIGID], self.avatar[RIGID])
        # deformation transfer: an expression offset at a driver vertex maps through the local shape
        # difference between the driver's neutral face and the avatar's (a shorter chin moves less)
        aligned = self.s_na * n @ self.r_na.T + t_na
        self.jac = mouth_coherent(local_jacobians(aligned, self.avatar, self.nb_idx, self.nb_mask), self.lip_weights)
        self.pivot_n = self._pivot(n)
        self.gaps_n = np.maximum(_eye_gaps(n), 0.02)
        self.gain_x = np.ones(N_LM)
        self.gain_y = np.ones(N_LM)
        self.gains = calibrate_gains(self, n)
        # the image roll: the neutral's eye-line angle
        self.roll_n = float(fmx.roll_deg(n))

    def match_roll(self, rot: np.ndarray, d: np.ndarray, expr: np.ndarray) -> np.ndarray:
        """``rot`` turned about the view axis so that the avatar's eye line (with expression offsets
        ``expr`` (478, 3)) tilts in the picture by as much as the driver's has since the neutral
        (``face_metrics.roll_deg``). Conjugating the driver's rotation into a face turned another way,
        or seen from three quarters, tilts the projected eye line during nods and turns; the streamer
        sees their head's tilt, so the picture's tilt is what is kept."""
        want = math.radians(float(fmx.roll_deg(d)) - self.roll_n)
        e0 = fmx.eye_vector(self.avatar)[:2]
        e1 = (rot @ fmx.eye_vector(self.avatar + expr * [1.0, 1.0, 0.3]))[:2]
        have = math.atan2(e1[1], e1[0]) - math.atan2(e0[1], e0[0])
        c = (want - have + math.pi) % (2.0 * math.pi) - math.pi
        cs, sn = math.cos(c), math.sin(c)
        return np.array([[cs, -sn, 0.0], [sn, cs, 0.0], [0.0, 0.0, 1.0]]) @ rot

    def map_expression(self, expr_n: np.ndarray) -> np.ndarray:
        """Driver expression offsets (478, 3) in the neutral's frame -> the avatar's (478, 3) px."""
        expr = self.s_na * expr_n @ self.r_na.T
        expr[:468, :2] = np.einsum("nij,nj->ni", self.jac, expr[:468, :2])
        expr[:, 0] *= self.gain_x
        expr[:, 1] *= self.gain_y
        return expr

    @staticmethod
    def _pivot(p: np.ndarray) -> np.ndarray:
        c = p[RIGID].mean(0)
        fw = np.ptp(p[FACE_OVAL, 0])
        return c + np.array([0.0, 0.0, 0.45 * fw])  # head centre behind the face (z grows away)

    def likeness(self, d: np.ndarray) -> float:
        """How far normalised driver landmarks are from the avatar's (lower = a better neutral)."""
        p = d.astype(np.float64)[:468].copy()
        p[:, 2] = 0.0  # a 2D fit: a turned head must not look like a frontal one
        a = self.avatar[:468].copy()
        a[:, 2] = 0.0
        s, r, t = similarity_3d(p, a)
        q = (s * p @ r.T + t)[:, :2]
        fw = np.ptp(self.avatar[FACE_OVAL, 0]) + 1e-6
        return float(np.linalg.norm(q - self.avatar[:468, :2], axis=1).mean() / fw)

    def pose(self, d: np.ndarray) -> Pose:
        n = self.neutral
        d = d.astype(np.float64)
        s, r, t = similarity_3d(n[RIGID], d[RIGID])
        # expression: the driver's landmarks with the head motion undone, minus the neutral
        back = ((d - t) @ r) / s
        expr = self.map_expression(back - n)
        eyes = np.clip(_eye_gaps(back) / self.gaps_n, 0.0, 1.6)
        rot = self.match_roll(rotation_clamp(self.r_na @ r @ self.r_na.T, self.max_turn), d, expr)
        pv = self.pivot_n
        moved = s * r @ pv + t - pv
        shift = self.follow * self.s_na * (self.r_na @ moved)[:2]
        lim = np.where(shift < 0, self.room[0], self.room[1])  # soft limits: the avatar stays in its picture
        knee = 0.7 * lim
        over = np.abs(shift) > knee
        shift = np.where(over, np.sign(shift) * (knee + (lim - knee) * np.tanh((np.abs(shift) - knee)
                                                                             / np.maximum(lim - knee, 1e-9))), shift)
        return Pose(expr, eyes, rot, float(np.clip(s, 0.75, 1.33)), shift)


class AvatarRig:
    """The avatar's mesh in output pixels and the per-frame pose -> destination vertices step.

    ``shape`` (h, w): the picture's size. The mesh's vertices on its edge may move outwards (or along
    it), never inwards: a head moving towards the edge of a closely cropped portrait (the chin near the
    bottom) pushes neck and hair out of the picture, as a real one does, instead of folding them against
    the edge, and nothing from beyond the edge is pulled in (``_rigid``)."""

    def __init__(self, landmarks: np.ndarray, mesh: dict[str, np.ndarray], shape: tuple[int, int] | None = None):
        self.lm = landmarks.astype(np.float64)
        self.verts = mesh["verts"].astype(np.float64)
        self.weight = mesh["weight"].astype(np.float64)
        n = len(self.verts)
        self.out_x = np.zeros(n)
        self.out_y = np.zeros(n)
        if shape is not None:  # -1, 0 or 1 per axis: the outward direction of a vertex on the picture's edge
            h, w = shape
            x, y = self.verts[:, 0], self.verts[:, 1]
            self.out_x = np.where(x <= EDGE_NEAR, -1.0, np.where(x >= w - 1 - EDGE_NEAR, 1.0, 0.0))
            self.out_y = np.where(y <= EDGE_NEAR, -1.0, np.where(y >= h - 1 - EDGE_NEAR, 1.0, 0.0))
            self.out_x[:N_LM] = self.out_y[:N_LM] = 0.0
        self.tris = np.ascontiguousarray(mesh["tris"], np.int32)
        self.rect = mesh["rect"]
        self.src2 = np.ascontiguousarray(self.verts[:, :2])
        self.fw = float(np.ptp(self.lm[FACE_OVAL, 0]))
        self.pivot = Motion._pivot(self.lm)
        # a flatter relief than the detector's depth: the sides of the face fold less at turns (fewer
        # silhouette folds), the face still swings about the pivot behind it
        zc = self.lm[RIGID, 2].mean()
        z = zc + RELIEF * (self.verts[:N_LM, 2] - zc)
        # and a smooth one near the outline: depth noise along the face's edge makes it zigzag when
        # turning; the middle of the face (nose, eyes, mouth) keeps its relief, so a turn moves the nose
        # between the cheeks as far as the driver's does
        nb_idx, nb_mask = mesh_neighbours()
        zr = z[:468].copy()
        for _ in range(4):
            zs = z[:468].copy()
            zs = 0.5 * zs + 0.5 * (zs[nb_idx] * nb_mask).sum(1) / nb_mask.sum(1)
            z[:468] = zs
        c = self.lm[FACE_OVAL, :2].mean(0)
        oval = self.lm[FACE_OVAL, :2] - c
        rel = self.lm[:468, :2] - c
        ang = np.angle(np.exp(1j * (np.arctan2(rel[:, 1], rel[:, 0])[:, None]
                                    - np.arctan2(oval[:, 1], oval[:, 0])[None, :])))
        edge = np.linalg.norm(oval[np.argmin(np.abs(ang), axis=1)], axis=1)
        outer = np.clip((np.linalg.norm(rel, axis=1) / np.maximum(edge, 1e-6) - 0.55) / 0.3, 0.0, 1.0)
        z[:468] = zr + outer * (z[:468] - zr)
        zo = z[FACE_OVAL]
        z[FACE_OVAL] = np.convolve(np.r_[zo[-3:], zo, zo[:3]], np.ones(7) / 7.0, mode="valid")
        self.verts[:N_LM, 2] = z
        self.lm[:, 2] = z
        x0, y0, x1, y1 = (int(round(v)) for v in self.rect)
        self.region = (x0, y0, x1 + 1, y1 + 1)
        # each ring / border vertex follows the head motion of its nearest face landmark (scaled by its
        # weight) instead of turning at the pivot's depth: hair and neck stretch along with the face's
        # edge, so nods and turns fold nothing between the face and the first ring (on a face seen from
        # three quarters its far side reaches past the outline's rings) and need not be cut down
        near = self.verts[N_LM:, None, :2] - self.lm[None, :468, :2]
        self.anchor = np.argmin((near ** 2).sum(-1), axis=1)
        # and is pushed ahead of it when the face comes nearer than PUSH_KEEP of their gap (``_rigid``):
        # the unit direction from the anchor and the gap, for the vertices that may move (not the
        # support rectangle's inner border, which holds the warp's edge still)
        off = self.verts[N_LM:, :2] - self.lm[self.anchor, :2]
        self.gap = np.linalg.norm(off, axis=1)
        self.away = off / np.maximum(self.gap, 1e-9)[:, None]
        self.pushed = (self.weight[N_LM:] > 0) | (self.out_x[N_LM:] != 0) | (self.out_y[N_LM:] != 0)
        self.folds = 0
        self.turn_scale = 1.0
        self.last_base = self.src2
        ir_a, ir_b = self.lm[IRIS_A[0], :2], self.lm[IRIS_B[0], :2]
        er = self.lm[list(EYE_R_CORNERS), :2].mean(0)
        self.iris_r, self.iris_l = (IRIS_A, IRIS_B) if np.linalg.norm(ir_a - er) < np.linalg.norm(ir_b - er) else \
            (IRIS_B, IRIS_A)
        # triangles inside an eye or the mouth may collapse (a blink, a closing mouth): not fold-checked
        inner = np.zeros(len(self.verts), bool)
        inner[np.r_[EYE_R_RING, EYE_L_RING, IRIS_A, IRIS_B, INNER_LIPS]] = True
        # the lips roll, pout and protrude: their triangles may overlap their surroundings in the image,
        # and the painter's order below draws that overlap as the occlusion it is
        lips = self.lm[OUTER_LIPS, :2]
        c = lips.mean(0)
        grown = (c + (lips - c) * [1.25, 1.8]).astype(np.float32)
        for i in range(N_LM):
            if cv2.pointPolygonTest(grown, (float(self.lm[i, 0]), float(self.lm[i, 1])), False) >= 0:
                inner[i] = True
        # iris points may sit under the lids (outside the eye's outline): their triangles are drawn in
        # depth order like the lips' instead
        iris = np.zeros(len(self.verts), bool)
        iris[np.r_[IRIS_A, IRIS_B]] = True
        # nor those joining an upper lid to an eye corner: a closing lid passes over the corner's skin
        # (an occlusion the painter's order draws); guarding them re-opened whole lids on big eyes
        lid = np.zeros(len(self.verts), bool)
        lid[np.r_[EYE_R_UP, EYE_L_UP]] = True
        corner = np.zeros(len(self.verts), bool)
        corner[list(EYE_R_CORNERS + EYE_L_CORNERS)] = True
        at_corner = lid[self.tris].any(axis=1) & corner[self.tris].any(axis=1)
        self.check = ~inner[self.tris].all(axis=1) & ~iris[self.tris].any(axis=1) & ~at_corner
        # painter's order: face triangles by depth each frame (nearest first wins), then the rest
        self.face_tri = (self.tris < N_LM).all(axis=1)
        self.n_face = int(self.face_tri.sum())
        self.face_ids = np.nonzero(self.face_tri)[0]
        self.rest_ids = np.nonzero(~self.face_tri)[0]
        self.order_tris = self.tris.copy()
        area = signed_areas(self.src2, self.tris)
        self.src_sign = np.sign(area)
        big = ~self.face_tri & (np.abs(area) > max(4.0, 2e-4 * self.fw ** 2))
        # nor those on two landmarks that nearly coincide in the picture or lie at very different depths
        # (the far side of a face seen from three quarters): they turn over by self-occlusion, which the
        # painter's order draws
        t = self.tris
        for i, j in ((0, 1), (1, 2), (2, 0)):
            both = (t[:, i] < N_LM) & (t[:, j] < N_LM)
            flat = np.linalg.norm(self.src2[t[:, i]] - self.src2[t[:, j]], axis=1)
            deep = np.abs(self.verts[t[:, i], 2] - self.verts[t[:, j], 2])
            big &= ~(both & ((flat < 0.02 * self.fw) | (deep > flat)))
        self.ring_tris, self.ring_sign, self.ring_area = self.tris[big], self.src_sign[big], np.abs(area[big])
        # the face's own triangles, to limit how far a turn may stretch them (``_overstretched``)
        self.skin_tris, self.skin_sign = self.tris[self.face_tri], self.src_sign[self.face_tri]
        self.skin_area = np.abs(area[self.face_tri])
        self.face_area = float(self.skin_area.sum())
        self.max_stretch = math.inf
        self.nb = mesh_neighbours()
        # the face triangles on the rows above the upper lids (``_lid_rows`` keeps them unfolded)
        rows = np.zeros(len(self.verts), bool)
        rows[np.r_[EYE_R_UP1, EYE_R_UP2, EYE_L_UP1, EYE_L_UP2]] = True
        on_rows = rows[self.tris].any(axis=1) & self.face_tri
        self.lid_tris = self.tris[on_rows]
        self.lid_area = signed_areas(self.src2, self.lid_tris)

    def _lid_rows(self, lm: np.ndarray, travel: np.ndarray) -> np.ndarray:
        """Landmarks ``lm`` (478, 3) with the rows above the upper lids moved by ``travel`` (478, 2) px,
        the largest fraction of it (bisection) that folds no triangle that was not folded without it."""
        def folded(f: float) -> np.ndarray:
            p = lm[:, :2] + f * travel
            return signed_areas(p, self.lid_tris) * np.sign(self.lid_area) < 0.02 * np.abs(self.lid_area)

        before = folded(0.0)
        f = 1.0
        if (folded(1.0) & ~before).any():
            lo, hi = 0.0, 1.0
            for _ in range(5):
                mid = 0.5 * (lo + hi)
                if (folded(mid) & ~before).any():
                    hi = mid
                else:
                    lo = mid
            f = lo
        out = lm.copy()
        out[:, :2] += f * travel
        return out

    def moving(self, dst: np.ndarray, still: float = 0.25) -> tuple[np.ndarray, tuple[int, int, int, int]]:
        """The triangles (in drawing order) with a vertex that moved more than ``still`` px, and the
        region their destination covers: only that is warped, the rest is the avatar as it is (a
        triangle whose corners all moved less than a quarter pixel differs from a copy by less than a
        grey level on smooth texture)."""
        moved = np.abs(dst - self.src2).max(axis=1) > still
        keep = moved[self.order_tris].any(axis=1)
        tris = self.order_tris[keep]
        if not len(tris):
            return tris, (0, 0, 0, 0)
        pts = dst[tris.ravel()]
        x0, y0, x1, y1 = self.region
        region = (max(x0, int(pts[:, 0].min())), max(y0, int(pts[:, 1].min())),
                  min(x1, int(np.ceil(pts[:, 0].max())) + 1), min(y1, int(np.ceil(pts[:, 1].max())) + 1))
        return np.ascontiguousarray(tris), region

    def _ring_flips(self, placed: np.ndarray) -> bool:
        """Whether a hair / background triangle of visible size flips (slivers between landmarks that
        nearly coincide, a few pixels in area, flip with any motion and show nothing)."""
        rest = self.ring_tris
        return bool((signed_areas(placed[:, :2], rest) * self.ring_sign < -0.25 * self.ring_area).any())

    def _overstretched(self, placed: np.ndarray, scale: float) -> bool:
        """Whether a turn shows more of the avatar's hidden side than its pixels hold: the face area drawn
        beyond ``max_stretch`` times its area in the picture (after the head's scale) is more than
        STRETCH_SLACK of the face. A three-quarter portrait's far cheek is a thin strip of pixels;
        turned to face the camera it would be smeared into streaks."""
        if not math.isfinite(self.max_stretch):
            return False
        a = signed_areas(placed[:, :2], self.skin_tris) * self.skin_sign / (scale * scale)
        excess = np.maximum(a - self.max_stretch * self.skin_area, 0.0).sum()
        return bool(excess > STRETCH_SLACK * self.face_area)

    def _too_far(self, placed: np.ndarray, pose: Pose) -> bool:
        return self._ring_flips(placed) or self._overstretched(placed, pose.scale)

    def _rigid(self, verts: np.ndarray, pose: Pose, rot: np.ndarray) -> np.ndarray:
        """(V, 3) after the head motion; xy weighted per vertex (rings follow partly, the border not)."""
        moved = self.pivot + pose.scale * (verts - self.pivot) @ rot.T
        moved[:, :2] += pose.shift
        # outside the face: the rigid motion of the anchor outline point (at rest, no expression)
        rest = self.verts[self.anchor]
        anchor = (self.pivot + pose.scale * (rest - self.pivot) @ rot.T)[:, :2] + pose.shift
        follow = anchor - rest[:, :2]
        moved[N_LM:, :2] = verts[N_LM:, :2] + follow
        d = self.weight[:, None] * (moved[:, :2] - verts[:, :2])
        # a point the face comes towards keeps at least PUSH_KEEP of its gap from it: pushed ahead when
        # its weight alone would let the face run over it (near the picture's edge, where points follow
        # little), so the neck and hair between never fold
        toward = (follow * self.away).sum(1)
        need = toward - (1.0 - PUSH_KEEP) * self.gap - (d[N_LM:] * self.away).sum(1)
        d[N_LM:] += np.where(self.pushed & (need > 0), need, 0.0)[:, None] * self.away
        # on the picture's edge: outwards or along it, never inwards, and pushed out ahead of the face's
        # outline (PUSH_KEEP of each outline point's gap to it kept, for outline points across from it)
        p = verts[FACE_OVAL, :2]
        step = moved[FACE_OVAL, :2] - p
        for k, out in ((0, self.out_x), (1, self.out_y)):
            sel = np.nonzero(out)[0]
            if not sel.size:
                continue
            n = out[sel, None]
            gap = (verts[sel, None, k] - p[None, :, k]) * n
            across = np.clip(1.0 - np.abs(verts[sel, None, 1 - k] - p[None, :, 1 - k]) / (0.5 * self.fw), 0.0, 1.0)
            need = (across * (step[None, :, k] * n - (1.0 - PUSH_KEEP) * gap)).max(axis=1) - d[sel, k] * n[:, 0]
            d[sel, k] += np.maximum(need, 0.0) * n[:, 0]
            d[:, k] = np.where(d[:, k] * out < 0, 0.0, d[:, k])
        moved[:, :2] = verts[:, :2] + d
        return moved

    def place(self, pose: Pose) -> np.ndarray:
        """Destination vertices (V, 2) for a pose; ``order_tris`` is set to the triangles in drawing order."""
        lm = self.lm + pose.expr * [1.0, 1.0, 0.3]  # depth of expressions is noisy: damped
        # eyelids: upper lid = lower lid + ratio * the avatar's own lid gap; irises follow the gaze. A
        # closing lid slides down with the skin above it (its lashes and margin keep their shape over the
        # eye, as a real lid's do) and the stretch goes to the skin under the brow
        travels = []
        for up, lo, up1, up2, iris, k in ((EYE_R_UP, EYE_R_LO, EYE_R_UP1, EYE_R_UP2, self.iris_r, 0),
                                          (EYE_L_UP, EYE_L_LO, EYE_L_UP1, EYE_L_UP2, self.iris_l, 1)):
            r = float(np.clip(pose.eyes[k], 0.04, 1.5))
            lm[up] = lm[lo] + r * (self.lm[up] - self.lm[lo])
            if r < LID_SLIDE_FROM:
                slide = (LID_SLIDE_FROM - r) / LID_SLIDE_FROM  # 0 .. 1 when shut, as the lid's (1 - r)
                lid = slide * LID_TAPER[:, None] * (self.lm[lo, :2] - self.lm[up, :2])
                travel = np.zeros((N_LM, 2))
                travel[up1] = LID_FOLLOW[0] * lid
                travel[up2] = LID_FOLLOW[1] * lid
                travels.append(travel)
            lower_y = lm[lo, 1].mean()
            ew = np.linalg.norm(self.lm[up[0], :2] - self.lm[up[-1], :2])
            shift = lm[iris[0], :2] - self.lm[iris[0], :2]
            shift = np.clip(shift, [-0.25 * ew, -0.12 * ew], [0.25 * ew, 0.12 * ew])
            ir = self.lm[iris].copy()
            ir[:, :2] += shift
            ir[:, 1] = lower_y + min(r, 1.0) * (ir[:, 1] - lower_y)
            lm[iris] = ir
        for travel in travels:  # each eye on its own: the far eye of a three-quarter face has less room
            lm = self._lid_rows(lm, travel)
        verts = self.verts.copy()
        verts[:N_LM] = lm
        rot = pose.rot
        # big turns: a face triangle that flips without any expression is self-occlusion, which the
        # painter's order draws right; when hair or background would fold, or the avatar's hidden side
        # would be stretched from too few pixels, turn less: the largest fraction of the turn that does
        # neither (bisection: continuous, so no jumps between frames)
        base3 = self._rigid(self.verts, pose, rot)
        self.turn_scale = 1.0
        if self._too_far(base3, pose):
            lo, hi = 0.0, 1.0
            for _ in range(6):
                mid = 0.5 * (lo + hi)
                part = pose.head_part(mid)
                if self._too_far(self._rigid(self.verts, part, rotation_scale(pose.rot, mid)), part):
                    hi = mid
                else:
                    lo = mid
            self.turn_scale = lo
            pose = pose.head_part(lo)
            rot = pose.rot
            base3 = self._rigid(self.verts, pose, rot)
        moved = self._rigid(verts, pose, rot)
        self.last_base = base3[:, :2]
        self.last_z = moved[:N_LM, 2]
        dst, self.folds = unfold(self.src2, base3[:, :2], moved[:, :2], self.tris, self.check, *self.nb)
        # painter's order: front-facing face triangles nearest first, then hair/neck/background, and
        # last the back-facing ones (folded away behind the face; they only fill what nothing else does)
        front = signed_areas(dst, self.tris) * self.src_sign >= 0
        depth = moved[self.tris[self.face_ids], 2].mean(axis=1)
        faces = self.face_ids[np.argsort(depth, kind="stable")]
        order = np.concatenate([faces[front[faces]], self.rest_ids[front[self.rest_ids]], np.nonzero(~front)[0]])
        self.order_tris[:] = self.tris[order]
        return np.ascontiguousarray(dst)


# ---- mouth interior -------------------------------------------------------------------------------

class MouthPainter:
    """Paints the inside of an opening mouth within the output's inner-lip polygon: a dark cavity as
    soon as the lips part (a thin dark line reads as parted lips; stretched lip skin does not), and
    teeth that fade in as it opens further, lit in the middle and in shadow towards the corners, as a
    real mouth's are."""

    CAVITY = (0.005, 0.04)  # the cavity fades in from this gap beyond the avatar's own, over this one (x mouth width)
    TEETH = (0.04, 0.10)  # the teeth likewise, from and over
    # where one tooth meets the next, from the middle of the mouth, x the mouth width: the central
    # incisors, the lateral ones, the canines
    TOOTH_EDGES = (0.0, 0.105, 0.19, 0.265)

    def __init__(self, shape: tuple[int, int], avatar: np.ndarray, image: np.ndarray, teeth: bool):
        h, w = shape
        self.mask = np.zeros((h, w), np.uint8)
        self.teeth_mask = np.zeros((h, w), np.uint8)
        self.alpha = np.zeros((h, w), np.float32)
        self.patch = np.zeros((h, w, 3), np.uint8)
        self.teeth = teeth
        p = avatar[:, :2]
        self.gap0 = float(np.linalg.norm(p[LIP_BOTTOM] - p[LIP_TOP]))
        self.mw0 = float(np.linalg.norm(p[MOUTH_R] - p[MOUTH_L]))
        lips = np.round(p[OUTER_LIPS]).astype(np.int32)
        m = np.zeros(image.shape[:2], np.uint8)
        cv2.fillPoly(m, [lips], 255)
        lip = np.array(cv2.mean(image, m)[:3])
        self.cavity = np.clip(lip * 0.25 + [8, 6, 14], 0, 255)
        face = np.zeros(image.shape[:2], np.uint8)
        cv2.fillPoly(face, [np.round(p[FACE_OVAL]).astype(np.int32)], 255)
        self.tooth = tooth_colour(image, face > 0)
        self.amount = 0.0  # the cavity's opacity in the last frame painted, 0..1
        self.teeth_amount = 0.0  # the teeth's, 0..1

    def paint(self, out: np.ndarray, dst: np.ndarray, weight: float = 1.0) -> None:
        gap = float(np.linalg.norm(dst[LIP_BOTTOM] - dst[LIP_TOP]))
        mw = float(np.linalg.norm(dst[MOUTH_R] - dst[MOUTH_L])) + 1e-6
        more = (gap - self.gap0) / mw
        self.amount = a = float(np.clip((more - self.CAVITY[0]) / self.CAVITY[1], 0.0, 1.0)) * weight
        self.teeth_amount = t = float(np.clip((more - self.TEETH[0]) / self.TEETH[1], 0.0, 1.0)) if self.teeth else 0.0
        if a <= 0.0:
            return
        h, w = out.shape[:2]
        poly = dst[INNER_LIPS]
        x0 = max(int(poly[:, 0].min()) - 2, 0)
        y0 = max(int(poly[:, 1].min()) - 2, 0)
        x1 = min(int(poly[:, 0].max()) + 3, w)
        y1 = min(int(poly[:, 1].max()) + 3, h)
        if x1 - x0 < 2 or y1 - y0 < 2:
            return
        m = self.mask[y0:y1, x0:x1]
        m[...] = 0
        sh = 3  # 1/8 pixel precision
        off = np.array([x0, y0])
        cv2.fillPoly(m, [np.round((poly - off) * (1 << sh)).astype(np.int32)], 255, cv2.LINE_AA, sh)
        # never outside the lips: where a turn or a wide smile puts an inner-lip corner past the outer
        # one, the cavity would paint a dark wedge onto the cheek
        lips = self.teeth_mask[y0:y1, x0:x1]
        lips[...] = 0
        cv2.fillPoly(lips, [np.round((dst[OUTER_LIPS] - off) * (1 << sh)).astype(np.int32)], 255, cv2.LINE_AA, sh)
        np.minimum(m, lips, out=m)
        pt = self.patch[y0:y1, x0:x1]
        pt[...] = self.cavity.astype(np.uint8)
        if t > 0.0:
            tm = self.teeth_mask[y0:y1, x0:x1]
            tm[...] = 0
            up = dst[INNER_UPPER] - off
            th = min(0.42 * gap, 0.11 * mw)
            band = np.concatenate([up, (up + [0, th])[::-1]])
            cv2.fillPoly(tm, [np.round(band * (1 << sh)).astype(np.int32)], 255, cv2.LINE_AA, sh)
            lo = dst[INNER_LOWER] - off
            tl = min(0.22 * gap, 0.06 * mw)
            band = np.concatenate([lo, (lo - [0, tl])[::-1]])
            # the lower row is mostly behind the lower lip and in the upper row's shadow
            cv2.fillPoly(tm, [np.round(band * (1 << sh)).astype(np.int32)], 150, cv2.LINE_AA, sh)
            # lit in the middle, in the cheeks' shadow towards the corners
            mid = 0.5 * (dst[MOUTH_L] + dst[MOUTH_R]) - off
            u = (np.arange(x1 - x0, dtype=np.float32) - np.float32(mid[0])) / np.float32(0.5 * mw)
            lit = np.clip(1.4 * (1.0 - u * u), 0.0, 1.0) * np.float32(t / 255.0)
            # a faint shadow line where one tooth meets the next (flat colour reads as a gum shield)
            x = np.abs(np.arange(x1 - x0, dtype=np.float32) - np.float32(mid[0])) / np.float32(mw)
            near = np.min(np.abs(x[:, None] - np.float32(self.TOOTH_EDGES)[None, :]), axis=1)
            lit *= 1.0 - 0.2 * np.exp(-(near / max(0.008, 0.6 / mw)) ** 2)
            al = self.alpha[y0:y1, x0:x1]
            np.multiply(tm, lit[None, :], out=al, casting="unsafe")
            pt[...] = self.cavity + al[..., None] * (self.tooth - self.cavity) + 0.5
        al = self.alpha[y0:y1, x0:x1]
        np.multiply(m, np.float32(a / 255.0), out=al, casting="unsafe")
        wk.blend_numba(out, pt, al, x0, y0)


def tooth_colour(image: np.ndarray, face: np.ndarray) -> np.ndarray:
    """BGR of teeth in the picture's own light: a little below its brightest skin (the 95th percentile
    of lightness inside the face, whose colour is what white looks like under that light and varnish),
    with a third of that colour's saturation taken out."""
    px = image[face].astype(np.float32)
    if len(px) < 16:
        px = image.reshape(-1, 3).astype(np.float32)
    lum = px @ np.float32([0.114, 0.587, 0.299])
    top = px[lum >= np.percentile(lum, 95)].mean(0)
    grey = float(top @ np.float32([0.114, 0.587, 0.299]))
    return np.clip(0.88 * (grey + (top - grey) * 0.67), 0, 255)


# ---- few-shot regions ----------------------------------------------------------------------------

REGIONS = (("mouth", OUTER_LIPS, 0), ("eye_r", EYE_R_RING, 1), ("eye_l", EYE_L_RING, 2))


class ShotBlender:
    """Extra shots of the avatar supply the mouth / eye pixels when the current expression is nearer to
    theirs than to the main shot's (e.g. real teeth from a mouth-open shot)."""

    def __init__(self, canvases: list[np.ndarray], shot_verts: list[np.ndarray], features: np.ndarray,
                 tris: np.ndarray, shape: tuple[int, int]):
        h, w = shape
        self.canvases = canvases
        self.shot_verts = shot_verts
        self.features = features
        self.tris = tris
        self.buf = np.zeros((h, w, 3), np.uint8)
        self.mask = np.zeros((h, w), np.uint8)
        self.alpha = np.zeros((h, w), np.float32)
        self.state = wk.MeshWarp((h, w), len(tris))
        self.used: dict[str, tuple[int, float]] = {}

    def choose(self, feature: int, target: float) -> tuple[int, float]:
        f = self.features[:, feature]
        base = f[0]
        best, best_w = 0, 0.0
        for k in range(1, len(f)):
            span = f[k] - base
            if abs(span) < 0.05:
                continue
            wgt = float(np.clip((target - base) / span, 0.0, 1.0))
            if wgt > best_w + 1e-6 or (wgt > 0 and abs(wgt - best_w) <= 1e-6 and abs(f[k] - target) <
                                       abs(f[best] - target)):
                best, best_w = k, wgt
        return best, best_w

    def blend(self, out: np.ndarray, dst: np.ndarray) -> None:
        self.used.clear()
        if len(self.canvases) < 2:
            return
        feats = expression_features(dst)
        h, w = out.shape[:2]
        for name, ring, fi in REGIONS:
            k, wgt = self.choose(fi, float(feats[fi]))
            if k == 0 or wgt < 0.02:
                continue
            self.used[name] = (k, wgt)
            poly = dst[ring]
            size = float(np.ptp(poly[:, 0]))
            pad = int(0.35 * size) + 3
            x0 = max(int(poly[:, 0].min()) - pad, 0)
            y0 = max(int(poly[:, 1].min()) - pad, 0)
            x1 = min(int(poly[:, 0].max()) + pad + 1, w)
            y1 = min(int(poly[:, 1].max()) + pad + 1, h)
            if x1 - x0 < 4 or y1 - y0 < 4:
                continue
            wk.warp_mesh_numba(self.canvases[k], self.shot_verts[k], dst, self.tris, self.buf, (x0, y0, x1, y1),
                               self.state)
            m = self.mask[y0:y1, x0:x1]
            m[...] = 0
            off = np.array([x0, y0])
            c = poly.mean(0)
            grown = c + (poly - c) * 1.25 - off
            cv2.fillPoly(m, [np.round(grown * 8).astype(np.int32)], 255, cv2.LINE_AA, 3)
            kz = max(3, (int(0.12 * size) // 2) * 2 + 1)
            cv2.GaussianBlur(m, (kz, kz), 0, dst=m)
            al = self.alpha[y0:y1, x0:x1]
            np.multiply(m, np.float32(wgt / 255.0), out=al, casting="unsafe")
            wk.blend_numba(out, self.buf[y0:y1, x0:x1], al, x0, y0)


# ---- idle --------------------------------------------------------------------------------------

def idle_pose(t: float, face_w: float, seed: int = 0) -> Pose:
    """Breathing (a slow rise and a tiny scale) and blinks every 2.5..5 s, from time ``t`` in seconds."""
    p = Pose.rest()
    breath = math.sin(2 * math.pi * t / 4.2)
    p.shift = np.array([0.0, -0.012 * face_w * breath])
    p.scale = 1.0 + 0.004 * breath
    p.rot = cv2.Rodrigues(np.array([0.012 * breath, 0.02 * math.sin(2 * math.pi * t / 9.0), 0.0]))[0]
    # blink schedule: deterministic pseudo-random gaps
    rng = np.random.default_rng(seed)
    gaps = rng.uniform(2.5, 5.0, 64)
    period = float(gaps.sum())
    tt = t % period
    starts = np.cumsum(gaps) - gaps[0] + 0.8
    dt = tt - starts
    dt = dt[(dt >= 0) & (dt < 0.3)]
    if dt.size:
        x = float(dt[0]) / 0.3  # 0..1 over the blink: close fast, open slower
        closed = math.sin(math.pi * min(1.0, x * 1.6)) if x < 0.3125 else 1.0 - (x - 0.3125) / 0.6875
        p.eyes[:] = 1.0 - 0.97 * float(np.clip(closed, 0, 1))
    return p


# ---- the node --------------------------------------------------------------------------------------

def _read_image(path: Path) -> np.ndarray:
    img = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if img is None:
        raise UserError("cannot read the avatar image (corrupt or not an image)", Where(path),
                        "use a JPEG, PNG, BMP, WebP or TIFF file")
    return img


def _fit(shape_src: tuple[int, int], size: tuple[int, int] | None) -> tuple[float, np.ndarray, tuple[int, int]]:
    """Scale and offset that fit an image of (h, w) into an output (w, h) (letterbox); output (h, w)."""
    h, w = shape_src
    if size is None:
        return 1.0, np.zeros(2), (h, w)
    ow, oh = size
    s = min(ow / w, oh / h)
    return s, np.array([(ow - w * s) / 2, (oh - h * s) / 2]), (oh, ow)


def load_avatar_data(paths: list[Path], landmark_files: list[Path | None]) -> dict[str, np.ndarray]:
    """Cached ``prepare_avatar`` for image files (and optional precomputed landmark ``.npy``/``.npz``)."""
    files = list(paths) + [f for f in landmark_files if f is not None]

    def compute():
        imgs = [_read_image(p) for p in paths]
        given = []
        for f in landmark_files:
            if f is None:
                given.append(None)
                continue
            try:
                data = np.load(f)
                given.append(data["landmarks"] if hasattr(data, "files") else data)
            except Exception as exc:
                raise UserError(f"cannot read avatar landmarks: {exc}", Where(f)) from None
        t0 = time.perf_counter()
        res = prepare_avatar(imgs, [str(p) for p in paths], given)
        log.info("prepared avatar %s in %.2f s", ", ".join(p.name for p in paths), time.perf_counter() - t0)
        return res

    return cached(CACHE_NAMESPACE, files, compute, PREP_VERSION)


def landmark_files(ctx, paths: list[Path]) -> list[Path | None]:
    """`avatar.landmarks`: precomputed landmark files (.npy / .npz with `landmarks`), one per image."""
    raw = ctx.avatar.raw.get("landmarks")
    if raw is None:
        return [None] * len(paths)
    items = [raw] if isinstance(raw, str) else list(raw)
    files: list[Path | None] = []
    for i in range(len(paths)):
        item = items[i] if i < len(items) else None
        if item is None:
            files.append(None)
            continue
        f = ctx.resolve(str(item))
        if not f.is_file():
            raise UserError(f"avatar landmarks file not found: {item!r}", Where(ctx.preset_file),
                            "paths are relative to the preset file")
        files.append(f)
    return files


@register
class Reenact(Node):
    kind = "reenact"
    family = "reenact"
    description = "The avatar image animated by the tracked driver face: head turns, expressions, blinks, mouth."
    inputs = (Port("frame", PortType.FRAME, "(H, W, 3) uint8 BGR driver frame (only its faces are used)"),
              Port("faces", PortType.FACES, "driver faces from the `face` node (landmarks in driver pixels)"))
    outputs = (Port("frame", PortType.FRAME, "(h, w, 3) uint8 BGR: the avatar's size, or `size`"),
               Port("faces", PortType.FACES, "the avatar's face as drawn: its landmarks in output pixels (for the "
                    "nodes after this one, and for `avatarcast eval`'s drawn motion figures)"))
    commands = ("recalibrate",)
    params = (
        Param("size", "size", None, "output size WxH (default: the avatar image's size; letterboxed)",
              optional=True, live=False),
        Param("neutral", "choice", "first", "driver neutral: the first tracked frame (steadiest), or the frame most "
              "like the avatar within the first `calibrate_s` seconds", choices=("first", "auto")),
        Param("calibrate_s", "float", 1.5, "seconds in which `neutral: auto` looks for the best neutral",
              min=0.0, max=10.0, step=0.5),
        Param("max_stretch", "float", 3.0, "a turn that shows the hidden side of a three-quarter avatar stops "
              "where its face would be stretched to more than this many times its area in the picture (its "
              "far cheek is a thin strip of pixels, smeared into streaks when turned to the camera); 50 = no limit",
              min=1.5, max=50.0, step=0.5),
        Param("max_turn", "float", 32.0, "largest head rotation passed to the avatar, degrees (softly clamped)",
              min=5.0, max=60.0, step=2.0),
        Param("follow", "float", 1.0, "how much of the driver's head shift the avatar follows (0 = stays put)",
              min=0.0, max=1.5, step=0.1),
        Param("expression", "float", 1.0, "expression strength (mouth, brows, lids)", min=0.0, max=2.0, step=0.1),
        Param("teeth", "bool", True, "draw teeth in an opening mouth (extra mouth-open shots give real ones)"),
        Param("idle", "bool", True, "breathe and blink when no driver face is seen"),
        Param("ease_s", "float", 0.6, "seconds to ease to idle when the driver face is lost", min=0.0, max=5.0,
              step=0.1),
    )

    def configure(self, in_shapes):
        images = self.ctx.avatar.images
        if not images:
            raise UserError("the reenact node needs an avatar: add `avatar: {images: [face.jpg]}` to the preset")
        if self.p["size"] is not None:
            w, h = self.p["size"]
            return {"frame": (h, w)}
        full = _image_size(images[0])
        return {"frame": full}

    # ---- open -----------------------------------------------------------------------------------
    def open(self) -> None:
        wk.warmup()
        paths = list(self.ctx.avatar.images)
        lm_files = self._landmark_files(paths)
        data = load_avatar_data(paths, lm_files)
        oh, ow = self.out_shapes["frame"]
        size = None if self.p["size"] is None else (ow, oh)
        canvases, shot_verts = [], []
        s0, off0, _ = _fit(tuple(data["sizes"][0]), size)
        decoded = self.ctx.shared.get("avatar_images")  # decoded by the engine while preparing the preset
        for k, path in enumerate(paths):
            img = decoded[k] if decoded is not None and len(decoded) == len(paths) else _read_image(path)
            if k == 0:
                s, off = s0, off0
                canvas = np.zeros((oh, ow, 3), np.uint8)
                m = np.array([[s, 0, off[0]], [0, s, off[1]]])
                cv2.warpAffine(img, m, (ow, oh), dst=canvas, flags=cv2.INTER_AREA if s < 1 else cv2.INTER_LINEAR,
                               borderMode=cv2.BORDER_REPLICATE)
            else:  # an extra shot: stretched onto the main canvas size, its landmarks likewise
                sx, sy = ow / img.shape[1], oh / img.shape[0]
                canvas = cv2.resize(img, (ow, oh), interpolation=cv2.INTER_AREA)
            canvases.append(np.ascontiguousarray(canvas))
            lm = data["landmarks"][k].astype(np.float64)
            if k == 0:
                lm = lm * [s0, s0, s0] + [off0[0], off0[1], 0.0]
                main_lm = lm
            else:
                lm = lm * [sx, sy, (sx + sy) / 2]
            shot_verts.append(lm)
        mesh = {"verts": data["verts"] * [s0, s0, s0] + [off0[0], off0[1], 0.0], "weight": data["weight"],
                "tris": data["tris"], "rect": data["rect"] * s0 + np.r_[off0, off0]}
        self.rig = AvatarRig(main_lm, mesh, (oh, ow))
        self.rig.max_stretch = self._max_stretch()
        self.canvas = canvases[0]
        # extra shots: their own landmarks, and the main mesh's non-landmark vertices mapped by the
        # similarity between the main shot and that shot
        for k in range(1, len(canvases)):
            lm = shot_verts[k]
            s, r, t = similarity_3d(main_lm[RIGID], lm[RIGID])
            rest = s * self.rig.verts[N_LM:] @ r.T + t
            shot_verts[k] = np.ascontiguousarray(np.concatenate([lm, rest])[:, :2])
        shot_verts[0] = self.rig.src2
        self.shots = ShotBlender(canvases, shot_verts, data["features"], self.rig.tris, (oh, ow))
        self.mouth = MouthPainter((oh, ow), main_lm, self.canvas, self.p["teeth"])
        self.warp_state = wk.MeshWarp((oh, ow), len(self.rig.tris))
        self.motion = Motion(main_lm, self.p["max_turn"], self.p["follow"], (ow, oh))
        self.dst = self.rig.src2.copy()
        self.last_region = (0, 0, 0, 0)
        self.reset()
        # compile and touch every path once (not on the first live frame)
        out = np.empty_like(self.canvas)
        self._render(Pose.rest(), out)

    def _max_stretch(self) -> float:
        return math.inf if self.p["max_stretch"] >= 50.0 else float(self.p["max_stretch"])

    def _landmark_files(self, paths: list[Path]) -> list[Path | None]:
        return landmark_files(self.ctx, paths)

    @staticmethod
    def bundle_precomputed(params: dict, ctx) -> list[tuple[str, str, dict[str, np.ndarray]]]:
        """For `avatarcast bundle`: the prepared avatar (landmarks, mesh), so an installed bundle opens
        without running the detector."""
        paths = list(ctx.avatar.images)
        if not paths:
            return []
        marks = landmark_files(ctx, paths)
        data = load_avatar_data(paths, marks)
        key = content_key(CACHE_NAMESPACE, paths + [f for f in marks if f is not None], PREP_VERSION)
        return [(CACHE_NAMESPACE, key, dict(data))]

    def reset(self) -> None:
        self.motion.neutral = None
        self.calib_left = 0
        self.best_likeness = math.inf
        self.frame_i = 0
        self.last_pose = Pose.rest()
        self.lost_s = math.inf
        self.track_id: int | None = None

    def command(self, name, args) -> None:
        if name == "recalibrate":
            self.motion.neutral = None
            self.best_likeness = math.inf
            log.info("reenact %s: recalibrating the driver neutral", self.id)

    def params_changed(self, names) -> None:
        if hasattr(self, "motion"):
            self.motion.max_turn = self.p["max_turn"]
            self.rig.max_stretch = self._max_stretch()
            self.motion.follow = self.p["follow"]
            self.mouth.teeth = self.p["teeth"]

    # ---- per frame --------------------------------------------------------------------------------
    def _pick(self, faces: list[Face]) -> Face | None:
        faces = [f for f in faces if f is not None and getattr(f, "landmarks", None) is not None
                 and np.shape(f.landmarks) == (N_LM, 3)]
        if not faces:
            return None
        for f in faces:
            if self.track_id is not None and f.track_id == self.track_id:
                return f
        return max(faces, key=lambda f: (f.box[2] - f.box[0]) * (f.box[3] - f.box[1]))

    def target_pose(self, faces: list[Face]) -> Pose:
        """The pose for this frame (also used by tests): driver motion, idle, or a mix while easing."""
        dt = 1.0 / max(self.ctx.fps, 1.0)
        t = self.frame_i * dt
        self.frame_i += 1
        face = self._pick(faces)
        idle = idle_pose(t, self.rig.fw) if self.p["idle"] else Pose.rest()
        if face is None or face.state == "easing" and face.neutral_weight >= 1.0:
            self.lost_s = (0.0 if not math.isfinite(self.lost_s) else self.lost_s) + dt
            ease = self.p["ease_s"]
            w = 1.0 if ease <= 0 else min(1.0, dt / max(ease - self.lost_s + dt, dt))
            self.last_pose = self.last_pose.mix(idle, w)
            return self.last_pose
        self.lost_s = 0.0
        lm = np.asarray(face.landmarks, np.float64)
        if not np.isfinite(lm).all():
            return self.last_pose
        self.track_id = face.track_id
        if self.motion.neutral is None:
            self.motion.capture(lm)
            self.calib_left = int(round(self.p["calibrate_s"] / dt)) if self.p["neutral"] == "auto" else 0
            self.best_likeness = self.motion.likeness(lm) if self.calib_left else math.inf
        elif self.calib_left > 0 and face.state == "tracked":
            self.calib_left -= 1
            like = self.motion.likeness(lm)
            if like < self.best_likeness:
                self.best_likeness = like
                self.motion.capture(lm)
        pose = self.motion.pose(lm)
        pose.expr *= self.p["expression"]
        pose.eyes = 1.0 + self.p["expression"] * (pose.eyes - 1.0)
        if face.state == "easing" and face.neutral_weight > 0:
            pose = pose.mix(idle, float(np.clip(face.neutral_weight, 0, 1)))
        self.last_pose = pose
        return pose

    def _render(self, pose: Pose, out: np.ndarray) -> None:
        dst = self.rig.place(pose)
        self.dst = dst
        np.copyto(out, self.canvas)
        tris, region = self.rig.moving(dst)
        self.last_region = region
        if len(tris):
            wk.warp_mesh_numba(self.canvas, self.rig.src2, dst, tris, out, region, self.warp_state)
        few = 0.0
        self.shots.blend(out, dst)
        if "mouth" in self.shots.used:
            few = self.shots.used["mouth"][1]
        self.mouth.paint(out, dst, 1.0 - few)

    def process(self, inputs, out) -> None:
        faces = inputs.get("faces") or []
        pose = self.target_pose(faces)
        frame = out["frame"]
        if self.ctx.device == "cuda":
            self._render_torch(pose, frame)
        else:
            self._render(pose, frame)
        out["faces"] = [self.drawn_face(frame.shape[1::-1])]

    def drawn_face(self, size: tuple[int, int]) -> Face:
        """The avatar's face as the last frame drew it (landmarks in output pixels, depth as posed)."""
        lm = np.empty((N_LM, 3), np.float32)
        lm[:, :2] = self.dst[:N_LM]
        lm[:, 2] = self.rig.last_z
        return make_face(lm, size)

    def _render_torch(self, pose: Pose, out: np.ndarray, device: str = "cuda") -> None:
        """The same frame as ``_render`` with the warp in torch (CUDA live; CPU in the equality test)."""
        import torch

        if getattr(self, "_tcanvas", None) is None or self._tcanvas.device.type != device:
            self._tcanvas = torch.from_numpy(self.canvas).to(device)
        dst = self.rig.place(pose)
        self.dst = dst
        tris, region = self.rig.moving(dst)
        res = wk.warp_mesh_torch(self._tcanvas, self.rig.src2, dst, tris, None, region)
        out[...] = res.cpu().numpy()
        self.shots.blend(out, dst)
        few = self.shots.used["mouth"][1] if "mouth" in self.shots.used else 0.0
        self.mouth.paint(out, dst, 1.0 - few)


# ---- the scripted driver (demo) -------------------------------------------------------------------

def open_mouth(lm: np.ndarray, amount: float) -> np.ndarray:
    """Landmarks with the jaw dropped: the lower lip by ``amount`` x mouth width, the chin a little less."""
    out = lm.copy()
    if amount <= 0:
        return out
    mw = np.linalg.norm(lm[MOUTH_R, :2] - lm[MOUTH_L, :2])
    y_mouth = lm[[LIP_TOP, LIP_BOTTOM], 1].mean()
    y_chin = lm[152, 1]
    x_mid = lm[LIP_BOTTOM, 0]
    below = lm[:, 1] > y_mouth - 0.02 * mw
    t = np.clip((lm[:, 1] - y_mouth) / (y_chin - y_mouth + 1e-6), 0.0, 1.0)
    side = np.clip(1.0 - np.abs(lm[:, 0] - x_mid) / (4.0 * mw), 0.0, 1.0) ** 0.5
    drop = amount * mw * (1.0 - 0.25 * t) * side
    out[below, 1] += drop[below]
    out[INNER_LOWER, 1] = lm[INNER_LOWER, 1] + amount * mw * side[INNER_LOWER]
    return out


def script_landmarks(neutral: np.ndarray, t: float) -> np.ndarray:
    """The demo's motion script at time ``t`` s, applied to neutral landmarks (478, 3) px: talking in
    phrases, a smile, blinks (and one wink), brows, gaze, and head turns, nods and tilts."""
    lm = neutral.astype(np.float64).copy()
    ed = float(np.linalg.norm(lm[263, :2] - lm[33, :2]))
    mw = float(np.linalg.norm(lm[MOUTH_R, :2] - lm[MOUTH_L, :2]))
    # talking: syllables inside phrases of 2.6 s with 0.9 s pauses
    phrase = (t % 3.5) < 2.6
    syll = 0.5 + 0.5 * math.sin(2 * math.pi * 3.3 * t) * math.sin(2 * math.pi * 0.9 * t + 0.5)
    mouth = (0.04 + 0.32 * syll) if phrase else 0.0
    # smile between 3.5 s and 5 s of every 7 s
    smile = max(0.0, math.sin(math.pi * ((t % 7.0) - 3.5) / 1.5)) if 3.5 <= t % 7.0 < 5.0 else 0.0
    for i, side in ((61, -1), (291, 1), (MOUTH_L, -1), (MOUTH_R, 1)):
        lm[i, 0] += side * 0.12 * mw * smile
        lm[i, 1] -= 0.10 * mw * smile
    lm = open_mouth(lm, mouth)
    # brows up while talking loud
    brow = 0.08 * ed * max(0.0, math.sin(2 * math.pi * t / 4.0))
    lm[np.r_[BROW_R, BROW_L], 1] -= brow
    # blinks every 2.8 s (a wink of the left eye every fourth one)
    k = int(t // 2.8)
    ph = t - k * 2.8 - 1.9
    close = math.sin(math.pi * ph / 0.22) if 0 <= ph < 0.22 else 0.0
    eyes = [(EYE_R_UP, EYE_R_LO), (EYE_L_UP, EYE_L_LO)] if k % 4 != 3 else [(EYE_L_UP, EYE_L_LO)]
    if k % 4 == 3:
        close = math.sin(math.pi * (t - k * 2.8 - 1.6) / 0.6) if 0 <= t - k * 2.8 - 1.6 < 0.6 else 0.0
    for up, lo in eyes:
        lm[up] = lm[lo] + (1.0 - 0.95 * close) * (lm[up] - lm[lo])
    # gaze
    gx = 0.09 * ed * math.sin(2 * math.pi * t / 5.3)
    lm[468:478, 0] += gx
    # head: turn, nod, tilt about a pivot behind the face, and a little sway
    yaw = 20.0 * math.sin(2 * math.pi * t / 6.5)
    pitch = 9.0 * math.sin(2 * math.pi * t / 4.4 + 1.0)
    roll = 7.0 * math.sin(2 * math.pi * t / 5.2 + 2.0)
    r = cv2.Rodrigues(np.radians([pitch, yaw, roll]))[0]
    pivot = lm[RIGID].mean(0) + [0.0, 0.0, 0.45 * np.ptp(lm[FACE_OVAL, 0])]
    lm = (lm - pivot) @ r.T + pivot
    lm[:, 0] += 0.15 * ed * math.sin(2 * math.pi * t / 8.0)
    return lm.astype(np.float32)


@register
class ScriptedDriver(Node):
    kind = "scripted_driver"
    family = "reenact"
    description = "A built-in driver face (no camera, no detector): talks, blinks, smiles, turns, nods and tilts."
    inputs = (Port("frame", PortType.FRAME, "(H, W, 3) uint8 BGR, passed through (sets the pace)"),)
    outputs = (Port("frame", PortType.FRAME, "(H, W, 3) uint8 BGR: the input, with the driver's mesh drawn "
                    "when `draw` is on"),
               Port("faces", PortType.FACES, "one scripted face per frame, landmarks in this frame's pixels"))
    params = (
        Param("landmarks", "path", None, "neutral face landmarks (.npz with `landmarks` (478, 3) or .npy); "
              "default: the avatar's own precomputed landmarks", optional=True, live=False),
        Param("speed", "float", 1.0, "script speed (1 = real time at the stream's fps)", min=0.1, max=4.0, step=0.1),
        Param("draw", "bool", False, "draw the scripted face's mesh on the frame output"),
    )

    def open(self) -> None:
        f = self.p["landmarks"]
        if f is None:
            raw = self.ctx.avatar.raw.get("landmarks")
            f = raw if isinstance(raw, str) else (raw[0] if raw else None)
        if f is None:
            raise UserError("scripted_driver needs neutral landmarks: set its `landmarks` param or the avatar's "
                            "`landmarks` (a .npz/.npy of (478, 3) points)", Where(self.ctx.preset_file))
        path = self.ctx.resolve(str(f))
        try:
            data = np.load(path)
            lm = data["landmarks"] if hasattr(data, "files") else data
        except Exception as exc:
            raise UserError(f"cannot read scripted_driver landmarks: {exc}", Where(path)) from None
        lm = np.asarray(lm, np.float64)
        if lm.shape != (N_LM, 3):
            raise UserError(f"scripted_driver landmarks must be (478, 3), got {lm.shape}", Where(path))
        # centre the template in this frame at a webcam-like size
        h, w = self.ctx.source_size
        fw = float(np.ptp(lm[FACE_OVAL, 0]))
        s = 0.38 * min(h, w) / max(fw, 1e-6)
        c = lm[FACE_OVAL, :2].mean(0)
        self.neutral = lm.copy()
        self.neutral[:, :2] = (lm[:, :2] - c) * s + [w / 2, h / 2]
        self.neutral[:, 2] = lm[:, 2] * s
        self.size = (w, h)
        self.i = 0
        from .face import make_face

        self._make_face = make_face

    def reset(self) -> None:
        self.i = 0

    def process(self, inputs, out) -> None:
        t = self.i * self.p["speed"] / max(self.ctx.fps, 1.0)
        self.i += 1
        lm = script_landmarks(self.neutral, t)
        frame = out["frame"]
        np.copyto(frame, inputs["frame"]) if inputs["frame"].shape == frame.shape else frame.fill(0)
        if self.p["draw"]:
            for p in lm[:, :2].astype(np.int32)[::2]:
                cv2.circle(frame, (int(p[0]), int(p[1])), 1, (255, 255, 255), -1)
        out["faces"] = [self._make_face(lm, self.size)]


def _image_size(path: Path) -> tuple[int, int]:
    img = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if img is None:
        raise UserError("cannot read the avatar image (corrupt or not an image)", Where(path))
    return img.shape[:2]


# ---- benchmarks ------------------------------------------------------------------------------------

ASSETS = Path(__file__).resolve().parents[1] / "presets" / "assets"
SHARED_DRIVING = Path(__file__).resolve().parents[2] / "shared" / "data" / "driving"


def _demo_node(size: tuple[int, int] | None = None, **params) -> Reenact:
    """A reenact node on the project's own 512x512 demo avatar (no test data needed)."""
    from engine.node import Avatar, BuildContext

    ctx = BuildContext(avatar=Avatar(images=[ASSETS / "demo_avatar.png"],
                                     raw={"landmarks": [str(ASSETS / "demo_avatar.npz")]}),
                       preset_dir=ASSETS, fps=30.0)
    if size is not None:
        params["size"] = f"{size[0]}x{size[1]}"
    node = Reenact("reenact", Reenact.validate_params(params)[0], ctx)
    node.out_shapes = node.configure({})
    node.open()
    return node


def _clip(name: str, n: int, size: tuple[int, int] | None = None) -> list[np.ndarray]:
    cap = cv2.VideoCapture(str(SHARED_DRIVING / name))
    frames = []
    while len(frames) < n:
        ok, f = cap.read()
        if not ok:
            break
        frames.append(cv2.resize(f, size) if size and f.shape[1::-1] != size else f)
    cap.release()
    if not frames:
        log.warning("bench: %s not found (../shared/data), timing frames with no face", SHARED_DRIVING / name)
        frames = [np.full((size[1], size[0], 3) if size else (512, 512, 3), 90, np.uint8)]
    return frames


def _warp_notes(r: dict) -> list[str]:
    nb_, ref = r["warp kernel (numba)"]["median_ms"], r["warp numpy reference"]["median_ms"]
    cp = r["memcpy of the warped region"]["median_ms"]
    node = r["reenact node (pose, mesh, warp, mouth)"]["median_ms"]
    return [f"numba warp is {ref / nb_:.1f}x faster than the numpy reference",
            f"warp time / memcpy of the same region = {nb_ / max(cp, 1e-6):.0f}",
            f"reenact node alone: {node:.2f} ms per frame = {1000 / node:.0f} fps"]


@bench.case("reenact_512", "reenact of the 512x512 demo avatar by the scripted driver: geometry, warp kernel "
            "(numba vs numpy), the whole node", _warp_notes)
def _bench_reenact_512():
    node = _demo_node()
    neutral = node.rig.lm.astype(np.float32)
    faces = [[Face(landmarks=lm, box=(*lm[:, :2].min(0), *lm[:, :2].max(0)))]
             for lm in (script_landmarks(neutral, i / 30.0) for i in range(90))]
    node.target_pose(faces[0])
    pose = node.motion.pose(faces[20][0].landmarks)
    dst = node.rig.place(pose)
    tris = node.rig.order_tris.copy()
    out = np.empty_like(node.canvas)
    x0, y0, x1, y1 = node.rig.region
    src_region = np.ascontiguousarray(node.canvas[y0:y1, x0:x1])
    dst_region = np.empty_like(src_region)
    state = {"i": 0}

    def whole():
        node.process({"frame": None, "faces": faces[state["i"] % len(faces)]}, {"frame": out})
        state["i"] += 1

    return {"pose + mesh placement (numpy)": lambda: node.rig.place(node.motion.pose(faces[20][0].landmarks)),
            "warp kernel (numba)": lambda: wk.warp_mesh_numba(node.canvas, node.rig.src2, dst, tris, out,
                                                              node.rig.region, node.warp_state),
            "warp numpy reference": lambda: wk.warp_mesh_ref(node.canvas, node.rig.src2, dst, tris, out,
                                                             node.rig.region),
            "memcpy of the warped region": lambda: np.copyto(dst_region, src_region),
            "reenact node (pose, mesh, warp, mouth)": whole}


def _fps_notes(target: float):
    def notes(r: dict) -> list[str]:
        return [f"{k}: {v['median_ms']:.2f} ms = {1000 / v['median_ms']:.0f} fps (target >= {target:g} fps)"
                for k, v in r.items()]
    return notes


def _engine_steps(clip: str, size: tuple[int, int], reenact_yaml: str, face_yaml: str = "") -> dict:
    """One engine step per call: a real clip's frames through face -> reenact (demo avatar)."""
    from engine.preset import loads_preset
    from engine.runtime import Engine

    frames = _clip(clip, 90, size)
    preset = loads_preset("name: bench\navatar:\n  images: [demo_avatar.png]\n  landmarks: [demo_avatar.npz]\n"
                          f"pipeline:\n  - node: face\n{face_yaml}  - node: reenact\n{reenact_yaml}", base_dir=ASSETS)
    eng = Engine([preset], source_size=size, out_size=size, live=True)
    eng.start()
    out = np.empty((size[1], size[0], 3), np.uint8)
    state = {"i": 0}

    def step():
        eng.process(frames[state["i"] % len(frames)], out)
        state["i"] += 1

    return step


@bench.case("reenact_track_512", "face tracking (512x512 webcam clip) + reenact of the 512x512 demo avatar, "
            "per frame", _fps_notes(60))
def _bench_track_512():
    return {"face + reenact (engine step)": _engine_steps("webcam_glasses.mp4", (512, 512), "",
                                                          "    process_width: 0\n")}


@bench.case("reenact_live_720p", "live path: 1280x720 camera frame -> face -> reenact -> 1280x720 output, "
            "per frame (the engine step the live runner repeats)", _fps_notes(30))
def _bench_live_720p():
    return {"camera 720p -> avatar 720p (engine step)": _engine_steps("indoor_upper_body.mp4", (1280, 720),
                                                                      "    size: 1280x720\n")}
