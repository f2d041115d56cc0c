"""Read an image's pixel size from its header, before any decoder sees it (decompression bombs), and
check a file really is the kind its name says (a non-image disguised as an image).

Only the headers are parsed here, by hand: PNG (IHDR), JPEG (SOFn markers), BMP (DIB header) and WebP
(VP8, VP8L, VP8X). ``header_size`` returns ``(format, width, height)`` or raises ``ValueError`` saying
what is wrong.
"""

from __future__ import annotations

import struct

IMAGE_FORMATS = {".png": "png", ".jpg": "jpeg", ".jpeg": "jpeg", ".bmp": "bmp", ".webp": "webp"}
# JPEG start-of-frame markers (baseline, progressive, lossless, arithmetic): they carry the size
_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}
_JPEG_SCAN_LIMIT = 1 << 20  # a SOF marker after 1 MiB of metadata is not a real photo


def sniff(head: bytes) -> str | None:
    """The image format the first bytes announce, or None."""
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if head.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    if head.startswith(b"BM"):
        return "bmp"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "webp"
    return None


def header_size(data: bytes) -> tuple[str, int, int]:
    """(format, width, height) from the header of an encoded image held in ``data``."""
    fmt = sniff(data[:16])
    if fmt is None:
        raise ValueError("not a PNG, JPEG, BMP or WebP image (its first bytes are no image signature)")
    w, h = {"png": _png, "jpeg": _jpeg, "bmp": _bmp, "webp": _webp}[fmt](data)
    if w <= 0 or h <= 0:
        raise ValueError(f"{fmt} header gives an empty size {w}x{h}")
    return fmt, w, h


def _png(d: bytes) -> tuple[int, int]:
    if len(d) < 33 or d[12:16] != b"IHDR":
        raise ValueError("PNG without an IHDR header")
    w, h = struct.unpack(">II", d[16:24])
    return w, h


def _jpeg(d: bytes) -> tuple[int, int]:
    i = 2
    n = min(len(d), _JPEG_SCAN_LIMIT)
    while i + 4 <= n:
        if d[i] != 0xFF:
            raise ValueError(f"JPEG marker expected at byte {i}")
        marker = d[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker in (0x01, *range(0xD0, 0xD8)):  # standalone markers
            i += 2
            continue
        if marker in (0xD9, 0xDA):
            raise ValueError("JPEG has no frame header (SOF) before its image data")
        (length,) = struct.unpack(">H", d[i + 2:i + 4])
        if length < 2:
            raise ValueError("JPEG segment with a bad length")
        if marker in _SOF:
            if i + 9 > len(d):
                break
            h, w = struct.unpack(">HH", d[i + 5:i + 9])
            if h == 0:
                raise ValueError("JPEG leaves its height to a later DNL marker (not supported)")
            return w, h
        i += 2 + length
    raise ValueError("JPEG frame header (SOF) not found")


def _bmp(d: bytes) -> tuple[int, int]:
    if len(d) < 26:
        raise ValueError("BMP header is truncated")
    (dib,) = struct.unpack("<I", d[14:18])
    if dib == 12:
        w, h = struct.unpack("<HH", d[18:22])
        return w, h
    if dib < 40:
        raise ValueError(f"BMP header of unknown size {dib}")
    w, h = struct.unpack("<ii", d[18:26])
    return w, abs(h)


def _webp(d: bytes) -> tuple[int, int]:
    if len(d) < 30:
        raise ValueError("WebP header is truncated")
    chunk = d[12:16]
    if chunk == b"VP8 ":
        if d[23:26] != b"\x9d\x01\x2a":
            raise ValueError("WebP (lossy) frame start code missing")
        w, h = struct.unpack("<HH", d[26:30])
        return w & 0x3FFF, h & 0x3FFF
    if chunk == b"VP8L":
        if d[20] != 0x2F:
            raise ValueError("WebP (lossless) signature missing")
        (bits,) = struct.unpack("<I", d[21:25])
        return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    if chunk == b"VP8X":
        w = int.from_bytes(d[24:27], "little") + 1
        h = int.from_bytes(d[27:30], "little") + 1
        return w, h
    raise ValueError(f"WebP with an unknown first chunk {chunk!r}")


VIDEO_SUFFIXES = {".mp4", ".m4v", ".mov", ".mkv", ".webm", ".avi"}
_MP4_BOXES = {b"ftyp", b"moov", b"mdat", b"free", b"wide", b"skip", b"pnot"}


def video_ok(head: bytes, suffix: str) -> bool:
    """Whether the first bytes are those of the container the suffix names."""
    if suffix in (".mp4", ".m4v", ".mov"):
        return head[4:8] in _MP4_BOXES
    if suffix in (".mkv", ".webm"):
        return head.startswith(b"\x1a\x45\xdf\xa3")
    if suffix == ".avi":
        return head[:4] == b"RIFF" and head[8:12] == b"AVI "
    return False


_CUBE_KEYWORDS = {"TITLE", "LUT_1D_SIZE", "LUT_3D_SIZE", "DOMAIN_MIN", "DOMAIN_MAX", "LUT_1D_INPUT_RANGE",
                  "LUT_3D_INPUT_RANGE"}


def cube_problem(data: bytes) -> str | None:
    """None if ``data`` reads as an Adobe/Resolve .cube LUT (text: keywords and rows of 3 numbers)."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return "a .cube LUT must be UTF-8 text"
    rows = 0
    for n, line in enumerate(text.splitlines(), 1):
        s = line.strip()
        if not s or s.startswith("#"):
            continue
        word = s.split(None, 1)[0]
        if word in _CUBE_KEYWORDS:
            continue
        parts = s.split()
        try:
            if len(parts) != 3:
                raise ValueError
            [float(x) for x in parts]
        except ValueError:
            return f"line {n} of the .cube LUT is neither a keyword nor three numbers"
        rows += 1
    return None if rows else "the .cube LUT has no rows"
