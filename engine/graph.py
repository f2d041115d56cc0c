"""A built node graph: instantiated nodes, agreed sizes, preallocated buffers, timed processing.

``Graph.process(frame)`` runs every node once in order and returns the output frame (a buffer owned
by the graph, valid until the next call). A node that raises is logged with its id and bypassed for
that frame: each of its outputs takes its same-type input (resized if needed), so the stream goes
on. Steady state allocates no frame buffers.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any

import cv2
import numpy as np

from .errors import PresetError, UserError, Where
from .node import BuildContext, Node, Shape
from .params import ParamError, PortType
from .preset import SOURCE_ID, NodeSpec, Preset

log = logging.getLogger("avatarcast.engine")
EMA = 0.1  # weight of the newest sample in per-node timing averages


@dataclass
class NodeRun:
    spec: NodeSpec
    node: Node
    out: dict[str, Any] = field(default_factory=dict)  # output buffers / values
    enabled: bool = True
    ms: float = 0.0  # exponential moving average of process() time
    calls: int = 0
    failures: int = 0
    last_error: str = ""
    _last_log: float = 0.0


def _alloc(ptype: PortType, shape: Shape) -> np.ndarray:
    h, w = shape
    if ptype is PortType.FRAME:
        return np.zeros((h, w, 3), np.uint8)
    return np.zeros((h, w), np.float32)


def fit_into(src: np.ndarray, dst: np.ndarray, mode: str = "fit") -> None:
    """Resize ``src`` into ``dst`` (same channels). fit = letterbox (black bars), fill = crop to fill,
    stretch = ignore aspect. Allocates only when sizes differ (cv2.resize's own temporary)."""
    sh, sw = src.shape[:2]
    dh, dw = dst.shape[:2]
    if (sh, sw) == (dh, dw):
        np.copyto(dst, src)
        return
    if mode == "stretch":
        cv2.resize(src, (dw, dh), dst=dst, interpolation=cv2.INTER_AREA if sw > dw else cv2.INTER_LINEAR)
        return
    scale = min(dw / sw, dh / sh) if mode == "fit" else max(dw / sw, dh / sh)
    nw, nh = max(1, round(sw * scale)), max(1, round(sh * scale))
    interp = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
    if mode == "fit":
        dst[...] = 0
        x0, y0 = (dw - nw) // 2, (dh - nh) // 2
        cv2.resize(src, (nw, nh), dst=dst[y0:y0 + nh, x0:x0 + nw], interpolation=interp)
    else:
        # crop the source region that maps onto dst, then resize it straight into dst
        cw, ch = dw / scale, dh / scale
        x0, y0 = (sw - cw) / 2, (sh - ch) / 2
        crop = src[int(round(y0)):int(round(y0 + ch)), int(round(x0)):int(round(x0 + cw))]
        cv2.resize(crop, (dw, dh), dst=dst, interpolation=interp)


class Graph:
    """Nodes of one preset, built for one input size."""

    def __init__(self, preset: Preset, ctx: BuildContext):
        self.preset = preset
        self.ctx = ctx
        self.runs: list[NodeRun] = []
        self.opened = False
        self.closed = False
        self._values: dict[tuple[str, str], Any] = {}
        self._build()

    # ---- build ------------------------------------------------------------------------------
    def _build(self) -> None:
        problems: list[UserError] = []
        shapes: dict[tuple[str, str], Shape] = {(SOURCE_ID, "frame"): self.ctx.source_size}
        for spec in self.preset.nodes:
            node = spec.cls(spec.id, spec.params, self.ctx)
            in_shapes = {}
            for port in spec.cls.inputs:
                ref = spec.inputs.get(port.name)
                if ref is not None and port.type.is_array and ref in shapes:
                    in_shapes[port.name] = shapes[ref]
            try:
                out_shapes = node.configure(in_shapes)
            except (ParamError, UserError) as exc:
                msg = exc.message if isinstance(exc, UserError) else str(exc)
                problems.append(UserError(f"node {spec.id} ({spec.kind}): {msg}",
                                          Where(self.preset.file, spec.line, spec.id)))
                out_shapes = {p.name: self.ctx.source_size for p in spec.cls.outputs if p.type.is_array}
            node.out_shapes = out_shapes
            run = NodeRun(spec, node, enabled=spec.enabled)
            for port in spec.cls.outputs:
                if port.type.is_array:
                    shapes[(spec.id, port.name)] = out_shapes[port.name]
                    run.out[port.name] = _alloc(port.type, out_shapes[port.name])
                else:
                    run.out[port.name] = [] if port.type is PortType.FACES else None
            self.runs.append(run)
        if problems:
            raise PresetError(problems)
        self.shapes = shapes
        oid, oport = self.preset.output
        self.output_shape = shapes[(oid, oport)] if oid != SOURCE_ID else self.ctx.source_size
        self.run_by_id = {r.spec.id: r for r in self.runs}

    # ---- lifecycle --------------------------------------------------------------------------
    def open(self) -> None:
        """Open every node (load models, compile kernels). On failure, close what was opened."""
        opened: list[NodeRun] = []
        try:
            for run in self.runs:
                run.node.open()
                opened.append(run)
        except BaseException:
            for run in opened:
                self._close_node(run)
            for run in self.runs[len(opened):]:
                self._close_node(run)
            self.closed = True
            raise
        self.opened = True

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        for run in self.runs:
            self._close_node(run)

    @staticmethod
    def _close_node(run: NodeRun) -> None:
        if getattr(run, "_closed", False):
            return
        run._closed = True  # type: ignore[attr-defined]
        try:
            run.node.close()
        except Exception:
            log.exception("node %s: close() failed", run.spec.id)

    def __enter__(self) -> Graph:
        self.open()
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ---- per frame --------------------------------------------------------------------------
    def process(self, frame: np.ndarray, strict: bool = False) -> np.ndarray:
        """Run every node on ``frame`` (read-only, (H, W, 3) uint8 at ``ctx.source_size``).
        strict=True re-raises node errors (offline renders and tests); otherwise bypass and log."""
        values = self._values
        values[(SOURCE_ID, "frame")] = frame
        for run in self.runs:
            spec = run.spec
            inputs = {name: values[ref] for name, ref in spec.inputs.items()}
            if run.enabled:
                t0 = time.perf_counter()
                try:
                    run.node.process(inputs, run.out)
                    ok = True
                except Exception as exc:
                    if strict:
                        raise
                    ok = False
                    self._note_failure(run, exc)
                dt = (time.perf_counter() - t0) * 1000.0
                run.ms = dt if run.calls == 0 else run.ms + EMA * (dt - run.ms)
                run.calls += 1
                if not ok:
                    self._bypass(run, inputs)
            else:
                self._bypass(run, inputs)
            for name, val in run.out.items():
                values[(spec.id, name)] = val
        return values[self.preset.output]

    def _note_failure(self, run: NodeRun, exc: Exception) -> None:
        run.failures += 1
        run.last_error = f"{type(exc).__name__}: {exc}"
        now = time.monotonic()
        if now - run._last_log > 5.0:  # rate-limit: a node failing every frame logs every 5 s
            run._last_log = now
            log.error("node %s (%s) failed and is bypassed for this frame (%d failures so far): %s",
                      run.spec.id, run.spec.kind, run.failures, run.last_error,
                      exc_info=run.failures == 1)

    def _bypass(self, run: NodeRun, inputs: dict[str, Any]) -> None:
        """Outputs take the same-type input: the node is skipped but the stream goes on."""
        for port in run.spec.cls.outputs:
            src = next((inputs[p.name] for p in run.spec.cls.inputs
                        if p.type is port.type and p.name in inputs), None)
            if port.type.is_array:
                if src is not None:
                    fit_into(src, run.out[port.name], "fit")
                elif port.type is PortType.MASK:
                    run.out[port.name][...] = 1.0
                # a frame output with no frame input keeps its last good frame
            else:
                run.out[port.name] = src if src is not None else []

    # ---- control ----------------------------------------------------------------------------
    def timings(self) -> dict[str, float]:
        return {r.spec.id: r.ms for r in self.runs if r.enabled}

    def reset(self) -> None:
        for run in self.runs:
            try:
                run.node.reset()
            except Exception:
                log.exception("node %s: reset() failed", run.spec.id)


def build_graph(preset: Preset, ctx: BuildContext) -> Graph:
    """Build a graph for ``preset``; the context's preset fields are filled from it."""
    ctx.preset_name = preset.name
    ctx.preset_dir = preset.dir
    ctx.preset_file = preset.file
    ctx.avatar = preset.avatar
    return Graph(preset, ctx)
