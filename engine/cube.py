"""``.cube`` colour lookup tables (Adobe / Resolve format): parse, validate with line numbers, write.

Format: keywords ``TITLE "..."``, ``LUT_1D_SIZE N`` (2..65536) or ``LUT_3D_SIZE N`` (2..256),
``DOMAIN_MIN r g b``, ``DOMAIN_MAX r g b`` (default 0 0 0 / 1 1 1; Resolve's
``LUT_1D_INPUT_RANGE lo hi`` / ``LUT_3D_INPUT_RANGE lo hi`` mean the same), ``#`` comments; then N
(1D) or N^3 (3D) data lines ``r g b``, red varying fastest. Values are RGB; frames are BGR.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import UserError, Where

MAX_3D = 256
MAX_1D = 65536
KEYWORDS = {"TITLE", "LUT_1D_SIZE", "LUT_3D_SIZE", "DOMAIN_MIN", "DOMAIN_MAX", "LUT_1D_INPUT_RANGE",
            "LUT_3D_INPUT_RANGE"}


@dataclass
class CubeLut:
    """table: 1D -> (N, 3) float32 RGB; 3D -> (N, N, N, 3) float32 indexed [b, g, r, rgb] (the file's
    order: red fastest). domain_min/max: (3,) float32 RGB."""

    table: np.ndarray
    domain_min: np.ndarray
    domain_max: np.ndarray
    title: str = ""

    @property
    def is_3d(self) -> bool:
        return self.table.ndim == 4

    @property
    def size(self) -> int:
        return self.table.shape[0]


def _err(path, line, message, hint=None) -> UserError:
    return UserError(message, Where(path, line), hint or "see the .cube format: LUT_3D_SIZE N, then N^3 lines 'r g b'")


def parse_cube(text: str, path: str | Path | None = None) -> CubeLut:
    """Parse .cube text; raise UserError naming the file, the line and the problem."""
    size = None
    size_line = None
    is_3d = False
    dmin = np.zeros(3, np.float32)
    dmax = np.ones(3, np.float32)
    dom_line = None
    title = ""
    rows: list[tuple[float, float, float]] = []
    first_data_line = None
    for ln, raw in enumerate(text.splitlines(), start=1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        parts = line.split()
        key = parts[0].upper()
        if not _is_number(parts[0]) and (not rows or key in KEYWORDS):
            if rows:
                raise _err(path, ln, f"keyword {parts[0]!r} after the data lines started (line {first_data_line})",
                           "keywords (LUT_3D_SIZE, DOMAIN_MIN, ...) go before the table")
            if key == "TITLE":
                title = line[5:].strip().strip('"')
            elif key in ("LUT_1D_SIZE", "LUT_3D_SIZE"):
                if size is not None:
                    raise _err(path, ln, f"second size keyword {parts[0]} (the size was set on line {size_line})")
                if len(parts) != 2 or not parts[1].lstrip("-").isdigit():
                    raise _err(path, ln, f"{parts[0]} needs one whole number, got {' '.join(parts[1:])!r}")
                size, size_line, is_3d = int(parts[1]), ln, key == "LUT_3D_SIZE"
                hi = MAX_3D if is_3d else MAX_1D
                if not 2 <= size <= hi:
                    raise _err(path, ln, f"{parts[0]} {size} is out of range 2..{hi}")
            elif key in ("DOMAIN_MIN", "DOMAIN_MAX"):
                vals = _floats(parts[1:], 3, path, ln, parts[0])
                (dmin if key == "DOMAIN_MIN" else dmax)[:] = vals
                dom_line = ln
            elif key in ("LUT_1D_INPUT_RANGE", "LUT_3D_INPUT_RANGE"):
                lo, hi = _floats(parts[1:], 2, path, ln, parts[0])
                dmin[:], dmax[:] = lo, hi
                dom_line = ln
            else:
                raise _err(path, ln, f"unknown keyword {parts[0]!r}",
                           "known: TITLE, LUT_1D_SIZE, LUT_3D_SIZE, DOMAIN_MIN, DOMAIN_MAX, LUT_1D/3D_INPUT_RANGE")
            continue
        if len(parts) != 3:
            raise _err(path, ln, f"a data line needs 3 numbers (r g b), got {line!r}")
        vals = _floats(parts, 3, path, ln, "data line")
        if first_data_line is None:
            first_data_line = ln
        rows.append(tuple(vals))
    if size is None:
        raise _err(path, 1, "no LUT_3D_SIZE or LUT_1D_SIZE line")
    for c in range(3):
        if not dmin[c] < dmax[c]:
            raise _err(path, dom_line, f"DOMAIN_MIN must be below DOMAIN_MAX in every channel, got min "
                       f"{dmin.tolist()} max {dmax.tolist()}")
    want = size ** 3 if is_3d else size
    if len(rows) != want:
        where = size_line if len(rows) < want else _nth_data_line(text, want + 1)
        raise _err(path, where, f"LUT_{'3' if is_3d else '1'}D_SIZE {size} needs {want} data lines, found {len(rows)}",
                   "the file is truncated or the size line is wrong")
    table = np.asarray(rows, np.float32)
    if is_3d:
        table = table.reshape(size, size, size, 3)  # [b, g, r]: red varies fastest in the file
    return CubeLut(np.ascontiguousarray(table), dmin, dmax, title)


def _is_number(s: str) -> bool:
    try:
        float(s)
        return True
    except ValueError:
        return False


def _floats(parts, n, path, ln, what) -> list[float]:
    if len(parts) != n:
        raise _err(path, ln, f"{what} needs {n} numbers, got {' '.join(parts)!r}")
    out = []
    for p in parts:
        try:
            v = float(p)
        except ValueError:
            raise _err(path, ln, f"{what}: {p!r} is not a number") from None
        if not np.isfinite(v):
            raise _err(path, ln, f"{what}: {p!r} is not a finite number")
        out.append(v)
    return out


def _nth_data_line(text: str, n: int) -> int | None:
    count = 0
    for ln, raw in enumerate(text.splitlines(), start=1):
        line = raw.split("#", 1)[0].strip()
        if line and (_is_number(line.split()[0])):
            count += 1
            if count == n:
                return ln
    return None


def load_cube(path: str | Path) -> CubeLut:
    p = Path(path)
    if not p.is_file():
        raise UserError(f"LUT file not found: {str(p)!r}", Where(p), "paths are relative to the preset file")
    try:
        text = p.read_text(encoding="utf-8", errors="strict")
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"cannot read the LUT file as text: {exc}", Where(p), "is it really a .cube file?") from None
    return parse_cube(text, p)


def identity_table(n: int) -> np.ndarray:
    """(n, n, n, 3) float32 identity 3D LUT in [b, g, r, rgb] order."""
    v = np.linspace(0.0, 1.0, n, dtype=np.float32)
    b, g, r = np.meshgrid(v, v, v, indexing="ij")
    return np.stack([r, g, b], axis=-1).astype(np.float32)


def write_cube(path: str | Path, table: np.ndarray, title: str = "",
               domain_min=(0.0, 0.0, 0.0), domain_max=(1.0, 1.0, 1.0)) -> None:
    """Write a 1D (N, 3) or 3D (N, N, N, 3) [b, g, r, rgb] table as a .cube file."""
    lines = []
    if title:
        lines.append(f'TITLE "{title}"')
    lines.append(f"LUT_{'3' if table.ndim == 4 else '1'}D_SIZE {table.shape[0]}")
    if tuple(domain_min) != (0.0, 0.0, 0.0) or tuple(domain_max) != (1.0, 1.0, 1.0):
        lines.append("DOMAIN_MIN " + " ".join(f"{v:.6f}" for v in domain_min))
        lines.append("DOMAIN_MAX " + " ".join(f"{v:.6f}" for v in domain_max))
    for r, g, b in table.reshape(-1, 3):
        lines.append(f"{r:.6f} {g:.6f} {b:.6f}")
    Path(path).write_text("\n".join(lines) + "\n")
