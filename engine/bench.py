"""Benchmarks (``avatarcast bench``): median and spread of repeated runs after warm-up, with the
machine and versions written beside the figures. Cases register with ``@case``; node families add
their own cases in their modules.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

Variant = Callable[[], object]


@dataclass
class Case:
    name: str
    description: str
    setup: Callable[[], dict[str, Variant]]  # returns named variants to time side by side
    notes: Callable[[dict[str, dict]], list[str]] | None = None  # derived figures (ratios, fps)


CASES: dict[str, Case] = {}


def case(name: str, description: str, notes: Callable[[dict[str, dict]], list[str]] | None = None):
    def deco(setup: Callable[[], dict[str, Variant]]):
        CASES[name] = Case(name, description, setup, notes)
        return setup

    return deco


def measure(fn: Variant, repeat: int = 30, warmup: int = 3, min_time: float = 0.0) -> dict:
    for _ in range(warmup):
        fn()
    times = []
    t_start = time.perf_counter()
    while len(times) < repeat or (time.perf_counter() - t_start) < min_time:
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1000.0)
    times.sort()
    q = lambda f: times[min(len(times) - 1, int(f * len(times)))]  # noqa: E731
    return {"median_ms": statistics.median(times), "p10_ms": q(0.1), "p90_ms": q(0.9), "min_ms": times[0],
            "n": len(times)}


def machine() -> dict:
    import numba

    try:
        import torch

        torch_v = torch.__version__
    except Exception:
        torch_v = "n/a"
    import cv2

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as fh:
            cpu = next((ln.split(":", 1)[1].strip() for ln in fh if ln.startswith("model name")), cpu)
    except OSError:
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "numba_threads": numba.get_num_threads(),
            "python": platform.python_version(), "numpy": np.__version__, "numba": numba.__version__,
            "opencv": cv2.__version__, "torch": torch_v, "platform": platform.platform()}


def run(names: list[str] | None = None, repeat: int = 30, echo: Callable[[str], None] = print) -> dict:
    from .node import discover

    discover()  # node modules register their cases
    chosen = [CASES[n] for n in (names or sorted(CASES))]
    info = machine()
    echo("machine: " + ", ".join(f"{k} {v}" for k, v in info.items()))
    results: dict[str, dict] = {}
    root = logging.getLogger()
    for c in chosen:
        variants = c.setup()
        level = root.level
        root.setLevel(max(level, logging.WARNING))  # what a case logs per call is not the result
        try:
            res = {k: measure(fn, repeat) for k, fn in variants.items()}
        finally:
            root.setLevel(level)
        results[c.name] = {"description": c.description, "variants": res}
        echo(f"\n{c.name}: {c.description}")
        for k, r in res.items():
            echo(f"  {k:<28} median {r['median_ms']:8.3f} ms   p10 {r['p10_ms']:8.3f}   p90 {r['p90_ms']:8.3f}"
                 f"   (n={r['n']})")
        if c.notes:
            lines = c.notes(res)
            results[c.name]["notes"] = lines
            for line in lines:
                echo(f"  -> {line}")
    return {"machine": info, "results": results}


def write_json(data: dict, path: str) -> None:
    tmp = f"{path}.part"
    with open(tmp, "w") as fh:
        json.dump(data, fh, indent=2)
    os.replace(tmp, path)


# ---- engine cases ------------------------------------------------------------------------------

def _engine_for(pipeline_yaml: str, size: tuple[int, int]):
    from .preset import loads_preset
    from .runtime import Engine

    preset = loads_preset(pipeline_yaml)
    eng = Engine([preset], source_size=size, out_size=size, live=True)
    eng.start()
    return eng


def _overhead_notes(r: dict) -> list[str]:
    full, node = r["engine (mirror preset)"]["median_ms"], r["mirror kernel alone"]["median_ms"]
    return [f"engine overhead per frame = {full - node:.3f} ms at 1280x720 (target < 1 ms)"]


@case("engine_overhead_720p", "a preset with only `mirror` at 1280x720: whole engine step vs the kernel alone",
      _overhead_notes)
def _engine_overhead():
    from .kernels import transform as tk

    eng = _engine_for("name: bench\npipeline:\n  - node: mirror\n", (1280, 720))
    rng = np.random.default_rng(0)
    frame = rng.integers(0, 256, (720, 1280, 3), dtype=np.uint8)
    out = np.empty_like(frame)
    tmp = np.empty_like(frame)
    return {"engine (mirror preset)": lambda: eng.process(frame, out),
            "mirror kernel alone": lambda: tk.mirror_numba(frame, tmp, True)}


def _color_notes(r: dict) -> list[str]:
    nb_, np_, cp = (r[k]["median_ms"] for k in ("color_adjust numba", "numpy reference", "memcpy same bytes"))
    return [f"numba is {np_ / nb_:.1f}x faster than numpy (target >= 5x)",
            f"numba time / memcpy time = {nb_ / cp:.1f} (1.0 is the physical floor)"]


@case("color_adjust_1080p", "color_adjust at 1920x1080 vs a straightforward numpy version and a memcpy",
      _color_notes)
def _color_adjust():
    from .kernels import color as ck

    rng = np.random.default_rng(0)
    frame = rng.integers(0, 256, (1080, 1920, 3), dtype=np.uint8)
    out = np.empty_like(frame)
    kw = dict(gamma=0.4, contrast=0.5, brightness=0.05, saturation=0.6, hue_shift=20.0, opacity=1.0)
    g, m, t = ck.obs_color_matrix(**kw)
    table, offset = ck.curve_matrix_table(g, m, t)
    return {"color_adjust numba": lambda: ck.curve_matrix_numba(frame, table, offset, out),
            "numpy reference": lambda: ck.color_adjust_ref(frame, **kw),
            "memcpy same bytes": lambda: np.copyto(out, frame)}
