"""CPU time per call of this issue's kernels on ONE thread, for machines shared with other work.

``avatarcast bench`` measures wall-clock time, which on a busy machine mostly measures the other
processes. CPU time of a single-threaded run does not wait for them, so it is a load-independent
estimate of the work (on an idle 2-core machine expect about half of it for the parallel kernels).

    NUMBA_NUM_THREADS=1 python tests/bench/kernel_cpu_times.py
"""

from __future__ import annotations

import logging
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("NUMBA_NUM_THREADS", "1")
REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

import cv2  # noqa: E402
import numpy as np  # noqa: E402

from engine.kernels import composite as kc  # noqa: E402
from engine.kernels import lut as lk  # noqa: E402
from engine.node import BuildContext  # noqa: E402
from nodes.background import Background, _bg_frame_720p  # noqa: E402
from nodes.color import film_look_table  # noqa: E402

log = logging.getLogger("avatarcast.cputime")


def cpu_ms(fn, repeat: int = 15, clock=time.thread_time) -> float:
    fn()
    times = []
    for _ in range(repeat):
        t0 = clock()
        fn()
        times.append((clock() - t0) * 1000.0)
    return statistics.median(times)


def main() -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    cv2.setNumThreads(1)
    rng = np.random.default_rng(0)
    fg = rng.integers(0, 256, (1080, 1920, 3), dtype=np.uint8)
    bg = rng.integers(0, 256, (1080, 1920, 3), dtype=np.uint8)
    yy, xx = np.mgrid[0:1080, 0:1920]
    mask = np.clip((600 - np.hypot(xx - 960, yy - 540)) / 40.0, 0, 1).astype(np.float32)
    w2 = 1.0 - mask
    out = np.empty_like(fg)
    kc.warmup()
    lk.warmup()
    n = (fg.nbytes * 3 + mask.nbytes) // 2
    a, b = np.ones(n, np.uint8), np.zeros(n, np.uint8)
    scratch = kc.row_scratch(1920)
    r = {"alpha_over numba": cpu_ms(lambda: kc.alpha_over_numba(fg, bg, mask, out, scratch=scratch)),
         "cv2.blendLinear": cpu_ms(lambda: cv2.blendLinear(fg, bg, mask, w2, dst=out)),
         "numpy expression": cpu_ms(lambda: kc.alpha_over_naive(fg, bg, mask), 5),
         "memcpy same bytes": cpu_ms(lambda: np.copyto(b, a))}
    frame = cv2.resize(_bg_frame_720p(), (1920, 1080))
    prep = lk.prepare_3d(film_look_table(33), (0, 0, 0), (1, 1, 1))
    r["lut3d 33^3 tetrahedral"] = cpu_ms(lambda: lk.lut3d_numba(frame, prep, out, "tetrahedral"))
    r["lut3d 33^3 trilinear"] = cpu_ms(lambda: lk.lut3d_numba(frame, prep, out, "trilinear"))
    f720 = _bg_frame_720p()
    for every in (1, 2):
        node = Background("bg", Background.validate_params({"mode": "blur", "mask_every": every})[0],
                          BuildContext(source_size=(720, 1280)))
        node.out_shapes = node.configure({"frame": (720, 1280)})
        node.open()
        o = {"frame": np.empty((720, 1280, 3), np.uint8), "mask": np.empty((720, 1280), np.float32)}
        # process_time: mediapipe runs on threads of its own
        per = cpu_ms(lambda node=node, o=o: [node.process({"frame": f720}, o) for _ in range(2)],
                     clock=time.process_time) / 2
        r[f"background blur 720p, mask every {every} (per frame)"] = per
        node.close()
    for k, v in r.items():
        log.info("%-48s %8.2f ms CPU", k, v)
    log.info("alpha-over: %.2fx cv2.blendLinear, %.1fx numpy, %.2f x memcpy",
             r["cv2.blendLinear"] / r["alpha_over numba"], r["numpy expression"] / r["alpha_over numba"],
             r["alpha_over numba"] / r["memcpy same bytes"])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
