"""``avatarcast obs status|setup|send`` and the ``--obs*`` options of ``avatarcast run``.

``engine.cli`` imports this module (``EXTENSIONS``) and calls ``add_commands``; the OBS link starts
with the running engine through ``engine.cli.RUN_HOOKS`` and stops through ``STOP_HOOKS``.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time

from engine.errors import UserError

from . import stream as _stream  # noqa: F401  (registers the `obs` and `stream` outputs)
from .settings import ENV_PASSWORD, ObsSettings, resolve

log = logging.getLogger("avatarcast.obs")
_LINKS: dict[int, object] = {}


def _port(text: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= 65535:
        raise argparse.ArgumentTypeError(f"expected a port number 1..65535, got {text!r}")
    return int(text)


def _add_connection_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("OBS connection (default: obs.yaml in the avatarcast config folder)")
    g.add_argument("--obs-host", metavar="HOST", help="where OBS runs (default 127.0.0.1)")
    g.add_argument("--obs-port", type=_port, metavar="PORT", help="obs-websocket port (default 4455)")
    g.add_argument("--obs-password", metavar="PW",
                   help=f"obs-websocket password (visible to other users in the process list: prefer {ENV_PASSWORD})")


def settings_from_args(args) -> ObsSettings:
    return resolve(getattr(args, "obs_host", None), getattr(args, "obs_port", None),
                   getattr(args, "obs_password", None), unbound_scene=getattr(args, "obs_unbound", None),
                   status_text=True if getattr(args, "obs_status_text", False) else None,
                   stream_port=getattr(args, "stream_port", None))


def wants_obs(args) -> bool:
    from .settings import config_path

    output = getattr(args, "output", "") or ""
    return bool(getattr(args, "obs", False) or args.obs_host or args.obs_port or args.obs_password or
                args.obs_unbound or args.obs_status_text or output.split(":", 1)[0] in ("obs", "stream") or
                config_path().is_file())


# ---- run hooks -----------------------------------------------------------------------------------

def start_link(engine, settings: ObsSettings):
    """Start the OBS link for a running engine. Raises ObsAuthError / ObsProtocolError when OBS is up but
    refuses us (clear error at start); when OBS is not running yet it connects later in the background."""
    from . import binding
    from .link import ObsLink

    binding.check_unbound_setting(settings.unbound_scene, engine.presets)
    link = ObsLink(settings, engine.bus, lambda: engine.presets, engine.state)
    if not link.try_connect():
        log.info("OBS: not running at %s:%d yet; connecting when it starts", settings.host, settings.port)
    link.start()
    return link


def _run_hook(engine, args) -> None:
    if not wants_obs(args):
        return
    _LINKS[id(engine)] = start_link(engine, settings_from_args(args))


def _stop_hook(engine) -> None:
    link = _LINKS.pop(id(engine), None)
    if link is not None:
        link.stop()


# ---- commands ------------------------------------------------------------------------------------

def _connect(args):
    from .client import connect

    s = settings_from_args(args)
    req, _, hello = connect(s, events=False)
    return s, req, hello


def _stream_url(args, s: ObsSettings) -> str:
    from .stream import STREAM_PATH

    return f"http://127.0.0.1:{s.stream_port}{STREAM_PATH}"


def cmd_status(args) -> int:
    from . import binding
    from .client import port_open, request
    from .scene_setup import STATUS_SOURCE, STREAM_INPUT, VCAM_INPUT

    presets = []
    if args.preset:
        from engine.cli import load_presets

        presets = load_presets(args.preset)
    s, req, hello = _connect(args)
    try:
        version = request(req, "GetVersion")
        scenes_res = request(req, "GetSceneList")
        inputs = {i["inputName"]: i["inputKind"] for i in request(req, "GetInputList").get("inputs", [])}
        ours = {}
        for name in (STREAM_INPUT, VCAM_INPUT, STATUS_SOURCE):
            if name in inputs:
                ours[name] = (inputs[name], request(req, "GetInputSettings", {"inputName": name})
                              .get("inputSettings", {}))
    finally:
        req.disconnect()
    scenes = [x["sceneName"] for x in reversed(scenes_res.get("scenes", []))]
    program = scenes_res.get("currentProgramSceneName")
    print(f"OBS {version.get('obsVersion')} (obs-websocket {hello.obs_websocket_version}) at {s.host}:{s.port}, "
          f"password: {'from ' + s.password_from if s.password else 'none'}")
    print(f"program scene: {program}")
    bound = binding.scene_map(presets)
    print("scenes:")
    for sc in scenes:
        if sc in bound:
            what = f"preset {presets[bound[sc]].name!r}"
        elif presets:
            what = f"(no preset: {s.unbound_scene})"
        else:
            what = ""
        print(f"  {'*' if sc == program else ' '} {sc}  {what}".rstrip())
    for line in binding.conflicts(presets) + binding.missing_scenes(presets, scenes):
        print(f"warning: {line}")
    if not ours:
        print("avatarcast sources: none (run `avatarcast obs setup`)")
    for name, (kind, settings) in ours.items():
        detail = settings.get("input") or settings.get("device_id") or settings.get("text") or ""
        print(f"avatarcast source: {name!r} ({kind}) {detail}".rstrip())
    url = _stream_url(args, s)
    up = port_open("127.0.0.1", s.stream_port, 0.3)
    print(f"stream {url}: {'serving (avatarcast run --output obs is running)' if up else 'not running'}")
    return 0


def cmd_setup(args) -> int:
    from . import scene_setup

    s, req, hello = _connect(args)
    try:
        p = scene_setup.plan(req, output=args.output, url=_stream_url(args, s), scene=args.scene,
                             status_text=args.status_text or s.status_text, vcam_device=args.vcam_device)
        verb = "would" if args.dry_run else "will"
        print(f"OBS at {s.host}:{s.port}, scene {p.scene!r}: {verb} {len(p.steps)} step(s)")
        for step in p.steps:
            print(f"  - {step.text}")
        for note in p.notes:
            print(f"note: {note}")
        if not args.dry_run:
            scene_setup.apply(p)
            print("done" + (f"; start the avatar with: avatarcast run --output {args.output}"
                            + (f":{s.stream_port}" if args.output == "obs" else "")))
    finally:
        req.disconnect()
    return 0


def is_answer(payload: dict, d) -> bool:
    """Whether the CustomEvent data ``d`` may answer the command ``payload`` sent by ``obs send``: an
    error, a preset switch taking effect, the engine's echo (or rejection) of this very command, or
    the state a state query asks for. The same command from another client, or from OBS's own scene
    binding (a switch_preset by index), is not the answer."""
    from . import protocol

    if not isinstance(d, dict):
        return False
    if protocol.KEY_ERROR in d:
        return True
    st = d.get(protocol.KEY_STATE)
    if not isinstance(st, dict):
        return False
    event = st.get("event")
    if payload["command"] == protocol.STATE_QUERY:
        return event == protocol.STATE_QUERY
    return event == "preset" or (event in (payload["command"], "rejected") and st.get("command") == payload)


def cmd_send(args) -> int:
    """Send one avatarcast command through OBS (as a Stream Deck would) and print the answer."""
    import queue

    from engine.control import parse_command

    from . import protocol
    from .client import connect, request
    from .link import _RawEvents

    payload = {"command": args.name}
    for word in args.args:
        key, eq, value = word.partition("=")
        if not eq:
            raise UserError(f"expected key=value, got {word!r}", hint="e.g. avatarcast obs send switch_preset name=Demo")
        try:
            payload[key] = json.loads(value)
        except json.JSONDecodeError:
            payload[key] = value
    if args.name != protocol.STATE_QUERY:
        parse_command(payload)  # a clear error here rather than an error event from the engine
    s = settings_from_args(args)
    req, evt, _ = connect(s)
    answers: queue.SimpleQueue = queue.SimpleQueue()

    def mine(t: str, d) -> None:  # the answer to this command (other clients' traffic is ignored)
        if t == "CustomEvent" and is_answer(payload, d):
            answers.put(d)

    evt.callback = _RawEvents(mine)
    try:
        request(req, "BroadcastCustomEvent", {"eventData": {protocol.KEY_IN: payload}})
        switching = False
        t_end = time.monotonic() + args.wait
        while time.monotonic() < t_end:
            try:
                answer = answers.get(timeout=max(0.0, t_end - time.monotonic()))
            except queue.Empty:
                break
            st = answer.get(protocol.KEY_STATE)
            if isinstance(st, dict):
                if st.get("event") == "preset" and not switching:
                    continue  # another client's switch
                if st.get("event") == args.name and st.get("switching_to"):
                    switching = True  # the preset is still being prepared: wait for the switch itself
                    continue
            print(json.dumps(answer))
            if protocol.KEY_ERROR in answer or (isinstance(st, dict) and st.get("event") == "rejected"):
                return 2
            return 0
        print(f"no answer within {args.wait:g} s (is `avatarcast run --obs` running?)")
        return 1
    finally:
        req.disconnect()
        evt.disconnect()


def add_commands(sub, parsers) -> None:
    from engine import cli as engine_cli

    r = parsers["run"]
    r.add_argument("--obs", action="store_true",
                   help="connect to OBS: presets follow OBS scenes, remote control via CustomEvents "
                        "(on by default with --output obs or an obs.yaml)")
    _add_connection_args(r)
    r.add_argument("--obs-unbound", metavar="keep|passthrough|PRESET",
                   help="what OBS scenes no preset names do (default keep: stay on the current preset)")
    r.add_argument("--obs-status-text", action="store_true",
                   help="keep the OBS text source 'avatarcast status' updated with avatar and fps")

    o = sub.add_parser("obs", help="OBS: status, setup (create the avatar source), send a command",
                       description="Talk to OBS Studio through obs-websocket 5 (OBS 28+: Tools > WebSocket Server "
                                   "Settings).")
    osub = o.add_subparsers(dest="obs_command", metavar="ACTION")
    st = osub.add_parser("status", help="what OBS has: version, scenes and bound presets, avatarcast sources")
    st.add_argument("--preset", action="append", metavar="PRESET", help="show which scenes these presets bind")
    st.add_argument("--stream-port", type=_port, metavar="PORT", help="the stream port to check (default 8765)")
    _add_connection_args(st)
    st.set_defaults(func=cmd_status)

    se = osub.add_parser("setup", help="create the source that shows the avatar in the current OBS scene",
                         description="Create (or update) in OBS the source that shows avatarcast's output: a Media "
                                     "Source reading the local stream (--output obs, no driver needed) or a video "
                                     "capture device for the virtual camera (--output vcam).")
    se.add_argument("--dry-run", action="store_true", help="only print what would be done")
    se.add_argument("--output", choices=("obs", "vcam"), default="obs",
                    help="obs: the local stream (default); vcam: the virtual camera")
    se.add_argument("--scene", metavar="SCENE", help="scene to add it to (default: the current program scene)")
    se.add_argument("--status-text", action="store_true", help="also add the 'avatarcast status' text source")
    se.add_argument("--stream-port", type=_port, metavar="PORT", help="port of the local stream (default 8765)")
    se.add_argument("--vcam-device", metavar="DEV", help="virtual camera device (default: the v4l2loopback one)")
    _add_connection_args(se)
    se.set_defaults(func=cmd_setup)

    sd = osub.add_parser("send", help="send a command to a running avatarcast through OBS (as a Stream Deck would)")
    sd.add_argument("name", metavar="COMMAND", help="next_preset, switch_preset, passthrough, state, ...")
    sd.add_argument("args", nargs="*", metavar="KEY=VALUE", help="arguments, e.g. name=Demo or on=true")
    sd.add_argument("--wait", type=float, default=2.0, metavar="SEC", help="how long to wait for the answer")
    _add_connection_args(sd)
    sd.set_defaults(func=cmd_send)
    o.set_defaults(func=lambda a: (o.print_help(), 2)[1])

    # `python -m engine.cli` runs the CLI as __main__, a second copy of the module: hook into both
    main = sys.modules.get("__main__")
    for mod in (engine_cli, main) if getattr(main, "RUN_HOOKS", None) is not None else (engine_cli,):
        if _run_hook not in mod.RUN_HOOKS:
            mod.RUN_HOOKS.append(_run_hook)
        if _stop_hook not in mod.STOP_HOOKS:
            mod.STOP_HOOKS.append(_stop_hook)
