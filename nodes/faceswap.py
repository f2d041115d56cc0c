"""Live face swap: the avatar's face on the streamer, following every expression. Exports: FaceSwap
(the ``faceswap`` node), prepare_shot, face_triangles, SwapMask.

Per chosen face, per frame, working only inside the face's box:
  1. the avatar shot nearest the live head pose (yaw, pitch) is picked (few-shot avatars);
  2. its texture (a crop of the avatar image with its 478 mediapipe landmarks, prepared once in
     ``open()`` and cached by content) is recoloured so its skin has the live face's LAB mean and
     spread (robust statistics inside the skin region, smoothed over time);
  3. a soft mask is built at low resolution: the face outline (FACE_OVAL) pulled inwards (``erode``)
     and feathered, minus the eyes and the mouth opening (and, with ``mouth_mask``, the lips while
     the mouth is open), partly minus the brows (``brow_show``: the streamer's brows, which carry
     much of the expression, show through by that fraction; off by default: on whole clips it costs
     identity on a three-quarter avatar more than it gains in brow motion), minus pixels that do not look like the live skin (``occlusion``: a hand or a
     microphone in front of the face), times a weight that fades as the head turns past
     ``yaw_limit`` / ``pitch_limit``, as the face gets tiny, or as the tracker eases a lost face out;
  4. the texture is mapped through mediapipe's dense face mesh (852 triangles, nearest first,
     back-facing ones skipped) onto the live landmarks and blended (``engine.kernels.texmap``: numba
     on the CPU, torch on CUDA); ``blend: relight`` (default) gives the avatar's features the live
     face's light and detail contrast: per pixel v * gain + offset, both low-frequency fields from the
     live and the warped avatar skin; ``blend: seamless`` adds a gradient-domain step instead: the
     live shading along the mask's edge spread over the face as a smooth membrane;
  5. ``expression_detail``: the streamer's creases and folds (smile lines, a frown, a raised forehead)
     are laid over the avatar's skin as an expression ratio image (``ExpressionDetail``): the live face
     is unwarped into a frontal frame each frame and divided by its own slow average there, so only
     what changes with expression (not the streamer's own skin, moles or light) reaches the avatar.

The mesh has no triangles over the eye openings or between the lips, so the streamer's own eyes and
mouth interior always show through: avatar lips are never stretched over an open mouth.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import cv2
import numpy as np

from engine import bench
from engine.cache import cached
from engine.errors import UserError, Where
from engine.kernels import texmap as tk
from engine.node import Node, register
from engine.params import Param, Port, PortType

from . import face_metrics as fmx

log = logging.getLogger("avatarcast.faceswap")

# ---- mediapipe face-mesh loops (ordered contours) ------------------------------------------------------
EYE_RIGHT = (33, 246, 161, 160, 159, 158, 157, 173, 133, 155, 154, 153, 145, 144, 163, 7)
EYE_LEFT = (263, 466, 388, 387, 386, 385, 384, 398, 362, 382, 381, 380, 374, 373, 390, 249)
LIPS_INNER = (78, 191, 80, 81, 82, 13, 312, 311, 310, 415, 308, 324, 318, 402, 317, 14, 87, 178, 88, 95)
LIPS_OUTER = (61, 185, 40, 39, 37, 0, 267, 269, 270, 409, 291, 375, 321, 405, 314, 17, 84, 181, 91, 146)
# eye + brow band per side (brow top edge, then the lower lid): excluded from skin statistics and the
# occlusion test (brows, lashes and eyes are not skin-coloured but are no occluder)
BAND_RIGHT = (70, 63, 105, 66, 107, 55, 193, 133, 155, 154, 153, 145, 144, 163, 7, 33, 130)
BAND_LEFT = (300, 293, 334, 296, 336, 285, 417, 362, 382, 381, 380, 374, 373, 390, 249, 263, 359)
# each brow as a closed loop (upper edge outwards-in, then the lower edge back)
BROW_RIGHT = (70, 63, 105, 66, 107, 55, 65, 52, 53, 46)
BROW_LEFT = (300, 293, 334, 296, 336, 285, 295, 282, 283, 276)

TEXTURE_VERSION = "11"
CLEAN_TOLERANCE = 3.0  # avatar texture clean-up: pixels this far from the skin colour (spreads) are not skin
# the live eye's rim shows at least this far around the eye opening, and this far around its corners
# (fractions of the wider eye's width times eye_margin): when the eye shuts, its opening is a line, and the
# avatar's lid triangles would meet there, with the avatar's own lash line or the pale corner of a
# painted eye whose detected contour lies inside the paint crushed into a hard streak or sliver
EYE_RIM = 0.05
EYE_CORNER = 0.12
MASK_WIDTH = 128  # the soft mask is built at most this wide, then resized to the face box
DETAIL_WIDTH = 128  # face width at which the live face's and the avatar's detail are compared
# the seamless blend's membrane corrects lighting by at most this much per channel (0..255): enough for a
# soft-focus, unevenly lit room (30 left a visible edge there), not enough to repaint the avatar's features
MEMBRANE_LIMIT = 80.0
# relight blend: the live light is the skin blurred by this many face widths (wider: only broad light
# moves; narrower: the live face's own features start to show through); its gain at most RELIGHT_GAIN
RELIGHT_SIGMA = 0.15
RELIGHT_GAIN = 2.0
MAX_HUE_TURN = math.radians(25.0)  # relight: the largest turn of the avatar's chroma towards the live skin's hue
CHANNEL_SPREAD = 1.25  # relight: each channel's gain within this factor of the luma gain
CONTRAST_RANGE = (0.4, 1.0)  # relight: the avatar's features drawn at this fraction of their contrast at most
FLIP_MIN_YAW = 12.0  # degrees: a shot turned at least this far may be drawn flipped to face the live head's way
# degrees: a shot turned at least this far may be drawn symmetric (its near half on both sides) for a head
# turned less than a third as far; Mona's 16 degrees keep her own (asymmetric) smile, Pearl's 34 do not
SYMMETRIC_MIN_YAW = 25.0
# expression detail (``ExpressionDetail``): the live face unwarped to a frontal frame this many pixels wide;
# its slow average (the face at rest) follows over EXPR_REST_S seconds; of the ratio to it only the fine
# pattern is kept (finer than EXPR_FINE face widths: broad light is relight's), changes under EXPR_CORE
# (camera noise) are dropped and the rest is limited to 1 +- EXPR_LIMIT
EXPR_WIDTH = 112
EXPR_REST_S = 4.0
EXPR_FINE = 0.06
EXPR_CORE = 0.02
EXPR_LIMIT = 0.25
# the nose's points: its shading changes with every turn of the head, which is no expression
NOSE = (168, 6, 197, 195, 5, 4, 1, 19, 94, 2, 98, 327, 64, 294, 48, 278, 129, 358, 102, 331, 49, 279, 209, 429,
        217, 437, 188, 412, 122, 351, 193, 417, 245, 465)
LUMA_BGR = np.array([0.114, 0.587, 0.299], np.float32)  # luma weights of B, G, R
XFADE_S = 0.3  # seconds: a change of shot (few-shot avatars) or of view crossfades over this long
OWN, FLIPPED, SYMMETRIC = 0, 1, 2  # views of a shot: as painted, mirrored, its near half on both sides
BLUR_LEVELS = (0.0, 0.7, 1.2, 1.8, 2.6, 3.6)  # texture softening levels, pixels at a 256 px face


@lru_cache(maxsize=1)
def face_triangles() -> np.ndarray:
    """mediapipe's FACEMESH_TESSELATION as (852, 3) int32 triangles, each ordered counter-clockwise
    on screen for a face looking at the camera (image y down: positive signed area = front-facing).
    The tesselation is a set of edges; its triangles are its 3-cycles, less the spurious ones."""
    from mediapipe.python.solutions.face_mesh_connections import FACEMESH_TESSELATION

    from .face_model import canonical

    pts = canonical()[0][:468, :2]
    nbrs: list[set[int]] = [set() for _ in range(468)]
    for a, b in FACEMESH_TESSELATION:
        nbrs[a].add(b)
        nbrs[b].add(a)
    tris = sorted({(a, b, c) for a in range(468) for b in nbrs[a] if b > a for c in nbrs[a] & nbrs[b] if c > b})
    # a 3-cycle that is no face of the mesh: its edges also border two real triangles, and it has a
    # vertex inside it (two such in mediapipe 0.10's tesselation)
    uses: dict[tuple[int, int], int] = {}
    for a, b, c in tris:
        for e in ((a, b), (b, c), (a, c)):
            uses[e] = uses.get(e, 0) + 1
    out = []
    for t in tris:
        p = pts[list(t)]
        a, b, c = t
        if sum(uses[e] > 2 for e in ((a, b), (b, c), (a, c))) >= 2:
            q = np.delete(pts, list(t), axis=0)
            d = [(p[(i + 1) % 3, 0] - p[i, 0]) * (q[:, 1] - p[i, 1]) - (p[(i + 1) % 3, 1] - p[i, 1]) * (q[:, 0] - p[i, 0])
                 for i in range(3)]
            if (((d[0] > 0) & (d[1] > 0) & (d[2] > 0)) | ((d[0] < 0) & (d[1] < 0) & (d[2] < 0))).any():
                continue
        out.append(t if _signed_area(p[None])[0] > 0 else (t[0], t[2], t[1]))
    return np.array(out, np.int32)


@lru_cache(maxsize=1)
def mirror_triangles() -> np.ndarray:
    """(852,) int: each triangle's left-right twin (the triangle of its vertices' mirror twins; -1 for
    the few the tesselation does not mirror)."""
    from .face_model import canonical

    tris = face_triangles()
    mirror = canonical()[1]
    index = {tuple(sorted(t)): i for i, t in enumerate(tris.tolist())}
    return np.array([index.get(tuple(sorted(mirror[t].tolist())), -1) for t in tris], np.int64)


def shot_visibility(tl: np.ndarray, mirror: np.ndarray, seen: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """How much of each triangle a shot with landmarks ``tl`` (478, 2) shows, and how much of its mirror
    twin (a mirror image turns clockwise): twice the on-screen area when facing the camera (else 0),
    times the ``texture_seen`` fraction (a twin the tesselation lacks counts as wholly seen)."""
    tris = face_triangles()
    twin = mirror_triangles()
    vis = np.maximum(_signed_area(tl[tris]), 0.0) * seen
    vis_m = np.maximum(-_signed_area(tl[mirror[tris]]), 0.0) * np.where(twin >= 0, seen[np.maximum(twin, 0)], 1.0)
    return vis, vis_m


def _signed_area(p: np.ndarray) -> np.ndarray:
    """(T, 3, 2) triangles -> (T,) twice the signed area (positive: counter-clockwise with y down)."""
    e1 = p[:, 1] - p[:, 0]
    e2 = p[:, 2] - p[:, 0]
    return e1[:, 0] * e2[:, 1] - e1[:, 1] * e2[:, 0]


def smoothstep(x):
    x = np.clip(x, 0.0, 1.0)
    return x * x * (3.0 - 2.0 * x)


# ---- masks ---------------------------------------------------------------------------------------------

def _shrink(poly: np.ndarray, dist: float) -> np.ndarray:
    """Pull a closed outline (N, 2|3) towards its centroid by about ``dist`` pixels; returns (N, 2).
    With z (pixels, as the face node gives), the pull is in 3D and then seen from the camera: on a
    turned head the far side's edge moves less on screen, as the face surface is foreshortened there,
    so the edge stays on the cheek instead of cutting through the nose and the eye."""
    c = poly.mean(0)
    r = np.linalg.norm(poly - c, axis=1, keepdims=True)
    return (c + (poly - c) * np.clip(1.0 - dist / np.maximum(r, 1e-6), 0.0, 1.0))[:, :2]


def skin_region(lm2: np.ndarray, shape: tuple[int, int], face_w: float) -> np.ndarray:
    """(H, W) uint8 0/1: the face outline pulled in by 8% of the face width, without the eye-and-brow
    bands, the lips and the nostrils' shadow line: where the skin's colour statistics are taken."""
    m = np.zeros(shape, np.uint8)
    cv2.fillPoly(m, [np.round(_shrink(lm2[list(fmx.FACE_OVAL)], 0.08 * face_w)).astype(np.int32)], 1)
    for loop, grow in ((BAND_RIGHT, 1.15), (BAND_LEFT, 1.15), (LIPS_OUTER, 1.2)):
        p = lm2[list(loop)]
        c = p.mean(0)
        cv2.fillPoly(m, [np.round(c + (p - c) * grow).astype(np.int32)], 0)
    return m


def detail(bgr: np.ndarray, region: np.ndarray, face_w: float) -> float:
    """How much fine detail a face shows: mean absolute Laplacian of the lightness inside ``region``
    after scaling the image so the face is ``DETAIL_WIDTH`` pixels wide."""
    s = DETAIL_WIDTH / max(face_w, 1.0)
    if abs(s - 1.0) > 0.05:
        size = (max(4, round(bgr.shape[1] * s)), max(4, round(bgr.shape[0] * s)))
        bgr = cv2.resize(bgr, size, interpolation=cv2.INTER_AREA)
        region = cv2.resize(region.astype(np.uint8), size, interpolation=cv2.INTER_NEAREST)
    g = cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY)
    lap = np.abs(cv2.Laplacian(g, cv2.CV_16S, ksize=3))
    m = region.astype(bool)
    return float(lap[m].mean()) if m.any() else 0.0


def lab_stats(bgr: np.ndarray, region: np.ndarray) -> np.ndarray:
    """Robust LAB statistics of the pixels where ``region`` is set: (2, 3) float32 rows median and
    spread (1.4826 x MAD, at least 1), in OpenCV's float LAB (L 0..100, a and b about -128..127)."""
    lab = cv2.cvtColor(bgr.astype(np.float32) * np.float32(1.0 / 255.0), cv2.COLOR_BGR2LAB)
    px = lab[region.astype(bool)]
    if len(px) < 16:
        px = lab.reshape(-1, 3)
    med = np.median(px, axis=0)
    mad = np.median(np.abs(px - med), axis=0) * 1.4826
    return np.stack([med, np.maximum(mad, 1.0)]).astype(np.float32)


# ---- avatar preparation ----------------------------------------------------------------------------------

SEEN_SCALE = 3  # texture_seen: the owner map's supersampling (the nostrils' triangles are a few pixels)
SEEN_MIN_PX = 4.0  # texture_seen: a triangle smaller than this (supersampled pixels) counts as seen


def texture_seen(tl: np.ndarray, tris: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """(T,) the fraction of each triangle's own pixels in the shot that no nearer triangle covers. Facing
    the camera is not enough to be seen: on a three-quarter face the far nostril faces the camera but
    lies behind the nose's tip, and texturing from there paints the cheek beyond the nose into the
    nostril. Triangles are drawn nearest first (the landmarks' depth) at SEEN_SCALE times the
    texture's resolution, the first one over a pixel owning it."""
    p = tl[:, :2] * SEEN_SCALE
    area = 0.5 * _signed_area(p[tris])
    order = np.nonzero(area > 0)[0]  # facing the camera
    order = order[np.argsort(tl[tris[order], 2].mean(axis=1), kind="stable")]
    area = area[order]
    h, w = shape[0] * SEEN_SCALE, shape[1] * SEEN_SCALE
    owner = tk.owner_ref(p, tris[order], (0, 0, w, h), (h, w))
    owned = np.bincount(owner[owner >= 0], minlength=len(order)).astype(np.float64)
    seen = np.zeros(len(tris), np.float32)
    # a sliver of a few pixels may own none of them by where they fall: counted as seen
    seen[order] = np.where(area < SEEN_MIN_PX, 1.0, np.clip(owned / np.maximum(area, 1.0), 0.0, 1.0))
    return seen


def prepare_shot(image: np.ndarray, name: str, face_px: int = 256) -> dict[str, np.ndarray]:
    """One avatar image -> its texture: a crop around the face scaled so the face is ``face_px`` wide,
    the 478 landmarks in texture pixels, pose, which triangles the shot shows (front-facing), the
    texture in float LAB and the skin's LAB statistics. Raises UserError naming an image with no face."""
    from .face import detect_landmarks, make_face

    found = detect_landmarks(image)
    if not found:
        raise UserError(f"no face found in the avatar image {name}", Where(name),
                        "face swap needs a clearly visible human face in every avatar image (a photo or "
                        "painting, facing the camera, not too small)")
    lm = found[0].astype(np.float64)
    face = make_face(lm.astype(np.float32), image.shape[:2])
    oval = lm[list(fmx.FACE_OVAL), :2]
    fw = max(float(np.ptp(oval[:, 0])), 1.0)
    x0, y0 = oval.min(0) - 0.08 * fw
    x1, y1 = oval.max(0) + 0.08 * fw
    s = face_px / fw
    tw, th = max(8, int(round((x1 - x0) * s))), max(8, int(round((y1 - y0) * s)))
    m = np.array([[s, 0, -x0 * s], [0, s, -y0 * s]], np.float64)
    tex = cv2.warpAffine(image, m, (tw, th), flags=cv2.INTER_AREA if s < 1 else cv2.INTER_CUBIC,
                         borderMode=cv2.BORDER_REPLICATE)
    tl = lm.copy()
    tl[:, :2] = lm[:, :2] @ m[:, :2].T + m[:, 2]
    tl[:, 2] *= s
    # a triangle the shot shows foreshortened (the far cheek of a three-quarter view) takes its pixels
    # from its mirror twin on the near side instead: faces are near enough symmetric, stretching is not
    from .face_model import canonical

    tris = face_triangles()
    mirror = canonical()[1]
    seen = texture_seen(tl, tris, tex.shape[:2])
    vis, vis_m = shot_visibility(tl[:, :2], mirror, seen)
    use_mirror = vis < 0.05 * vis_m
    shown = (vis > 0) | use_mirror
    region = skin_region(tl[:, :2], tex.shape[:2], face_px)
    stats = lab_stats(tex, region)
    tex = clean_border(tex, tl[:, :2], stats, face_px)
    tex = clean_lids(tex, tl[:, :2], stats, face_px)
    return {"texture": tex, "landmarks": tl.astype(np.float32), "pose": np.array([face.yaw, face.pitch], np.float32),
            "shown": shown, "use_mirror": use_mirror, "mirror": mirror.astype(np.int32), "seen": seen,
            "lab": cv2.cvtColor(tex.astype(np.float32) / 255.0, cv2.COLOR_BGR2LAB), "stats": stats}


def clean_border(tex: np.ndarray, lm2: np.ndarray, stats: np.ndarray, face_w: float) -> np.ndarray:
    """The avatar's hair, veil or deep shadow reaching inside its face outline near the edge would show
    as a dark band along the swapped face's edge: pixels of the outer 20% band of the outline that are
    far from the avatar's skin colour (same test as ``occlusion``) are inpainted from the skin around."""
    oval = lm2[list(fmx.FACE_OVAL)]
    band = np.zeros(tex.shape[:2], np.uint8)
    cv2.fillPoly(band, [np.round(oval).astype(np.int32)], 1)
    cv2.fillPoly(band, [np.round(_shrink(oval, 0.2 * face_w)).astype(np.int32)], 0)
    return _inpaint_unlike_skin(tex, band, stats, face_w, 5, within=False)


def _inpaint_unlike_skin(tex: np.ndarray, band: np.ndarray, stats: np.ndarray, face_w: float, grow: int,
                         within: bool) -> np.ndarray:
    """``tex`` with its pixels in ``band`` that are far from the skin colour inpainted from around them,
    grown by ``grow`` px (``within``: not past the band)."""
    bad = (occlusion_distance(tex, stats) > CLEAN_TOLERANCE) & band.astype(bool)
    if not bad.any():
        return tex
    bad = cv2.dilate(bad.astype(np.uint8), np.ones((grow, grow), np.uint8))
    if within:
        bad &= band
    return cv2.inpaint(tex, bad, max(3.0, 0.02 * face_w), cv2.INPAINT_TELEA)


def clean_lids(tex: np.ndarray, lm2: np.ndarray, stats: np.ndarray, face_w: float) -> np.ndarray:
    """The band between each upper lid and the mesh row above it is what covers the live eye when it
    shuts. Where the detector puts the lid inside a painted eye (Pearl's, a cartoon's), that band holds
    the painted eye's white or iris, which a shut eye would show as a pale patch on its lid: pixels of
    the band far from the avatar's skin colour (same test as ``clean_border``) are inpainted from the lid
    skin around. An open eye shows the streamer's own lids over this band anyway (``eye_margin``)."""
    band = np.zeros(tex.shape[:2], np.uint8)
    # each eye loop's first nine points are its upper lid, outer corner to inner
    for ring, above in ((EYE_RIGHT[:9], fmx.EYE_RIGHT_ABOVE), (EYE_LEFT[:9], fmx.EYE_LEFT_ABOVE)):
        poly = np.concatenate([lm2[list(ring)], lm2[list(above)][::-1]])
        cv2.fillPoly(band, [np.round(poly * 16).astype(np.int32)], 1, cv2.LINE_8, 4)
    return _inpaint_unlike_skin(tex, band, stats, face_w, 3, within=True)


def occlusion_distance(bgr: np.ndarray, skin: np.ndarray) -> np.ndarray:
    """Per pixel: distance in LAB from the skin median in units of the skin spread, lightness at half
    weight (shading is not a different material)."""
    lab = cv2.cvtColor(bgr.astype(np.float32) * np.float32(1.0 / 255.0), cv2.COLOR_BGR2LAB)
    z = (lab - skin[0]) / skin[1]
    z[..., 0] *= 0.5
    return np.sqrt((z * z).sum(-1))


@dataclass
class Shot:
    name: str
    texture: np.ndarray  # (th, tw, 3) uint8 BGR
    landmarks: np.ndarray  # (478, 3) float32 texture pixels
    pose: np.ndarray  # (yaw, pitch) degrees
    shown: np.ndarray  # (852,) bool: triangles this shot can texture (itself or its mirror twin)
    use_mirror: np.ndarray  # (852,) bool: triangles textured from their mirror twin
    mirror: np.ndarray  # (478,) int32: each landmark's left-right twin
    lab: np.ndarray  # (th, tw, 3) float32 LAB of the texture
    stats: np.ndarray  # (2, 3) skin LAB median / spread
    seen: np.ndarray | None = None  # (852,) float32: ``texture_seen``; None: every triangle wholly seen
    recoloured: np.ndarray = field(init=False)
    _tmp: np.ndarray = field(init=False)

    def __post_init__(self):
        n = len(self.landmarks)
        # texture points: the landmarks, then each landmark's mirror twin (indices + n)
        self.tex_pts = np.ascontiguousarray(np.vstack([self.landmarks[:, :2], self.landmarks[self.mirror, :2]]),
                                            np.float64)
        self.tri_offset = np.where(self.use_mirror, n, 0).astype(np.int32)
        # the shot flipped left-right (a three-quarter avatar facing the other way): each triangle takes
        # its mirror twin's pixels, unless the twin is the foreshortened one, where it keeps its own
        tl = self.landmarks[:, :2].astype(np.float64)
        tris = face_triangles()
        vis, vis_m = shot_visibility(tl, self.mirror, np.ones(len(tris), np.float32) if self.seen is None else self.seen)
        flipped = np.where(vis_m < 0.05 * vis, 0, n).astype(np.int32)
        # the shot made symmetric (a three-quarter avatar on a head facing the camera): the near half as it
        # is, the far half (foreshortened, its outline cut by the nose) from the near half's mirror image
        from .face_model import canonical

        cx = canonical()[0][tris, 0].mean(1)  # each triangle's side of the face's midline
        near = 1.0 if vis[cx > 0].sum() >= vis[cx < 0].sum() else -1.0
        symmetric = np.where((cx * near < 0) & (vis_m > 0), n, self.tri_offset).astype(np.int32)
        self.tri_offsets = (self.tri_offset, flipped, symmetric)  # indexed by view: OWN, FLIPPED, SYMMETRIC
        self.drawn = (np.nonzero(self.shown)[0], np.nonzero(~self.shown)[0])
        self.flippable = abs(float(self.pose[0])) >= FLIP_MIN_YAW
        self.symmetric_ok = abs(float(self.pose[0])) >= SYMMETRIC_MIN_YAW
        self.recoloured = self.texture.copy()
        self._tmp = np.empty(self.lab.shape, np.float32)
        self._bgr = np.empty(self.lab.shape, np.float32)
        self._key: np.ndarray | None = None
        # softened copies of the texture (a blurry webcam must not get a razor-sharp face) with their
        # detail level measured as the live face's is: at a face width of DETAIL_WIDTH pixels
        face_px = float(np.ptp(self.landmarks[list(fmx.FACE_OVAL), 0]))
        region = skin_region(self.landmarks[:, :2], self.texture.shape[:2], face_px)
        self.levels = []  # (sigma in texture pixels, texture, LAB texture, detail)
        for sigma in BLUR_LEVELS:
            t = self.texture if sigma == 0 else cv2.GaussianBlur(self.texture, (0, 0), sigma * face_px / 256.0)
            lab = self.lab if sigma == 0 else cv2.cvtColor(t.astype(np.float32) / 255.0, cv2.COLOR_BGR2LAB)
            self.levels.append((sigma, t, lab, detail(t, region, face_px)))
        self.level = 0

    def choose_level(self, live_detail: float) -> None:
        """The sharpest level whose detail is at most 15% above the live face's (10% hysteresis)."""
        want = len(self.levels) - 1
        for k, (_, _, _, d) in enumerate(self.levels):
            if d <= 1.15 * live_detail:
                want = k
                break
        cur = self.levels[self.level][3]
        if want != self.level and not (0.9 * live_detail <= cur <= 1.1 * live_detail):
            self.level = want
            self._key = None
            self.texture, self.lab = self.levels[want][1], self.levels[want][2]

    def recolour(self, live: np.ndarray, amount: float, keep_contrast: bool = False) -> np.ndarray:
        """The texture with its skin's LAB median/spread moved to ``live`` (2, 3) by ``amount`` (0..1).
        Recomputed only when the target moved by more than 0.3 LAB units (invisible) since the last time.
        ``keep_contrast`` (the relight blend, whose gain carries the live light): the lightness is only
        shifted, and the chroma plane is turned and scaled about neutral grey so the avatar's skin gets
        the live skin's hue and colourfulness while greys stay grey and a brown brow stays a darker,
        less colourful version of the skin (an additive shift turns it purple or green)."""
        key = np.append(live.ravel(), (amount, keep_contrast)).astype(np.float32)
        if self._key is not None and np.abs(key - self._key).max() < 0.3:
            return self.recoloured
        self._key = key
        if amount <= 0:
            np.copyto(self.recoloured, self.texture)
            return self.recoloured
        mu_a, sd_a = self.stats
        if keep_contrast:
            self._tmp[..., 0] = self.lab[..., 0] + np.float32((live[0, 0] - mu_a[0]) * amount)
            za, zl = complex(mu_a[1], mu_a[2]), complex(live[0, 1], live[0, 2])
            turn = (math.atan2(zl.imag, zl.real) - math.atan2(za.imag, za.real) + math.pi) % (2 * math.pi) - math.pi
            # limited: skin hues lie within a narrow fan; a larger turn is an avatar whose "skin" is fur or
            # paint, whose other colours would swing into greens and magentas
            turn = min(max(turn, -MAX_HUE_TURN), MAX_HUE_TURN)
            scale = math.exp(amount * math.log(min(max(abs(zl) / max(abs(za), 1.0), 2.0 / 3.0), 1.5)))
            c, s = scale * math.cos(turn * amount), scale * math.sin(turn * amount)
            a, b = self.lab[..., 1], self.lab[..., 2]
            self._tmp[..., 1] = a * np.float32(c) - b * np.float32(s)
            self._tmp[..., 2] = a * np.float32(s) + b * np.float32(c)
        else:
            # spreads: lightness contrast follows the live face within limits; chroma spread barely moves
            # (scaling a/b by a large factor turns an avatar's brown shadows purple)
            ratio = np.clip(live[1] / sd_a, (0.6, 0.8, 0.8), (1.6, 1.25, 1.25)).astype(np.float32)
            ratio = 1.0 + (ratio - 1.0) * amount
            shift = ((live[0] - mu_a) * amount + mu_a).astype(np.float32)
            np.subtract(self.lab, mu_a, out=self._tmp)
            np.multiply(self._tmp, ratio, out=self._tmp)
            # chroma moves fully on lit skin, less in the avatar's dark shadows and hair (a full shift turns
            # a brown shadow purple or green)
            k = np.clip(self.lab[..., :1] / max(float(mu_a[0]), 1.0), 0.0, 1.0)
            self._tmp[..., 1:] += (shift[1:] - mu_a[1:]) * (k - 1.0)
            np.add(self._tmp, shift, out=self._tmp)
        cv2.cvtColor(self._tmp, cv2.COLOR_LAB2BGR, dst=self._bgr)
        cv2.convertScaleAbs(self._bgr, dst=self.recoloured, alpha=255.0)
        return self.recoloured


def load_shots(paths: list[Path], face_px: int) -> list[Shot]:
    shots = []
    for path in paths:
        path = Path(path)
        if not path.is_file():
            raise UserError("avatar image not found", Where(path), "check avatar.images in the preset")

        def compute(path=path):
            img = cv2.imread(str(path), cv2.IMREAD_COLOR)
            if img is None:
                raise UserError("cannot read the avatar image (corrupt or not an image)", Where(path),
                                "save it again as JPEG or PNG")
            return prepare_shot(img, str(path), face_px)

        d = cached("faceswap-avatar", [path], compute, version=TEXTURE_VERSION, extra=str(face_px))
        shots.append(Shot(path.name, d["texture"], d["landmarks"], d["pose"], d["shown"], d["use_mirror"], d["mirror"],
                          d["lab"], d["stats"], d["seen"]))
    return shots


# ---- expression detail ---------------------------------------------------------------------------------

class ExpressionDetail:
    """The streamer's expression creases for the avatar's skin, as an expression ratio image (Liu, Shan
    and Zhang, "Expressive expression mapping with ratio images", 2001): the live face (the mask's small
    crop) is unwarped through the mesh into a fixed frontal frame (the canonical face, ``EXPR_WIDTH``
    pixels wide), where each frame's lightness is divided by the same person's slow average there (the
    face at rest, ``_TrackState.rest``). What stays still on the face (skin, moles, make-up, the room's
    light) divides out; a smile line, a frown or a wrinkled forehead is a ratio below or above 1. Only
    its fine pattern is kept (broad light is the blend's job), small changes (camera noise) are cored
    away, the eyes, brows, lips and nose (whose shading follows the head's turn) are left out, and the
    ratio is mapped back onto the live face, where it multiplies the avatar's colour."""

    def __init__(self):
        from .face_model import canonical

        p = canonical()[0][:, :2]
        oval = p[list(fmx.FACE_OVAL)]
        q = (p - oval.min(0)) * (EXPR_WIDTH / float(np.ptp(oval[:, 0]))) + 2.0
        self.w, self.h = int(np.ceil(q[:, 0].max())) + 3, int(np.ceil(q[:, 1].max())) + 3
        self.pts = np.ascontiguousarray(q, np.float64)
        self.tris = face_triangles()
        # where the ratio may act (0..1): inside the outline, away from the features and the nose
        feats = np.zeros((self.h, self.w), np.uint8)
        for loop, grow in ((EYE_RIGHT, 1.6), (EYE_LEFT, 1.6), (BROW_RIGHT, 1.3), (BROW_LEFT, 1.3), (LIPS_OUTER, 1.1)):
            e = q[list(loop)]
            c = e.mean(0)
            cv2.fillPoly(feats, [np.round(c + (e - c) * grow).astype(np.int32)], 255)
        cv2.fillConvexPoly(feats, cv2.convexHull(np.round(q[list(NOSE)]).astype(np.int32)), 255)
        inside = np.zeros((self.h, self.w), np.uint8)
        cv2.fillPoly(inside, [np.round(_shrink(q[list(fmx.FACE_OVAL)], 0.03 * EXPR_WIDTH)).astype(np.int32)], 255)
        soft = 0.02 * EXPR_WIDTH
        self.where = ((255.0 - cv2.GaussianBlur(feats, (0, 0), soft).astype(np.float32))
                      * cv2.GaussianBlur(inside, (0, 0), soft).astype(np.float32) / np.float32(255.0 * 255.0))
        self._frontal = np.zeros((self.h, self.w, 3), np.uint8)
        self._to_frontal, self._to_live = tk.TexMap(), tk.TexMap()
        self._back = np.empty((0, 0, 3), np.uint8)
        self._enc = np.empty((self.h, self.w, 3), np.uint8)

    def ratio(self, small: np.ndarray, pts: np.ndarray, st: _TrackState, amount: float,
              fps: float) -> np.ndarray | None:
        """(mh, mw) float32 ratio (1 = no change) for the small crop ``small`` whose landmarks are ``pts``
        (mask pixels), or None before there is anything to compare with (the first frame of a face).
        Updates the face's rest average."""
        pts = np.ascontiguousarray(pts[:, :2], np.float64)
        front = np.nonzero(_signed_area(pts[self.tris]) > 0)[0]  # the triangles the live view shows
        if len(front) < 10:
            return None
        tris = self.tris[front]
        tk.texmap_numba(self._frontal, small, pts, self.pts, tris, None, (0, 0, self.w, self.h), self._frontal,
                        self._to_frontal)
        seen = self._to_frontal.owner >= 0
        y = self._frontal.astype(np.float32) @ LUMA_BGR
        y = cv2.GaussianBlur(y, (0, 0), 0.6) + np.float32(8.0)  # + 8: dark pixels' noise is no ratio
        if st.rest is None or st.rest.shape != y.shape:
            st.rest = y
            return None
        r = y / st.rest
        seen_f = seen.astype(np.float32)
        st.rest += (y - st.rest) * (seen_f * np.float32(1.0 / max(EXPR_REST_S * fps, 1.0)))
        w = seen_f * self.where
        sigma = EXPR_FINE * EXPR_WIDTH
        broad = cv2.GaussianBlur(r * w, (0, 0), sigma) / np.maximum(cv2.GaussianBlur(w, (0, 0), sigma), 1e-3)
        d = np.clip(r / np.maximum(broad, 1e-3) - 1.0, -EXPR_LIMIT, EXPR_LIMIT)
        d = np.sign(d) * np.maximum(np.abs(d) - EXPR_CORE, 0.0) * (w * np.float32(amount))
        # back onto the live face (the ratio travels as 8 bits around 128: steps of 1/255)
        self._enc[:] = np.clip(d * 255.0 + 128.5, 0, 255).astype(np.uint8)[..., None]
        mh, mw = small.shape[:2]
        if self._back.shape[:2] != (mh, mw):
            self._back = np.empty((mh, mw, 3), np.uint8)
        self._back.fill(128)
        tk.texmap_numba(self._back, self._enc, self.pts, pts, tris, None, (0, 0, mw, mh), self._back,
                        self._to_live)
        return (self._back[..., 0].astype(np.float32) - np.float32(128.0)) * np.float32(1.0 / 255.0) + np.float32(1.0)


# ---- the per-face mask -----------------------------------------------------------------------------------

class SwapMask:
    """Builds the soft swap mask of one face box at low resolution (at most ``MASK_WIDTH`` wide) and
    resizes it into a float32 alpha buffer the size of the box. Buffers grow, never shrink."""

    def __init__(self):
        self._alpha = np.empty(0, np.float32)
        self._offset = np.empty(0, np.float32)
        self._gain = np.empty(0, np.float32)
        self._warped = np.empty((0, 0, 3), np.uint8)
        self._fold = np.empty((2, 0, 0, 3), np.float32)  # to_box: the light fields at the mask's resolution
        self._small_map = tk.TexMap()

    def build(self, frame: np.ndarray, lm: np.ndarray, box: tuple[int, int, int, int], face_w: float, p: dict,
              weight: float, mouth_w: float, skin: np.ndarray | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Returns (alpha (bh, bw) float32 in [0, 1], small BGR crop, small skin region) for the box."""
        x0, y0, x1, y1 = box
        bw, bh = x1 - x0, y1 - y0
        q = min(1.0, MASK_WIDTH / max(bw, 1))
        mw, mh = max(4, int(round(bw * q))), max(4, int(round(bh * q)))
        small = cv2.resize(frame[y0:y1, x0:x1], (mw, mh), interpolation=cv2.INTER_AREA)
        lm2 = lm[:, :2]
        pts = (lm2 - (x0, y0)) * (mw / bw, mh / bh)
        oval3 = np.concatenate([pts[list(fmx.FACE_OVAL)], lm[list(fmx.FACE_OVAL), 2:3] * (mw / bw)], axis=1)
        fw = face_w * mw / bw
        outer = np.zeros((mh, mw), np.uint8)
        ramp = max(p["feather"] * fw, 1.0)
        cv2.fillPoly(outer, [np.round(_shrink(oval3, p["erode"] * fw + 0.5 * ramp) * 16)
                             .astype(np.int32)], 255, cv2.LINE_AA, 4)
        cv2.GaussianBlur(outer, (0, 0), ramp / 4.0, dst=outer)
        holes = np.zeros((mh, mw), np.uint8)
        polys = [pts[list(LIPS_INNER)]]
        rims = []
        for loop in (EYE_RIGHT, EYE_LEFT):  # the eye opening grown to include the lids' edges
            e = pts[list(loop)]
            c = e.mean(0)
            polys.append(c + (e - c) * p["eye_margin"])
            rims.append(e)
        cv2.fillPoly(holes, [np.round(x * 16).astype(np.int32) for x in polys], 255, cv2.LINE_AA, 4)
        if mouth_w > 0:
            lips = pts[list(LIPS_OUTER)]
            c = lips.mean(0)
            cv2.fillPoly(holes, [np.round((c + (lips - c) * 1.12) * 16).astype(np.int32)], int(255 * mouth_w),
                         cv2.LINE_AA, 4)
        cv2.GaussianBlur(holes, (0, 0), max(0.02 * fw, 0.6), dst=holes)
        # and a rim around each eye, wider at its corners, with a sharper edge (it is thin)
        rim = np.zeros((mh, mw), np.uint8)
        ew = max(float(np.linalg.norm(e[0] - e[8])) for e in rims) * p["eye_margin"]
        for e in rims:
            q = np.round(e * 16).astype(np.int32)
            cv2.polylines(rim, [q], True, 255, max(1, int(round(2 * EYE_RIM * ew))), cv2.LINE_AA, 4)
            for k in (0, 8):
                cv2.circle(rim, tuple(int(v) for v in q[k]), int(round(EYE_CORNER * ew * 16)), 255, -1, cv2.LINE_AA, 4)
        cv2.GaussianBlur(rim, (0, 0), max(0.5 * EYE_RIM * ew, 0.6), dst=rim)
        np.maximum(holes, rim, out=holes)
        if p["brow_show"] > 0:  # the streamer's brows show through (they carry much of the expression)
            brows = np.zeros((mh, mw), np.uint8)
            bpolys = []
            for loop in (BROW_RIGHT, BROW_LEFT):
                b = pts[list(loop)]
                c = b.mean(0)
                bpolys.append(np.round((c + (b - c) * p["brow_margin"]) * 16).astype(np.int32))
            cv2.fillPoly(brows, bpolys, int(round(255 * p["brow_show"])), cv2.LINE_AA, 4)
            cv2.GaussianBlur(brows, (0, 0), max(0.015 * fw, 0.6), dst=brows)
            np.maximum(holes, brows, out=holes)
        a = outer.astype(np.float32) * ((255.0 - holes.astype(np.float32)) * np.float32(weight / (255.0 * 255.0)))
        region = skin_region(pts, (mh, mw), fw)
        if skin is not None and p["occlusion"] == "skin":
            a *= 1.0 - occlusion(small, pts, skin, p["occlusion_tolerance"], fw)
        if self._alpha.size < bw * bh:
            self._alpha = np.empty(int(bw * bh * 1.5), np.float32)
            self._offset = np.empty(int(bw * bh * 1.5) * 3, np.float32)
            self._gain = np.empty(int(bw * bh * 1.5) * 3, np.float32)
        alpha = self._alpha[: bw * bh].reshape(bh, bw)
        cv2.resize(a, (bw, bh), dst=alpha, interpolation=cv2.INTER_LINEAR)
        self.small_alpha, self.outer, self.pts, self.fw = a, outer, pts, fw
        return alpha, small, region

    def lighting_offset(self, small: np.ndarray, tex: np.ndarray, shot, tris: np.ndarray, box,
                        skin: np.ndarray, relight: bool = False, st: _TrackState | None = None,
                        ratio: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray | None]:
        """(offset, gain) for the texture map (see ``_relight`` for ``relight``), with the expression
        ``ratio`` folded in when given (``to_box``). The seamless blend's
        correction is an offset (bh, bw, 3) float32 alone (gain None): the difference (live - warped avatar)
        along the mask's soft edge, spread smoothly over the face by a normalised Gaussian (a smooth
        membrane, as a Poisson blend solves for) and added to the avatar, so its shading and the live
        face's meet without a step at the edge while the inside keeps the avatar's features. A linear
        filter of the current frame: as stable over time as the frame itself."""
        mh, mw = small.shape[:2]
        if self._warped.shape != small.shape:
            self._warped = np.empty_like(small)
        dst2 = np.vstack([self.pts, self.pts])
        tk.texmap_numba(small, tex, shot.tex_pts, dst2, tris, None, (0, 0, mw, mh), self._warped,
                        self._small_map)
        covered = self._small_map.owner >= 0
        if relight:
            return self.to_box(box, (mw, mh), *self._relight(small, covered & skin, st), ratio)
        # the membrane is pinned on the mask's soft edge only (where avatar and live meet), then
        # spread smoothly inwards: the inside keeps the avatar's own features
        ring = covered & (self.outer > 8) & (self.outer < 247) & (self.small_alpha > 0.01)
        support = ring.astype(np.float32)
        live_low, avatar_low = self._lowpass(small, support, 4, 0.15)
        corr = np.clip(live_low - avatar_low, -MEMBRANE_LIMIT, MEMBRANE_LIMIT)
        return self.to_box(box, (mw, mh), corr, None, ratio)

    def _lowpass(self, small: np.ndarray, support: np.ndarray, d: int, sigma_fw: float):
        """The live crop and the warped avatar blurred the same way over ``support`` (a normalised
        Gaussian of ``sigma_fw`` face widths, computed at 1/``d`` of the mask's resolution)."""
        q = (max(2, small.shape[1] // d), max(2, small.shape[0] // d))
        sigma = max(sigma_fw * self.fw / d, 0.5)
        den = cv2.GaussianBlur(cv2.resize(support, q, interpolation=cv2.INTER_AREA), (0, 0), sigma)
        den = np.maximum(den, 1e-3)[..., None]
        out = []
        for img in (small, self._warped):
            x = img.astype(np.float32) * support[..., None]
            out.append(cv2.GaussianBlur(cv2.resize(x, q, interpolation=cv2.INTER_AREA), (0, 0), sigma) / den)
        return out

    def _contrast(self, small, live_low, avatar_low, covered, g) -> float:
        """How strongly the relit avatar's features are drawn: the live skin's fine-detail spread over
        the relit avatar's (both the crop minus its light, inside the covered skin), limited to
        CONTRAST_RANGE. A smooth, soft-focus camera face gets the avatar's features at its own
        contrast (so they move and meet the edge like the live face's would), the pattern unchanged."""
        q = live_low.shape[1::-1]
        m = cv2.resize(covered.astype(np.uint8), q, interpolation=cv2.INTER_NEAREST).astype(bool)
        if m.sum() < 16:
            return 1.0
        live = cv2.resize(small, q, interpolation=cv2.INTER_AREA).astype(np.float32) - live_low
        av = (cv2.resize(self._warped, q, interpolation=cv2.INTER_AREA).astype(np.float32) - avatar_low) * g
        sl, sa = float(live[m].std()), float(av[m].std())
        return float(np.clip(sl / max(sa, 1e-3), *CONTRAST_RANGE))

    @staticmethod
    def _upsample(field_small: np.ndarray, buf: np.ndarray, box) -> np.ndarray:
        x0, y0, x1, y1 = box
        bw, bh = x1 - x0, y1 - y0
        dst = buf[: bw * bh * 3].reshape(bh, bw, 3)
        cv2.resize(field_small, (bw, bh), dst=dst, interpolation=cv2.INTER_LINEAR)
        return dst

    def to_box(self, box, size: tuple[int, int], offset: np.ndarray | None, gain: np.ndarray | None,
               ratio: np.ndarray | None) -> tuple[np.ndarray | None, np.ndarray | None]:
        """(offset, gain) at the face box's resolution from the low-resolution fields, by way of the mask's
        resolution ``size`` (w, h), where the expression ratio (``ExpressionDetail.ratio``) is folded in
        when given: the blended colour (v * gain + offset) is multiplied by it. The box-sized work is the
        one resize each field needs anyway, and a ratio of 1 changes nothing. Without a gain (the alpha
        and the seamless blends) the ratio becomes the gain."""
        if self._fold.shape[1:3] != size[::-1]:
            self._fold = np.empty((2, size[1], size[0], 3), np.float32)
        if offset is not None:
            offset = cv2.resize(offset, size, dst=self._fold[0], interpolation=cv2.INTER_LINEAR)
        if gain is not None:
            gain = cv2.resize(gain, size, dst=self._fold[1], interpolation=cv2.INTER_LINEAR)
        if ratio is not None:
            r3 = ratio[..., None]
            if offset is not None:
                offset *= r3
            if gain is None:
                gain = self._fold[1]
                gain[:] = r3
            else:
                gain *= r3
        return (None if offset is None else self._upsample(offset, self._offset, box),
                None if gain is None else self._upsample(gain, self._gain, box))

    def _relight(self, small: np.ndarray, covered: np.ndarray, st: _TrackState | None = None):
        """``blend: relight``: the live face's own light and colour at low frequencies, the avatar's
        features on top. With L and A the live and warped-avatar crops blurred alike over the skin the
        mesh covers (eyes, brows and lips left out, so the live face's own features do not show
        through), the avatar colour v becomes v * g + (L - g * A) per channel, with g = L / A (near the
        ratio of their lumas; see below), then times the contrast (``_contrast``):
        exactly L where the avatar is flat, and the avatar's detail scaled into the live light (a dark
        painted shadow or a three-quarter avatar's shaded cheek takes the live face's light instead).
        Linear in the current frame."""
        live_low, avatar_low = self._lowpass(small, covered.astype(np.float32), 2, RELIGHT_SIGMA)
        # per channel (a shadow darkens each channel by the same factor, so the avatar's dark eye
        # sockets keep a warm hue on the live skin instead of turning grey-violet), but each within
        # CHANNEL_SPREAD of the luma gain: the recolour has already brought the avatar's skin to the live
        # hue, and free channel gains would swing a many-coloured avatar (fur, paint) into greens
        g = np.clip((live_low @ LUMA_BGR) / np.maximum(avatar_low @ LUMA_BGR, 1.0), 1.0 / RELIGHT_GAIN, RELIGHT_GAIN)[..., None]
        g = np.clip(live_low / np.maximum(avatar_low, 1.0), g / CHANNEL_SPREAD, g * CHANNEL_SPREAD)
        c = self._contrast(small, live_low, avatar_low, covered, g)
        if st is not None:  # smoothed over about half a second: no pumping
            st.contrast = c if st.contrast is None else st.contrast + (c - st.contrast) * 0.1
            c = st.contrast
        g *= np.float32(c)
        # towards the mask's soft edge the avatar's features fade faster than the mask itself (while the
        # live face's fade with the mask): the edge carries less detail than either face, never a seam
        w = cv2.resize(self.outer, live_low.shape[1::-1], interpolation=cv2.INTER_AREA).astype(np.float32)
        w *= np.float32(1.0 / 255.0)
        g *= (w * w)[..., None]
        return live_low - g * avatar_low, g  # (offset, gain) at half the mask's resolution


def occlusion(small: np.ndarray, pts: np.ndarray, skin: np.ndarray, tol: float, fw: float) -> np.ndarray:
    """0..1 per pixel of the small crop: how unlike the live skin it is (a hand in shadow, a microphone,
    hair over the face). Distance in LAB from the skin median in units of the skin spread (L counted at
    half weight: shading is not an occluder); 0 below ``tol``, 1 at twice ``tol``. Eyes, brows and lips
    are not tested. Cleaned by an opening and blurred so no speckle shows."""
    d = occlusion_distance(small, skin)
    occ = np.clip((d - tol) / tol, 0.0, 1.0).astype(np.float32)
    keep = np.zeros(small.shape[:2], np.uint8)
    for loop, grow in ((BAND_RIGHT, 1.25), (BAND_LEFT, 1.25), (LIPS_OUTER, 1.3)):
        p = pts[list(loop)]
        c = p.mean(0)
        cv2.fillPoly(keep, [np.round(c + (p - c) * grow).astype(np.int32)], 1)
    occ[keep.astype(bool)] = 0.0
    k = max(3, int(0.06 * fw) | 1)
    occ = cv2.morphologyEx(occ, cv2.MORPH_OPEN, np.ones((k, k), np.uint8))
    return cv2.GaussianBlur(occ, (0, 0), max(0.03 * fw, 0.8))


# ---- the node ----------------------------------------------------------------------------------------------

@dataclass
class _TrackState:
    stats: np.ndarray | None = None  # smoothed live skin LAB statistics
    detail: float | None = None  # smoothed live face detail (``detail``)
    shot: int = 0
    view: int = OWN  # how the shot is drawn: OWN, FLIPPED (it faces the way the live head turns) or SYMMETRIC
    prev: tuple[int, int] | None = None  # the shot (and view) being crossfaded out
    xfade: float = 1.0  # 0..1 through the crossfade from ``prev`` to the current shot
    contrast: float | None = None  # relight: smoothed feature contrast (``SwapMask._contrast``)
    rest: np.ndarray | None = None  # expression detail: the live face's slow-average lightness, frontal frame
    fade: float = 0.0  # fades in when a face appears
    seen: int = 0  # frame counter of the last update


@register
class FaceSwap(Node):
    kind = "faceswap"
    family = "faceswap"
    description = "Live face swap: the avatar's face warped onto the tracked face through the dense mesh, colour-matched."
    inputs = (Port("frame", PortType.FRAME, "(H, W, 3) uint8 BGR live frame"),
              Port("faces", PortType.FACES, "list[Face] from the `face` node, landmarks in pixels of `frame`"))
    outputs = (Port("frame", PortType.FRAME, "(H, W, 3) uint8 BGR: the live frame with the avatar's face swapped in"),
               Port("faces", PortType.FACES, "the faces it swapped, as tracked: the avatar's face is drawn at their "
                    "landmarks (for the nodes after this one, and for `avatarcast eval`'s drawn figures)"))
    params = (
        Param("select", "choice", "largest", "which of the tracked faces to swap: all of them, the largest, or the "
              "n-th from the left (`index`); once chosen, the same person (track id) keeps the avatar",
              choices=("all", "largest", "index")),
        Param("index", "int", 0, "with select: index, which face from the left (0 = leftmost)", min=0, max=7),
        Param("mouth_mask", "bool", True, "keep the streamer's real mouth (lips and inside) while it is open, "
              "with a soft edge"),
        Param("mouth_threshold", "float", 0.12, "mouth_mask: mouth openness (inner-lip gap / mouth width) at "
              "which the real mouth is fully shown (it fades in from a third of this)", min=0.02, max=1.0, step=0.02),
        Param("erode", "float", 0.04, "pull the mask's edge inside the face outline by this fraction of the "
              "face width", min=0.0, max=0.3, step=0.01),
        Param("feather", "float", 0.12, "width of the mask's soft edge, as a fraction of the face width",
              min=0.01, max=0.5, step=0.01),
        Param("color", "choice", "lab", "match the avatar's skin to the live face's lighting (LAB median and "
              "spread inside the face), or keep the avatar's own colours", choices=("lab", "none")),
        Param("color_amount", "float", 1.0, "how far the colour is matched (0 = the avatar's own, 1 = fully)",
              min=0.0, max=1.0, step=0.1),
        Param("color_smoothing", "float", 0.5, "time constant of the colour statistics, seconds (steadier "
              "colour, slower to follow a lighting change)", min=0.0, max=10.0, step=0.1),
        Param("blend", "choice", "relight", "seamless: a gradient-domain step on top of the feathered mask: the "
              "live face's shading along the mask's edge spreads smoothly over the avatar (no step at the edge "
              "when avatar and room light differ); relight: the live face's own light and skin colour "
              "everywhere, the avatar's features on top at the live face's own detail contrast (a painted "
              "avatar's dramatic shading is replaced by your room's light; the steadiest edge); alpha: the "
              "feathered mask blend alone (faster)",
              choices=("seamless", "relight", "alpha")),
        Param("expression_detail", "float", 0.7, "how strongly the streamer's creases and folds (smile lines, a "
              "frown, a raised forehead) are drawn onto the avatar's skin; only what changes with expression "
              "is taken, never the streamer's own skin (0 = off, 1 = as strong as on the streamer)",
              min=0.0, max=1.5, step=0.1),
        Param("eye_margin", "float", 1.3, "the streamer's own eyes show through; this grows the live eye area "
              "around the opening (1 = the opening only, 1.3 includes the lid edges)", min=1.0, max=2.0, step=0.05),
        Param("brow_show", "float", 0.0, "how much the streamer's own brows show through the avatar's "
              "(0 = the avatar's brows only, 1 = the live brows fully): brows carry much of the expression",
              min=0.0, max=1.0, step=0.05),
        Param("brow_margin", "float", 1.4, "brow_show: grows the live brow area around the brow outline",
              min=1.0, max=2.5, step=0.05),
        Param("occlusion", "choice", "skin", "skin: pixels inside the face that do not look like the live skin "
              "(a hand in shadow, a microphone, hair) are not painted over; off: paint the whole mask",
              choices=("skin", "off")),
        Param("occlusion_tolerance", "float", 3.5, "occlusion: how far from the skin colour (in spreads) a pixel "
              "may be before the swap fades there", min=1.0, max=20.0, step=0.5),
        Param("yaw_limit", "float", 40.0, "the swap fades out as the head turns past this many degrees "
              "(fully gone 15 degrees later)", min=5.0, max=80.0, step=5.0),
        Param("pitch_limit", "float", 35.0, "the same for looking up or down, degrees", min=5.0, max=80.0, step=5.0),
        Param("min_face", "int", 40, "faces narrower than this (pixels) are left alone; the swap fades in over "
              "the next 50%", min=8, max=1000),
        Param("match_sharpness", "bool", True, "soften the avatar's face to the camera's sharpness (a soft "
              "webcam image with a crisp painted face looks pasted on)"),
        Param("strength", "float", 1.0, "overall opacity of the swapped face", min=0.0, max=1.0, step=0.05),
        Param("texture_size", "int", 256, "avatar face texture width in pixels (prepared once, cached)", min=64,
              max=1024, live=False),
    )

    def open(self) -> None:
        images = list(self.ctx.avatar.images)
        if not images:
            raise UserError("the faceswap node needs an avatar image", Where(self.ctx.preset_file, None, "avatar.images"),
                            "add `avatar: {images: [~/Pictures/avatar.jpg]}` to the preset")
        self.tris = face_triangles()
        from .face_model import canonical

        self._tri_centres = canonical()[0][self.tris].mean(1)  # (T, 3) in the canonical face's frame
        self.shots = load_shots([self.ctx.resolve(str(p)) for p in images], self.p["texture_size"])
        # shots that may be drawn symmetric, with the yaw band they fit (a third of their own turn); a
        # stand-in for a frontal shot the avatar lacks, so not when one of its real shots is that frontal
        self._symmetric = {}
        for i, s in enumerate(self.shots):
            third = abs(float(s.pose[0])) / 3.0
            if s.symmetric_ok and all(abs(float(o.pose[0])) > third for o in self.shots):
                self._symmetric[i] = third
        tk.warmup()
        self.texmap = tk.TexMap()
        self.mask = SwapMask()
        self.detail = ExpressionDetail()
        self.tracks: dict[int, _TrackState] = {}
        self.chosen: int | None = None
        self._frame = 0
        self._dst2 = np.empty((0, 2), np.float64)
        self._xfade_alpha = np.empty(0, np.float32)
        self._torch = None
        if self.ctx.device == "cuda":
            import torch

            self._torch = torch
            self._dev = torch.device("cuda")

    def params_changed(self, names) -> None:
        if {"select", "index"} & names:
            self.chosen = None

    def reset(self) -> None:
        self.tracks.clear()
        self.chosen = None

    # ---- selection ----------------------------------------------------------------------------------
    def _select(self, faces: list) -> list:
        if not faces or self.p["select"] == "all":
            return list(faces)
        by_id = {f.track_id: f for f in faces}
        if self.chosen in by_id:
            return [by_id[self.chosen]]
        if self.p["select"] == "largest":
            pick = max(faces, key=lambda f: f.width)
        else:
            ranked = sorted(faces, key=lambda f: f.box[0] + f.box[2])
            if self.p["index"] >= len(ranked):
                return []
            pick = ranked[self.p["index"]]
        self.chosen = pick.track_id
        return [pick]

    # ---- per frame ------------------------------------------------------------------------------------
    def process(self, inputs, out) -> None:
        frame, dst = inputs["frame"], out["frame"]
        np.copyto(dst, frame)
        self._frame += 1
        chosen = self._select(inputs.get("faces") or [])
        for face in chosen:
            self._swap(face, frame, dst)
        out["faces"] = chosen
        for tid in [t for t, s in self.tracks.items() if self._frame - s.seen > 2 * self.ctx.fps]:
            del self.tracks[tid]  # a person gone for two seconds: forget their colour and shot

    def _weight(self, face, face_w: float) -> float:
        p = self.p
        w = 1.0 - float(smoothstep((abs(face.yaw) - p["yaw_limit"]) / 15.0))
        w *= 1.0 - float(smoothstep((abs(face.pitch) - p["pitch_limit"]) / 15.0))
        w *= float(smoothstep((face_w - p["min_face"]) / (0.5 * p["min_face"])))
        if face.state == "easing":
            w *= 1.0 - face.neutral_weight
        return w * p["strength"]

    def _pick_shot(self, st: _TrackState, face) -> int:
        """The shot (and view) whose pose is nearest the live head's, with 5 degrees of hysteresis (10 to
        change the view). A shot turned by at least FLIP_MIN_YAW also counts flipped, at the mirrored yaw,
        and one turned by SYMMETRIC_MIN_YAW symmetric, near yaw 0: a three-quarter portrait is drawn facing
        the way the streamer turns, or from its near half on both sides while they face the camera
        (instead of painting its hidden side from a few foreshortened pixels, cut by the painted nose's
        outline)."""
        pose = np.array([face.yaw, face.pitch])
        cands = [(i, OWN, s.pose) for i, s in enumerate(self.shots)]
        cands += [(i, FLIPPED, s.pose * (-1.0, 1.0)) for i, s in enumerate(self.shots) if s.flippable]
        for i, third in self._symmetric.items():  # equally near for any yaw within the band
            cands.append((i, SYMMETRIC, np.array([min(max(face.yaw, -third), third), self.shots[i].pose[1]])))
        if len(cands) == 1:
            return 0
        d = {(i, v): float(np.linalg.norm(pose - p)) for i, v, p in cands}
        best = min(d, key=d.get)
        cur = (st.shot, st.view)
        margin = 10.0 if best[1] != cur[1] else 5.0  # hysteresis, degrees: a change of view is the more visible
        if best != cur and (st.stats is None or cur not in d or d[best] < d[cur] - margin):
            if st.stats is not None:  # a change while the face is on screen: crossfade, no pop
                st.prev, st.xfade = cur, 0.0
            st.shot, st.view = best
        return st.shot

    def _swap(self, face, frame: np.ndarray, dst: np.ndarray) -> None:
        p = self.p
        h, w = frame.shape[:2]
        lm = np.asarray(face.landmarks, np.float64)
        if lm.shape[0] < 468 or not np.isfinite(lm[:468]).all():
            return
        lm2 = lm[:, :2]
        oval = lm2[list(fmx.FACE_OVAL)]
        face_w = float(np.ptp(oval[:, 0]))
        st = self.tracks.setdefault(face.track_id, _TrackState())
        st.seen = self._frame
        target = self._weight(face, face_w)
        if st.stats is None:
            st.fade = target  # first sight of this person
        else:  # smooth any jump of the weight (a pose glitch) over about 0.1 s
            st.fade += (target - st.fade) * min(1.0, 1.0 / max(0.1 * self.ctx.fps, 1.0))
        weight = st.fade
        x0, y0 = (int(math.floor(v)) for v in oval.min(0))
        x1, y1 = (int(math.ceil(v)) + 1 for v in oval.max(0))
        x0, y0, x1, y1 = max(x0, 0), max(y0, 0), min(x1, w), min(y1, h)
        if weight <= 1e-3 or x1 - x0 < 4 or y1 - y0 < 4:
            return
        self._pick_shot(st, face)
        mo = float(fmx.mouth_open(lm))
        t = p["mouth_threshold"]
        mouth_w = float(smoothstep((mo - t / 3.0) / (t - t / 3.0))) if p["mouth_mask"] else 0.0
        alpha, small, region = self.mask.build(frame, lm, (x0, y0, x1, y1), face_w, p, weight, mouth_w, st.stats)
        ratio = None
        if p["expression_detail"] > 0:
            ratio = self.detail.ratio(small, self.mask.pts, st, p["expression_detail"], self.ctx.fps)
        live = lab_stats(small, region)
        k = 1.0
        if st.stats is None:
            st.stats = live
        else:
            k = 1.0 - math.exp(-1.0 / max(p["color_smoothing"] * self.ctx.fps, 1e-6))
            st.stats += (live - st.stats) * np.float32(k)
        if p["match_sharpness"]:
            d = detail(small, region, face_w * small.shape[1] / (x1 - x0))
            st.detail = d if st.detail is None else st.detail + (d - st.detail) * k
        n = len(lm2)
        if self._dst2.shape[0] != 2 * n:
            self._dst2 = np.empty((2 * n, 2), np.float64)
        self._dst2[:n] = lm2
        self._dst2[n:] = lm2
        box = (x0, y0, x1, y1)
        # depth from the smoothed head rotation and the canonical face, not from the landmarks' own noisy
        # z: the order of overlapping triangles (the nose over a cheek) must not flip between frames
        depth = self._tri_centres @ np.asarray(face.rotation, np.float64)[2]
        if st.prev is not None and st.xfade < 1.0:  # the shot changed: the old one first, the new fades in
            self._draw(st, self.shots[st.prev[0]], st.prev[1], depth, small, region, alpha, box, dst, ratio)
            if self._xfade_alpha.size < alpha.size:
                self._xfade_alpha = np.empty(int(alpha.size * 1.5), np.float32)
            a = self._xfade_alpha[: alpha.size].reshape(alpha.shape)
            np.multiply(alpha, np.float32(smoothstep(st.xfade)), out=a)
            self._draw(st, self.shots[st.shot], st.view, depth, small, region, a, box, dst, ratio)
            st.xfade = min(1.0, st.xfade + 1.0 / max(XFADE_S * self.ctx.fps, 1.0))
        else:
            st.prev = None
            self._draw(st, self.shots[st.shot], st.view, depth, small, region, alpha, box, dst, ratio)

    def _draw(self, st: _TrackState, shot: Shot, view: int, depth: np.ndarray, small: np.ndarray,
              region: np.ndarray, alpha: np.ndarray, box, dst: np.ndarray, ratio: np.ndarray | None = None) -> None:
        """One shot (in one view) mapped onto the live face and blended into ``dst`` with ``alpha``, times
        the expression ``ratio`` when given."""
        p = self.p
        if p["match_sharpness"] and st.detail is not None:
            shot.choose_level(st.detail)
        tex = shot.recolour(st.stats, p["color_amount"] if p["color"] == "lab" else 0.0, p["blend"] == "relight")
        # triangles the shot can texture, nearest first (the first triangle over a pixel wins, so one
        # turned away, e.g. under the nose, only fills what nothing nearer covers: no holes); then those it
        # cannot (hidden in the shot, and their mirror twins too): they only fill what none of those
        # covers, from their own place in the shot, where what hides them is (the nose's tip over a
        # nostril), not the live frame's pixels through the avatar's face
        use, fill = shot.drawn
        order = np.concatenate([use[np.argsort(depth[use], kind="stable")], fill[np.argsort(depth[fill], kind="stable")]])
        tris = self.tris[order] + shot.tri_offsets[view][order, None]
        if p["blend"] != "alpha":
            offset, gain = self.mask.lighting_offset(small, tex, shot, tris, box, region.astype(bool),
                                                    relight=p["blend"] == "relight", st=st, ratio=ratio)
        else:
            offset, gain = self.mask.to_box(box, small.shape[1::-1], None, None, ratio)
        if self._torch is not None:
            self._swap_torch(dst, tex, shot.tex_pts, self._dst2, tris, alpha, box, offset, gain)
        else:
            tk.texmap_numba(dst, tex, shot.tex_pts, self._dst2, tris, alpha, box, dst, self.texmap, offset, gain)

    def _swap_torch(self, dst, tex, tex_pts, lm2, tris, alpha, box, offset, gain) -> None:
        torch = self._torch
        x0, y0, x1, y1 = box
        roi = torch.from_numpy(np.ascontiguousarray(dst[y0:y1, x0:x1])).to(self._dev)
        res = tk.texmap_torch(roi, torch.from_numpy(tex).to(self._dev), tex_pts, lm2 - (x0, y0), tris,
                              torch.from_numpy(alpha).to(self._dev), (0, 0, x1 - x0, y1 - y0), roi,
                              offset=None if offset is None else torch.from_numpy(offset),
                              gain=None if gain is None else torch.from_numpy(gain))
        dst[y0:y1, x0:x1] = res.cpu().numpy()


# ---- benchmark -----------------------------------------------------------------------------------------

def _bench_avatar() -> Path | None:
    p = Path(__file__).resolve().parents[2] / "shared" / "data" / "avatars" / "mona_lisa.jpg"
    return p if p.is_file() else None


def _swap_notes(r: dict) -> list[str]:
    out = []
    for k, v in r.items():
        target = 30.0 if "720" in k else 20.0
        out.append(f"{k}: {1000.0 / v['median_ms']:.1f} fps (target >= {target:g})")
    return out


@bench.case("faceswap", "face tracking + face swap (+ colour match, mask, blend) on a real 720p clip, one face; "
            "1280x720 and 1920x1080 (the clip upscaled), per frame", _swap_notes)
def _bench_faceswap():
    from engine.node import Avatar, BuildContext

    from .face import FaceNode, _bench_frames

    avatar = _bench_avatar()
    if avatar is None:
        raise UserError("bench faceswap needs ../shared/data/avatars/mona_lisa.jpg beside the checkout")
    frames720 = _bench_frames(60)
    variants = {}
    for label, size, params in (("720p tracking + swap", (720, 1280), {}),
                                ("720p swap alone", (720, 1280), {}),
                                ("1080p tracking + swap", (1080, 1920), {}),
                                ("1080p swap alone", (1080, 1920), {}),
                                ("720p tracking + swap, blend alpha", (720, 1280), {"blend": "alpha"}),
                                ("1080p tracking + swap, blend alpha", (1080, 1920), {"blend": "alpha"}),
                                ("720p tracking + swap, blend relight", (720, 1280), {"blend": "relight"}),
                                ("1080p tracking + swap, blend relight", (1080, 1920), {"blend": "relight"})):
        frames = frames720 if size == (720, 1280) else [cv2.resize(f, (size[1], size[0])) for f in frames720]
        ctx = BuildContext(source_size=size, avatar=Avatar(images=[avatar]))
        fnode = FaceNode("face", FaceNode.validate_params({"max_faces": 1})[0], ctx)
        fnode.open()
        snode = FaceSwap("faceswap", FaceSwap.validate_params(params)[0], ctx)
        snode.open()
        fo = {"frame": np.empty(size + (3,), np.uint8), "faces": []}
        so = {"frame": np.empty(size + (3,), np.uint8)}
        faces = []
        if "alone" in label:  # tracked once up front: time the swap only
            for f in frames:
                fnode.process({"frame": f}, fo)
                faces.append(list(fo["faces"]))
        state = {"i": 0}

        def step(fnode=fnode, snode=snode, fo=fo, so=so, frames=frames, faces=faces, state=state):
            i = state["i"] % len(frames)
            if faces:
                snode.process({"frame": frames[i], "faces": faces[i]}, so)
            else:
                fnode.process({"frame": frames[i]}, fo)
                snode.process({"frame": fo["frame"], "faces": fo["faces"]}, so)
            state["i"] += 1

        variants[label] = step
    return variants


# ---- quality: the `avatarcast eval --suite faceswap` measures -----------------------------------------

def _register_suite() -> None:
    from . import evaluate as ev

    erode, feather = (FaceSwap.param(n).default for n in ("erode", "feather"))

    class SwapEdge(ev.EdgeVisibility):
        # the default mask's soft edge: it starts `erode` inside the outline and ramps over `feather`
        insets = (erode, erode + feather / 2, erode + feather)

    ev.register_suite(ev.Suite(
        "faceswap", "avatar face swapped onto the driver (issue 4): expression kept, identity moved, flicker, edges",
        cross=[ev.MotionTransfer, ev.Identity, ev.Flicker, SwapEdge, ev.FaceFound],
        targets=[
            ev.Target("cross", "motion_r", "min", ">=", 0.95, "expression kept: motion transfer r input -> output, "
                      "worst clip x avatar"),
            ev.Target("cross", "id_margin", "min", ">", 0.0, "identity moved: output closer to the avatar than to "
                      "the original (distance to original - to avatar), worst pair"),
            ev.Target("cross", "flicker_ratio", "max", "<=", 1.2, "flicker: output / input frame-to-frame difference "
                      "in the face region, worst pair"),
            ev.Target("cross", "edge_ratio", "max", "<=", 1.2, "edge: output / input gradient along the mask "
                      "boundary, worst pair"),
        ],
        columns=[("cross", "motion_r", "motion r"), ("cross", "drawn_motion_r", "drawn r"), ("cross", "id_to_avatar", "d avatar"),
                 ("cross", "id_to_original", "d orig"), ("cross", "flicker_ratio", "flicker x"),
                 ("cross", "edge_ratio", "edge x"), ("cross", "found_rate", "found")],
    ))


_register_suite()
