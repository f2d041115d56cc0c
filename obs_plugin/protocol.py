"""The messages avatarcast exchanges with other obs-websocket clients (Stream Deck, Streamer.bot, Touch
Portal, scripts) through OBS's ``BroadcastCustomEvent``.

In (any client sends ``BroadcastCustomEvent`` with this ``eventData``)::

    {"avatarcast": {"command": "next_preset"}}
    {"avatarcast": {"command": "switch_preset", "name": "Mona Lisa"}}
    {"avatarcast": {"command": "set_param", "node": "grade", "param": "saturation", "value": 0.5}}
    {"avatarcast": {"command": "state"}}          # just answer with the current state

``command`` and its arguments are exactly the engine's command set (``engine.control.COMMANDS``),
validated by ``engine.control.parse_command``. Out (avatarcast broadcasts these)::

    {"avatarcast_state": {"event": "next_preset", "preset": "Mona Lisa", "index": 2, "presets": 3,
                          "passthrough": false, "frozen": false, "mirror": false, "fps": 29.8}}
    {"avatarcast_error": {"error": "unknown command 'nxt'", "received": "..."}}

Custom events without an ``avatarcast`` key belong to other tools and are ignored silently.
"""

from __future__ import annotations

from typing import Any

from engine.control import Command, parse_command
from engine.errors import CommandError

KEY_IN = "avatarcast"
KEY_STATE = "avatarcast_state"
KEY_ERROR = "avatarcast_error"
STATE_QUERY = "state"


def parse_event(data: Any) -> Command | str | None:
    """A CustomEvent's ``eventData`` -> a Command, ``"state"`` (a state query), or None (not for us).
    Raises CommandError for a payload meant for avatarcast that is malformed."""
    if not isinstance(data, dict) or KEY_IN not in data:
        return None
    body = data[KEY_IN]
    if isinstance(body, dict) and body.get("command") == STATE_QUERY and len(body) == 1:
        return STATE_QUERY
    if not isinstance(body, dict):
        raise CommandError(f"`{KEY_IN}` must be an object like {{\"command\": \"next_preset\"}}, got {body!r:.80}")
    return parse_command(body, source="obs")


def state_event(state: dict) -> dict:
    return {KEY_STATE: dict(state)}


def error_event(message: str, received: Any) -> dict:
    return {KEY_ERROR: {"error": message, "received": repr(received)[:200]}}


def command_event(name: str, **args: Any) -> dict:
    """What a client sends (used by tests and ``avatarcast obs send``)."""
    return {KEY_IN: {"command": name, **args}}
