"""Quality check for the ``background`` node: its person mask against chroma-keying the same frames of
a green-screen clip (mean IoU; the issue's target is >= 0.95).

    python tests/bench/eval_background_iou.py                      # ../shared/data/driving/greenscreen_man.mp4
    python tests/bench/eval_background_iou.py CLIP.mp4 --model general --mask-every 2 --step 1

See ``nodes.background.person_mask_iou`` for what is compared (key colour from the top rows,
letterbox bars left out).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from nodes.background import person_mask_iou  # noqa: E402

log = logging.getLogger("avatarcast.eval")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("video", nargs="?", default=str(REPO.parent / "shared" / "data" / "driving" / "greenscreen_man.mp4"))
    ap.add_argument("--model", choices=("landscape", "general"), default="landscape")
    ap.add_argument("--step", type=int, default=1, help="use every N-th frame")
    ap.add_argument("--frames", type=int, default=None, help="at most this many frames")
    ap.add_argument("--mask-every", type=int, default=1)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    res = person_mask_iou(args.video, frames=args.frames, step=args.step, model=args.model,
                          mask_every=args.mask_every)
    log.info("%s", json.dumps({"video": args.video, "model": args.model, "mask_every": args.mask_every, **res}))
    return 0 if res["mean_iou"] >= 0.95 else 1


if __name__ == "__main__":
    raise SystemExit(main())
