"""Face tracking. Exports: Face (the per-face record every face node reads), the ``face`` node
(mediapipe face mesh, 478 points with irises), ``MeshDetector`` (mediapipe face mesh as a plain
object, for avatars and the evaluation) and ``OneEuroFilter``.

The ``face`` node, per frame: mediapipe landmarks (on a downscaled copy of the frame, mapped back to
full-frame pixels) -> match to existing tracks (IoU, then centre distance) -> One Euro smoothing per
track (reset on jumps) -> 3D pose fit (``nodes.face_model``) and expression signals
(``nodes.face_metrics``) -> the chosen face(s) on the ``faces`` output. A track that loses its face
is held for ``hold_ms``, then eased to neutral over ``ease_ms``, then dropped.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field, replace

import cv2
import numpy as np

from engine import bench
from engine.node import Node, register
from engine.params import Param, Port, PortType
from engine.quiet import native_stderr_quiet

from . import face_metrics as fmx
from . import face_model

log = logging.getLogger("avatarcast.face")

N_LANDMARKS = 478


@dataclass
class Face:
    """One tracked face, in pixels of the frame it was found in. Fields may be added, never removed.

    landmarks:   (478, 3) float32, mediapipe face-mesh order (468 mesh points + 10 iris points);
                 x, y in pixels; z in pixels at the same scale as x (negative = towards the camera).
    box:         (x0, y0, x1, y1) pixels, the landmarks' bounding box.
    rotation:    (3, 3) float32 head rotation (identity = facing the camera), from a 3D fit.
    translation: (3,) float32 head position: x, y of the head centre in pixels, z relative depth.
    yaw, pitch, roll: degrees derived from ``rotation`` (yaw > 0: the person turns to their left
                 (image right); pitch > 0: looks up; roll > 0: head tilts clockwise in the image).
    scale:       face size in pixels (fit scale: about the distance between the outer eye corners).
    expression:  signals in roughly [0, 1]: eye_open_left, eye_open_right (lid gap / eye width),
                 mouth_open (inner-lip gap / mouth width), mouth_width (mouth width / face width),
                 brow_left, brow_right (brow height / face height), gaze_x, gaze_y (iris offset, -1..1).
    confidence:  0..1.
    track_id:    stable id of the same person across frames.
    state:       'tracked' (seen this frame), 'held' (briefly lost, last pose kept), 'easing'
                 (lost for longer: consumers ease towards neutral by ``neutral_weight``).
    neutral_weight: 0 (use this pose) .. 1 (fully neutral), for 'easing'.

    Added by the face node (issue 3): translation z = 1000 / scale (grows as the head moves away
    from the camera); ``fit_error``: rms distance of the rigid landmarks from the fitted 3D face, in
    eye-corner distances (about 0.02-0.04 for a human face, more for an animal or a bad track);
    ``frame_size`` (h, w) of the frame the pixels refer to. Left/right (eyes, brows) are the person's own.
    """

    landmarks: np.ndarray
    box: tuple[float, float, float, float]
    rotation: np.ndarray = field(default_factory=lambda: np.eye(3, dtype=np.float32))
    translation: np.ndarray = field(default_factory=lambda: np.zeros(3, np.float32))
    yaw: float = 0.0
    pitch: float = 0.0
    roll: float = 0.0
    scale: float = 0.0
    expression: dict[str, float] = field(default_factory=dict)
    confidence: float = 1.0
    track_id: int = 0
    state: str = "tracked"
    neutral_weight: float = 0.0
    fit_error: float = 0.0
    frame_size: tuple[int, int] = (0, 0)

    @property
    def width(self) -> float:
        return float(self.box[2] - self.box[0])


# ---- mediapipe ------------------------------------------------------------------------------------

class MeshDetector:
    """mediapipe face mesh (refine_landmarks: 478 points with irises) as a plain object.

    ``detect(frame)`` takes a BGR (H, W, 3) uint8 frame and returns one (478, 3) float32 landmark array
    per face found, in pixels of that frame (z scaled like x). ``process_width`` > 0 runs mediapipe on
    a copy downscaled to that width (it works on small crops internally), then maps back.
    ``static=False`` is mediapipe's tracking mode: detection is skipped while a face is tracked, so
    feed it consecutive frames of one stream. The model loads here (from the mediapipe wheel)."""

    def __init__(self, *, static: bool = False, max_faces: int = 1, detection_confidence: float = 0.5,
                 tracking_confidence: float = 0.5, process_width: int = 0):
        import mediapipe as mp

        self.process_width = int(process_width)
        self._small: np.ndarray | None = None
        self._rgb: np.ndarray | None = None
        self._sizes_seen: set[tuple[int, ...]] = set()
        with native_stderr_quiet():  # model load and first runs print native log lines
            self._mesh = mp.solutions.face_mesh.FaceMesh(
                static_image_mode=static, max_num_faces=int(max_faces), refine_landmarks=True,
                min_detection_confidence=float(detection_confidence),
                min_tracking_confidence=float(tracking_confidence))
            self._warm_up()

    def _warm_up(self) -> None:
        """Run the graph once on an empty frame and once on a face (the project's own demo avatar), so
        its one-time set-up happens now, not on the first live frame."""
        self._mesh.process(np.zeros((64, 64, 3), np.uint8))
        from engine.library import shipped_presets_dir

        face = cv2.imread(str(shipped_presets_dir() / "assets" / "demo_avatar.png"), cv2.IMREAD_COLOR)
        if face is not None:
            self._mesh.process(cv2.cvtColor(face, cv2.COLOR_BGR2RGB))
            self.reset()

    def _prepare(self, frame: np.ndarray) -> np.ndarray:
        h, w = frame.shape[:2]
        src = frame
        if 0 < self.process_width < w:
            sw, sh = self.process_width, max(1, round(h * self.process_width / w))
            if self._small is None or self._small.shape[:2] != (sh, sw):
                self._small = np.empty((sh, sw, 3), np.uint8)
            cv2.resize(frame, (sw, sh), dst=self._small, interpolation=cv2.INTER_AREA)
            src = self._small
        if self._rgb is None or self._rgb.shape != src.shape:
            self._rgb = np.empty(src.shape, np.uint8)
        cv2.cvtColor(src, cv2.COLOR_BGR2RGB, dst=self._rgb)
        return self._rgb

    def detect(self, frame: np.ndarray) -> list[np.ndarray]:
        h, w = frame.shape[:2]
        rgb = self._prepare(frame)
        if rgb.shape not in self._sizes_seen:  # mediapipe sets up (and logs natively) per new input size
            self._sizes_seen.add(rgb.shape)
            with native_stderr_quiet():
                res = self._mesh.process(rgb)
        else:
            res = self._mesh.process(rgb)
        found = []
        for lms in res.multi_face_landmarks or ():
            a = np.array([(p.x, p.y, p.z) for p in lms.landmark], np.float32)
            if a.shape[0] != N_LANDMARKS:
                continue
            a *= np.array([w, h, w], np.float32)  # z is normalised by the image width, like x
            found.append(a)
        return found

    def reset(self) -> None:
        """Forget mediapipe's own tracking state (a new clip starts). mediapipe restarts its graph; one
        empty run inside the quiet window lets it finish starting (and logging) there."""
        with native_stderr_quiet():
            self._mesh.reset()
            self._mesh.process(np.zeros((64, 64, 3), np.uint8))

    def close(self) -> None:
        self._mesh.close()


def detect_landmarks(image: np.ndarray, max_faces: int = 1, detection_confidence: float = 0.5) -> list[np.ndarray]:
    """Landmarks (478, 3) of the faces in one still image, largest face first (a fresh static mesh)."""
    det = MeshDetector(static=True, max_faces=max_faces, detection_confidence=detection_confidence)
    try:
        faces = det.detect(image)
    finally:
        det.close()
    return sorted(faces, key=lambda a: -float(np.ptp(a[:, 0]) * np.ptp(a[:, 1])))


# ---- smoothing ------------------------------------------------------------------------------------

class OneEuroFilter:
    """One Euro filter (Casiez et al. 2012) over an array of points (N, D), vectorised.

    Each point gets its own adaptive cutoff: ``min_cutoff + beta * speed`` (Hz), where speed is the
    point's smoothed velocity norm in ``unit``s per second (the face node passes the face scale, so
    the same params work for a small or a large face). Still: heavy smoothing, no jitter; fast: the
    cutoff rises and the lag disappears."""

    def __init__(self, min_cutoff: float = 1.0, beta: float = 5.0, d_cutoff: float = 1.0):
        self.min_cutoff = min_cutoff
        self.beta = beta
        self.d_cutoff = d_cutoff
        self.reset()

    def reset(self) -> None:
        self._x: np.ndarray | None = None
        self._dx: np.ndarray | None = None
        self._t = 0.0

    @staticmethod
    def _alpha(cutoff, dt: float):
        tau = 1.0 / (2.0 * math.pi * cutoff)
        return 1.0 / (1.0 + tau / dt)

    def __call__(self, x: np.ndarray, t: float, unit: float = 1.0) -> np.ndarray:
        x = np.asarray(x, np.float64)
        if self._x is None or t <= self._t:
            self._x = x.copy()
            self._dx = np.zeros(x.shape[:-1])
            self._t = t
            return self._x.copy()
        dt = t - self._t
        speed = np.linalg.norm(x - self._x, axis=-1) / (dt * max(unit, 1e-9))
        self._dx += self._alpha(self.d_cutoff, dt) * (speed - self._dx)
        a = self._alpha(self.min_cutoff + self.beta * self._dx, dt)[..., None]
        self._x += a * (x - self._x)
        self._t = t
        return self._x.copy()


# ---- tracks ---------------------------------------------------------------------------------------

def box_of(lm: np.ndarray) -> tuple[float, float, float, float]:
    return (float(lm[:, 0].min()), float(lm[:, 1].min()), float(lm[:, 0].max()), float(lm[:, 1].max()))


def iou(a, b) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def match_tracks(old_boxes: list, new_boxes: list, min_iou: float = 0.2, max_centre: float = 0.6) -> dict[int, int]:
    """Greedy matching new -> old: highest IoU first, then nearest centres (within ``max_centre`` box
    widths) for what is left. Returns {new index: old index}."""
    pairs = sorted(((iou(o, n), j, i) for i, o in enumerate(old_boxes) for j, n in enumerate(new_boxes)),
                   reverse=True)
    out: dict[int, int] = {}
    used: set[int] = set()
    for v, j, i in pairs:
        if v < min_iou:
            break
        if j not in out and i not in used:
            out[j] = i
            used.add(i)
    cands = []
    for j, n in enumerate(new_boxes):
        if j in out:
            continue
        for i, o in enumerate(old_boxes):
            if i in used:
                continue
            d = math.hypot((o[0] + o[2] - n[0] - n[2]) / 2, (o[1] + o[3] - n[1] - n[3]) / 2)
            wmax = max(o[2] - o[0], n[2] - n[0], 1.0)
            if d <= max_centre * wmax:
                cands.append((d, j, i))
    for _, j, i in sorted(cands):
        if j not in out and i not in used:
            out[j] = i
            used.add(i)
    return out


def confidence_from_fit(fit_error: float) -> float:
    """0..1 from the 3D fit residual: human faces fit within ~0.03 eye distances; 0.5 at 0.08."""
    return float(math.exp(-math.log(2.0) * (fit_error / 0.08) ** 2))


def make_face(lm: np.ndarray, frame_size: tuple[int, int], track_id: int = 0) -> Face:
    """A ``Face`` from landmarks (478, 3) in pixels: box, 3D pose fit, expression, confidence."""
    lm = np.asarray(lm, np.float32)
    s, r, t, err = face_model.fit_pose(lm)
    yaw, pitch, roll = face_model.euler_deg(r)
    feats = fmx.features(lm)
    expr = {k: float(feats[k]) for k in fmx.EXPRESSION_FEATURES}
    return Face(landmarks=lm, box=box_of(lm), rotation=r.astype(np.float32),
                translation=np.array([t[0], t[1], 1000.0 / max(s, 1e-6)], np.float32),
                yaw=yaw, pitch=pitch, roll=roll, scale=float(s), expression=expr,
                confidence=confidence_from_fit(err), track_id=track_id, fit_error=err,
                frame_size=(int(frame_size[0]), int(frame_size[1])))


@dataclass
class _Track:
    id: int
    filt: OneEuroFilter
    face: Face
    raw: np.ndarray  # last raw landmarks (for jump detection)
    last_seen: float


def smoothstep(x: float) -> float:
    x = min(1.0, max(0.0, x))
    return x * x * (3.0 - 2.0 * x)


class FaceTracker:
    """Tracks, smoothing, loss handling and selection, independent of mediapipe (testable with any
    landmark source). ``update(detections, t, frame_size)`` -> the chosen faces."""

    def __init__(self, p: dict):
        self.p = p
        self.tracks: list[_Track] = []
        self.next_id = 1
        self.chosen: int | None = None

    def reset(self) -> None:
        self.tracks.clear()
        self.chosen = None

    def _new_filter(self) -> OneEuroFilter:
        return OneEuroFilter(self.p["min_cutoff"], self.p["beta"])

    def update(self, found: list[np.ndarray], now: float, frame_size: tuple[int, int]) -> list[Face]:
        p = self.p
        live = list(self.tracks)
        boxes = [box_of(a) for a in found]
        match = match_tracks([tr.face.box for tr in live], boxes)
        seen: set[int] = set()
        for j, lm in enumerate(found):
            i = match.get(j)
            if i is None:
                tr = _Track(self.next_id, self._new_filter(), make_face(lm, frame_size, self.next_id), lm, now)
                self.next_id += 1
                self.tracks.append(tr)
                tr.filt(lm, now, max(tr.face.scale, 1.0))
            else:
                tr = live[i]
                scale = max(tr.face.scale, 1.0)
                moved = float(np.median(np.linalg.norm(lm[:, :2] - tr.raw[:, :2], axis=1))) / scale
                if moved > p["jump"] or tr.face.state != "tracked" and now - tr.last_seen > p["hold_ms"] / 1000.0:
                    tr.filt.reset()  # a jump (or back after a long loss): start from the new position
                sm = tr.filt(lm, now, scale)
                tr.face = make_face(sm, frame_size, tr.id)
                tr.raw = lm
                tr.last_seen = now
            seen.add(tr.id)
        hold, ease = p["hold_ms"] / 1000.0, max(p["ease_ms"], 1.0) / 1000.0
        keep = []
        for tr in self.tracks:
            if tr.id in seen:
                keep.append(tr)
                continue
            lost = now - tr.last_seen
            if lost > hold + ease:
                continue  # gone: neutral reached
            st, w = ("held", 0.0) if lost <= hold else ("easing", smoothstep((lost - hold) / ease))
            tr.face = replace(tr.face, state=st, neutral_weight=w)
            keep.append(tr)
        self.tracks = keep
        return self._select(frame_size)

    def _select(self, frame_size: tuple[int, int]) -> list[Face]:
        mode = self.p["select"]
        if not self.tracks:
            self.chosen = None
            return []
        if mode == "all":
            return [tr.face for tr in sorted(self.tracks, key=lambda tr: tr.id)]
        by_id = {tr.id: tr for tr in self.tracks}
        if self.chosen in by_id:
            return [by_id[self.chosen].face]  # keep following the same person while held / easing too
        tracked = [tr for tr in self.tracks if tr.face.state == "tracked"] or self.tracks
        h, w = frame_size
        if mode == "largest":
            pick = max(tracked, key=lambda tr: tr.face.scale)
        elif mode == "central":
            pick = min(tracked, key=lambda tr: math.hypot((tr.face.box[0] + tr.face.box[2]) / 2 - w / 2,
                                                          (tr.face.box[1] + tr.face.box[3]) / 2 - h / 2))
        else:  # index: n-th face from the left
            ranked = sorted(tracked, key=lambda tr: tr.face.box[0] + tr.face.box[2])
            if self.p["index"] >= len(ranked):
                return []
            pick = ranked[self.p["index"]]
        self.chosen = pick.id
        return [pick.face]


# ---- the node -------------------------------------------------------------------------------------

_AXES = np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, -1]], np.float64)  # head axes; nose points to -z


def draw_faces(img: np.ndarray, faces: list[Face], mode: str) -> None:
    """Draw landmarks (and for 'pose' the box, head axes and id) onto a BGR frame in place."""
    for f in faces:
        col = {"tracked": (0, 255, 0), "held": (0, 200, 255)}.get(f.state, (0, 0, 255))
        pts = f.landmarks[:, :2].astype(np.int32)
        for x, y in pts[::2] if mode == "pose" else pts:
            cv2.circle(img, (int(x), int(y)), 1, col, -1, cv2.LINE_AA)
        if mode != "pose":
            continue
        x0, y0, x1, y1 = (int(v) for v in f.box)
        cv2.rectangle(img, (x0, y0), (x1, y1), col, 1)
        ends = (_AXES * f.scale * 1.5) @ f.rotation.T.astype(np.float64) + f.translation.astype(np.float64) * [1, 1, 0]
        o = tuple(int(v) for v in ends[0, :2])
        for k, c in ((1, (0, 0, 255)), (2, (0, 255, 0)), (3, (255, 0, 0))):
            cv2.line(img, o, tuple(int(v) for v in ends[k, :2]), c, 2, cv2.LINE_AA)
        label = f"#{f.track_id} {f.state} yaw {f.yaw:+.0f} pitch {f.pitch:+.0f} roll {f.roll:+.0f}"
        cv2.putText(img, label, (x0, max(12, y0 - 6)), cv2.FONT_HERSHEY_SIMPLEX, 0.45, col, 1, cv2.LINE_AA)


@register
class FaceNode(Node):
    kind = "face"
    family = "face"
    description = "Face tracking (mediapipe face mesh, 478 points): landmarks, 3D head pose, expression, smoothed."
    inputs = (Port("frame", PortType.FRAME, "(H, W, 3) uint8 BGR camera frame"),)
    outputs = (
        Port("frame", PortType.FRAME, "(H, W, 3) uint8 BGR: the input, with the tracking drawn when `draw` is set"),
        Port("faces", PortType.FACES, "list[Face]: the chosen face(s), landmarks in pixels of the input frame"),
    )
    params = (
        Param("max_faces", "int", 2, "how many faces mediapipe looks for (more faces: slower)", min=1, max=8,
              live=False),
        Param("select", "choice", "largest", "which face drives: the largest, the one nearest the centre, "
              "the n-th from the left (`index`), or all of them; once chosen, the same person is followed",
              choices=("largest", "central", "index", "all")),
        Param("index", "int", 0, "with select: index, which face from the left (0 = leftmost)", min=0, max=7),
        Param("min_cutoff", "float", 1.0, "smoothing when still: One Euro min cutoff in Hz (lower: steadier, "
              "more lag on slow moves)", min=0.05, max=30.0, step=0.1),
        Param("beta", "float", 6.0, "smoothing speed response: One Euro beta (higher: less lag on fast moves, "
              "more jitter)", min=0.0, max=100.0, step=0.5),
        Param("jump", "float", 1.5, "restart smoothing when landmarks move more than this many eye distances "
              "in one frame", min=0.1, max=20.0, step=0.1),
        Param("hold_ms", "float", 300.0, "after losing the face, keep its last pose this long", min=0.0,
              max=10000.0, step=50.0),
        Param("ease_ms", "float", 700.0, "then ease towards neutral over this long", min=0.0, max=10000.0,
              step=50.0),
        Param("detection_confidence", "float", 0.5, "mediapipe: minimum face detection confidence", min=0.05,
              max=0.99, live=False),
        Param("tracking_confidence", "float", 0.5, "mediapipe: below this landmark-tracking confidence it "
              "re-detects", min=0.05, max=0.99, live=False),
        Param("process_width", "int", 640, "run mediapipe on a copy downscaled to this width (0 = full size); "
              "landmarks are mapped back to full-frame pixels", min=0, max=4096, live=False),
        Param("draw", "choice", "none", "draw the tracking on the frame output (for checking a set-up)",
              choices=("none", "points", "pose")),
    )

    def open(self) -> None:
        face_model.canonical()  # load (and check) the 3D face model now, not on the first frame
        self.detector = MeshDetector(static=False, max_faces=self.p["max_faces"],
                                     detection_confidence=self.p["detection_confidence"],
                                     tracking_confidence=self.p["tracking_confidence"],
                                     process_width=self.p["process_width"])
        self.tracker = FaceTracker(self.p)
        self._frames = 0

    def params_changed(self, names) -> None:
        if {"min_cutoff", "beta"} & names:
            for tr in self.tracker.tracks:
                tr.filt.min_cutoff, tr.filt.beta = self.p["min_cutoff"], self.p["beta"]
        if {"select", "index"} & names:
            self.tracker.chosen = None

    def _now(self) -> float:
        # offline renders and tests are deterministic: time is the frame index; live uses the clock
        return time.monotonic() if self.ctx.live else self._frames / max(self.ctx.fps, 1e-3)

    def process(self, inputs, out) -> None:
        frame = inputs["frame"]
        found = self.detector.detect(frame)
        faces = self.tracker.update(found, self._now(), frame.shape[:2])
        self._frames += 1
        out["faces"] = faces
        dst = out["frame"]
        if dst.shape == frame.shape:
            np.copyto(dst, frame)
        else:
            cv2.resize(frame, (dst.shape[1], dst.shape[0]), dst=dst)
        if self.p["draw"] != "none":
            draw_faces(dst, faces, self.p["draw"])

    def reset(self) -> None:
        self.tracker.reset()
        self.detector.reset()

    def close(self) -> None:
        det = getattr(self, "detector", None)
        if det is not None:
            det.close()
            self.detector = None


# ---- benchmark ------------------------------------------------------------------------------------

def _bench_frames(n: int = 60) -> list[np.ndarray]:
    """Frames of the 720p test clip when ../shared/data is present, else a synthetic face-free frame."""
    from pathlib import Path

    clip = Path(__file__).resolve().parents[2] / "shared" / "data" / "driving" / "indoor_upper_body.mp4"
    frames = []
    if clip.is_file():
        cap = cv2.VideoCapture(str(clip))
        while len(frames) < n:
            ok, f = cap.read()
            if not ok:
                break
            frames.append(cv2.resize(f, (1280, 720)) if f.shape[:2] != (720, 1280) else f)
        cap.release()
    if not frames:
        log.warning("bench face_track_720p: %s not found, timing a frame with no face", clip)
        frames = [np.full((720, 1280, 3), 90, np.uint8)]
    return frames


def _track_notes(r: dict) -> list[str]:
    return [f"{k}: {v['median_ms']:.2f} ms per frame (target <= 8 ms at 1280x720)" for k, v in r.items()]


@bench.case("face_track_720p", "face node on 1280x720 frames of a real clip (tracking mode), per frame",
            _track_notes)
def _bench_face():
    from engine.node import BuildContext

    frames = _bench_frames()
    variants = {}
    for label, params in (("defaults (max_faces 2, process_width 640)", {}),
                          ("max_faces 1", {"max_faces": 1}),
                          ("process_width 0 (full size)", {"process_width": 0})):
        node = FaceNode("face", FaceNode.validate_params(params)[0],
                        BuildContext(source_size=(720, 1280)))
        node.open()
        out = {"frame": np.empty((720, 1280, 3), np.uint8), "faces": []}
        state = {"i": 0}

        def step(node=node, out=out, state=state):
            node.process({"frame": frames[state["i"] % len(frames)]}, out)
            state["i"] += 1

        variants[label] = step
    return variants
