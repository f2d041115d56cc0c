"""Where avatarcast finds OBS, and what it does there.

Precedence, highest first: command-line flags (``--obs-host``, ``--obs-port``, ``--obs-password``), the
environment (``AVATARCAST_OBS_PASSWORD``), the config file ``obs.yaml`` in the user config folder
(``engine.library.user_config_dir()``; ``AVATARCAST_HOME`` moves it), then defaults. The password lives
only here: never in a preset, never in a log line (``__repr__`` hides it).

``obs.yaml``::

    host: 127.0.0.1          # where OBS runs
    port: 4455               # OBS: Tools > WebSocket Server Settings
    password: s3cret         # or AVATARCAST_OBS_PASSWORD
    unbound_scene: keep      # scenes no preset names: keep | passthrough | a preset name
    status_text: false       # keep a text source "avatarcast status" updated with avatar + fps
    stream_port: 8765        # the local MJPEG stream for --output obs
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from engine.errors import UserError, Where

ENV_PASSWORD = "AVATARCAST_OBS_PASSWORD"
DEFAULT_PORT = 4455
DEFAULT_STREAM_PORT = 8765
CONFIG_NAMES = ("obs.yaml", "obs.yml")
KEYS = {
    "host": "where OBS runs (default 127.0.0.1)",
    "port": "obs-websocket port (default 4455)",
    "password": "obs-websocket password (or AVATARCAST_OBS_PASSWORD)",
    "unbound_scene": "for scenes no preset names: keep (default), passthrough, or a preset name",
    "status_text": "update an OBS text source with the current avatar and fps (default false)",
    "stream_port": "port of the local stream --output obs serves (default 8765)",
}


@dataclass
class ObsSettings:
    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    password: str = field(default="", repr=False)
    unbound_scene: str = "keep"
    status_text: bool = False
    stream_port: int = DEFAULT_STREAM_PORT
    config_file: Path | None = None
    password_from: str = "none"  # flag | env | config | none (for `obs status`; never the value)

    def __repr__(self) -> str:  # never the password
        return (f"ObsSettings(host={self.host!r}, port={self.port}, password={'***' if self.password else 'none'}, "
                f"unbound_scene={self.unbound_scene!r}, status_text={self.status_text}, stream_port={self.stream_port})")

    def config_hint(self) -> str:
        return str(self.config_file or config_path())


def config_path() -> Path:
    from engine.library import user_config_dir

    d = user_config_dir()
    for name in CONFIG_NAMES:
        if (d / name).is_file():
            return d / name
    return d / CONFIG_NAMES[0]


def _port(value, where: Where, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 65535:
        raise UserError(f"{name} must be a port number 1..65535, got {value!r}", where)
    return value


def load_config(path: Path | None = None) -> dict:
    """The config file as a validated dict ({} when there is none). Raises UserError on a bad file."""
    from engine.yamlsafe import line_of, load_file

    path = path or config_path()
    if not path.is_file():
        return {}
    data = load_file(path)
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UserError("the OBS config must be a mapping like {host: 127.0.0.1, port: 4455}", Where(path))
    out: dict = {}
    for key, value in data.items():
        where = Where(path, line_of(data, key), key)
        if key not in KEYS:
            raise UserError(f"unknown key {key!r}", where, "known keys: " + ", ".join(KEYS))
        if key in ("port", "stream_port"):
            out[key] = _port(value, where, key)
        elif key == "status_text":
            if not isinstance(value, bool):
                raise UserError(f"status_text must be true or false, got {value!r}", where)
            out[key] = value
        else:
            if not isinstance(value, str | int) or isinstance(value, bool):
                raise UserError(f"{key} must be text, got {type(value).__name__}", where)
            out[key] = str(value)
    return out


def resolve(host: str | None = None, port: int | None = None, password: str | None = None,
            config: Path | None = None, **overrides) -> ObsSettings:
    """Flags > environment > config file > defaults. ``overrides``: other fields set from flags (None = unset)."""
    path = config or config_path()
    cfg = load_config(path)
    s = ObsSettings(config_file=path)
    for key in ("host", "port", "unbound_scene", "status_text", "stream_port"):
        if key in cfg:
            setattr(s, key, cfg[key])
    if cfg.get("password"):
        s.password, s.password_from = cfg["password"], "config"
    if os.environ.get(ENV_PASSWORD):
        s.password, s.password_from = os.environ[ENV_PASSWORD], "env"
    if host is not None:
        s.host = host
    if port is not None:
        s.port = _port(port, Where(field="--obs-port"), "--obs-port")
    if password is not None:
        s.password, s.password_from = password, "flag"
    for key, value in overrides.items():
        if value is not None:
            setattr(s, key, value)
    return s
