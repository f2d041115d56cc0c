"""Landmark features: pure numpy on mediapipe face-mesh landmarks, shared by the ``face`` node's
expression signals and by the quality evaluation (``avatarcast eval``).

Every function takes landmarks shaped ``(..., 478, 3)`` (or ``(..., 468+, 2|3)`` where only mesh
points are used) in pixels, z scaled like x, and returns arrays shaped ``(...)``: one value per face,
so a whole clip ``(T, 478, 3)`` is measured in one call.

Left and right are the person's own (mediapipe's ``LEFT_EYE`` is the person's left eye, on the
image's right for a face looking at the camera); a mirrored image swaps them.
"""

from __future__ import annotations

import numpy as np

# ---- mediapipe face-mesh indices -------------------------------------------------------------
NOSE_TIP = 1
FOREHEAD = 10  # top of the face oval, centre
CHIN = 152
CHEEK_RIGHT, CHEEK_LEFT = 234, 454  # face oval at the cheekbones (image left / right when frontal)
MOUTH_RIGHT, MOUTH_LEFT = 61, 291  # lip corners
LIP_INNER_TOP, LIP_INNER_BOTTOM = (82, 13, 312), (87, 14, 317)
EYE_RIGHT_OUTER, EYE_RIGHT_INNER = 33, 133
EYE_LEFT_OUTER, EYE_LEFT_INNER = 263, 362
EYE_RIGHT_UPPER, EYE_RIGHT_LOWER = (160, 159, 158), (144, 145, 153)
EYE_LEFT_UPPER, EYE_LEFT_LOWER = (387, 386, 385), (373, 374, 380)
BROW_RIGHT = (70, 63, 105, 66, 107)
BROW_LEFT = (300, 293, 334, 296, 336)
# whole eye outlines (mediapipe FACEMESH_LEFT_EYE / RIGHT_EYE points): their centroids give a steadier
# eye line than the corners alone
EYE_LEFT_RING = (249, 263, 362, 373, 374, 380, 381, 382, 384, 385, 386, 387, 388, 390, 398, 466)
EYE_RIGHT_RING = (7, 33, 133, 144, 145, 153, 154, 155, 157, 158, 159, 160, 161, 163, 173, 246)
# the mesh row just above each upper lid (outer corner inwards): with the lid it bounds the lid's band
EYE_RIGHT_ABOVE = (247, 30, 29, 27, 28, 56, 190)
EYE_LEFT_ABOVE = (467, 260, 259, 257, 258, 286, 414)
IRIS_RIGHT, IRIS_LEFT = 468, 473  # iris centres (refine_landmarks=True)
# the face outline as a closed loop (forehead, the person's left side, chin, right side)
FACE_OVAL = (10, 338, 297, 332, 284, 251, 389, 356, 454, 323, 361, 288, 397, 365, 379, 378, 400, 377, 152,
             148, 176, 149, 150, 136, 172, 58, 132, 93, 234, 127, 162, 21, 54, 103, 67, 109)

# The features the motion-transfer measure correlates, in report order.
MOTION_FEATURES = ("mouth_open", "mouth_width", "eye_open_left", "eye_open_right", "brow_left", "brow_right",
                   "roll", "yaw", "pitch")
# Signals the face node publishes in ``Face.expression``.
EXPRESSION_FEATURES = ("eye_open_left", "eye_open_right", "mouth_open", "mouth_width", "brow_left", "brow_right",
                       "gaze_x", "gaze_y")

_EPS = 1e-6


def _pt(lm: np.ndarray, idx) -> np.ndarray:
    """One landmark, or the mean of several: (..., D)."""
    if isinstance(idx, int):
        return lm[..., idx, :]
    return lm[..., list(idx), :].mean(axis=-2)


def _dist(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.sqrt(((a - b) ** 2).sum(axis=-1))


def _dot2(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return a[..., 0] * b[..., 0] + a[..., 1] * b[..., 1]


def face_axes(lm: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Unit image-plane axes of the face: ``u`` along the eye line (towards the person's left eye),
    ``v`` perpendicular to it, pointing down the face. Each (..., 2)."""
    d = _eye_line(lm)
    u = d / np.maximum(np.linalg.norm(d, axis=-1, keepdims=True), _EPS)
    v = np.stack([-u[..., 1], u[..., 0]], axis=-1)  # u rotated +90 degrees in image coordinates (y down)
    return u, v


def eye_vector(lm: np.ndarray) -> np.ndarray:
    """(..., D) from the right eye's outline centroid to the left eye's, in all of ``lm``'s dimensions."""
    return _pt(lm, EYE_LEFT_RING) - _pt(lm, EYE_RIGHT_RING)


def _eye_line(lm: np.ndarray) -> np.ndarray:
    """(..., 2) the eye line in the image (``eye_vector``'s x and y)."""
    return eye_vector(lm)[..., :2]


def _eye_centre(lm: np.ndarray, side: str) -> np.ndarray:
    if side == "left":
        return (lm[..., EYE_LEFT_OUTER, :] + lm[..., EYE_LEFT_INNER, :]) * 0.5
    return (lm[..., EYE_RIGHT_OUTER, :] + lm[..., EYE_RIGHT_INNER, :]) * 0.5


def face_width(lm: np.ndarray) -> np.ndarray:
    """Cheek to cheek distance in pixels (3D)."""
    return _dist(lm[..., CHEEK_RIGHT, :], lm[..., CHEEK_LEFT, :])


def face_height(lm: np.ndarray) -> np.ndarray:
    """Forehead (top of the oval) to chin distance in pixels (3D)."""
    return _dist(lm[..., FOREHEAD, :], lm[..., CHIN, :])


def mouth_width_px(lm: np.ndarray) -> np.ndarray:
    return _dist(lm[..., MOUTH_RIGHT, :], lm[..., MOUTH_LEFT, :])


def mouth_open(lm: np.ndarray) -> np.ndarray:
    """Inner-lip gap / mouth width: 0 closed, about 0.5-0.8 wide open."""
    return _dist(_pt(lm, LIP_INNER_TOP), _pt(lm, LIP_INNER_BOTTOM)) / np.maximum(mouth_width_px(lm), _EPS)


def mouth_width(lm: np.ndarray) -> np.ndarray:
    """Mouth width / face width: about 0.35 neutral, larger when smiling."""
    return mouth_width_px(lm) / np.maximum(face_width(lm), _EPS)


def eye_open(lm: np.ndarray, side: str) -> np.ndarray:
    """Lid gap / eye width for the person's ``'left'`` or ``'right'`` eye: about 0.25-0.35 open, < 0.1 shut."""
    if side == "left":
        upper, lower, a, b = EYE_LEFT_UPPER, EYE_LEFT_LOWER, EYE_LEFT_OUTER, EYE_LEFT_INNER
    elif side == "right":
        upper, lower, a, b = EYE_RIGHT_UPPER, EYE_RIGHT_LOWER, EYE_RIGHT_OUTER, EYE_RIGHT_INNER
    else:
        raise ValueError(f"side must be 'left' or 'right', got {side!r}")
    gap = sum(_dist(lm[..., i, :], lm[..., j, :]) for i, j in zip(upper, lower, strict=True)) / len(upper)
    return gap / np.maximum(_dist(lm[..., a, :], lm[..., b, :]), _EPS)


def brow_height(lm: np.ndarray, side: str) -> np.ndarray:
    """Height of the brow above its eye's centre / face height, both measured in the image along the
    face's vertical axis (perpendicular to the eye line): raised brows give larger values."""
    _, v = face_axes(lm)
    brow = _pt(lm, BROW_LEFT if side == "left" else BROW_RIGHT)[..., :2]
    up = _dot2(_eye_centre(lm, side)[..., :2] - brow, v)
    height = np.abs(_dot2(lm[..., CHIN, :2] - lm[..., FOREHEAD, :2], v))
    return up / np.maximum(height, _EPS)


def roll_deg(lm: np.ndarray) -> np.ndarray:
    """Eye-line angle in degrees in the image (between the centroids of the eye outlines): > 0 when
    the head tilts clockwise (as ``Face.roll``)."""
    d = _eye_line(lm)
    return np.degrees(np.arctan2(d[..., 1], d[..., 0]))


def yaw_proxy(lm: np.ndarray) -> np.ndarray:
    """Nose tip between the cheeks along the eye line: -1 (at the right cheek) .. 1 (at the left);
    about 0 facing the camera, > 0 when the person turns to their left (image right, as ``Face.yaw``)."""
    u, _ = face_axes(lm)
    a, b, n = lm[..., CHEEK_RIGHT, :2], lm[..., CHEEK_LEFT, :2], lm[..., NOSE_TIP, :2]
    t = _dot2(n - a, u) / np.maximum(np.abs(_dot2(b - a, u)), _EPS)
    return 2.0 * t - 1.0


def pitch_proxy(lm: np.ndarray) -> np.ndarray:
    """Nose tip between the eye line and the chin: 1 - 2 * (fraction of the way down to the chin);
    grows when the person looks up (as ``Face.pitch``)."""
    _, v = face_axes(lm)
    eyes = (_pt(lm, EYE_LEFT_RING)[..., :2] + _pt(lm, EYE_RIGHT_RING)[..., :2]) * 0.5
    t = _dot2(lm[..., NOSE_TIP, :2] - eyes, v) / np.maximum(np.abs(_dot2(lm[..., CHIN, :2] - eyes, v)), _EPS)
    return 1.0 - 2.0 * t


def gaze(lm: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Iris offset from the eye centres, averaged over both eyes, in half eye widths: (gaze_x, gaze_y),
    x > 0 towards the person's left (image right), y > 0 down. Needs the 10 iris points (478 landmarks)."""
    if lm.shape[-2] < 478:
        z = np.zeros(lm.shape[:-2])
        return z, z
    u, v = face_axes(lm)
    gx = gy = 0.0
    for iris, a, b, upper, lower in ((IRIS_RIGHT, EYE_RIGHT_OUTER, EYE_RIGHT_INNER, EYE_RIGHT_UPPER, EYE_RIGHT_LOWER),
                                     (IRIS_LEFT, EYE_LEFT_OUTER, EYE_LEFT_INNER, EYE_LEFT_UPPER, EYE_LEFT_LOWER)):
        # horizontal centre: between the corners; vertical centre: between the lids
        cx = (lm[..., a, :2] + lm[..., b, :2]) * 0.5
        cy = (_pt(lm, upper)[..., :2] + _pt(lm, lower)[..., :2]) * 0.5
        half = np.maximum(_dist(lm[..., a, :2], lm[..., b, :2]) * 0.5, _EPS)
        gx = gx + _dot2(lm[..., iris, :2] - cx, u) / half
        gy = gy + _dot2(lm[..., iris, :2] - cy, v) / half
    # the iris travels about half as far vertically as horizontally: y is the sum, not the mean
    return np.clip(gx * 0.5, -1.0, 1.0), np.clip(gy, -1.0, 1.0)


def features(lm: np.ndarray) -> dict[str, np.ndarray]:
    """Every feature of ``MOTION_FEATURES`` and ``EXPRESSION_FEATURES`` for landmarks (..., 478, 3)."""
    lm = np.asarray(lm, dtype=np.float64)
    gx, gy = gaze(lm)
    return {
        "mouth_open": mouth_open(lm),
        "mouth_width": mouth_width(lm),
        "eye_open_left": eye_open(lm, "left"),
        "eye_open_right": eye_open(lm, "right"),
        "brow_left": brow_height(lm, "left"),
        "brow_right": brow_height(lm, "right"),
        "roll": roll_deg(lm),
        "yaw": yaw_proxy(lm),
        "pitch": pitch_proxy(lm),
        "gaze_x": gx,
        "gaze_y": gy,
    }


def feature_matrix(lm: np.ndarray, names: tuple[str, ...] = MOTION_FEATURES) -> np.ndarray:
    """(T, 478, 3) landmarks -> (T, len(names)) features, columns in ``names`` order."""
    f = features(lm)
    return np.stack([f[n] for n in names], axis=-1)


def face_region(lm: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """(H, W) bool mask of the face inside its outline (``FACE_OVAL``) for landmarks (478, 2|3) in
    pixels of a frame of ``shape`` (h, w): the region face-swap measures (flicker, identity) look at."""
    import cv2

    mask = np.zeros(shape[:2], np.uint8)
    poly = np.round(np.asarray(lm)[list(FACE_OVAL), :2]).astype(np.int32)
    cv2.fillPoly(mask, [poly], 1)
    return mask.astype(bool)


def pearson(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson correlation of two series; NaN when either is constant (no motion to compare)."""
    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    ok = np.isfinite(a) & np.isfinite(b)
    a, b = a[ok], b[ok]
    if a.size < 3:
        return float("nan")
    a = a - a.mean()
    b = b - b.mean()
    den = np.sqrt((a * a).sum() * (b * b).sum())
    if den < 1e-12 * max(1.0, a.size):
        return float("nan")
    return float((a * b).sum() / den)


def jitter(lm: np.ndarray) -> float:
    """Landmark jitter over a clip: mean absolute second difference of the (x, y) landmarks over
    frames, divided by the mean face width. ``lm`` (T, N, 2|3) with T >= 3; NaN rows (no face) are
    skipped (a second difference needs three consecutive found frames)."""
    lm = np.asarray(lm, np.float64)
    if lm.shape[0] < 3:
        return float("nan")
    xy = lm[..., :2]
    d2 = np.abs(xy[2:] - 2.0 * xy[1:-1] + xy[:-2])  # (T-2, N, 2)
    per_frame = d2.reshape(d2.shape[0], -1).mean(axis=1)
    ok = np.isfinite(per_frame)
    width = face_width(lm)
    if not ok.any():
        return float("nan")
    return float(per_frame[ok].mean() / np.nanmean(width))
