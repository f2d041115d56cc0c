"""Content-hash disk cache for precomputed data (avatar landmarks, meshes, textures).

``cached(namespace, files, compute, version)`` returns ``compute()``'s arrays, computed once per
content of ``files`` (not their names or times) and kept as ``.npz`` under the user cache folder.
Writes are atomic; a corrupt entry is recomputed. Safe to call from a background thread.
"""

from __future__ import annotations

import hashlib
import logging
import os
import sys
import tempfile
import threading
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path

import numpy as np

log = logging.getLogger("avatarcast.cache")
_MEM: OrderedDict[str, dict[str, np.ndarray]] = OrderedDict()
_MEM_MAX = 32
_LOCK = threading.Lock()


def cache_dir() -> Path:
    """AVATARCAST_CACHE, else the platform's user cache folder + /avatarcast."""
    if os.environ.get("AVATARCAST_CACHE"):
        return Path(os.environ["AVATARCAST_CACHE"]).expanduser()
    if sys.platform == "win32":
        base = Path(os.environ.get("LOCALAPPDATA", Path.home() / "AppData" / "Local"))
    elif sys.platform == "darwin":
        base = Path.home() / "Library" / "Caches"
    else:
        base = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    return base / "avatarcast"


def file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def content_key(namespace: str, files: list[Path], version: str = "1", extra: str = "") -> str:
    h = hashlib.sha256(f"{namespace}\0{version}\0{extra}".encode())
    for f in files:
        h.update(file_digest(Path(f)).encode())
    return h.hexdigest()[:32]


def entry_path(namespace: str, key: str) -> Path:
    return cache_dir() / namespace / f"{key}.npz"


def cached(namespace: str, files: list[Path], compute: Callable[[], dict[str, np.ndarray]], version: str = "1",
           extra: str = "") -> dict[str, np.ndarray]:
    """Arrays for this content: from memory, else disk, else ``compute()`` (then stored)."""
    key = content_key(namespace, files, version, extra)
    mem_key = f"{namespace}/{key}"
    with _LOCK:
        if mem_key in _MEM:
            _MEM.move_to_end(mem_key)
            return _MEM[mem_key]
    path = entry_path(namespace, key)
    data = None
    if path.exists():
        try:
            with np.load(path, allow_pickle=False) as z:
                data = {k: z[k] for k in z.files}
        except Exception as exc:  # corrupt or from an incompatible version: recompute
            log.warning("cache entry %s unreadable (%s); recomputing", path, exc)
    if data is None:
        data = compute()
        try:
            store(path, data)
        except OSError as exc:  # a read-only home must not stop the stream
            log.warning("cannot write cache %s: %s", path, exc)
    with _LOCK:
        _MEM[mem_key] = data
        while len(_MEM) > _MEM_MAX:
            _MEM.popitem(last=False)
    return data


def store(path: Path, data: dict[str, np.ndarray]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".", suffix=".npz.part", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            np.savez(fh, **data)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def clear_memory() -> None:
    with _LOCK:
        _MEM.clear()
