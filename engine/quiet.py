"""Keep native libraries quiet while they load models.

mediapipe's C++ side (TFLite, absl) prints lines such as "Created TensorFlow Lite XNNPACK delegate"
straight to file descriptor 2 when a graph is built and first run. ``native_stderr_quiet()`` sends fd 2
to /dev/null for that moment, while Python's own ``sys.stderr`` (and so our logging) keeps going to
the real stderr through a duplicate descriptor. With debug logging on, nothing is hidden.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager

_lock = threading.Lock()
_depth = 0
_saved: tuple[int, object] | None = None


@contextmanager
def native_stderr_quiet() -> Iterator[None]:
    global _depth, _saved
    if logging.getLogger().isEnabledFor(logging.DEBUG):
        yield
        return
    with _lock:
        if _depth == 0:
            try:
                sys.stderr.flush()
                real = os.dup(2)
                devnull = os.open(os.devnull, os.O_WRONLY)
                os.dup2(devnull, 2)
                os.close(devnull)
                _saved = (real, sys.stderr)
                sys.stderr = os.fdopen(os.dup(real), "w", buffering=1, closefd=True)
            except (OSError, ValueError, AttributeError):  # no real fd 2 (embedded, odd test runners)
                _saved = None
        _depth += 1
    try:
        yield
    finally:
        with _lock:
            _depth -= 1
            if _depth == 0 and _saved is not None:
                real, old_stderr = _saved
                _saved = None
                try:
                    sys.stderr.flush()
                    sys.stderr.close()
                finally:
                    sys.stderr = old_stderr
                    os.dup2(real, 2)
                    os.close(real)
