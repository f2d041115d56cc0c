"""avatarcast engine: a headless runtime that runs a graph of nodes over video frames.

The engine knows nothing about faces. It owns the node contract (ports, params), preset loading,
graph building, frame memory, the live and offline runtimes, sources, sinks, the command bus and
the CLI. Effects live in the `nodes` package; OBS glue lives in `obs_plugin`.
"""

import os as _os

# OpenCV's FFmpeg backend prints its own lines ("moov atom not found") for bad files; we report those
# ourselves in one clear message. Must be set before cv2 is first imported.
_os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")
_os.environ.setdefault("OPENCV_LOG_LEVEL", "ERROR")

__version__ = "0.1.0"
