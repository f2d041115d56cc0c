"""Geometric nodes: mirror, crop, resize. Exports: Mirror, Crop, Resize."""

from __future__ import annotations

import numpy as np

from engine.graph import fit_into
from engine.kernels import transform as k
from engine.node import Node, register
from engine.params import Param, ParamError, Port, PortType

FRAME_IN = Port("frame", PortType.FRAME, "(H, W, 3) uint8 BGR")
FRAME_OUT = Port("frame", PortType.FRAME, "(H, W, 3) uint8 BGR")


@register
class Mirror(Node):
    kind = "mirror"
    family = "transform"
    description = "Flip the frame (horizontal = selfie view, as most webcam apps show it)."
    inputs = (FRAME_IN,)
    outputs = (FRAME_OUT,)
    params = (Param("direction", "choice", "horizontal", "which way to flip", choices=("horizontal", "vertical")),)

    def open(self) -> None:
        k.warmup()

    def process(self, inputs, out) -> None:
        if self.ctx.device == "cuda":
            import torch

            res = k.mirror_torch(torch.from_numpy(inputs["frame"]).cuda(), self.p["direction"] == "horizontal")
            out["frame"][...] = res.cpu().numpy()
            return
        k.mirror_numba(inputs["frame"], out["frame"], self.p["direction"] == "horizontal")


@register
class Crop(Node):
    kind = "crop"
    family = "transform"
    description = "Cut a rectangle out of the frame (pixels); the output is that rectangle's size."
    inputs = (FRAME_IN,)
    outputs = (Port("frame", PortType.FRAME, "(height, width, 3) uint8 BGR"),)
    params = (
        Param("x", "int", 0, "left edge in pixels", min=0, max=8192, live=False),
        Param("y", "int", 0, "top edge in pixels", min=0, max=8192, live=False),
        Param("width", "int", None, "width in pixels (default: to the right edge)", min=16, max=8192,
              optional=True, live=False),
        Param("height", "int", None, "height in pixels (default: to the bottom edge)", min=16, max=8192,
              optional=True, live=False),
    )

    def configure(self, in_shapes):
        h, w = in_shapes.get("frame", self.ctx.source_size)
        x, y = self.p["x"], self.p["y"]
        cw = self.p["width"] if self.p["width"] is not None else w - x
        ch = self.p["height"] if self.p["height"] is not None else h - y
        if x + cw > w or y + ch > h or cw < 16 or ch < 16:
            raise ParamError(f"crop {cw}x{ch} at ({x}, {y}) does not fit in the {w}x{h} input")
        self.rect = (x, y, cw, ch)
        return {"frame": (ch, cw)}

    def process(self, inputs, out) -> None:
        x, y, cw, ch = self.rect
        np.copyto(out["frame"], inputs["frame"][y:y + ch, x:x + cw])


@register
class Resize(Node):
    kind = "resize"
    family = "transform"
    description = "Scale the frame to an output size: fit (letterbox), fill (crop the overflow) or stretch."
    inputs = (FRAME_IN,)
    outputs = (Port("frame", PortType.FRAME, "(size.h, size.w, 3) uint8 BGR"),)
    params = (
        Param("size", "size", "1280x720", "output size, WxH", live=False),
        Param("mode", "choice", "fit", "fit keeps everything (black bars), fill crops, stretch distorts",
              choices=("fit", "fill", "stretch")),
    )

    def configure(self, in_shapes):
        w, h = self.p["size"]
        return {"frame": (h, w)}

    def process(self, inputs, out) -> None:
        fit_into(inputs["frame"], out["frame"], self.p["mode"])
