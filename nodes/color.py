"""Colour nodes. Exports: ColorAdjust (OBS Color Correction's controls, same meaning)."""

from __future__ import annotations

import numpy as np

from engine.kernels import color as k
from engine.node import Node, register
from engine.params import Param, Port, PortType


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
