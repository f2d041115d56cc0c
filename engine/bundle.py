"""Preset bundles (``.avatar``): one zip with a preset, every file it names, precomputed avatar data
and a manifest; installed safely from strangers.

Layout of a bundle (nothing else is accepted)::

    manifest.json                 format, id, name, creator, license, description, files: {name: {sha256, size}}
    preset.yaml                   the preset (schema 1), naming its files as files/NAME
    files/NAME                    avatar images, LUTs (.cube), background images and videos
    precomputed/NAMESPACE/KEY.npz arrays a node precomputed for this avatar (engine.cache entries)

Packing finds the files a preset names from the node declarations (avatar images and every param of
type ``path``). A node class may add precomputed data by defining the classmethod
``bundle_precomputed(params, ctx) -> iterable of (namespace, key, {name: ndarray})``: the entries it
would keep in ``engine.cache`` (key from ``engine.cache.content_key`` over the avatar's files). Install
seeds the cache with them, so the first run skips the computation.

Installing treats the bundle as hostile: every check runs before anything is written, the files are
extracted into a temporary folder inside the install folder, verified (hash, size, kind, image header
size, preset references), and only then renamed into place. A refused bundle leaves nothing behind.
Loading a preset never executes code (``engine.yamlsafe``; ``.npz`` files are read with pickles off).
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import posixpath
import re
import shutil
import stat
import struct
import sys
import tempfile
import zipfile
import zlib
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from . import __version__
from . import cache as disk_cache
from .errors import UserError, Where
from .imagecheck import IMAGE_FORMATS, VIDEO_SUFFIXES, cube_problem, header_size, video_ok
from .node import BuildContext
from .preset import SCHEMA_VERSION, Preset, file_refs, load_preset, parse_preset, upgrade
from .yamlsafe import loads

log = logging.getLogger("avatarcast.bundle")

BUNDLE_SUFFIX = ".avatar"
BUNDLE_FORMAT = "avatarcast-bundle"
BUNDLE_VERSION = 1
MANIFEST_NAME = "manifest.json"
PRESET_NAME = "preset.yaml"
FILES_DIR = "files"
PRECOMPUTED_DIR = "precomputed"
PRECOMPUTE_HOOK = "bundle_precomputed"
ASSET_SUFFIXES = frozenset(IMAGE_FORMATS) | VIDEO_SUFFIXES | {".cube"}

_BASENAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
_WINDOWS_DEVICES = {"con", "prn", "aux", "nul", *(f"com{i}" for i in range(10)), *(f"lpt{i}" for i in range(10))}
_SLUG_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")
_NAMESPACE_RE = re.compile(r"^[a-z0-9_][a-z0-9_-]{0,63}$")
_KEY_RE = re.compile(r"^[0-9a-f]{16,64}$")
_SHA_RE = re.compile(r"^[0-9a-f]{64}$")
_NPY_RE = re.compile(r"^[A-Za-z0-9_]{1,64}\.npy$")
_CHUNK = 1 << 20
MiB = 1 << 20


@dataclass(frozen=True)
class Limits:
    """What an installed bundle may hold. Generous for real avatars, far below what hurts a machine."""

    max_files: int = 256  # entries in the zip besides the manifest
    max_file_bytes: int = 512 * MiB  # one file, uncompressed (a background video)
    max_total_bytes: int = 1024 * MiB  # all files, uncompressed
    max_bundle_bytes: int = 1024 * MiB  # the .avatar file itself
    max_ratio: float = 50.0  # uncompressed / compressed, checked for entries over ratio_floor
    ratio_floor: int = 1 * MiB
    max_image_pixels: int = 64_000_000  # 8000 x 8000
    max_image_side: int = 16384
    max_manifest_bytes: int = 1 * MiB
    max_npz_members: int = 64


LIMITS = Limits()
# OpenCV's own decoder limit (read when cv2 loads); our header check runs first and is stricter.
os.environ.setdefault("OPENCV_IO_MAX_IMAGE_PIXELS", str(LIMITS.max_image_pixels))

# What zipfile raises on a damaged or hostile archive (caught only around zipfile's own reads).
_ZIP_ERRORS = (zipfile.BadZipFile, zipfile.LargeZipFile, zlib.error, EOFError, struct.error, NotImplementedError,
               RuntimeError, ValueError, OverflowError, UnicodeDecodeError)


class BundleError(UserError):
    """A bundle cannot be made, or is refused on install."""


@dataclass
class Installed:
    """A preset installed from a bundle (or put by hand) in the user's preset folder."""

    id: str
    name: str
    dir: Path
    manifest: dict = field(default_factory=dict)

    @property
    def preset_file(self) -> Path:
        return self.dir / PRESET_NAME


def slugify(text: str) -> str:
    """A folder-safe id from a name: 'Mona Lisa (warm)' -> 'mona-lisa-warm'."""
    slug = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:64].strip("-")
    return slug or "preset"


def _display(bundle: Path, member: str | None = None) -> Where:
    return Where(bundle, None, member)


# ---- pack --------------------------------------------------------------------------------------

def _plain(value: Any) -> Any:
    """LocDict/LocList -> dict/list (for YAML output)."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


def _set(data: Any, keys: tuple, value: Any) -> None:
    for k in keys[:-1]:
        data = data[k]
    data[keys[-1]] = value


def _asset_name(src: Path, used: set[str]) -> str:
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", src.stem).lstrip("._-")[:80] or "file"
    if stem.split(".")[0].lower() in _WINDOWS_DEVICES:
        stem = f"file-{stem}"
    suffix = src.suffix.lower()
    name, n = f"{stem}{suffix}", 2
    while name.casefold() in used:
        name, n = f"{stem}-{n}{suffix}", n + 1
    used.add(name.casefold())
    return name


def _precomputed(preset: Preset) -> dict[str, bytes]:
    """Precomputed arrays the preset's nodes offer (``bundle_precomputed``), as npz bytes by bundle name."""
    ctx = BuildContext(preset_name=preset.name, preset_dir=preset.dir, preset_file=preset.file,
                       avatar=preset.avatar)
    out: dict[str, bytes] = {}
    for spec in preset.nodes:
        hook = getattr(spec.cls, PRECOMPUTE_HOOK, None)
        if hook is None:
            continue
        try:
            entries = list(hook(dict(spec.params), ctx) or ())
        except Exception as exc:  # a missing model must not stop packing: the node computes it on first use
            log.warning("node %s (%s): its precomputed data is left out of the bundle (%s); it will be computed "
                        "on first use", spec.id, spec.kind, exc)
            continue
        for namespace, key, arrays in entries:
            if not (_NAMESPACE_RE.match(namespace) and _KEY_RE.match(key)) or not all(
                    isinstance(a, np.ndarray) and a.dtype.kind in "biufc" for a in arrays.values()):
                raise TypeError(f"node {spec.kind}: {PRECOMPUTE_HOOK} returned a bad entry {namespace!r}/{key!r} "
                                "(namespace: lower_snake, key: hex, arrays: numeric ndarrays)")
            buf = io.BytesIO()
            np.savez(buf, **arrays)
            out[f"{PRECOMPUTED_DIR}/{namespace}/{key}.npz"] = buf.getvalue()
    return out


def _leading_comments(path: Path | None) -> str:
    if path is None:
        return ""
    lines = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.startswith("#"):
            break
        if "yaml-language-server" not in line:
            lines.append(line)
    return "\n".join(lines) + "\n" if lines else ""


def pack(preset_word: str | Path, output: str | Path | None = None, *, creator: str | None = None,
         license: str | None = None, description: str | None = None, bundle_id: str | None = None) -> Path:
    """Write a bundle for a preset (file or name). Returns the bundle's path."""
    from .library import find_preset_file

    src_file = find_preset_file(str(preset_word))
    preset = load_preset(src_file)
    raw = preset.raw
    creator = (creator or raw.get("author") or "").strip()
    license = (license or raw.get("license") or "").strip()
    description = (description if description is not None else preset.description or "").strip()
    if not creator:
        raise BundleError("a bundle names its creator", Where(src_file, None, "author"),
                          "pass --creator 'Your Name' or add `author: Your Name` to the preset")
    if not license:
        raise BundleError("a bundle states the licence of its files", Where(src_file, None, "license"),
                          "pass --license (e.g. CC-BY-4.0) or add `license: CC-BY-4.0` to the preset")
    out = Path(output) if output else Path(slugify(preset.name) + BUNDLE_SUFFIX)
    if out.suffix != BUNDLE_SUFFIX:
        raise BundleError(f"a bundle file ends in {BUNDLE_SUFFIX}, got {out.name!r}", Where(out),
                          f"use -o {out.stem}{BUNDLE_SUFFIX}")
    bundle_id = bundle_id or slugify(out.stem)
    if not _SLUG_RE.match(bundle_id):
        raise BundleError(f"bundle id must be lower-case letters, digits, - or _ (up to 64), got {bundle_id!r}")

    data = {"schema": SCHEMA_VERSION, **{k: v for k, v in _plain(raw).items() if k != "schema"}}
    data.setdefault("author", creator)
    data.setdefault("license", license)
    if description:
        data.setdefault("description", description)
    assets: dict[str, Path] = {}
    by_source: dict[Path, str] = {}
    used: set[str] = set()
    for ref in file_refs(raw):
        path = Path(ref.value).expanduser()
        path = path if path.is_absolute() else preset.dir / path
        where = Where(src_file, ref.line, ref.field)
        if not path.is_file():
            raise BundleError(f"file not found: {ref.value!r} (looked in {path.parent})", where)
        if path.suffix.lower() not in ASSET_SUFFIXES:
            raise BundleError(f"{ref.value!r}: a bundle carries only images ({', '.join(sorted(IMAGE_FORMATS))}), "
                              f"videos ({', '.join(sorted(VIDEO_SUFFIXES))}) and .cube LUTs", where,
                              "convert the file to one of those formats")
        real = path.resolve()
        if real not in by_source:
            by_source[real] = f"{FILES_DIR}/{_asset_name(path, used)}"
            assets[by_source[real]] = path
        _set(data, ref.keys, by_source[real])

    import yaml

    header = _leading_comments(preset.file) + f"# packed by avatarcast {__version__} from {src_file.name}\n"
    preset_text = header + yaml.safe_dump(data, sort_keys=False, allow_unicode=True, default_flow_style=False)
    blobs: dict[str, bytes] = {PRESET_NAME: preset_text.encode("utf-8"), **_precomputed(preset)}
    files: dict[str, dict] = {}
    for name, blob in blobs.items():
        files[name] = {"sha256": hashlib.sha256(blob).hexdigest(), "size": len(blob)}
    for name, path in assets.items():
        files[name] = {"sha256": disk_cache.file_digest(path), "size": path.stat().st_size}
    manifest = {"format": BUNDLE_FORMAT, "format_version": BUNDLE_VERSION, "id": bundle_id, "name": preset.name,
                "creator": creator, "license": license, "description": description,
                "preset_schema": SCHEMA_VERSION, "avatarcast": __version__,
                "created": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"), "files": files}

    out.parent.mkdir(parents=True, exist_ok=True)
    part = out.with_name(out.name + ".part")
    try:
        with zipfile.ZipFile(part, "w") as zf:
            zf.writestr(MANIFEST_NAME, json.dumps(manifest, indent=2, ensure_ascii=False), zipfile.ZIP_DEFLATED)
            for name, blob in blobs.items():
                zf.writestr(name, blob, zipfile.ZIP_DEFLATED)
            for name, path in assets.items():  # media is compressed already: stored, fast to install
                method = zipfile.ZIP_DEFLATED if path.suffix.lower() in (".cube", ".bmp") else zipfile.ZIP_STORED
                zf.write(path, name, method)
        os.replace(part, out)
    except BaseException:
        part.unlink(missing_ok=True)
        raise
    log.info("packed %r: %d files, %.1f MB -> %s", preset.name, len(files),
             sum(f["size"] for f in files.values()) / 1e6, out)
    return out


# ---- inspect (nothing written) -----------------------------------------------------------------

@dataclass
class _Plan:
    manifest: dict
    members: dict[str, zipfile.ZipInfo]
    manifest_bytes: bytes

    @property
    def id(self) -> str:
        return self.manifest["id"]

    @property
    def files(self) -> dict[str, dict]:
        return self.manifest["files"]


def _name_problem(name: str) -> str | None:
    """Why a zip member name is unsafe, or None."""
    if not name:
        return "an empty name"
    if any(ord(c) < 32 or c == "\x7f" for c in name):
        return "a control character in the name"
    if "\\" in name:
        return "a backslash, a Windows path separator that can leave the install folder"
    if name.startswith("/"):
        return "an absolute path leaves the install folder"
    if re.match(r"^[A-Za-z]:", name):
        return "a drive letter leaves the install folder"
    parts = name.rstrip("/").split("/")
    if ".." in parts:
        return "'..' leaves the install folder"
    if any(p in ("", ".") for p in parts):
        return "an empty or '.' path component"
    if len(name) > 200:
        return "a name longer than 200 characters"
    return None


def _layout_problem(name: str, is_dir: bool) -> str | None:
    parts = name.rstrip("/").split("/")
    if is_dir:
        ok = parts in ([FILES_DIR], [PRECOMPUTED_DIR]) or (
            len(parts) == 2 and parts[0] == PRECOMPUTED_DIR and _NAMESPACE_RE.match(parts[1]))
        return None if ok else "is an unexpected folder"
    if parts in ([MANIFEST_NAME], [PRESET_NAME]):
        return None
    if len(parts) == 2 and parts[0] == FILES_DIR:
        if not _BASENAME_RE.match(parts[1]):
            return "has characters other than letters, digits, '.', '-', '_' in its name"
        if parts[1].split(".")[0].lower() in _WINDOWS_DEVICES:
            return "is named after a Windows device (CON, NUL, COM1, ...), which cannot be a file there"
        suffix = posixpath.splitext(parts[1])[1].lower()
        if suffix not in ASSET_SUFFIXES:
            return (f"is a file type bundles do not carry ({suffix or 'no extension'}; allowed: "
                    f"{', '.join(sorted(ASSET_SUFFIXES))})")
        return None
    if len(parts) == 3 and parts[0] == PRECOMPUTED_DIR and _NAMESPACE_RE.match(parts[1]) and \
            parts[2].endswith(".npz") and _KEY_RE.match(parts[2][:-4]):
        return None
    return (f"is in an unexpected place (a bundle holds {MANIFEST_NAME}, {PRESET_NAME}, {FILES_DIR}/NAME and "
            f"{PRECOMPUTED_DIR}/NAMESPACE/KEY.npz)")


def _damaged(bundle: Path, exc: BaseException) -> BundleError:
    return BundleError(f"damaged or not an avatarcast bundle ({type(exc).__name__}: {str(exc)[:80]})",
                       _display(bundle), "get the bundle again from its creator")


def _chunks(zf: zipfile.ZipFile, info: zipfile.ZipInfo, bundle: Path):
    """The member's bytes, 1 MiB at a time; any error reading the archive is a BundleError."""
    try:
        with zf.open(info) as src:
            while chunk := src.read(_CHUNK):
                yield chunk
    except _ZIP_ERRORS + (OSError,) as exc:
        raise _damaged(bundle, exc) from None


def _read_limited(zf: zipfile.ZipFile, info: zipfile.ZipInfo, limit: int, bundle: Path) -> bytes:
    chunks, n = [], 0
    for chunk in _chunks(zf, info, bundle):
        n += len(chunk)
        if n > limit:
            raise BundleError(f"larger than {limit // 1024} KiB", _display(bundle, info.filename))
        chunks.append(chunk)
    return b"".join(chunks)


def _mb(n: float) -> str:
    return f"{n / MiB:.1f} MiB" if n >= MiB else f"{n / 1024:.1f} KiB"


def _inspect(zf: zipfile.ZipFile, bundle: Path, limits: Limits) -> _Plan:
    infos = zf.infolist()
    if len(infos) > limits.max_files + 1:
        raise BundleError(f"too many files: {len(infos)} (a bundle holds at most {limits.max_files})",
                          _display(bundle))
    members: dict[str, zipfile.ZipInfo] = {}
    folded: set[str] = set()
    total = 0
    for info in infos:
        name = info.filename
        where = _display(bundle, name)
        problem = _name_problem(name)
        if problem:
            raise BundleError(f"unsafe path {name!r} in the bundle: {problem}", _display(bundle))
        mode = info.external_attr >> 16
        ftype = stat.S_IFMT(mode)
        if ftype == stat.S_IFLNK:
            raise BundleError("is a symbolic link: bundles hold plain files only", where)
        if ftype not in (0, stat.S_IFREG, stat.S_IFDIR):
            raise BundleError("is a special file (device, pipe or socket): bundles hold plain files only", where)
        if info.flag_bits & 0x1:
            raise BundleError("is encrypted: bundles are not", where)
        if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
            raise BundleError(f"uses compression method {info.compress_type}: bundles use stored or deflate",
                              where)
        if name.casefold() in folded:
            raise BundleError("appears twice in the bundle (names must be unique, ignoring case)", where)
        folded.add(name.casefold())
        problem = _layout_problem(name, info.is_dir())
        if problem:
            raise BundleError(problem, where)
        if info.is_dir():
            if info.file_size:
                raise BundleError("a folder entry with contents", where)
            continue
        if info.file_size > limits.max_file_bytes:
            raise BundleError(f"is {_mb(info.file_size)} unpacked (the limit is {_mb(limits.max_file_bytes)} a file)",
                              where)
        total += info.file_size
        if total > limits.max_total_bytes:
            raise BundleError(f"unpacks to more than {_mb(limits.max_total_bytes)} in all", _display(bundle))
        if info.file_size > limits.ratio_floor and info.file_size > limits.max_ratio * max(info.compress_size, 1):
            raise BundleError(f"zip bomb: {_mb(info.compress_size)} would unpack to {_mb(info.file_size)} "
                              f"(more than {limits.max_ratio:g}x)", where)
        members[name] = info
    if MANIFEST_NAME not in members:
        raise BundleError(f"no {MANIFEST_NAME}: not an avatarcast bundle", _display(bundle),
                          "make bundles with `avatarcast preset pack`")
    raw = _read_limited(zf, members.pop(MANIFEST_NAME), limits.max_manifest_bytes, bundle)
    manifest = _parse_manifest(raw, bundle, limits)
    listed = set(manifest["files"])
    for name in sorted(members):
        if name not in listed:
            raise BundleError("is in the bundle but not in its manifest (refused: unlisted files are not verified)",
                              _display(bundle, name))
    for name in sorted(listed):
        if name not in members:
            raise BundleError("is listed in the manifest but missing from the bundle", _display(bundle, name))
        if members[name].file_size != manifest["files"][name]["size"]:
            raise BundleError(f"size {members[name].file_size} differs from the manifest's "
                              f"{manifest['files'][name]['size']}", _display(bundle, name))
    if PRESET_NAME not in listed:
        raise BundleError(f"no {PRESET_NAME} in the bundle", _display(bundle))
    return _Plan(manifest, members, raw)


def _parse_manifest(raw: bytes, bundle: Path, limits: Limits) -> dict:
    where = _display(bundle, MANIFEST_NAME)
    try:
        m = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise BundleError(f"not valid JSON ({str(exc)[:80]})", where) from None
    if not isinstance(m, dict) or m.get("format") != BUNDLE_FORMAT:
        raise BundleError(f"not an avatarcast bundle manifest (no \"format\": \"{BUNDLE_FORMAT}\")", where)
    version = m.get("format_version")
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise BundleError(f"format_version must be a whole number from 1, got {version!r}", where)
    if version > BUNDLE_VERSION:
        raise BundleError(f"bundle format {version} is newer than this avatarcast reads (up to {BUNDLE_VERSION})",
                          where, "upgrade avatarcast: pip install -U avatarcast")
    bid = m.get("id")
    if not isinstance(bid, str) or not _SLUG_RE.match(bid):
        raise BundleError(f"id must be lower-case letters, digits, - or _ (up to 64), got {bid!r}", where)
    for key in ("name", "creator", "license"):
        if not isinstance(m.get(key), str) or not m[key].strip() or len(m[key]) > 500:
            raise BundleError(f"{key!r} must be non-empty text (up to 500 characters), got {m.get(key)!r}"[:200],
                              where)
    if not isinstance(m.get("description", ""), str):
        raise BundleError(f"'description' must be text, got {m.get('description')!r}"[:200], where)
    files = m.get("files")
    if not isinstance(files, dict) or len(files) > limits.max_files:
        raise BundleError(f"'files' must map up to {limits.max_files} file names to {{sha256, size}}", where)
    for name, entry in files.items():
        ok = isinstance(entry, dict) and isinstance(entry.get("sha256"), str) and _SHA_RE.match(entry["sha256"]) \
            and type(entry.get("size")) is int and entry["size"] >= 0
        if not ok:
            raise BundleError(f"files[{name!r}] must be {{\"sha256\": 64 hex digits, \"size\": bytes}}"[:200], where)
    return m


# ---- extract and verify (inside a temporary folder) -------------------------------------------

def _inside(root: Path, target: Path) -> bool:
    real_root = os.path.realpath(root)
    return os.path.realpath(target).startswith(real_root + os.sep)


def _extract(zf: zipfile.ZipFile, plan: _Plan, tmp: Path, bundle: Path, limits: Limits) -> None:
    (tmp / MANIFEST_NAME).write_bytes(plan.manifest_bytes)
    for name in sorted(plan.files):
        info, expect = plan.members[name], plan.files[name]
        where = _display(bundle, name)
        target = tmp.joinpath(*name.split("/"))
        target.parent.mkdir(parents=True, exist_ok=True)
        if not _inside(tmp, target):
            raise BundleError("would be written outside the install folder", where)
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_BINARY", 0)
        fd = os.open(target, flags, 0o644)
        h, n = hashlib.sha256(), 0
        with os.fdopen(fd, "wb") as out:
            for chunk in _chunks(zf, info, bundle):
                n += len(chunk)
                if n > expect["size"] or n > limits.max_file_bytes:
                    raise BundleError(f"unpacks to more than the {expect['size']} bytes its manifest and zip "
                                      "header declare", where)
                if n > limits.ratio_floor and n > limits.max_ratio * max(info.compress_size, 1):
                    raise BundleError(f"zip bomb: unpacks more than {limits.max_ratio:g}x its packed size", where)
                h.update(chunk)
                out.write(chunk)
        if n != expect["size"]:
            raise BundleError(f"holds {n} bytes, its manifest says {expect['size']}", where)
        if h.hexdigest() != expect["sha256"]:
            raise BundleError("its SHA-256 differs from the manifest's (changed after packing, or damaged)", where,
                              "get the bundle again from its creator")


def check_image(data: bytes, suffix: str, limits: Limits = LIMITS) -> str | None:
    """None if ``data`` is a decodable image of the kind ``suffix`` names and of a sane size; else why not.
    The pixel size is read from the header before any decoder runs (decompression bombs)."""
    import cv2

    try:
        fmt, w, h = header_size(data)
    except ValueError as exc:
        return f"not an image: {exc}"
    if fmt != IMAGE_FORMATS[suffix]:
        return f"named {suffix} but holds a {fmt.upper()} image"
    if w > limits.max_image_side or h > limits.max_image_side or w * h > limits.max_image_pixels:
        return (f"decompression bomb: its header claims {w}x{h} pixels (the limit is "
                f"{limits.max_image_pixels / 1e6:g} megapixels, {limits.max_image_side} a side)")
    # JPEG: libjpeg's 1/8-scale decode still reads every entropy-coded block (damage is caught) but
    # skips most of the inverse DCT: 2x faster on photos. Other formats decode in full.
    scale, flag = (8, cv2.IMREAD_REDUCED_GRAYSCALE_8) if fmt == "jpeg" else (1, cv2.IMREAD_COLOR)
    try:
        img = cv2.imdecode(np.frombuffer(data, np.uint8), flag)
    except cv2.error:
        img = None
    if img is None:
        return "cannot be decoded (damaged, or not really an image)"
    if img.shape[:2] != (-(-h // scale), -(-w // scale)):
        return f"decodes to {img.shape[1] * scale}x{img.shape[0] * scale}, but its header says {w}x{h}"
    return None


def _check_npz(path: Path, limits: Limits) -> str | None:
    try:
        with zipfile.ZipFile(path) as z:
            infos = z.infolist()
            if len(infos) > limits.max_npz_members:
                return f"holds {len(infos)} arrays (at most {limits.max_npz_members})"
            total = 0
            for i in infos:
                if not _NPY_RE.match(i.filename) or stat.S_IFMT(i.external_attr >> 16) not in (0, stat.S_IFREG):
                    return f"holds {i.filename!r}, not a plain .npy array"
                total += i.file_size
                if i.file_size > limits.ratio_floor and i.file_size > limits.max_ratio * max(i.compress_size, 1):
                    return "zip bomb inside the precomputed data"
            if total > limits.max_file_bytes:
                return f"unpacks to {_mb(total)} (the limit is {_mb(limits.max_file_bytes)})"
        with np.load(path, allow_pickle=False) as z:
            for key in z.files:
                arr = z[key]
                if arr.dtype.kind not in "biufc":
                    return f"array {key!r} is not numeric ({arr.dtype})"
    except ValueError as exc:  # object arrays need pickles: refused
        return f"not plain numeric arrays ({str(exc)[:80]})"
    except _ZIP_ERRORS + (OSError,) as exc:
        return f"not a valid .npz ({type(exc).__name__}: {str(exc)[:60]})"
    return None


def _check_files(tmp: Path, plan: _Plan, bundle: Path, limits: Limits) -> None:
    """Each file is the kind its name says (images decoded in parallel threads: cv2 releases the GIL)."""
    from concurrent.futures import ThreadPoolExecutor

    names = sorted(n for n in plan.files if n != PRESET_NAME)
    images = [n for n in names if posixpath.splitext(n)[1].lower() in IMAGE_FORMATS]
    workers = max(1, min(4, len(images), os.cpu_count() or 1))
    with ThreadPoolExecutor(workers) as pool:
        image_problems = dict(zip(images, pool.map(
            lambda n: check_image(tmp.joinpath(*n.split("/")).read_bytes(), posixpath.splitext(n)[1].lower(),
                                  limits), images), strict=True))
    for name in names:
        path = tmp.joinpath(*name.split("/"))
        suffix = path.suffix.lower()
        problem = None
        if suffix in IMAGE_FORMATS:
            problem = image_problems[name]
        elif suffix in VIDEO_SUFFIXES:
            with open(path, "rb") as fh:
                if not video_ok(fh.read(16), suffix):
                    problem = f"not a {suffix} video (its first bytes are not that container's)"
        elif suffix == ".cube":
            problem = cube_problem(path.read_bytes())
        elif suffix == ".npz":
            problem = _check_npz(path, limits)
        if problem:
            raise BundleError(problem, _display(bundle, name))


def _ref_problem(value: str) -> str | None:
    if value.startswith("~"):
        return "a file in the home folder"
    problem = _name_problem(value)
    if problem:
        return problem
    return None


def _check_preset(tmp: Path, plan: _Plan, bundle: Path) -> Preset:
    shown = Path(f"{bundle}/{PRESET_NAME}")
    try:
        text = (tmp / PRESET_NAME).read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BundleError(f"not UTF-8 text (byte {exc.start})", Where(shown)) from None
    data = loads(text, shown)  # refuses aliases, anchors, tags, merge keys
    migrated = upgrade(data, shown)
    for ref in file_refs(migrated):
        where = Where(shown, ref.line, ref.field)
        problem = _ref_problem(ref.value)
        norm = posixpath.normpath(ref.value) if not problem else ""
        if problem or norm not in plan.files or not norm.startswith(FILES_DIR + "/"):
            raise BundleError(f"names {ref.value!r}, which is outside the bundle" + (f": {problem}" if problem else ""),
                              where, f"a bundled preset may only name the files packed in it, {FILES_DIR}/NAME")
    preset = parse_preset(data, file=shown, base_dir=tmp)
    for ref in file_refs(migrated):
        if ref.kind == "avatar" and posixpath.splitext(ref.value)[1].lower() not in IMAGE_FORMATS:
            raise BundleError(f"avatar image {ref.value!r} is not a PNG, JPEG, BMP or WebP file",
                              Where(shown, ref.line, ref.field))
    return preset


# ---- install, list, show, remove ---------------------------------------------------------------

def _open_zip(bundle: Path) -> zipfile.ZipFile:
    try:
        return zipfile.ZipFile(bundle)
    except _ZIP_ERRORS + (OSError,) as exc:
        raise _damaged(bundle, exc) from None


def installed(root: Path | None = None) -> list[Installed]:
    """Presets in the user's preset folder (one folder each, with preset.yaml), by id."""
    from .library import user_presets_dir

    root = Path(root) if root else user_presets_dir()
    out = []
    if not root.is_dir():
        return out
    for d in sorted(root.iterdir()):
        pf = d / PRESET_NAME
        if d.name.startswith(".") or not pf.is_file():
            continue
        manifest: dict = {}
        try:
            manifest = json.loads((d / MANIFEST_NAME).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            pass
        try:
            data = loads(pf.read_text(encoding="utf-8"), pf)
            name = data.get("name") if isinstance(data, dict) else None
        except (UserError, OSError, UnicodeDecodeError):
            name = None
        out.append(Installed(d.name, str(name or manifest.get("name") or d.name), d,
                             manifest if isinstance(manifest, dict) else {}))
    return out


def find_installed(word: str, root: Path | None = None) -> Installed:
    items = installed(root)
    for it in items:
        if it.id == word:
            return it
    for it in items:
        if it.name == word:
            return it
    known = ", ".join(f"{it.id} ({it.name})" for it in items) or "none installed"
    raise UserError(f"no installed preset named {word!r}", hint=f"installed: {known}")


def _check_clash(bundle_id: str, name: str | None, root: Path, force: bool) -> None:
    if force:
        return
    from .library import shipped_presets_dir

    hint = "use --force to replace it"
    if (root / bundle_id).exists() or (root / bundle_id).is_symlink() or (root / f"{bundle_id}.yaml").exists():
        raise BundleError(f"a preset with id {bundle_id!r} is already installed", Where(root / bundle_id), hint)
    if (shipped_presets_dir() / f"{bundle_id}.yaml").exists():
        raise BundleError(f"id {bundle_id!r} is the name of a shipped preset", None,
                          "use --force to install it anyway (it then hides the shipped one)")
    if name is not None:
        for it in installed(root):
            if it.name == name and it.id != bundle_id:
                raise BundleError(f"a preset named {name!r} is already installed (as {it.id!r})", Where(it.dir),
                                  hint + f", or `avatarcast preset remove {it.id}` first")


def _move_into_place(tmp: Path, final: Path, force: bool) -> None:
    if final.exists() or final.is_symlink():
        if not force:
            raise BundleError(f"a preset with id {final.name!r} is already installed", Where(final),
                              "use --force to replace it")
        old = Path(tempfile.mkdtemp(prefix=".old-", dir=final.parent))
        os.rename(final, old / "x")
        try:
            os.rename(tmp, final)
        except BaseException:
            os.rename(old / "x", final)
            raise
        finally:
            if (old / "x").is_symlink():
                (old / "x").unlink()
            shutil.rmtree(old, ignore_errors=True)
    else:
        try:
            os.rename(tmp, final)
        except OSError as exc:
            raise BundleError(f"cannot install into {final}: {exc.strerror}", Where(final)) from None


def _seed_cache(final: Path, plan: _Plan) -> None:
    """Hand the bundle's precomputed arrays to engine.cache (re-saved through numpy, pickles off)."""
    for name in plan.files:
        parts = name.split("/")
        if parts[0] != PRECOMPUTED_DIR:
            continue
        namespace, key = parts[1], parts[2][:-4]
        dest = disk_cache.entry_path(namespace, key)
        if dest.exists():
            continue
        try:
            with np.load(final.joinpath(*parts), allow_pickle=False) as z:
                arrays = {k: z[k] for k in z.files}
            disk_cache.store(dest, arrays)
        except OSError as exc:
            log.warning("cannot seed the cache with %s: %s (it will be computed on first use)", name, exc)


def install(bundle: str | Path, *, force: bool = False, root: str | Path | None = None,
            limits: Limits = LIMITS) -> Installed:
    """Verify a bundle and install it into ``root`` (default: the user's preset folder) as ``root/ID/``.
    Raises BundleError (or PresetError for the preset inside) and leaves nothing behind on refusal."""
    from .library import user_presets_dir

    bundle = Path(bundle)
    try:
        st = bundle.stat()
    except FileNotFoundError:
        raise BundleError("file not found", Where(bundle), "check the path") from None
    except OSError as exc:
        raise BundleError(f"cannot read: {exc.strerror}", Where(bundle)) from None
    if not stat.S_ISREG(st.st_mode):
        raise BundleError("not a file", Where(bundle))
    if st.st_size > limits.max_bundle_bytes:
        raise BundleError(f"the bundle is {_mb(st.st_size)} (the limit is {_mb(limits.max_bundle_bytes)})",
                          Where(bundle))
    root = Path(root) if root else user_presets_dir()
    zf = _open_zip(bundle)
    with zf:
        plan = _inspect(zf, bundle, limits)
        _check_clash(plan.id, None, root, force)
        made: list[Path] = []
        p = root
        while not p.exists():
            made.append(p)
            p = p.parent
        root.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".install-", dir=root))
        try:
            _extract(zf, plan, tmp, bundle, limits)
            _check_files(tmp, plan, bundle, limits)
            preset = _check_preset(tmp, plan, bundle)
            _check_clash(plan.id, preset.name, root, force)
            _move_into_place(tmp, root / plan.id, force)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            for d in made:  # folders this call created, deepest first
                try:
                    d.rmdir()
                except OSError:
                    break
            raise
    final = root / plan.id
    _seed_cache(final, plan)
    log.info("installed %r as %s (%d files, by %s, %s)", preset.name, final, len(plan.files),
             plan.manifest["creator"], plan.manifest["license"])
    return Installed(plan.id, preset.name, final, plan.manifest)


def remove(word: str, root: Path | None = None) -> Installed:
    """Remove an installed preset (by id or name) from the user's preset folder."""
    it = find_installed(word, root)
    if it.dir.is_symlink():
        it.dir.unlink()
        return it
    trash = Path(tempfile.mkdtemp(prefix=".remove-", dir=it.dir.parent))
    os.rename(it.dir, trash / it.id)
    shutil.rmtree(trash)
    return it


# ---- CLI ---------------------------------------------------------------------------------------

def cmd_pack(args) -> int:
    out = pack(args.preset, args.output, creator=args.creator, license=args.license,
               description=args.description, bundle_id=args.id)
    m = json.loads(zipfile.ZipFile(out).read(MANIFEST_NAME))
    total = sum(f["size"] for f in m["files"].values())
    print(f"wrote {out} ({len(m['files'])} files, {total / 1e6:.1f} MB): {m['name']!r} by {m['creator']}, "
          f"{m['license']}; install with: avatarcast preset install {out}")
    return 0


def cmd_install(args) -> int:
    it = install(args.bundle, force=args.force)
    print(f"installed {it.name!r} into {it.dir}; use it with: avatarcast run --preset {it.id}")
    return 0


def cmd_list(args) -> int:
    from .library import shipped_presets_dir, user_presets_dir

    items = installed()
    print(f"installed ({user_presets_dir()}):")
    for it in items:
        m = it.manifest
        print(f"  {it.id:<24} {it.name}" + (f"  by {m['creator']}, {m.get('license', '?')}" if m.get("creator") else ""))
    if not items:
        print("  (none: `avatarcast preset install FILE.avatar`)")
    print(f"shipped ({shipped_presets_dir()}):")
    for f in sorted(shipped_presets_dir().glob("*.yaml")):
        try:
            data = loads(f.read_text(encoding="utf-8"), f)
            name = data.get("name", "") if isinstance(data, dict) else ""
        except (UserError, OSError, UnicodeDecodeError):
            name = "(unreadable)"
        print(f"  {f.stem:<24} {name}")
    return 0


def cmd_show(args) -> int:
    it = find_installed(args.name)
    m = it.manifest
    preset = load_preset(it.preset_file)
    print(f"{it.name}  ({it.id}, {it.dir})")
    for key in ("creator", "license", "description", "avatarcast", "created"):
        if m.get(key):
            print(f"  {key + ':':<13}{m[key]}")
    print(f"  {'pipeline:':<13}{' -> '.join(n.kind for n in preset.nodes) or '(none)'}")
    for name, f in sorted(m.get("files", {}).items()):
        print(f"  {name:<40} {f['size']:>12,} B  sha256 {f['sha256'][:16]}...")
    return 0


def cmd_remove(args) -> int:
    it = remove(args.name)
    print(f"removed {it.name!r} ({it.dir})")
    return 0


def cmd_schema(args) -> int:
    from .presetschema import preset_schema_text

    text = preset_schema_text()
    if args.output:
        Path(args.output).write_text(text, encoding="utf-8")
        print(f"wrote {args.output}")
    else:
        sys.stdout.write(text)
    return 0


def add_commands(sub, parsers) -> None:
    psub = parsers["preset_sub"]
    p = psub.add_parser("pack", help="write a .avatar bundle: the preset, its files, precomputed data, a manifest")
    p.add_argument("preset", metavar="PRESET", help="preset file or name")
    p.add_argument("-o", "--output", metavar="NAME.avatar", help="bundle to write (default: from the preset name)")
    p.add_argument("--creator", help="your name (default: the preset's `author`)")
    p.add_argument("--license", help="licence of the preset and its files, e.g. CC-BY-4.0 (default: `license`)")
    p.add_argument("--description", help="what it does (default: the preset's `description`)")
    p.add_argument("--id", help="folder name when installed (default: from the bundle file name)")
    p.set_defaults(func=cmd_pack)
    p = psub.add_parser("install", help="verify a .avatar bundle and install it into your preset folder")
    p.add_argument("bundle", metavar="FILE.avatar")
    p.add_argument("--force", action="store_true", help="replace an installed preset with the same id or name")
    p.set_defaults(func=cmd_install)
    p = psub.add_parser("list", help="installed and shipped presets")
    p.set_defaults(func=cmd_list)
    p = psub.add_parser("show", help="an installed preset: creator, licence, files, pipeline")
    p.add_argument("name", metavar="NAME", help="id or name")
    p.set_defaults(func=cmd_show)
    p = psub.add_parser("remove", help="uninstall a preset from your preset folder")
    p.add_argument("name", metavar="NAME", help="id or name")
    p.set_defaults(func=cmd_remove)
    p = psub.add_parser("schema", help="print the preset JSON Schema (for editors' YAML language servers)")
    p.add_argument("-o", "--output", metavar="FILE", help="write it to FILE instead")
    p.set_defaults(func=cmd_schema)


__all__ = ["BundleError", "Installed", "Limits", "LIMITS", "pack", "install", "installed", "find_installed",
           "remove", "check_image", "slugify", "add_commands"]


# ---- benchmarks (`avatarcast bench bundle_install_20mb preset_validate`) -----------------------------

def _bench_dir() -> Path:
    import atexit

    d = Path(tempfile.mkdtemp(prefix="avatarcast-bench-"))
    atexit.register(shutil.rmtree, d, True)
    return d


def _bench_photo(path: Path, seed: int, w: int = 2400, h: int = 1800) -> None:
    """A photo-like JPEG (smooth shading plus sensor noise), about 5 MB at quality 97."""
    import cv2

    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    base = np.stack([128 + 90 * np.sin(x / (150 + 40 * c) + y / 230 + seed) for c in range(3)], -1)
    img = np.clip(base + rng.normal(0, 24, (h, w, 3)), 0, 255).astype(np.uint8)
    cv2.imwrite(str(path), img, [cv2.IMWRITE_JPEG_QUALITY, 97])


def _install_notes(r: dict) -> list[str]:
    inst = r["install 20 MB bundle"]["median_ms"]
    floor = r["read + sha256 + write same bytes"]["median_ms"]
    return [f"install = {inst:.0f} ms for {_BENCH_SIZE[0] / 1e6:.1f} MB (target < 1000 ms); "
            f"{inst / floor:.1f}x the read+hash+write floor"]


_BENCH_SIZE = [0]


def _register_bench_cases() -> None:
    from .bench import case

    @case("bundle_install_20mb", "install a 20 MB bundle (photos): verify, extract, check images, rename",
          _install_notes)
    def _bench_install():
        d = _bench_dir()
        src = d / "src"
        src.mkdir()
        names, total, seed = [], 0, 0
        while total < 20_000_000:
            p = src / f"shot{seed}.jpg"
            _bench_photo(p, seed)
            total += p.stat().st_size
            names.append(p.name)
            seed += 1
        (src / "preset.yaml").write_text(
            "schema: 1\nname: Bench\nauthor: bench\nlicense: CC0-1.0\n"
            f"avatar:\n  images: [{', '.join(names)}]\n"
            "pipeline:\n  - node: mirror\n  - node: color_adjust\n    saturation: 0.3\n", encoding="utf-8")
        bundle = pack(src / "preset.yaml", d / "bench.avatar")
        _BENCH_SIZE[0] = bundle.stat().st_size
        root = d / "presets"
        copy = d / "copy.bin"

        def floor():
            data = bundle.read_bytes()
            hashlib.sha256(data).hexdigest()
            copy.write_bytes(data)

        return {"install 20 MB bundle": lambda: install(bundle, root=root, force=True),
                "read + sha256 + write same bytes": floor}

    @case("preset_validate", "load and validate a preset file (YAML, migration, params, wiring), target < 50 ms")
    def _bench_validate():
        from .library import shipped_presets_dir
        from .presetschema import preset_schema

        d = _bench_dir()
        _bench_photo(d / "face.jpg", 0, 640, 480)
        entries = []
        for i in range(8):
            entries += [f"  - node: crop\n    id: c{i}\n    params: {{x: 2, y: 2}}\n",
                        f"  - node: color_adjust\n    id: g{i}\n    inputs: {{frame: c{i}}}\n    gamma: 0.1\n",
                        f"  - node: mirror\n    id: m{i}\n"]
        big = d / "big.yaml"
        big.write_text("# 24 nodes, schema 0 (migrated), explicit wiring, an avatar image\nname: Big\n"
                       "avatar: face.jpg\npipeline:\n" + "".join(entries) + "output: m7\n", encoding="utf-8")
        shipped = shipped_presets_dir() / "closeup-framing.yaml"
        import jsonschema

        validator = jsonschema.Draft202012Validator(preset_schema())
        from .yamlsafe import load_file

        data = load_file(shipped)
        return {"gallery preset (closeup-framing.yaml)": lambda: load_preset(shipped),
                "24-node schema-0 preset with avatar": lambda: load_preset(big),
                "JSON Schema check (jsonschema)": lambda: validator.validate(data)}


_register_bench_cases()
