"""Generate the project-made assets the shipped presets use (``presets/assets/``):

- ``warm_film.cube``: the 33^3 'warm film' 3D LUT (``nodes.color.film_look_table``);
- ``studio_backdrop.png``: a 1280x720 soft studio backdrop (gradient, vignette, bokeh dots);
- ``live_badge.png``: a 'LIVE' badge with transparency, for the overlay node.

Run from the repository root: ``python presets/assets/make_assets.py`` (deterministic output).
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import cv2
import numpy as np

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from engine.cube import write_cube  # noqa: E402
from nodes.color import film_look_table  # noqa: E402

log = logging.getLogger("avatarcast.assets")
ASSETS = REPO / "presets" / "assets"


def studio_backdrop(w: int = 1280, h: int = 720) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    t = yy / h
    top, bottom = np.array([92, 58, 38], np.float32), np.array([40, 24, 18], np.float32)  # BGR: deep blue
    img = top * (1 - t[..., None]) + bottom * t[..., None]
    r = np.hypot((xx - w / 2) / (w / 2), (yy - h * 0.45) / (h / 2))
    img *= np.clip(1.15 - 0.45 * r, 0.4, 1.1)[..., None]  # vignette, brighter centre
    rng = np.random.default_rng(5)
    dots = np.zeros((h, w, 3), np.float32)
    for _ in range(40):  # soft out-of-focus lights
        cx, cy = int(rng.integers(0, w)), int(rng.integers(0, h // 2 + 80))
        rad = int(rng.integers(12, 46))
        col = np.array([rng.uniform(120, 255), rng.uniform(90, 200), rng.uniform(40, 120)], np.float32)
        cv2.circle(dots, (cx, cy), rad, col.tolist(), -1, cv2.LINE_AA)
    dots = cv2.GaussianBlur(dots, (0, 0), 9)
    img = img + 0.35 * dots
    return np.clip(img + 0.5, 0, 255).astype(np.uint8)


def live_badge(w: int = 360, h: int = 120) -> np.ndarray:
    img = np.zeros((h, w, 4), np.uint8)
    cv2.rectangle(img, (10, 10), (w - 10, h - 10), (40, 40, 220, 235), -1, cv2.LINE_AA)
    cv2.circle(img, (62, h // 2), 22, (255, 255, 255, 255), -1, cv2.LINE_AA)
    cv2.putText(img, "LIVE", (110, h // 2 + 24), cv2.FONT_HERSHEY_DUPLEX, 2.0, (255, 255, 255, 255), 4, cv2.LINE_AA)
    # soften the rectangle's corners: a rounded-rectangle alpha
    alpha = np.zeros((h, w), np.uint8)
    rad = 26
    cv2.rectangle(alpha, (10 + rad, 10), (w - 10 - rad, h - 10), 255, -1)
    cv2.rectangle(alpha, (10, 10 + rad), (w - 10, h - 10 - rad), 255, -1)
    for cx, cy in ((10 + rad, 10 + rad), (w - 10 - rad, 10 + rad), (10 + rad, h - 10 - rad),
                   (w - 10 - rad, h - 10 - rad)):
        cv2.circle(alpha, (cx, cy), rad, 255, -1, cv2.LINE_AA)
    img[..., 3] = np.minimum(img[..., 3], alpha)
    return img


def main() -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    ASSETS.mkdir(parents=True, exist_ok=True)
    write_cube(ASSETS / "warm_film.cube", film_look_table(33), title="avatarcast warm film")
    cv2.imwrite(str(ASSETS / "studio_backdrop.png"), studio_backdrop())
    cv2.imwrite(str(ASSETS / "live_badge.png"), live_badge())
    for name in ("warm_film.cube", "studio_backdrop.png", "live_badge.png"):
        log.info("wrote %s (%d bytes)", ASSETS / name, (ASSETS / name).stat().st_size)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
