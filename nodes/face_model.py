"""Head pose from a 3D fit: a canonical 3D face (478 mediapipe points) fitted to tracked landmarks
with a similarity (Umeyama) fit, giving rotation, yaw/pitch/roll, translation and scale.

The canonical face (``canonical_face.npz`` beside this module) is built by ``build_canonical`` from
mediapipe landmarks of real faces (generalised Procrustes over frames of the test clips and
portraits, then made exactly left-right symmetric); rebuild it with ``python -m nodes.face_model``.
Its frame: x to the person's left (image right), y down, z away from the camera, origin at the
centroid of the rigid points, unit = the distance between the outer eye corners. Identity rotation is
the average frontal pose of those faces.

mediapipe 0.10.21's wheel does not carry its own canonical face geometry, hence this file.
"""

from __future__ import annotations

import logging
from functools import lru_cache
from pathlib import Path

import numpy as np

log = logging.getLogger("avatarcast.face")
CANONICAL_FILE = Path(__file__).with_name("canonical_face.npz")

# Points that move little with expression: forehead, temples, nose bridge and tip, outer and inner
# eye corners, cheekbones, upper jaw. (Lips, lids, brows and chin move with expression.)
RIGID = (10, 338, 297, 332, 109, 67, 103, 151, 9, 8, 168, 6, 197, 195, 5, 4, 1, 19, 94,
         33, 133, 263, 362, 130, 359, 243, 463, 234, 454, 127, 356, 93, 323, 116, 345, 117, 346,
         123, 352, 50, 280, 36, 266, 64, 294, 98, 327, 48, 278, 45, 275)


def umeyama(src: np.ndarray, dst: np.ndarray, with_scale: bool = True) -> tuple[float, np.ndarray, np.ndarray]:
    """Least-squares similarity ``dst ~= s * R @ src + t`` for (N, D) point sets (Umeyama 1991).
    Returns (s, R (D, D) proper rotation, t (D,))."""
    src = np.asarray(src, np.float64)
    dst = np.asarray(dst, np.float64)
    mu_s, mu_d = src.mean(0), dst.mean(0)
    xs, xd = src - mu_s, dst - mu_d
    cov = xd.T @ xs / len(src)
    u, d, vt = np.linalg.svd(cov)
    sign = np.ones(len(d))
    if np.linalg.det(u) * np.linalg.det(vt) < 0:
        sign[-1] = -1.0
    r = (u * sign) @ vt
    var_s = (xs ** 2).sum() / len(src)
    s = float((d * sign).sum() / var_s) if with_scale and var_s > 0 else 1.0
    t = mu_d - s * r @ mu_s
    return s, r, t


def euler_deg(r: np.ndarray) -> tuple[float, float, float]:
    """(yaw, pitch, roll) in degrees from a rotation in the canonical frame, R = Ry @ Rx @ Rz (see ``Face``):
    yaw > 0 turns to the person's left (image right), pitch > 0 looks up, roll > 0 tilts clockwise."""
    yaw = np.degrees(np.arctan2(-r[0, 2], r[2, 2]))
    pitch = np.degrees(np.arcsin(np.clip(r[1, 2], -1.0, 1.0)))
    roll = np.degrees(np.arctan2(r[1, 0], r[1, 1]))
    return float(yaw), float(pitch), float(roll)


def rotation_from_euler(yaw: float, pitch: float, roll: float) -> np.ndarray:
    """Inverse of ``euler_deg`` (|pitch| < 90): R = Ry(yaw) @ Rx(pitch) @ Rz(roll)."""
    y, p, r = np.radians([yaw, pitch, roll])
    ry = np.array([[np.cos(y), 0, -np.sin(y)], [0, 1, 0], [np.sin(y), 0, np.cos(y)]])
    rx = np.array([[1, 0, 0], [0, np.cos(p), np.sin(p)], [0, -np.sin(p), np.cos(p)]])
    rz = np.array([[np.cos(r), -np.sin(r), 0], [np.sin(r), np.cos(r), 0], [0, 0, 1]])
    return ry @ rx @ rz


@lru_cache(maxsize=1)
def canonical() -> tuple[np.ndarray, np.ndarray]:
    """(points (478, 3) float64, mirror (478,) int: index of each point's left-right twin)."""
    if not CANONICAL_FILE.is_file():
        raise FileNotFoundError(f"canonical face model missing: {CANONICAL_FILE} (reinstall avatarcast)")
    with np.load(CANONICAL_FILE) as z:
        return z["points"].astype(np.float64), z["mirror"].astype(np.int64)


def fit_pose(lm: np.ndarray, canon: np.ndarray | None = None) -> tuple[float, np.ndarray, np.ndarray, float]:
    """Fit the canonical face to landmarks (478, 3) in pixels (z scaled like x).
    Returns (scale in pixels per canonical unit = outer eye corner distance, R (3, 3), t (3,) the
    head centre in pixels, rms residual over the rigid points in canonical units)."""
    if canon is None:
        canon = canonical()[0]
    idx = list(RIGID)
    src, dst = canon[idx], np.asarray(lm, np.float64)[idx]
    s, r, t = umeyama(src, dst)
    res = dst - (s * src @ r.T + t)
    err = float(np.sqrt((res ** 2).sum(1).mean()) / max(s, 1e-6))
    return s, r, t, err


def _normalise(p: np.ndarray) -> np.ndarray:
    p = p - p[list(RIGID)].mean(0)
    return p / np.linalg.norm(p[33] - p[263])


def _rotation_between(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Smallest rotation taking unit vector a onto unit vector b (Rodrigues)."""
    v = np.cross(a, b)
    c = float(a @ b)
    k = np.array([[0, -v[2], v[1]], [v[2], 0, -v[0]], [-v[1], v[0], 0]])
    return np.eye(3) + k + k @ k / (1.0 + c)


def mirror_pairs(shape: np.ndarray) -> np.ndarray:
    """Left-right twin of every point of a mediapipe face (478, 3): the face is put in its own frame
    (x along the eye line, y forehead to chin) and mirrored; points are compared by position and by
    the mean offsets of their 1- and 2-ring mesh neighbours (lips that touch still differ there);
    pairs are taken greedily by symmetric cost, so the result is an involution."""
    from mediapipe.python.solutions.face_mesh_connections import FACEMESH_IRISES, FACEMESH_TESSELATION

    p = np.asarray(shape, np.float64)
    ex = p[263] - p[33]
    ex /= np.linalg.norm(ex)
    ey = p[152] - p[10]
    ey -= ex * (ey @ ex)
    ey /= np.linalg.norm(ey)
    p = p @ np.stack([ex, ey, np.cross(ex, ey)]).T
    p[:, 0] -= (p[33, 0] + p[263, 0]) * 0.5
    n = len(p)
    adj = np.zeros((n, n))
    for a, b in (*FACEMESH_TESSELATION, *FACEMESH_IRISES):
        adj[a, b] = adj[b, a] = 1.0
    adj /= np.maximum(adj.sum(1, keepdims=True), 1.0)

    def desc(q):
        r1 = adj @ q
        return np.concatenate([q, 3.0 * (r1 - q), 3.0 * (adj @ r1 - q)], 1)

    a, b = desc(p), desc(p * np.array([-1.0, 1.0, 1.0]))
    d = ((a[:, None, :] - b[None, :, :]) ** 2).sum(-1)
    cost = d + d.T
    mirror = np.full(n, -1)
    for k in np.argsort(cost, axis=None):
        i, j = divmod(int(k), n)
        if mirror[i] < 0 and mirror[j] < 0:
            mirror[i], mirror[j] = j, i
    return mirror


def build_canonical(shapes: list[np.ndarray], iterations: int = 6) -> tuple[np.ndarray, np.ndarray]:
    """Generalised Procrustes mean of landmark sets (each (478, 3)), made exactly symmetric about
    x = 0 with the eye line along x. Returns (points, mirror)."""
    idx = list(RIGID)
    ref = _normalise(np.asarray(shapes[0], np.float64))
    for _ in range(iterations):
        acc = np.zeros_like(ref)
        for sh in shapes:
            s, r, t = umeyama(sh[idx], ref[idx])
            acc += s * sh @ r.T + t
        ref = _normalise(acc / len(shapes))
    mirror = mirror_pairs(ref)
    # symmetry plane normal: mean direction from each right-side point to its left twin
    diff = ref - ref[mirror]
    keep = np.linalg.norm(diff, axis=1) > 0.05
    diff = diff[keep]
    diff *= np.sign(diff[:, 0:1])
    n = diff.sum(0)
    n /= np.linalg.norm(n)
    rot = _rotation_between(n, np.array([1.0, 0.0, 0.0]))
    p = ref @ rot.T
    p[:, 0] -= ((p[:, 0] + p[mirror, 0]) * 0.5).mean()  # the symmetry plane through x = 0
    p = (p + p[mirror] * np.array([-1.0, 1.0, 1.0])) * 0.5  # exact symmetry about x = 0
    return _normalise(p), mirror.astype(np.int64)


def _rebuild_from_shared_data(data: Path) -> None:  # pragma: no cover - a maintainer tool
    import cv2

    from .face import MeshDetector

    shapes = []
    det = MeshDetector(static=True, max_faces=1)
    for name in ("mona_lisa.jpg", "painted_child.jpg", "pearl_earring.jpg"):
        shapes += det.detect(cv2.imread(str(data / "avatars" / name)))
    det.close()
    for clip in sorted((data / "driving").glob("*.mp4")):
        det = MeshDetector(static=False, max_faces=1)
        cap = cv2.VideoCapture(str(clip))
        i = 0
        while True:
            ok, frame = cap.read()
            if not ok:
                break
            found = det.detect(frame)
            if i % 4 == 0 and found:
                shapes.append(found[0])
            i += 1
        cap.release()
        det.close()
    points, mirror = build_canonical(shapes)
    # second pass: only near-frontal faces define the frontal pose
    frontal = []
    for sh in shapes:
        _, r, _, _ = fit_pose(sh, points)
        yaw, pitch, roll = euler_deg(r)
        if abs(yaw) < 12 and abs(pitch) < 12 and abs(roll) < 10:
            frontal.append(sh)
    points, mirror = build_canonical(frontal)
    np.savez_compressed(CANONICAL_FILE, points=points.astype(np.float32), mirror=mirror.astype(np.int16))
    log.info("wrote %s from %d faces (%d near-frontal)", CANONICAL_FILE, len(shapes), len(frontal))


if __name__ == "__main__":  # pragma: no cover
    import sys

    logging.basicConfig(level=logging.INFO)
    _rebuild_from_shared_data(Path(sys.argv[1]) if len(sys.argv) > 1 else
                              Path(__file__).resolve().parents[2] / "shared" / "data")
