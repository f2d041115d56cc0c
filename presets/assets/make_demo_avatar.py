"""Draw the demo avatar (``demo_avatar.png``) and write its landmarks (``demo_avatar.npz``).

The character is painted by code around a known set of 478 face-mesh landmarks (the project's
canonical face, ``nodes/canonical_face.npz``, placed in a 512x512 picture), so its landmarks are exact
and need no detector: ``presets/demo.yaml`` names them as precomputed avatar data. Run from the
repository root to redraw: ``python presets/assets/make_demo_avatar.py``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import cv2
import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1]))

from nodes import reenact as rk  # noqa: E402
from nodes.face_model import canonical  # noqa: E402

SIZE = 512
SCALE = 112.0  # pixels per canonical unit (outer eye corner distance)
CENTRE = (256.0, 236.0)

SKIN = (150, 190, 238)  # BGR
SKIN_SHADE = (120, 160, 214)
HAIR = (40, 52, 92)
HAIR_LIGHT = (70, 92, 140)
LIPS = (110, 110, 205)
IRIS = (140, 120, 40)
SHIRT = (150, 90, 60)


def demo_landmarks() -> np.ndarray:
    pts = canonical()[0].copy()
    lm = np.empty((478, 3), np.float32)
    lm[:, 0] = CENTRE[0] + SCALE * pts[:, 0]
    lm[:, 1] = CENTRE[1] + SCALE * pts[:, 1]
    lm[:, 2] = SCALE * pts[:, 2]
    return lm


def _poly(img, pts, color, aa=True):
    cv2.fillPoly(img, [np.round(np.asarray(pts)[:, :2] * 16).astype(np.int32)], color,
                 cv2.LINE_AA if aa else cv2.LINE_8, 4)


def _line(img, pts, color, width):
    cv2.polylines(img, [np.round(np.asarray(pts)[:, :2] * 16).astype(np.int32)], False, color, width, cv2.LINE_AA, 4)


def _ellipse(img, c, axes, color, angle=0.0):
    cv2.ellipse(img, (int(round(c[0] * 16)), int(round(c[1] * 16))), (int(axes[0] * 16), int(axes[1] * 16)), angle,
                0, 360, color, -1, cv2.LINE_AA, 4)


def draw(lm: np.ndarray) -> np.ndarray:
    img = np.zeros((SIZE, SIZE, 3), np.uint8)
    # background: a warm-to-cool gradient with soft discs, so the moving background is visible
    y = np.linspace(0, 1, SIZE)[:, None, None]
    x = np.linspace(0, 1, SIZE)[None, :, None]
    top, bottom = np.array([170, 140, 90]), np.array([120, 90, 150])
    img[:] = np.clip(top * (1 - y) + bottom * y + 18 * np.sin(6 * x), 0, 255).astype(np.uint8)
    rng = np.random.default_rng(3)
    for _ in range(14):
        c = rng.uniform(0, SIZE, 2)
        over = img.copy()
        _ellipse(over, c, (rng.uniform(15, 45),) * 2, tuple(int(v) for v in rng.uniform(150, 230, 3)))
        cv2.addWeighted(over, 0.35, img, 0.65, 0, dst=img)
    oval = lm[rk.FACE_OVAL]
    cx = float(oval[:, 0].mean())
    fw = float(np.ptp(oval[:, 0]))
    chin = lm[152]
    # shoulders, neck, hair behind the head
    _ellipse(img, (cx, SIZE + 40), (fw * 1.6, 150), SHIRT)
    _ellipse(img, (cx, SIZE - 60), (fw * 0.55, 45), (int(SHIRT[0] * 0.8), int(SHIRT[1] * 0.8), int(SHIRT[2] * 0.8)))
    neck = np.array([[cx - fw * 0.27, chin[1] - 40], [cx + fw * 0.27, chin[1] - 40], [cx + fw * 0.3, SIZE - 70],
                     [cx - fw * 0.3, SIZE - 70]])
    _poly(img, neck, SKIN_SHADE)
    top = lm[10]
    _ellipse(img, (cx, top[1] + fw * 0.42), (fw * 0.68, fw * 0.78), HAIR)
    # face with a soft shade towards its edge
    face = np.zeros((SIZE, SIZE), np.uint8)
    _poly(face, oval, 255)
    dist = cv2.distanceTransform((face > 127).astype(np.uint8), cv2.DIST_L2, 5)
    shade = np.clip(dist / (0.18 * fw), 0, 1)[..., None]
    skin = np.array(SKIN_SHADE) * (1 - shade) + np.array(SKIN) * shade
    a = (face.astype(np.float32) / 255.0)[..., None]
    img[:] = np.clip(img * (1 - a) + skin * a, 0, 255).astype(np.uint8)
    # cheeks
    over = img.copy()
    for i in (50, 280):
        _ellipse(over, lm[i, :2] + [0, 6], (fw * 0.1, fw * 0.065), (130, 130, 235))
    cv2.addWeighted(over, 0.4, img, 0.6, 0, dst=img)
    # nose: a shadow along one side and nostrils
    _line(img, lm[[168, 197, 5, 4]] + [5, 0, 0], SKIN_SHADE, 3)
    _line(img, lm[[98, 97, 2, 326, 327]], (95, 125, 180), 2)
    # eyes: white, iris with pupil and a catch light (clipped to the eye), lash line
    for ring, up, iris in ((rk.EYE_R_RING, rk.EYE_R_UP, rk.IRIS_A), (rk.EYE_L_RING, rk.EYE_L_UP, rk.IRIS_B)):
        eye = np.zeros((SIZE, SIZE), np.uint8)
        _poly(eye, lm[ring], 255)
        layer = img.copy()
        _poly(layer, lm[ring], (235, 240, 245))
        c = lm[iris[0], :2]
        r = float(np.linalg.norm(lm[iris[1:], :2] - c, axis=1).mean()) * 1.15
        _ellipse(layer, c, (r, r), IRIS)
        _ellipse(layer, c, (r * 0.75, r * 0.75), (int(IRIS[0] * 0.7), int(IRIS[1] * 0.7), int(IRIS[2] * 0.7)))
        _ellipse(layer, c, (r * 0.42, r * 0.42), (20, 20, 25))
        _ellipse(layer, c + [-r * 0.3, -r * 0.35], (r * 0.18, r * 0.18), (255, 255, 255))
        m = (eye.astype(np.float32) / 255.0)[..., None]
        img[:] = np.clip(img * (1 - m) + layer * m, 0, 255).astype(np.uint8)
        corners = lm[[ring[0]]]
        _line(img, np.concatenate([corners, lm[up], lm[[ring[8]]]]), (40, 40, 60), 3)
    # brows
    for upper, lower in (((70, 63, 105, 66, 107), (46, 53, 52, 65, 55)), ((300, 293, 334, 296, 336),
                                                                        (276, 283, 282, 295, 285))):
        _poly(img, np.concatenate([lm[list(upper)], lm[list(lower)][::-1]]), HAIR_LIGHT)
    # lips and the line between them
    _poly(img, lm[rk.OUTER_LIPS], LIPS)
    _line(img, lm[rk.INNER_UPPER], (70, 60, 150), 2)
    _line(img, lm[[0, 267, 269]] + [0, 2, 0], (140, 140, 225), 1)
    # fringe over the forehead
    fringe_top = lm[[162, 21, 54, 103, 67, 109, 10, 338, 297, 332, 284, 251, 389]].copy()
    c = lm[rk.FACE_OVAL, :2].mean(0)
    fringe_top[:, :2] = c + (fringe_top[:, :2] - c) * 1.12
    brow_y = lm[[105, 334], 1].mean()
    xs = np.linspace(fringe_top[-1, 0], fringe_top[0, 0], 9)
    wave = np.array([(x, brow_y - 24 + (12 if k % 2 else 0)) for k, x in enumerate(xs)])
    _poly(img, np.concatenate([fringe_top[:, :2], wave]), HAIR)
    img = cv2.GaussianBlur(img, (3, 3), 0)  # soften code-drawn edges: a painted look
    return img


def main() -> None:
    lm = demo_landmarks()
    img = draw(lm)
    cv2.imwrite(str(HERE / "demo_avatar.png"), img)
    np.savez_compressed(HERE / "demo_avatar.npz", landmarks=lm)
    print(f"wrote {HERE / 'demo_avatar.png'} and {HERE / 'demo_avatar.npz'}")


if __name__ == "__main__":
    main()
