"""Connecting to obs-websocket v5, with every way it can fail folded into one clear message.

``connect(settings)`` first polls the TCP port (obsws-python logs a full traceback for a refused
connection), then does the obs-websocket v5 handshake itself (Hello -> Identify -> Identified) to tell
apart: nothing listening (``ObsUnreachable``, worth retrying), not obs-websocket v5 (``ObsProtocolError``)
and a wrong or missing password (``ObsAuthError``, never retried). Only then does it open obsws-python's
request and event clients. The password is never logged: obsws-python's own loggers are muted, because
they print the password at INFO level.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import socket
from dataclasses import dataclass

from engine.errors import UserError

from .settings import ObsSettings

log = logging.getLogger("avatarcast.obs")
# obsws-python logs "Connecting with parameters: ... password='...'" at INFO and tracebacks for refused
# connections at ERROR: we report every failure ourselves, with the password left out.
def _mute_obsws() -> None:
    logging.getLogger("obsws_python").setLevel(logging.CRITICAL)


_mute_obsws()

CLOSE_AUTH_FAILED = 4009
CLOSE_UNSUPPORTED_RPC = 4010


class ObsError(UserError):
    """OBS cannot be used (the message says why and how to fix it)."""


class ObsUnreachable(ObsError):
    """Nothing answers at host:port (OBS not running yet, or quit). Retrying makes sense."""


class ObsAuthError(ObsError):
    """obs-websocket refused the password. Retrying with the same password cannot help."""


class ObsProtocolError(ObsError):
    """Something answers, but it is not obs-websocket v5 (older OBS, obs-websocket 4.x, another server)."""


def port_open(host: str, port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def _auth_string(password: str, salt: str, challenge: str) -> str:
    secret = base64.b64encode(hashlib.sha256((password + salt).encode()).digest())
    return base64.b64encode(hashlib.sha256(secret + challenge.encode()).digest()).decode()


@dataclass
class Hello:
    obs_websocket_version: str
    rpc_version: int
    auth: bool


def handshake(s: ObsSettings, timeout: float = 3.0) -> Hello:
    """Check that ``s.host:s.port`` is obs-websocket v5 and accepts ``s.password``. Raises ObsError."""
    import websocket

    where = f"{s.host}:{s.port}"
    if not port_open(s.host, s.port, timeout=min(timeout, 1.0)):
        raise ObsUnreachable(f"OBS is not reachable at {where} (nothing listens there)",
                             hint="start OBS and enable Tools > WebSocket Server Settings > Enable WebSocket server, "
                                  "or give --obs-host / --obs-port")
    ws = websocket.WebSocket()
    try:
        try:
            ws.connect(f"ws://{s.host}:{s.port}", timeout=timeout)
        except websocket.WebSocketBadStatusException as exc:
            raise ObsProtocolError(f"{where} is not an obs-websocket server (HTTP {exc.status_code} to the "
                                   "websocket upgrade)", hint="check --obs-port (OBS's default is 4455)") from None
        except (OSError, websocket.WebSocketException) as exc:
            raise ObsUnreachable(f"OBS at {where} did not accept a websocket connection ({exc})") from None
        try:
            raw = ws.recv()
        except websocket.WebSocketTimeoutException:
            raise ObsProtocolError(
                f"{where} sent no obs-websocket v5 greeting within {timeout:.0f} s: this looks like obs-websocket "
                "4.x or another server", hint="avatarcast needs OBS Studio 28 or newer (obs-websocket 5 is built "
                                              "in), or the obs-websocket 5.x plugin") from None
        except (OSError, websocket.WebSocketException) as exc:
            raise ObsUnreachable(f"OBS at {where} closed the connection during the greeting ({exc})") from None
        try:
            hello = json.loads(raw)
            assert hello["op"] == 0
            d = hello["d"]
            version, rpc = str(d["obsWebSocketVersion"]), int(d["rpcVersion"])
        except Exception:
            raise ObsProtocolError(f"{where} is not obs-websocket v5 (unexpected greeting {str(raw)[:80]!r})",
                                   hint="avatarcast needs OBS Studio 28 or newer") from None
        if not version.startswith("5.") or rpc < 1:
            raise ObsProtocolError(f"{where} runs obs-websocket {version}; avatarcast needs version 5",
                                   hint="update OBS Studio to 28 or newer")
        ident: dict = {"rpcVersion": 1, "eventSubscriptions": 0}
        auth = d.get("authentication")
        if auth:
            if not s.password:
                raise ObsAuthError(f"OBS at {where} requires a password and none was given",
                                   hint="pass --obs-password, set AVATARCAST_OBS_PASSWORD, or put `password:` in "
                                        f"{s.config_hint()} (OBS: Tools > WebSocket Server Settings > Show Connect Info)")
            ident["authentication"] = _auth_string(s.password, auth["salt"], auth["challenge"])
        ws.send(json.dumps({"op": 1, "d": ident}))
        try:
            opcode, frame = ws.recv_data_frame(True)
        except (OSError, websocket.WebSocketException) as exc:
            raise ObsUnreachable(f"OBS at {where} closed the connection while identifying ({exc})") from None
        if opcode == websocket.ABNF.OPCODE_CLOSE:
            code = int.from_bytes(frame.data[:2], "big") if len(frame.data) >= 2 else 0
            if code == CLOSE_AUTH_FAILED:
                raise ObsAuthError(f"OBS at {where} refused the password",
                                   hint="check --obs-password / AVATARCAST_OBS_PASSWORD / the config file against "
                                        "OBS: Tools > WebSocket Server Settings > Show Connect Info")
            if code == CLOSE_UNSUPPORTED_RPC:
                raise ObsProtocolError(f"OBS at {where} does not speak obs-websocket RPC version 1",
                                       hint="update OBS Studio")
            raise ObsProtocolError(f"OBS at {where} closed the connection while identifying (code {code} "
                                   f"{frame.data[2:].decode(errors='replace')[:80]})")
        try:
            ok = json.loads(frame.data)["op"] == 2
        except Exception:
            ok = False
        if not ok:
            raise ObsProtocolError(f"{where} answered Identify with something other than Identified")
        return Hello(version, rpc, bool(auth))
    finally:
        try:
            ws.close(timeout=0.2)
        except Exception:
            pass


def connect(s: ObsSettings, timeout: float = 3.0, events: bool = True):
    """Handshake, then open obsws-python clients: ``(ReqClient, EventClient | None, Hello)``. Raises ObsError."""
    import obsws_python as obs
    from obsws_python.error import OBSSDKError

    hello = handshake(s, timeout)
    _mute_obsws()  # again: the CLI's logging set-up may have changed it since import
    try:
        req = obs.ReqClient(host=s.host, port=s.port, password=s.password, timeout=timeout)
        evt = obs.EventClient(host=s.host, port=s.port, password=s.password, timeout=timeout) if events else None
    except (OSError, OBSSDKError, Exception) as exc:  # OBS went away between the handshake and here
        raise ObsUnreachable(f"lost OBS at {s.host}:{s.port} while connecting ({type(exc).__name__})") from None
    return req, evt, hello


def request(req, name: str, data: dict | None = None) -> dict:
    """One request, answer as a plain dict; OBS's refusal becomes an ObsError with OBS's own comment."""
    from obsws_python.error import OBSSDKRequestError

    try:
        return req.send(name, data, raw=True) or {}
    except OBSSDKRequestError as exc:
        raise ObsError(f"OBS refused {name}: {exc}") from None
