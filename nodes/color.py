"""Colour nodes. Exports: ColorAdjust (OBS Color Correction's controls, same meaning), Lut (.cube
files, 1D and 3D), ColorMatch (match colour statistics to the camera or an image)."""

from __future__ import annotations

import threading

import numpy as np

from engine.bench import case
from engine.cube import load_cube
from engine.errors import UserError
from engine.kernels import color as k
from engine.kernels import lut as lk
from engine.node import Node, register
from engine.params import Param, ParamError, Port, PortType


def color_adjust(src: np.ndarray, out: np.ndarray | None = None, *, gamma=0.0, contrast=0.0, brightness=0.0,
                 saturation=0.0, hue_shift=0.0, opacity=1.0) -> np.ndarray:
    """Plain-function form of the ``color_adjust`` node (numba kernel)."""
    g, m, t = k.obs_color_matrix(gamma, contrast, brightness, saturation, hue_shift, opacity)
    table, offset = k.curve_matrix_table(g, m, t)
    if out is None:
        out = np.empty_like(src)
    return k.curve_matrix_numba(src, table, offset, out)


@register
class ColorAdjust(Node):
    kind = "color_adjust"
    family = "color"
    description = "Gamma, contrast, brightness, saturation, hue shift, opacity: OBS Color Correction's controls."
    inputs = (Port("frame", PortType.FRAME, "(H, W, 3) uint8 BGR"),)
    outputs = (Port("frame", PortType.FRAME, "(H, W, 3) uint8 BGR"),)
    params = (
        Param("gamma", "float", 0.0, "midtone curve: >0 brightens, <0 darkens (as OBS)", min=-3.0, max=3.0, step=0.1),
        Param("contrast", "float", 0.0, "0 = unchanged; >0 more, <0 less (as OBS)", min=-4.0, max=4.0, step=0.1),
        Param("brightness", "float", 0.0, "added to every channel (1 = white)", min=-1.0, max=1.0, step=0.05),
        Param("saturation", "float", 0.0, "0 = unchanged, -1 = grey, 5 = very vivid", min=-1.0, max=5.0, step=0.1),
        Param("hue_shift", "float", 0.0, "rotate hues, degrees", min=-180.0, max=180.0, step=10.0),
        Param("opacity", "float", 1.0, "1 = opaque; lower fades to black (OBS's opacity over an empty canvas)",
              min=0.0, max=1.0, step=0.05),
    )

    def open(self) -> None:
        k.warmup()
        self.params_changed(set())

    def params_changed(self, names) -> None:
        g, m, t = k.obs_color_matrix(**{p.name: self.p[p.name] for p in self.params})
        self.table, self.offset = k.curve_matrix_table(g, m, t)
        self._tt = None  # torch copies, made on first CUDA use

    def process(self, inputs, out) -> None:
        if self.ctx.device == "cuda":
            import torch

            if self._tt is None:
                self._tt = (torch.from_numpy(self.table).cuda(), torch.from_numpy(self.offset).cuda())
            res = k.curve_matrix_torch(torch.from_numpy(inputs["frame"]).cuda(), *self._tt)
            out["frame"][...] = res.cpu().numpy()
            return
        k.curve_matrix_numba(inputs["frame"], self.table, self.offset, out["frame"])


# ---- LUT ----------------------------------------------------------------------------------------

def film_look_table(n: int = 33) -> np.ndarray:
    """The shipped 'warm film' look as an (n, n, n, 3) [b, g, r, rgb] table in 0..1: a gentle S-curve,
    teal shadows, warm highlights, a touch less saturation. ``presets/assets/make_assets.py`` writes it
    to ``presets/assets/warm_film.cube``."""
    from engine.cube import identity_table

    rgb = identity_table(n).astype(np.float64)
    rgb = 0.7 * rgb + 0.3 * (3 * rgb**2 - 2 * rgb**3)  # S-curve
    luma = rgb @ np.array([0.2126, 0.7152, 0.0722])
    shadows, highlights = ((1 - luma) ** 2)[..., None], (luma**2)[..., None]
    rgb = rgb + shadows * np.array([-0.04, 0.01, 0.05]) + highlights * np.array([0.06, 0.02, -0.05])
    luma = (rgb @ np.array([0.2126, 0.7152, 0.0722]))[..., None]
    rgb = luma + 0.88 * (rgb - luma)
    return np.clip(rgb, 0.0, 1.0).astype(np.float32)


# ---- LUT -----------------------------------------------------------------------------------------

def apply_lut(src: np.ndarray, lut, out: np.ndarray | None = None, *, amount: float = 1.0,
              interpolation: str = "tetrahedral") -> np.ndarray:
    """Plain-function form of the ``lut`` node: ``lut`` is a ``CubeLut`` (``engine.cube.load_cube``)."""
    if out is None:
        out = np.empty_like(src)
    if lut.is_3d:
        return lk.lut3d_numba(src, lk.prepare_3d(lut.table, lut.domain_min, lut.domain_max, amount), out,
                              interpolation)
    return lk.table8_numba(src, lk.prepare_1d(lut.table, lut.domain_min, lut.domain_max, amount), out)


@register
class Lut(Node):
    kind = "lut"
    family = "color"
    description = "Colour look from a .cube LUT file (1D or 3D), as OBS's Apply LUT filter."
    inputs = (Port("frame", PortType.FRAME, "(H, W, 3) uint8 BGR"),)
    outputs = (Port("frame", PortType.FRAME, "(H, W, 3) uint8 BGR"),)
    params = (
        Param("file", "path", "look.cube", "the .cube file (relative to the preset)", live=False),
        Param("amount", "float", 1.0, "0 = original, 1 = full look", min=0.0, max=1.0, step=0.05),
        Param("interpolation", "choice", "tetrahedral", "3D LUT interpolation (tetrahedral is smoother on "
              "neutrals, trilinear is the classic)", choices=("tetrahedral", "trilinear")),
    )

    def configure(self, in_shapes):
        shapes = super().configure(in_shapes)
        path = self.ctx.resolve(self.p["file"])
        if not path.is_file():
            raise ParamError(f"`file`: LUT file not found: {self.p['file']!r} (looked for {path}); paths are "
                             "relative to the preset file")
        try:
            self.lut = load_cube(path)
        except UserError as exc:  # keep the .cube file and line in the build-time message
            raise ParamError(f"`file`: {exc}") from None
        return shapes

    def open(self) -> None:
        lk.warmup()
        self._baked: np.ndarray | None = None
        self._bake_gen = 0
        self._bake_thread: threading.Thread | None = None
        self.params_changed(set())
        if self.lut.is_3d and self.ctx.device != "cuda":
            self._baked = lk.bake_3d(self.prepared, self.p["interpolation"])  # start-up, not the first frame

    def params_changed(self, names) -> None:
        lut, a = self.lut, self.p["amount"]
        if lut.is_3d:
            self.prepared = lk.prepare_3d(lut.table, lut.domain_min, lut.domain_max, a)
            if names and self.ctx.device != "cuda":
                # a live change: the direct kernel serves frames until the new table is baked
                self._baked = None
                self._bake_gen += 1
                self._bake_thread = threading.Thread(target=self._bake, args=(self._bake_gen, self.prepared,
                                                     self.p["interpolation"]), name="lut-bake", daemon=True)
                self._bake_thread.start()
        else:
            self.prepared = lk.prepare_1d(lut.table, lut.domain_min, lut.domain_max, a)
        self._tt = None

    def _bake(self, gen: int, prepared: tuple, method: str) -> None:
        baked = lk.bake_3d(prepared, method, stop=lambda: gen != self._bake_gen)
        if baked is not None and gen == self._bake_gen:
            self._baked = baked

    def close(self) -> None:
        self._bake_gen = -1  # abandon a bake in progress
        if getattr(self, "_bake_thread", None) is not None:
            self._bake_thread.join(timeout=10)
        self._baked = None

    def process(self, inputs, out) -> None:
        src = inputs["frame"]
        if self.ctx.device == "cuda":
            import torch

            if self._tt is None:
                prep = self.prepared if self.lut.is_3d else (self.prepared,)
                self._tt = tuple(torch.from_numpy(a).cuda() for a in prep)
            t = torch.from_numpy(src).cuda()
            res = lk.lut3d_torch(t, self._tt, self.p["interpolation"]) if self.lut.is_3d else \
                lk.table8_torch(t, self._tt[0])
            out["frame"][...] = res.cpu().numpy()
            return
        if self.lut.is_3d:
            baked = self._baked
            if baked is not None:
                lk.lut_baked_numba(src, baked, out["frame"])
            else:
                lk.lut3d_numba(src, self.prepared, out["frame"], self.p["interpolation"])
        else:
            lk.table8_numba(src, self.prepared, out["frame"])


# ---- colour matching ------------------------------------------------------------------------------

STATS_STEP = 4  # statistics on every 4th row and column: 1/16 of the pixels is plenty for means


@register
class ColorMatch(Node):
    kind = "color_match"
    family = "color"
    description = "Match the avatar's colours (mean and contrast per channel) to the live camera or an image."
    inputs = (Port("frame", PortType.FRAME, "(H, W, 3) uint8 BGR: the picture to adjust (e.g. the avatar)"),
              Port("reference", PortType.FRAME, "(h, w, 3) uint8 BGR: the look to match; wire it explicitly "
                   "(`inputs: {reference: source}` for the live camera), as unwired it takes the nearest "
                   "earlier frame; unused with `image`", optional=True),
              Port("mask", PortType.MASK, "(H, W) float32: region of `frame` whose colours are measured "
                   "(e.g. the avatar's mask); unwired it takes the nearest earlier mask; an empty region (or none) "
                   "measures the whole frame", optional=True))
    outputs = (Port("frame", PortType.FRAME, "(H, W, 3) uint8 BGR"),)
    params = (
        Param("image", "path", None, "reference image instead of the `reference` input (relative to the preset)",
              optional=True, live=False),
        Param("amount", "float", 0.7, "0 = unchanged, 1 = full match", min=0.0, max=1.0, step=0.05),
        Param("smoothing", "float", 0.9, "temporal smoothing of the statistics (0 = none, 0.98 = very slow)",
              min=0.0, max=0.99, step=0.02),
        Param("max_gain", "float", 2.0, "limit on contrast change per channel", min=1.0, max=5.0, step=0.25),
    )

    def configure(self, in_shapes):
        shapes = {"frame": in_shapes.get("frame", self.ctx.source_size)}
        self.in_shapes = dict(in_shapes)
        if "mask" in in_shapes and in_shapes["mask"] != shapes["frame"]:
            mh, mw = in_shapes["mask"]
            fh, fw = shapes["frame"]
            raise ParamError(f"input `mask` is {mw}x{mh} but `frame` is {fw}x{fh}: wire a mask made from the "
                             "same picture, or resize it")
        self.image_path = None
        if self.p["image"]:
            from .background import check_image_file

            self.image_path = check_image_file(self.ctx, "image", self.p["image"], "a reference image")
        return shapes

    def open(self) -> None:
        from .background import read_image

        k.warmup()
        lk.warmup()
        h, w = self.out_shapes["frame"]
        self.acc = k.stats_acc(h, STATS_STEP)
        ref_hw = self.in_shapes.get("reference", self.ctx.source_size)
        self.ref_acc = k.stats_acc(ref_hw[0], STATS_STEP)
        self.ref_stats = None
        if self.image_path is not None:
            img = read_image(self.image_path, "image")
            m, s, _ = k.masked_stats_numba(img, None, STATS_STEP, k.stats_acc(img.shape[0], STATS_STEP))
            self.ref_stats = (m, s)
        self.table = np.tile(np.arange(256, dtype=np.uint8), (3, 1))
        self.reset()

    def reset(self) -> None:
        self.src_ema = None
        self.ref_ema = None

    def _ema(self, old, new):
        if old is None:
            return new
        s = self.p["smoothing"]
        return tuple(s * o + (1.0 - s) * n for o, n in zip(old, new, strict=True))

    def process(self, inputs, out) -> None:
        src = inputs["frame"]
        mask = inputs.get("mask")
        m, s, wsum = k.masked_stats_numba(src, mask, STATS_STEP, self.acc)
        if mask is not None and wsum < 0.01 * self.acc.shape[0] * (src.shape[1] // STATS_STEP):
            # the region is (nearly) empty this frame: measure the whole picture instead
            m, s, wsum = k.masked_stats_numba(src, None, STATS_STEP, self.acc)
        if wsum > 0:
            self.src_ema = self._ema(self.src_ema, (m, s))
        if self.ref_stats is not None:
            self.ref_ema = self.ref_stats
        else:
            rm, rs, _ = k.masked_stats_numba(inputs["reference"], None, STATS_STEP, self.ref_acc)
            self.ref_ema = self._ema(self.ref_ema, (rm, rs))
        if self.src_ema is not None:
            self.table = k.transfer_table(*self.src_ema, *self.ref_ema, self.p["amount"], self.p["max_gain"])
        if self.ctx.device == "cuda":
            import torch

            res = lk.table8_torch(torch.from_numpy(src).cuda(), torch.from_numpy(self.table).cuda())
            out["frame"][...] = res.cpu().numpy()
            return
        lk.table8_numba(src, self.table, out["frame"])


# ---- benchmark: 3D LUT ------------------------------------------------------------------------------

def _lut_notes(r: dict) -> list[str]:
    tet = r["tetrahedral 33^3 baked (node)"]["median_ms"]
    direct = r["tetrahedral 33^3 numba"]["median_ms"]
    return [f"3D LUT 33^3 tetrahedral at 1920x1080, as the node runs it (baked table): {tet:.2f} ms "
            f"(target <= 6 ms); interpolating every pixel: {direct:.2f} ms",
            f"baked / memcpy of the same bytes = {tet / r['memcpy same bytes']['median_ms']:.1f}"]


@case("lut3d_1080p", "3D LUT 33^3 at 1920x1080 on a camera frame: tetrahedral and trilinear vs memcpy",
      _lut_notes)
def _bench_lut():
    import cv2

    from .background import _bg_frame_720p

    frame = cv2.resize(_bg_frame_720p(), (1920, 1080), interpolation=cv2.INTER_LINEAR)
    out = np.empty_like(frame)
    prep = lk.prepare_3d(film_look_table(33), (0, 0, 0), (1, 1, 1), 1.0)
    lk.warmup()
    baked = lk.bake_3d(prep, "tetrahedral")
    return {"tetrahedral 33^3 baked (node)": lambda: lk.lut_baked_numba(frame, baked, out),
            "tetrahedral 33^3 numba": lambda: lk.lut3d_numba(frame, prep, out, "tetrahedral"),
            "trilinear 33^3 numba": lambda: lk.lut3d_numba(frame, prep, out, "trilinear"),
            "memcpy same bytes": lambda: np.copyto(out, frame)}
