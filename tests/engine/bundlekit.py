"""Helpers for the bundle tests: a real node with a ``path`` param and precomputed data, hand-built
bundles (valid, then broken one way at a time), rendering a preset to frames, sandbox snapshots."""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import zipfile
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np

from engine import cache
from engine.node import _REGISTRY as REGISTRY
from engine.node import Node, discover
from engine.params import Param
from engine.runtime import Engine, render
from engine.sinks import Sink
from engine.sources import DemoSource
from nodes.transform import FRAME_IN, FRAME_OUT

TINT_CALLS = {"compute": 0}


def _mean_colour(path: Path) -> dict[str, np.ndarray]:
    TINT_CALLS["compute"] += 1
    img = cv2.imread(str(path), cv2.IMREAD_COLOR)
    return {"mean": img.reshape(-1, 3).mean(axis=0).astype(np.float32)}


class TintNode(Node):
    """Blends every frame towards the mean colour of an image file named by a ``path`` param. Its
    mean colour is precomputed data kept in engine.cache and offered to bundles."""

    kind = "test_tint"
    family = "test"
    description = "Test node: tint towards the mean colour of an image file."
    inputs = (FRAME_IN,)
    outputs = (FRAME_OUT,)
    params = (
        Param("image", "path", None, "image whose mean colour tints the frame", optional=True),
        Param("amount", "float", 0.5, "0 = none, 1 = flat colour", min=0.0, max=1.0),
    )

    @classmethod
    def bundle_precomputed(cls, params, ctx):
        path = ctx.resolve(params["image"])
        return [("test_tint", cache.content_key("test_tint", [path]), _mean_colour(path))]

    def open(self) -> None:
        path = self.ctx.resolve(self.p["image"])
        self.mean = cache.cached("test_tint", [path], lambda: _mean_colour(path))["mean"]

    def process(self, inputs, out) -> None:
        a = self.p["amount"]
        np.copyto(out["frame"], (inputs["frame"] * (1 - a) + self.mean * a).clip(0, 255).astype(np.uint8))


@contextlib.contextmanager
def extra_nodes() -> Iterator[None]:
    """Register TintNode for the duration (and remove it: the shipped schema must not see it)."""
    discover()
    REGISTRY[TintNode.kind] = TintNode
    try:
        yield
    finally:
        REGISTRY.pop(TintNode.kind, None)


class Collect(Sink):
    def __init__(self) -> None:
        self.frames: list[np.ndarray] = []

    def open(self, size, fps) -> None:
        pass

    def write(self, frame) -> None:
        self.frames.append(frame.copy())

    def close(self, ok: bool = True) -> None:
        pass


def render_frames(preset, n: int = 4, size=(320, 180)) -> list[np.ndarray]:
    src = DemoSource(size, 30.0, frames=n)
    src.open()
    eng = Engine([preset], source_size=size, live=False)
    eng.start()
    sink = Collect()
    try:
        render(src, eng, sink, progress=False)
    finally:
        eng.close()
        src.close()
    return sink.frames


def image_bytes(ext: str = ".png", w: int = 64, h: int = 48, seed: int = 0) -> bytes:
    rng = np.random.default_rng(seed)
    img = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    ok, buf = cv2.imencode(ext, img)
    assert ok
    return buf.tobytes()


def write_image(path: Path, ext: str | None = None, **kw) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(image_bytes(ext or path.suffix, **kw))
    return path


PRESET_TEXT = """schema: 1
name: Kit preset
author: Kit
license: CC0-1.0
avatar:
  images: [files/face.png]
pipeline:
  - node: color_adjust
    gamma: 0.2
"""


def manifest_for(files: dict[str, bytes], **over) -> dict:
    m = {"format": "avatarcast-bundle", "format_version": 1, "id": "kit", "name": "Kit preset",
         "creator": "Kit", "license": "CC0-1.0", "description": "a test bundle",
         "files": {n: {"sha256": hashlib.sha256(b).hexdigest(), "size": len(b)} for n, b in files.items()}}
    m.update(over)
    return m


def good_files() -> dict[str, bytes]:
    return {"preset.yaml": PRESET_TEXT.encode(), "files/face.png": image_bytes(".png")}


def build_zip(path: Path, files: dict[str, bytes], manifest: dict | bytes | None = None,
              extra: list[tuple[zipfile.ZipInfo | str, bytes]] = (),
              method: int = zipfile.ZIP_DEFLATED) -> Path:
    """A bundle with ``files`` (listed in the manifest unless a manifest is given) plus ``extra`` raw
    entries (not listed)."""
    if manifest is None:
        manifest = manifest_for(files)
    raw = manifest if isinstance(manifest, bytes) else json.dumps(manifest).encode()
    with zipfile.ZipFile(path, "w", method) as zf:
        zf.writestr("manifest.json", raw)
        for name, blob in files.items():
            zf.writestr(name, blob)
        for info, blob in extra:
            zf.writestr(info, blob)
    return path


def zip_bytes(files: dict[str, bytes], manifest: dict | None = None) -> bytes:
    buf = io.BytesIO()
    raw = json.dumps(manifest or manifest_for(files)).encode()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("manifest.json", raw)
        for name, blob in files.items():
            zf.writestr(name, blob)
    return buf.getvalue()


def snapshot(root: Path) -> dict[str, tuple[int, str]]:
    """Every file and folder under root: relative path -> (size, sha256 prefix) ('' for folders)."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for d in dirnames:
            p = Path(dirpath, d)
            out[str(p.relative_to(root)) + "/"] = (0, "link" if p.is_symlink() else "")
        for f in filenames:
            p = Path(dirpath, f)
            if p.is_symlink():
                out[str(p.relative_to(root))] = (0, "link")
            else:
                out[str(p.relative_to(root))] = (p.stat().st_size, hashlib.sha256(p.read_bytes()).hexdigest()[:12])
    return out
