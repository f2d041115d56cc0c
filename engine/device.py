"""Which device per-pixel work runs on: 'cpu' (numba) or 'cuda' (torch). Checked without importing
torch when there is plainly no NVIDIA driver, so CPU start-up stays fast."""

from __future__ import annotations

import functools
import glob
import os


@functools.cache
def cuda_available() -> bool:
    if not glob.glob("/dev/nvidia*") and os.name != "nt" and not os.environ.get("CUDA_VISIBLE_DEVICES"):
        return False
    try:
        import torch

        return bool(torch.cuda.is_available())
    except Exception:
        return False


def pick_device(preference: str = "auto") -> str:
    """'auto' -> 'cuda' when a CUDA GPU is usable, else 'cpu'. 'cuda' without a GPU falls back to 'cpu'."""
    if preference == "cpu":
        return "cpu"
    return "cuda" if cuda_available() else "cpu"
