"""Quality evaluation (``avatarcast eval``): run a preset over driving clips (x avatars), re-detect
face landmarks on the output frames and compare them with the driver's.

Measures (issue 3, reenactment):
  motion transfer r   Pearson r over time between driver and output, per landmark feature
                      (``face_metrics.MOTION_FEATURES``), and their mean
  stability           output landmark jitter / driver landmark jitter (``face_metrics.jitter``)
  face found          fraction of output frames with a face
  self-reenactment    avatar = first frame of the clip, driven by the same clip: mean absolute pixel
                      difference (L1 in [0, 1]) and mean landmark distance (pixels) at 256x256

Extending (issue 4's face swap and others): a ``Measure`` sees every frame of a run (driver frame,
output frame, landmarks of both) and returns named figures; a ``Suite`` lists the measures per kind
of run ('cross': clip x avatar, 'self': avatar = the clip's first frame) and the ``Target``s the
summary checks. Register a suite in ``SUITES``; ``avatarcast eval --suite NAME`` runs it.
"""

from __future__ import annotations

import logging
import math
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from engine.errors import UserError, Where
from engine.node import Avatar
from engine.preset import Preset, loads_preset

from . import face_metrics as fmx

log = logging.getLogger("avatarcast.eval")


def _shared_data() -> Path:
    """../shared/data beside the checkout (or beside the current folder, for an installed copy)."""
    for base in (Path(__file__).resolve().parents[2], Path.cwd().resolve().parent):
        if (base / "shared" / "data").is_dir():
            return base / "shared" / "data"
    return Path(__file__).resolve().parents[2] / "shared" / "data"


SHARED_DATA = _shared_data()
NO_FACE_AVATARS = ("cat_no_face.jpg",)
EVAL_SIZE = 256  # self-reenactment compares frames at 256x256, as FOMM does


# ---- one run: what every measure sees -------------------------------------------------------------

@dataclass
class RunInfo:
    """One evaluated run: a clip driving an avatar (or the clip's first frame, for 'self')."""

    kind: str  # 'cross' or 'self'
    clip: Path
    avatar: Path | None
    fps: float
    driver_size: tuple[int, int]  # (w, h)
    output_size: tuple[int, int]  # (w, h)
    avatar_image: np.ndarray | None = None  # BGR, when the run has an avatar
    avatar_landmarks: np.ndarray | None = None  # (478, 3) on avatar_image, when found


class Measure:
    """Sees every frame of one run; ``finish`` returns named figures (floats, NaN when undefined).
    Landmarks are (478, 3) float32 in pixels of their own frame, or None where no face was found.
    Frames are read-only BGR uint8: the driver frame and the output frame (their sizes may differ)."""

    name = "measure"

    def start(self, run: RunInfo) -> None:
        self.run = run

    def frame(self, i: int, driver: np.ndarray, output: np.ndarray, driver_lm: np.ndarray | None,
              output_lm: np.ndarray | None) -> None:
        pass

    def finish(self) -> dict[str, float]:
        raise NotImplementedError


def _series(lms: list[np.ndarray | None]) -> np.ndarray:
    """(T, 478, 3) with NaN rows where no face was found."""
    nan = np.full((fmx.IRIS_LEFT + 5, 3), np.nan, np.float32)
    return np.array([nan if x is None else x for x in lms])


class LandmarkSeries(Measure):
    """Collects both landmark series (NaN where no face) for measures computed over whole clips."""

    def start(self, run: RunInfo) -> None:
        super().start(run)
        self.drv: list[np.ndarray | None] = []
        self.out: list[np.ndarray | None] = []

    def frame(self, i, driver, output, driver_lm, output_lm) -> None:
        self.drv.append(driver_lm)
        self.out.append(output_lm)

    def series(self) -> tuple[np.ndarray, np.ndarray]:
        return _series(self.drv), _series(self.out)


def motion_transfer(drv_lm: np.ndarray, out_lm: np.ndarray, names=fmx.MOTION_FEATURES) -> dict[str, float]:
    """Per-feature Pearson r between driver and output landmark series (T, 478, 3), NaN rows skipped,
    and ``motion_r``: their mean. A feature the driver does not move (constant) is left out (NaN); a
    feature the driver moves but the output does not counts as r = 0."""
    a, b = fmx.feature_matrix(drv_lm, names), fmx.feature_matrix(out_lm, names)
    res: dict[str, float] = {}
    for k, name in enumerate(names):
        x, y = a[:, k], b[:, k]
        ok = np.isfinite(x) & np.isfinite(y)
        if ok.sum() < 3 or np.std(x[ok]) < 1e-9:
            r = float("nan")
        elif np.std(y[ok]) < 1e-9 * max(1.0, abs(float(np.mean(y[ok])))):
            r = 0.0
        else:
            r = fmx.pearson(x[ok], y[ok])
        res[f"r_{name}"] = r
    vals = [v for v in res.values() if math.isfinite(v)]
    res["motion_r"] = float(np.mean(vals)) if vals else float("nan")
    return res


def drawn_motion(drv_lm: np.ndarray, drawn_lm: np.ndarray, out_lm: np.ndarray) -> dict[str, float]:
    """For a node that reports the face it drew (its own landmarks, not re-detected): ``drawn_motion_r``,
    the motion transfer r from the driver to what the node drew, and ``redetect_r``, from what it drew to
    what the re-detection reads on the output frames. The measured motion r is bounded by both: a low
    ``redetect_r`` with a high ``drawn_motion_r`` says the detector cannot read the avatar (no brows, a
    painted eye), not that the motion was not drawn. ``drawn_jitter_ratio``: the drawn landmarks' jitter
    over the driver's (as ``Stability``; the output's re-detection adds its own). Diagnostics; no target."""
    res = {f"drawn_{k}": v for k, v in motion_transfer(drv_lm, drawn_lm).items()}
    res["redetect_r"] = motion_transfer(drawn_lm, out_lm)["motion_r"]
    jd = fmx.jitter(drv_lm)
    res["drawn_jitter_ratio"] = fmx.jitter(drawn_lm) / jd if jd > 0 else float("nan")
    return res


class MotionTransfer(LandmarkSeries):
    name = "motion"

    def finish(self) -> dict[str, float]:
        return motion_transfer(*self.series())


class Stability(LandmarkSeries):
    name = "stability"

    def finish(self) -> dict[str, float]:
        d, o = self.series()
        jd, jo = fmx.jitter(d), fmx.jitter(o)
        return {"jitter_driver": jd, "jitter_output": jo,
                "jitter_ratio": jo / jd if jd > 0 and math.isfinite(jo) else float("nan")}


class FaceFound(Measure):
    name = "found"

    def start(self, run: RunInfo) -> None:
        super().start(run)
        self.n = self.found = self.driver_found = 0

    def frame(self, i, driver, output, driver_lm, output_lm) -> None:
        self.n += 1
        self.found += output_lm is not None
        self.driver_found += driver_lm is not None

    def finish(self) -> dict[str, float]:
        return {"frames": float(self.n), "found_rate": self.found / max(self.n, 1),
                "driver_found_rate": self.driver_found / max(self.n, 1)}


class SelfReenactment(Measure):
    """Output vs the real frame at 256x256: L1 (mean absolute difference / 255) and mean landmark
    distance in pixels at 256 (frames where both have a face)."""

    name = "self"

    def start(self, run: RunInfo) -> None:
        super().start(run)
        self.l1: list[float] = []
        self.lmk: list[float] = []
        self._a = np.empty((EVAL_SIZE, EVAL_SIZE, 3), np.uint8)
        self._b = np.empty((EVAL_SIZE, EVAL_SIZE, 3), np.uint8)

    def frame(self, i, driver, output, driver_lm, output_lm) -> None:
        cv2.resize(driver, (EVAL_SIZE, EVAL_SIZE), dst=self._a, interpolation=cv2.INTER_AREA)
        cv2.resize(output, (EVAL_SIZE, EVAL_SIZE), dst=self._b, interpolation=cv2.INTER_AREA)
        self.l1.append(float(cv2.absdiff(self._a, self._b).mean()) / 255.0)
        if driver_lm is not None and output_lm is not None:
            sd = np.array([EVAL_SIZE / driver.shape[1], EVAL_SIZE / driver.shape[0]])
            so = np.array([EVAL_SIZE / output.shape[1], EVAL_SIZE / output.shape[0]])
            d = np.linalg.norm(driver_lm[:, :2] * sd - output_lm[:, :2] * so, axis=1)
            self.lmk.append(float(d.mean()))

    def finish(self) -> dict[str, float]:
        return {"l1": float(np.mean(self.l1)) if self.l1 else float("nan"),
                "landmark_px": float(np.mean(self.lmk)) if self.lmk else float("nan")}


# ---- face-swap measures (issue 4) -----------------------------------------------------------------

ALIGN_SIZE = 128


class FaceNormaliser:
    """Puts a face into the avatar's geometry: the image is mapped through the face mesh from its own
    landmarks onto the avatar's (scaled into a 128 px crop), so two faces are compared pixel by pixel
    whatever their pose and expression. ``region`` is the skin compared (see ``__init__``)."""

    def __init__(self, avatar_image: np.ndarray, avatar_lm: np.ndarray):
        from engine.kernels import texmap as tk

        from .faceswap import EYE_LEFT, EYE_RIGHT, LIPS_OUTER, _signed_area, face_triangles

        self._tk = tk
        lm = np.asarray(avatar_lm, np.float64)[:, :2]
        oval = lm[list(fmx.FACE_OVAL)]
        s = 0.9 * ALIGN_SIZE / max(np.ptp(oval[:, 0]), np.ptp(oval[:, 1]))
        t = ALIGN_SIZE / 2 - (oval.max(0) + oval.min(0)) / 2 * s
        self.ref = lm * s + t
        m = np.array([[s, 0, t[0]], [0, s, t[1]]])
        inside = cv2.warpAffine(np.ones(avatar_image.shape[:2], np.uint8), m, (ALIGN_SIZE, ALIGN_SIZE),
                                flags=cv2.INTER_NEAREST).astype(bool)
        self.avatar = self._bandpass(cv2.warpAffine(avatar_image, m, (ALIGN_SIZE, ALIGN_SIZE),
                                                    flags=cv2.INTER_AREA), inside)
        tris = face_triangles()
        self.tris = tris[_signed_area(self.ref[tris]) > 0]
        # the inner face: the outline pulled in by 20% of the face width (where a swap's soft edge has
        # ended), without the eyes and the mouth (a face swap keeps those live on purpose)
        region = np.zeros((ALIGN_SIZE, ALIGN_SIZE), np.uint8)
        c = oval.mean(0) * s + t
        ov = self.ref[list(fmx.FACE_OVAL)]
        r = np.linalg.norm(ov - c, axis=1, keepdims=True)
        cv2.fillPoly(region, [np.round(c + (ov - c) * (1.0 - 0.2 * 0.9 * ALIGN_SIZE / r)).astype(np.int32)], 1)
        for loop, grow in ((EYE_LEFT, 1.8), (EYE_RIGHT, 1.8), (LIPS_OUTER, 1.5)):
            p = self.ref[list(loop)]
            c = p.mean(0)
            cv2.fillPoly(region, [np.round(c + (p - c) * grow).astype(np.int32)], 0)
        self.region = region.astype(bool)
        self._crop = np.zeros((ALIGN_SIZE, ALIGN_SIZE, 3), np.uint8)
        self._map = tk.TexMap()
        # the avatar's mirror image in its own geometry: what a swap shows when it draws the avatar
        # flipped to face the way the streamer turns (a mirrored face is the same face)
        from .face_model import canonical

        self.avatar_mirrored = self(avatar_image, np.asarray(avatar_lm, np.float64)[canonical()[1]], mirrored=True)

    @staticmethod
    def _bandpass(bgr: np.ndarray, covered: np.ndarray) -> np.ndarray:
        """Lightness minus its blur (sigma 10 px at 128): the face's features, not the room's light. Only
        where ``covered`` (the mesh drew the pixel; NaN elsewhere), and the blur is normalised over the
        covered pixels: the empty triangles of a turned face (hidden by the mesh) neither count as
        black features nor darken the blur around them. (Two faces mapped from similar landmarks have
        their holes in the same places: counted as features, the holes alone made them look alike.)"""
        lum = cv2.cvtColor(bgr.astype(np.float32) / 255.0, cv2.COLOR_BGR2LAB)[..., 0]
        c = covered.astype(np.float32)
        low = cv2.GaussianBlur(lum * c, (0, 0), 10.0) / np.maximum(cv2.GaussianBlur(c, (0, 0), 10.0), 1e-3)
        out = lum - low
        out[~covered] = np.nan
        return out

    def __call__(self, image: np.ndarray, lm: np.ndarray, mirrored: bool = False) -> np.ndarray:
        """``image`` with its face's landmarks ``lm`` mapped into the avatar's geometry, band-passed.
        ``mirrored``: ``lm`` are left-right twins (a mirror image), so the visible triangles turn the
        other way round."""
        lm2 = np.asarray(lm, np.float64)[:, :2]
        from .faceswap import _signed_area

        area = _signed_area(lm2[self.tris])
        tris = self.tris[area < 0 if mirrored else area > 0]
        self._crop[:] = 0
        self._tk.texmap_numba(self._crop, np.ascontiguousarray(image), lm2, self.ref, tris, None,
                              (0, 0, ALIGN_SIZE, ALIGN_SIZE), self._crop, self._map)
        return self._bandpass(self._crop, self._map.owner >= 0)

    def distance(self, a: np.ndarray, b: np.ndarray) -> float:
        """1 - zero-mean normalised cross-correlation of two normalised faces inside ``region`` where both
        are covered: 0 = the
        same features, about 1 = unrelated. Insensitive to brightness, contrast and the global colour a
        face swap deliberately matches to the live lighting."""
        m = self.region & np.isfinite(a) & np.isfinite(b)  # skin both faces show
        if m.sum() < 64:
            return float("nan")
        x = a[m].astype(np.float64)
        y = b[m].astype(np.float64)
        x -= x.mean()
        y -= y.mean()
        den = math.sqrt(float((x * x).sum() * (y * y).sum()))
        return 1.0 - float((x * y).sum() / den) if den > 1e-9 else float("nan")


class Identity(Measure):
    """Identity moved: the output face and the original (driver) face are each put into the avatar's
    geometry (``FaceNormaliser``: mesh-mapped from their own re-detected landmarks, band-passed
    lightness) and compared with the avatar: ``id_to_avatar`` = distance(output, avatar),
    ``id_to_original`` = distance(output, original), ``id_margin`` = to-original - to-avatar (> 0:
    the output looks more like the avatar than like the streamer). Every other frame."""

    name = "identity"

    def start(self, run: RunInfo) -> None:
        super().start(run)
        self.to_avatar: list[float] = []
        self.to_mirrored: list[float] = []
        self.to_original: list[float] = []
        self.norm = None
        if run.avatar_image is not None and run.avatar_landmarks is not None:
            self.norm = FaceNormaliser(run.avatar_image, run.avatar_landmarks)

    def frame(self, i, driver, output, driver_lm, output_lm) -> None:
        if self.norm is None or driver_lm is None or output_lm is None or i % 2:
            return
        o = self.norm(output, output_lm)
        self.to_avatar.append(self.norm.distance(o, self.norm.avatar))
        self.to_mirrored.append(self.norm.distance(o, self.norm.avatar_mirrored))
        self.to_original.append(self.norm.distance(o, self.norm(driver, driver_lm)))

    def finish(self) -> dict[str, float]:
        # the avatar as it is, or its mirror image, whichever the whole clip is nearer to (one choice
        # per clip, not per frame: no picking the luckier of two noisy distances frame by frame)
        da = min(float(np.nanmean(self.to_avatar)), float(np.nanmean(self.to_mirrored))) if self.to_avatar \
            else float("nan")
        do = float(np.nanmean(self.to_original)) if self.to_original else float("nan")
        return {"id_to_avatar": da, "id_to_original": do, "id_margin": do - da}


class Flicker(Measure):
    """No flicker: mean absolute frame-to-frame difference inside the face region (the driver's face
    outline at frame t, ``face_metrics.face_region``) of the output over that of the input, summed
    over consecutive frames where the driver has a face."""

    name = "flicker"

    def start(self, run: RunInfo) -> None:
        super().start(run)
        self.prev: tuple[np.ndarray, np.ndarray] | None = None
        self.d_in = self.d_out = 0.0
        self.n = 0

    def frame(self, i, driver, output, driver_lm, output_lm) -> None:
        if driver_lm is not None and self.prev is not None and driver.shape == output.shape:
            m = fmx.face_region(driver_lm, driver.shape[:2])
            self.d_in += float(cv2.absdiff(driver, self.prev[0])[m].mean())
            self.d_out += float(cv2.absdiff(output, self.prev[1])[m].mean())
            self.n += 1
        self.prev = (driver.copy(), output.copy())

    def finish(self) -> dict[str, float]:
        return {"flicker_input": self.d_in / max(self.n, 1), "flicker_output": self.d_out / max(self.n, 1),
                "flicker_ratio": self.d_out / self.d_in if self.d_in > 0 else float("nan")}


def _grad_mag(img: np.ndarray) -> np.ndarray:
    g = cv2.cvtColor(img, cv2.COLOR_BGR2GRAY).astype(np.float32)
    gx = cv2.Sobel(g, cv2.CV_32F, 1, 0, ksize=3)
    gy = cv2.Sobel(g, cv2.CV_32F, 0, 1, ksize=3)
    return cv2.magnitude(gx, gy)


def outline_curves(lm: np.ndarray, insets: tuple[float, ...]) -> list[np.ndarray]:
    """The face outline (FACE_OVAL) pulled towards its centroid by each inset (fraction of the face
    width), in 3D when the landmarks have z (as the face swap's mask is), seen from the camera:
    closed polylines (N, 2) float32 in pixels."""
    oval = np.asarray(lm, np.float64)[list(fmx.FACE_OVAL)]
    c = oval.mean(0)
    r = np.linalg.norm(oval - c, axis=1, keepdims=True)
    fw = float(np.ptp(oval[:, 0]))
    return [(c + (oval - c) * np.clip(1.0 - f * fw / np.maximum(r, 1e-6), 0.0, 1.0))[:, :2].astype(np.float32)
            for f in insets]


class EdgeVisibility(Measure):
    """No visible edge: mean gradient magnitude of the output along the swap mask's boundary curves
    over that of the input along the same curves (1 = no edge added). ``insets`` gives the curves as
    face-outline insets (fractions of the face width): where the mask starts, its middle and where
    it reaches full opacity."""

    name = "edge"
    insets: tuple[float, ...] = (0.04, 0.10, 0.16)

    def start(self, run: RunInfo) -> None:
        super().start(run)
        self.g_in = self.g_out = 0.0

    def frame(self, i, driver, output, driver_lm, output_lm) -> None:
        if driver_lm is None or driver.shape != output.shape or i % 2:
            return
        line = np.zeros(driver.shape[:2], np.uint8)
        cv2.polylines(line, [np.round(c).astype(np.int32) for c in outline_curves(driver_lm, self.insets)], True, 1)
        m = line.astype(bool)
        if not m.any():
            return
        self.g_in += float(_grad_mag(driver)[m].mean())
        self.g_out += float(_grad_mag(output)[m].mean())

    def finish(self) -> dict[str, float]:
        return {"edge_input": self.g_in, "edge_output": self.g_out,
                "edge_ratio": self.g_out / self.g_in if self.g_in > 0 else float("nan")}


@dataclass(frozen=True)
class Target:
    """A figure's goal: ``over`` says how runs combine ('mean' or 'min'/'max' over runs of ``kind``)."""

    kind: str  # 'cross' or 'self'
    figure: str
    over: str  # 'mean', 'min', 'max'
    op: str  # '>=', '<=', '>' or '<'
    value: float
    text: str

    def check(self, runs: list[dict]) -> tuple[float, bool | None]:
        vals = [r["figures"].get(self.figure, float("nan")) for r in runs if r["kind"] == self.kind and "figures" in r]
        vals = [v for v in vals if math.isfinite(v)]
        if not vals:
            return float("nan"), None
        got = {"mean": np.mean, "min": np.min, "max": np.max}[self.over](vals)
        ok = {">=": got >= self.value, "<=": got <= self.value, ">": got > self.value, "<": got < self.value}[self.op]
        return float(got), bool(ok)


@dataclass
class Suite:
    name: str
    description: str
    cross: list[Callable[[], Measure]] = field(default_factory=list)  # clip x avatar runs
    self_: list[Callable[[], Measure]] = field(default_factory=list)  # avatar = the clip's first frame
    targets: list[Target] = field(default_factory=list)
    columns: list[tuple[str, str, str]] = field(default_factory=list)  # (kind, figure, header) for the table


SUITES: dict[str, Suite] = {}


def register_suite(suite: Suite) -> Suite:
    SUITES[suite.name] = suite
    return suite


register_suite(Suite(
    "reenact", "avatar animated by the driver (issue 3): motion transfer, self-reenactment, stability, face found",
    cross=[MotionTransfer, Stability, FaceFound],
    self_=[SelfReenactment, FaceFound],
    targets=[
        Target("cross", "motion_r", "mean", ">=", 0.90, "motion transfer r, mean over clip x avatar pairs"),
        Target("cross", "motion_r", "min", ">=", 0.80, "motion transfer r, worst pair"),
        Target("self", "l1", "mean", "<=", 0.05, "self-reenactment L1 at 256x256"),
        Target("self", "landmark_px", "mean", "<=", 2.0, "self-reenactment landmark distance, px at 256"),
        Target("cross", "jitter_ratio", "max", "<=", 1.2, "output jitter / driver jitter, worst pair"),
        Target("cross", "found_rate", "min", ">=", 0.99, "face found on output frames, worst pair"),
    ],
    columns=[("cross", "found_rate", "found"), ("cross", "motion_r", "motion r"),
             ("cross", "drawn_motion_r", "drawn r"), ("cross", "jitter_ratio", "jitter x"),
             ("self", "found_rate", "found"), ("self", "l1", "L1@256"), ("self", "landmark_px", "lmk px")],
))


# ---- running --------------------------------------------------------------------------------------

def default_clips() -> list[Path]:
    return sorted((SHARED_DATA / "driving").glob("*.mp4"))


def default_avatars() -> list[Path]:
    return sorted(p for p in (SHARED_DATA / "avatars").iterdir()
                  if p.is_file() and p.name not in NO_FACE_AVATARS) if (SHARED_DATA / "avatars").is_dir() else []


def pipeline_preset(pipeline_yaml: str) -> Preset:
    """A preset from a pipeline given on the command line, e.g. ``[{node: mirror}]`` or ``[]``."""
    text = f"name: eval pipeline\npipeline: {pipeline_yaml}\n"
    return loads_preset(text, base_dir=Path.cwd(), file="<--pipeline>")


def uses_avatar(preset: Preset) -> bool:
    return bool(preset.avatar.images) or "avatar" in preset.raw


def with_avatar(preset: Preset, image: Path) -> Preset:
    raw = dict(preset.avatar.raw)
    raw["images"] = [str(image)]
    return replace(preset, avatar=Avatar(images=[Path(image)], raw=raw))


class Evaluator:
    """Runs a preset over clips and avatars and measures each run with a suite."""

    def __init__(self, preset: Preset, suite: Suite, *, max_frames: int | None = None, device: str = "cpu",
                 progress: Callable[[str], None] | None = None):
        from .face import MeshDetector

        self.preset = preset
        self.suite = suite
        self.max_frames = max_frames
        self.device = device
        self.progress = progress or (lambda s: log.info("%s", s))
        # two trackers, one per stream, reset between runs: mediapipe's tracking mode, as live
        self._drv = MeshDetector(static=False, max_faces=1)
        self._out = MeshDetector(static=False, max_faces=1)
        self._still = MeshDetector(static=True, max_faces=1)
        self._driver_cache: dict[Path, list[np.ndarray | None]] = {}  # the driver's landmarks, per clip

    def close(self) -> None:
        for d in (self._drv, self._out, self._still):
            d.close()

    def __enter__(self) -> Evaluator:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def run(self, clips: list[Path], avatars: list[Path | None], self_reenact: bool = True,
            ceiling: bool = False) -> dict:
        runs: list[dict] = []
        t0 = time.perf_counter()
        if ceiling:
            runs += [self.ceiling(clip) for clip in clips]
        if self.suite.cross:
            for clip in clips:
                for av in avatars:
                    runs.append(self._one("cross", clip, av, self.suite.cross))
        if ceiling:
            floors = {str(av): self.jitter_floor(av) for av in avatars if av is not None}
            for r in runs:
                f = r.get("figures", {})
                fl = floors.get(str(r.get("avatar_path")))
                if r["kind"] == "cross" and fl is not None and f.get("jitter_driver", 0) > 0:
                    f["jitter_floor_ratio"] = fl["figures"]["jitter_floor"] / f["jitter_driver"]
            runs += list(floors.values())
        if self_reenact and self.suite.self_:
            with tempfile.TemporaryDirectory(prefix="avatarcast-eval-") as tmp:
                for clip in clips:
                    first = Path(tmp) / f"{clip.stem}_first.png"
                    cv2.imwrite(str(first), _first_frame(clip))
                    runs.append(self._one("self", clip, first, self.suite.self_, label=f"{clip.stem} (first frame)"))
        summary = []
        for tg in self.suite.targets:
            got, ok = tg.check(runs)
            summary.append({"target": tg.text, "figure": tg.figure, "kind": tg.kind, "over": tg.over,
                            "op": tg.op, "value": tg.value, "got": got, "pass": ok})
        return {"preset": self.preset.name, "suite": self.suite.name, "max_frames": self.max_frames,
                "seconds": round(time.perf_counter() - t0, 1), "runs": runs, "summary": summary}

    def ceiling(self, clip: Path) -> dict:
        """How well the measurement itself agrees with itself: the driver's landmarks against those
        re-detected on the mirrored driver frame (mapped back, left and right swapped). No output can
        be expected to score above this on the same clip (a 'ceiling' run; no target)."""
        from engine.sources import VideoSource

        from .face_model import canonical

        twin = canonical()[1]
        src = VideoSource(clip)
        src.open()
        try:
            w = src.size[0]
            frame = np.empty((src.size[1], w, 3), np.uint8)
            self._drv.reset()
            self._out.reset()
            drv, mir = [], []
            n = 0
            while (self.max_frames is None or n < self.max_frames) and src.read(frame):
                a = self._drv.detect(frame)
                b = self._out.detect(np.ascontiguousarray(frame[:, ::-1]))
                nan = np.full((478, 3), np.nan, np.float32)
                drv.append(a[0] if a else nan)
                if b:
                    m = b[0].copy()
                    m[:, 0] = w - m[:, 0]
                    mir.append(m[twin])
                else:
                    mir.append(nan)
                n += 1
        finally:
            src.close()
        figures = motion_transfer(np.array(drv), np.array(mir))
        rec = {"kind": "ceiling", "clip": clip.name, "avatar": "(driver vs its mirror)", "figures": figures}
        self.progress(f"{'ceil':<5} {clip.name:<26} {rec['avatar']:<34}  motion r {_fmt(figures['motion_r'])}")
        return rec

    def jitter_floor(self, avatar: Path, frames: int = 60, noise: float = 2.0) -> dict:
        """The re-detection's own jitter on this avatar: the still avatar image with camera-like noise
        (Gaussian, ``noise`` grey levels, fixed seed) re-detected over ``frames`` frames. Nothing moves,
        so this is the least landmark jitter any output of this avatar can show (a 'floor' run; no
        target). A painting or an animal re-detects far less steadily than a photo."""
        img = cv2.imread(str(avatar))
        rng = np.random.default_rng(0)
        self._out.reset()
        lms = []
        for _ in range(frames if img is not None else 0):
            noisy = np.clip(img.astype(np.float32) + rng.normal(0.0, noise, img.shape), 0, 255).astype(np.uint8)
            found = self._out.detect(noisy)
            lms.append(found[0] if found else np.full((478, 3), np.nan, np.float32))
        j = fmx.jitter(np.array(lms)) if len(lms) >= 3 else float("nan")
        rec = {"kind": "floor", "clip": "(still image + noise)", "avatar": avatar.name, "figures": {"jitter_floor": j}}
        self.progress(f"{'floor':<5} {rec['clip']:<26} {avatar.name:<34}  jitter {_fmt(j)}")
        return rec

    def _one(self, kind: str, clip: Path, avatar: Path | None, measures: list[Callable[[], Measure]],
             label: str | None = None) -> dict:
        from engine.runtime import Engine
        from engine.sources import VideoSource

        name = label or (avatar.name if avatar else "-")
        rec: dict[str, Any] = {"kind": kind, "clip": clip.name, "avatar": name,
                               "avatar_path": None if avatar is None else str(avatar)}
        # an avatar given for the run replaces the preset's (a bare --pipeline has none of its own)
        preset = with_avatar(self.preset, avatar) if avatar is not None else self.preset
        src = VideoSource(clip)
        src.open()
        engine = None
        try:
            engine = Engine([preset], source_size=src.size, fps=src.fps, device=self.device, live=False)
            engine.start()
            ow, oh = engine.out_size
            info = RunInfo(kind, clip, avatar, src.fps, src.size, (ow, oh))
            if avatar is not None:
                info.avatar_image = cv2.imread(str(avatar))
                found = self._still.detect(info.avatar_image) if info.avatar_image is not None else []
                info.avatar_landmarks = found[0] if found else None
            ms = [m() for m in measures]
            for m in ms:
                m.start(info)
            self._out.reset()
            cached = self._driver_cache.get(clip)
            if cached is None:
                self._drv.reset()
            drv_lms: list[np.ndarray | None] = []
            # the output node's own faces, when it reports the face it drew (reenact does): what it meant
            # to draw, against which the re-detection's own losses show
            out_run = engine.graph.run_by_id.get(engine.graph.preset.output[0])
            drawn: list[np.ndarray | None] = []
            out_lms: list[np.ndarray | None] = []
            frame = np.empty((src.size[1], src.size[0], 3), np.uint8)
            out = np.empty((oh, ow, 3), np.uint8)
            n = 0
            t0 = time.perf_counter()
            while (self.max_frames is None or n < self.max_frames) and src.read(frame):
                engine.process(frame, out)
                if cached is not None and n < len(cached):
                    dl = cached[n]
                else:
                    found = self._drv.detect(frame)
                    dl = found[0] if found else None
                drv_lms.append(dl)
                ol = self._out.detect(out)
                out_lms.append(ol[0] if ol else None)
                if out_run is not None and "faces" in out_run.out:
                    fs = out_run.out["faces"]
                    drawn.append(fs[0].landmarks if fs else None)
                for m in ms:
                    m.frame(n, frame, out, dl, ol[0] if ol else None)
                n += 1
            if cached is None:
                self._driver_cache[clip] = drv_lms
            figures: dict[str, float] = {}
            for m in ms:
                figures.update(m.finish())
            if kind == "cross" and drawn:
                figures.update(drawn_motion(_series(drv_lms), _series(drawn), _series(out_lms)))
            rec["figures"] = figures
            rec["fps"] = n / max(time.perf_counter() - t0, 1e-9)
            rec["node_ms"] = engine.graph.timings()
        except UserError as exc:  # e.g. an avatar the preset refuses: reported, the others go on
            rec["error"] = exc.render()
            log.warning("%s x %s: %s", clip.name, name, rec["error"])
        finally:
            if engine is not None:
                engine.close()
            src.close()
        self.progress(_row_text(rec, self.suite))
        return rec


def _first_frame(clip: Path) -> np.ndarray:
    cap = cv2.VideoCapture(str(clip))
    ok, f = cap.read()
    cap.release()
    if not ok:
        raise UserError("cannot read the first frame", Where(clip), "check the clip plays in a media player")
    return f


def _nanmean(vals: list[float]) -> float:
    ok = [v for v in vals if math.isfinite(v)]
    return float(np.mean(ok)) if ok else float("nan")


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return "n/a" if not math.isfinite(v) else f"{v:.3f}"
    return str(v)


def _row_text(rec: dict, suite: Suite) -> str:
    head = f"{rec['kind']:<5} {rec['clip']:<26} {rec['avatar']:<34}"
    if "error" in rec:
        return head + " error: " + rec["error"]
    cols = [f"{h} {_fmt(rec['figures'].get(f, float('nan')))}" for k, f, h in suite.columns if k == rec["kind"]]
    return head + "  " + "  ".join(cols)


def report_lines(result: dict) -> list[str]:
    """The summary table: each target with what was measured and pass / FAIL."""
    lines = [f"\n{result['suite']} suite on preset {result['preset']!r}"
             f" ({len(result['runs'])} runs, {result['seconds']} s, max frames {result['max_frames']}):"]
    for kind, what in (("cross", "motion r per feature (mean over pairs)"),
                       ("ceiling", "measurement ceiling, driver vs its own mirror re-detection")):
        runs = [r for r in result["runs"] if r["kind"] == kind and "figures" in r]
        feats = [k for k in (runs[0]["figures"] if runs else {}) if k.startswith("r_") or k == "motion_r"]
        if feats:
            lines.append(f"  {what}: " + ", ".join(f"{k.removeprefix('r_')} {_fmt(_nanmean([r['figures'][k] for r in runs]))}"
                                                   for k in feats))
        drawn = [k for k in (runs[0]["figures"] if runs else {}) if k.startswith("drawn_") and "jitter" not in k]
        if drawn:
            def values(key: str, runs: list[dict] = runs) -> list[float]:
                return [r["figures"].get(key, math.nan) for r in runs]

            per_feature = ", ".join(f"{k.removeprefix('drawn_').removeprefix('r_')} {_fmt(_nanmean(values(k)))}"
                                    for k in drawn)
            jitter = [v for v in values("drawn_jitter_ratio") if math.isfinite(v)]
            lines.append(f"  as drawn (the node's own landmarks, not re-detected; no target): {per_feature}; "
                         f"drawn -> re-detected r {_fmt(_nanmean(values('redetect_r')))}; drawn jitter / driver "
                         f"jitter, worst pair {_fmt(max(jitter) if jitter else math.nan)}")
    ratios = [r["figures"]["jitter_floor_ratio"] for r in result["runs"]
              if r["kind"] == "cross" and math.isfinite(r.get("figures", {}).get("jitter_floor_ratio", float("nan")))]
    if ratios:
        lines.append(f"  jitter floor (the still avatar with camera noise, re-detected) over the driver's jitter: "
                     f"worst pair {_fmt(max(ratios))}; the floor alone is above 1.2 on {sum(x > 1.2 for x in ratios)} "
                     f"of {len(ratios)} pairs")
    for s in result["summary"]:
        verdict = "n/a" if s["pass"] is None else ("pass" if s["pass"] else "FAIL")
        lines.append(f"  {verdict:<4}  {s['target']}: {_fmt(s['got'])} (target {s['op']} {s['value']:g})")
    return lines


# ---- CLI ------------------------------------------------------------------------------------------

def _resolve_paths(items: list[str] | None, default: Callable[[], list[Path]], what: str, noun: str) -> list[Path]:
    if not items:
        paths = default()
        if not paths:
            raise UserError(f"no {what} given and none found in {SHARED_DATA}",
                            hint=f"pass --{what} FILE... (the defaults come from ../shared/data beside the checkout)")
        return paths
    out: list[Path] = []
    for it in items:
        p = Path(it).expanduser()
        if p.is_dir():
            out += sorted(q for q in p.iterdir() if q.is_file() and q.name not in NO_FACE_AVATARS)
        elif any(ch in it for ch in "*?["):
            out += sorted(Path().glob(it)) if not p.is_absolute() else sorted(p.parent.glob(p.name))
        elif p.is_file():
            out.append(p)
        else:
            raise UserError(f"{noun} not found: {it!r}", hint=f"give existing files or folders for --{what}")
    return out


def cmd_eval(args) -> int:
    from engine.library import find_preset
    from engine.node import discover

    if args.pipeline is None and not args.preset:
        raise UserError("nothing to evaluate", hint="give --preset FILE (e.g. a reenactment preset) or --pipeline "
                        "'[{node: mirror}]'")
    preset = pipeline_preset(args.pipeline) if args.pipeline is not None else find_preset(args.preset)
    discover()  # node modules may register their own suites (e.g. face swap)
    suite = SUITES.get(args.suite)
    if suite is None:
        raise UserError(f"unknown suite {args.suite!r}", hint="suites: " + ", ".join(
            f"{s.name} ({s.description})" for s in SUITES.values()))
    clips = _resolve_paths(args.driving, default_clips, "driving", "driving clip")
    if args.avatars == ["none"] or (not args.avatars and not uses_avatar(preset)):
        avatars: list[Path | None] = [None]
    else:
        avatars = list(_resolve_paths(args.avatars, default_avatars, "avatars", "avatar image"))
    with Evaluator(preset, suite, max_frames=args.max_frames, progress=print) as ev:
        result = ev.run(clips, avatars, self_reenact=not args.no_self, ceiling=args.ceiling)
    for line in report_lines(result):
        print(line)
    if args.json:
        from engine.bench import machine, write_json

        result["machine"] = machine()
        write_json(_jsonable(result), args.json)
        print(f"wrote {args.json}")
    failed = [s for s in result["summary"] if s["pass"] is False]
    errors = [r for r in result["runs"] if "error" in r]
    return 1 if args.check and (failed or errors) else 0


def _jsonable(x: Any) -> Any:
    if isinstance(x, dict):
        return {k: _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, (np.floating, np.integer)):
        return _jsonable(x.item())
    return x


def _pos_int(text: str) -> int:
    from engine.cli import _pos_int as check

    return check(text)


def add_commands(sub, parsers=None) -> None:
    e = sub.add_parser("eval", help="measure quality: re-detect faces on a preset's output over driving clips",
                       description="Run a preset (or a bare --pipeline) over driving clips x avatars, re-detect face "
                                   "landmarks on every output frame and compare with the driver's: motion transfer r, "
                                   "self-reenactment L1 and landmark distance at 256x256, jitter, face found. "
                                   "Prints a table with each target's verdict and optionally writes JSON.")
    g = e.add_mutually_exclusive_group()
    g.add_argument("--preset", metavar="PRESET", help="preset file or name (its avatar is replaced by each --avatars image)")
    g.add_argument("--pipeline", metavar="YAML", help="a pipeline instead of a preset, e.g. '[]' (identity) or "
                   "'[{node: mirror}]'")
    e.add_argument("--driving", nargs="+", metavar="CLIP", help="driving clips, files or globs "
                   f"(default: {SHARED_DATA / 'driving'}/*.mp4)")
    e.add_argument("--avatars", nargs="+", metavar="IMAGE", help="avatar images or folders, or 'none' "
                   f"(default: {SHARED_DATA / 'avatars'}/* except {', '.join(NO_FACE_AVATARS)}; "
                   "'none' for a preset without an avatar)")
    e.add_argument("--suite", default="reenact", metavar="NAME",
                   help=f"what to measure: {', '.join(sorted(SUITES))} or a suite a node pack adds (default: reenact)")
    e.add_argument("--max-frames", type=_pos_int, metavar="N", help="use only the first N frames of each clip")
    e.add_argument("--no-self", action="store_true", help="skip the self-reenactment runs")
    e.add_argument("--ceiling", action="store_true", help="also measure each clip against its own mirrored "
                   "re-detection: the best motion r the measurement itself allows on that clip")
    e.add_argument("--json", metavar="FILE", help="write every figure to FILE as JSON")
    e.add_argument("--check", action="store_true", help="exit 1 when a target is missed or a run failed")
    e.set_defaults(func=cmd_eval)
    if parsers is not None:
        parsers["eval"] = e

