"""Compositing nodes. Exports: Composite (one node's frame over another's through a mask, placed and
scaled), Overlay (an image with alpha, e.g. a logo or badge, in a corner).

Typical wiring (``inputs:`` in the preset): the reenacted avatar over a replaced background, or a
small cut-out of the camera over the graded camera::

    - {node: background, id: person, mode: none}
    - {node: composite, inputs: {background: source, foreground: source, mask: person.mask}, scale: 0.3}
"""

from __future__ import annotations

import cv2
import numpy as np

from engine.bench import case
from engine.kernels import composite as kc
from engine.node import Node, register
from engine.params import Param, ParamError, Port, PortType

from .background import check_image_file, read_image

CORNERS = ("top_left", "top_right", "bottom_left", "bottom_right")


def place(bg_hw: tuple[int, int], fg_hw: tuple[int, int], scale: float, x: float, y: float,
          margin: int = 0) -> tuple[int, int, int, int]:
    """Size and top-left of a foreground fitted into the background (aspect kept) times ``scale``,
    placed at fractions (x, y) of the free space inside ``margin``: -> (pw, ph, x0, y0)."""
    bh, bw = bg_hw
    fh, fw = fg_hw
    s = min(bw / fw, bh / fh) * scale
    pw, ph = max(1, round(fw * s)), max(1, round(fh * s))
    free_w, free_h = bw - pw - 2 * margin, bh - ph - 2 * margin
    x0 = margin + round(x * free_w) if free_w > 0 else (bw - pw) // 2
    y0 = margin + round(y * free_h) if free_h > 0 else (bh - ph) // 2
    return pw, ph, x0, y0


@register
class Composite(Node):
    kind = "composite"
    family = "composite"
    description = "Put one node's frame (e.g. the avatar) over another's through a mask, scaled and placed."
    inputs = (Port("background", PortType.FRAME, "(H, W, 3) uint8 BGR: what goes behind"),
              Port("foreground", PortType.FRAME, "(h, w, 3) uint8 BGR: what goes on top"),
              Port("mask", PortType.MASK, "(h, w) float32 0..1, the foreground's opacity (same size as "
                   "foreground); unwired it takes the nearest earlier mask, or the whole rectangle when there "
                   "is none", optional=True))
    outputs = (Port("frame", PortType.FRAME, "(H, W, 3) uint8 BGR, the background's size"),)
    params = (
        Param("scale", "float", 1.0, "foreground size: 1 = fitted to the background (aspect kept)", min=0.05,
              max=1.0, step=0.05),
        Param("x", "float", 0.5, "horizontal place in the free space: 0 = left, 0.5 = centre, 1 = right",
              min=0.0, max=1.0, step=0.05),
        Param("y", "float", 0.5, "vertical place in the free space: 0 = top, 0.5 = centre, 1 = bottom",
              min=0.0, max=1.0, step=0.05),
        Param("margin", "int", 0, "distance from the edges in pixels", min=0, max=1000, step=8),
        Param("opacity", "float", 1.0, "1 = opaque foreground", min=0.0, max=1.0, step=0.05),
    )

    def configure(self, in_shapes):
        self.in_shapes = dict(in_shapes)
        bg = in_shapes.get("background", self.ctx.source_size)
        fg = in_shapes.get("foreground", self.ctx.source_size)
        if "mask" in in_shapes and in_shapes["mask"] != fg:
            (mh, mw), (fh, fw) = in_shapes["mask"], fg
            raise ParamError(f"input `mask` is {mw}x{mh} but `foreground` is {fw}x{fh}: the mask must come from "
                             "the same picture as the foreground (wire that node's mask, or resize both)")
        self.bg_hw, self.fg_hw = bg, fg
        return {"frame": bg}

    def open(self) -> None:
        kc.warmup()
        self.ones = np.ones(self.fg_hw, np.float32)
        self.params_changed(set())

    def params_changed(self, names) -> None:
        p = self.p
        pw, ph, self.x0, self.y0 = place(self.bg_hw, self.fg_hw, p["scale"], p["x"], p["y"], p["margin"])
        if (ph, pw) != self.fg_hw and getattr(self, "fg_s", np.empty(0)).shape[:2] != (ph, pw):
            self.fg_s = np.zeros((ph, pw, 3), np.uint8)  # reallocated only when the size param changes
            self.m_s = np.zeros((ph, pw), np.float32)
        self.scaled = (ph, pw) != self.fg_hw

    def process(self, inputs, out) -> None:
        fg = inputs["foreground"]
        mask = inputs.get("mask")
        if mask is None:
            mask = self.ones
        if self.scaled:
            size = (self.fg_s.shape[1], self.fg_s.shape[0])
            interp = cv2.INTER_AREA if size[0] < fg.shape[1] else cv2.INTER_LINEAR
            fg = cv2.resize(fg, size, dst=self.fg_s, interpolation=interp)
            mask = cv2.resize(mask, size, dst=self.m_s, interpolation=interp)
        bg = inputs["background"]
        if self.ctx.device == "cuda":
            import torch

            t = [torch.from_numpy(np.ascontiguousarray(a)).cuda() for a in (fg, mask, bg)]
            out["frame"][...] = kc.place_over_torch(*t, self.x0, self.y0, self.p["opacity"]).cpu().numpy()
            return
        kc.place_over_numba(fg, mask, bg, self.x0, self.y0, out["frame"], self.p["opacity"])


@register
class Overlay(Node):
    kind = "overlay"
    family = "composite"
    description = "An image with transparency (logo, badge, frame) in a corner of the picture."
    inputs = (Port("frame", PortType.FRAME, "(H, W, 3) uint8 BGR"),)
    outputs = (Port("frame", PortType.FRAME, "(H, W, 3) uint8 BGR"),)
    params = (
        Param("image", "path", None, "the image (PNG with alpha for a cut-out; relative to the preset)",
              live=False, optional=True),
        Param("corner", "choice", "top_right", "which corner", choices=CORNERS),
        Param("margin", "int", 24, "distance from the corner's edges in pixels", min=0, max=1000, step=8),
        Param("width", "float", 0.15, "image width as a fraction of the frame width (aspect kept)", min=0.01,
              max=1.0, step=0.01),
        Param("opacity", "float", 1.0, "1 = as the image's own alpha", min=0.0, max=1.0, step=0.05),
    )

    def configure(self, in_shapes):
        shapes = super().configure(in_shapes)
        self.path = check_image_file(self.ctx, "image", self.p["image"], "an overlay")
        return shapes

    def open(self) -> None:
        kc.warmup()
        img = read_image(self.path, "image", cv2.IMREAD_UNCHANGED)
        if img.dtype == np.uint16:
            img = (img >> 8).astype(np.uint8)
        if img.ndim == 2:
            img = cv2.cvtColor(img, cv2.COLOR_GRAY2BGRA)
        elif img.shape[2] == 3:
            img = cv2.cvtColor(img, cv2.COLOR_BGR2BGRA)
        self.src = img
        self.params_changed(set())

    def params_changed(self, names) -> None:
        h, w = self.out_shapes["frame"]
        sh, sw = self.src.shape[:2]
        ow = max(1, min(w, round(self.p["width"] * w)))
        oh = max(1, min(h, round(sh * ow / sw)))
        # resize premultiplied colour so transparent pixels do not bleed a dark fringe
        a = self.src[..., 3:4].astype(np.float32) / 255.0
        prem = cv2.resize(self.src[..., :3].astype(np.float32) * a, (ow, oh), interpolation=cv2.INTER_AREA)
        alpha = cv2.resize(a[..., 0], (ow, oh), interpolation=cv2.INTER_AREA)
        colour = prem / np.maximum(alpha, 1e-6)[..., None]
        self.img = np.ascontiguousarray(np.clip(colour + 0.5, 0, 255).astype(np.uint8))
        self.alpha = np.ascontiguousarray(alpha.astype(np.float32))
        m = self.p["margin"]
        corner = self.p["corner"]
        self.x0 = m if corner.endswith("left") else w - ow - m
        self.y0 = m if corner.startswith("top") else h - oh - m
        self._tt = None

    def process(self, inputs, out) -> None:
        frame = inputs["frame"]
        if self.ctx.device == "cuda":
            import torch

            if self._tt is None:
                self._tt = (torch.from_numpy(self.img).cuda(), torch.from_numpy(self.alpha).cuda())
            res = kc.place_over_torch(*self._tt, torch.from_numpy(frame).cuda(), self.x0, self.y0,
                                      self.p["opacity"])
            out["frame"][...] = res.cpu().numpy()
            return
        kc.place_over_numba(self.img, self.alpha, frame, self.x0, self.y0, out["frame"], self.p["opacity"])


# ---- benchmark: alpha-over at 1080p ----------------------------------------------------------------

AO = "alpha_over numba (uint8 fixed point)"
CV = "cv2.blendLinear"
NP = "numpy float expression"
CP = "memcpy of the same bytes"


def _ao_notes(r: dict) -> list[str]:
    nb_, cv_, np_, cp = (r[k]["median_ms"] for k in (AO, CV, NP, CP))
    return [f"numba alpha-over is {cv_ / nb_:.2f}x faster than cv2.blendLinear (target > 1)",
            f"numba alpha-over is {np_ / nb_:.1f}x faster than the numpy expression (target >= 10)",
            f"numba time / memcpy time = {nb_ / cp:.2f} (1.0 is the physical floor)"]


@case("alpha_over_1080p", "alpha-over at 1920x1080 (float32 mask): numba vs cv2.blendLinear vs numpy vs memcpy",
      _ao_notes)
def _bench_alpha_over():
    rng = np.random.default_rng(0)
    fg = rng.integers(0, 256, (1080, 1920, 3), dtype=np.uint8)
    bg = rng.integers(0, 256, (1080, 1920, 3), dtype=np.uint8)
    yy, xx = np.mgrid[0:1080, 0:1920]
    mask = np.clip((600 - np.hypot(xx - 960, yy - 540)) / 40.0, 0, 1).astype(np.float32)  # soft-edged disc
    w2 = 1.0 - mask  # blendLinear needs both weights; made once, outside its timing
    out = np.empty_like(fg)
    out_cv = np.empty_like(fg)
    kc.warmup()
    # the kernel reads fg, bg (uint8) and the float32 mask and writes out; a memcpy of N bytes reads
    # and writes N, so the same traffic is a copy of half of it
    n = (fg.nbytes + bg.nbytes + mask.nbytes + out.nbytes) // 2
    a, b = np.ones(n, np.uint8), np.zeros(n, np.uint8)
    scratch = kc.row_scratch(1920)
    return {AO: lambda: kc.alpha_over_numba(fg, bg, mask, out, scratch=scratch),
            CV: lambda: cv2.blendLinear(fg, bg, mask, w2, dst=out_cv),
            NP: lambda: kc.alpha_over_naive(fg, bg, mask),
            CP: lambda: np.copyto(b, a)}
