"""``avatarcast obs setup``: create in OBS what shows the avatar, and ``obs status``: what OBS has now.

``plan()`` asks OBS what exists and returns the steps that would make it right (each with the line
``--dry-run`` prints); ``apply()`` runs them. Running setup twice changes nothing the second time
(existing inputs are updated, not duplicated).
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from engine.errors import UserError

from .client import request

log = logging.getLogger("avatarcast.obs")
STREAM_INPUT = "avatarcast"
VCAM_INPUT = "avatarcast camera"
STATUS_SOURCE = "avatarcast status"


@dataclass
class Step:
    text: str  # what it does, in the streamer's words
    run: Callable[[dict], None]  # gets a shared dict (results of earlier steps)


@dataclass
class Plan:
    scene: str
    steps: list[Step] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def stream_input_settings(url: str) -> dict:
    """An OBS Media Source reading our MPEG-TS stream with no buffering (latency over smoothness)."""
    return {"is_local_file": False, "input": url, "input_format": "mpegts", "buffering_mb": 0,
            "reconnect_delay_sec": 1, "restart_on_activate": False, "close_when_inactive": False,
            "hw_decode": False}


def find_loopback_device() -> str | None:
    """A v4l2loopback device (Linux), preferring one labelled avatarcast; None when there is none."""
    found = []
    for name_file in sorted(Path("/sys/class/video4linux").glob("video*/name")):
        try:
            label = name_file.read_text().strip()
        except OSError:
            continue
        if "avatarcast" in label.lower() or "loopback" in label.lower() or "dummy" in label.lower():
            found.append((0 if "avatarcast" in label.lower() else 1, f"/dev/{name_file.parent.name}"))
    return min(found)[1] if found else None


def vcam_input(platform: str = sys.platform, device: str | None = None) -> tuple[str, dict, list[str]]:
    """(input kind, settings, notes) for the video-capture input that shows pyvirtualcam's camera."""
    if platform.startswith("linux"):
        dev = device or find_loopback_device()
        notes = [] if dev else ["no v4l2loopback device found: the input is created without a device; pick it in "
                                "the source's properties once `avatarcast run --output vcam` runs"]
        return "v4l2_input", ({"device_id": dev} if dev else {}), notes
    if platform == "win32":
        return "dshow_input", {"video_device_id": device or "OBS Virtual Camera:"}, []
    if platform == "darwin":
        return "av_capture_input", {"device_name": device or "OBS Virtual Camera"}, []
    raise UserError(f"no virtual-camera input known for platform {platform!r}", hint="use --output obs")


def text_kind(kinds: list[str]) -> str | None:
    for k in ("text_ft2_source_v2", "text_gdiplus_v2", "text_gdiplus", "text_ft2_source"):
        if k in kinds:
            return k
    return None


def plan(req, *, output: str = "obs", url: str = "", scene: str | None = None, status_text: bool = False,
         vcam_device: str | None = None, platform: str = sys.platform) -> Plan:
    scenes_res = request(req, "GetSceneList")
    scenes = [s["sceneName"] for s in scenes_res.get("scenes", [])]
    target = scene or scenes_res.get("currentProgramSceneName")
    if target not in scenes:
        raise UserError(f"OBS has no scene {target!r}", hint="scenes: " + (", ".join(repr(s) for s in reversed(scenes))
                                                                          or "none"))
    inputs = {i["inputName"]: i["inputKind"] for i in request(req, "GetInputList").get("inputs", [])}
    kinds = request(req, "GetInputKindList", {"unversioned": False}).get("inputKinds", [])
    video = request(req, "GetVideoSettings")
    base_w, base_h = video.get("baseWidth", 1920), video.get("baseHeight", 1080)
    p = Plan(target)
    items = {i["sourceName"]: i["sceneItemId"] for i in request(req, "GetSceneItemList", {"sceneName": target})
             .get("sceneItems", [])}

    def ensure(name: str, kind: str, settings: dict, fit: bool, what: str) -> None:
        if name in inputs and inputs[name] != kind:
            raise UserError(f"OBS already has a source {name!r} of another kind ({inputs[name]}, not {kind})",
                            hint="rename or remove it in OBS, then run setup again")
        if kind not in kinds:
            raise UserError(f"this OBS has no {kind} input kind", hint="available: " + ", ".join(kinds))
        if name not in inputs:
            def create(ctx, name=name, kind=kind, settings=settings, fit=fit):
                res = request(req, "CreateInput", {"sceneName": target, "inputName": name, "inputKind": kind,
                                                   "inputSettings": settings, "sceneItemEnabled": True})
                if fit:
                    _fit(req, target, res["sceneItemId"], base_w, base_h)
            p.steps.append(Step(f"create {what}: {kind} {name!r} in scene {target!r} with {settings}", create))
            return
        p.steps.append(Step(f"update {what} {name!r}: {settings}",
                            lambda ctx, name=name, settings=settings: request(
                                req, "SetInputSettings", {"inputName": name, "inputSettings": settings,
                                                          "overlay": True})))
        if name not in items:
            def add(ctx, name=name, fit=fit):
                res = request(req, "CreateSceneItem", {"sceneName": target, "sourceName": name,
                                                       "sceneItemEnabled": True})
                if fit:
                    _fit(req, target, res["sceneItemId"], base_w, base_h)
            p.steps.append(Step(f"add the existing {name!r} to scene {target!r}", add))

    if output == "obs":
        ensure(STREAM_INPUT, "ffmpeg_source", stream_input_settings(url), True, "the avatar stream (Media Source)")
    elif output == "vcam":
        kind, settings, notes = vcam_input(platform, vcam_device)
        p.notes += notes
        ensure(VCAM_INPUT, kind, settings, True, "the avatar virtual camera (video capture device)")
    else:
        raise UserError(f"unknown output {output!r} for setup", hint="use --output obs (stream) or --output vcam")
    if status_text:
        kind = text_kind(kinds)
        if kind is None:
            p.notes.append("this OBS has no text source kind: no status line")
        else:
            ensure(STATUS_SOURCE, kind, {"text": "avatarcast"}, False, "the status line (text)")
    return p


def _fit(req, scene: str, item_id: int, w: int, h: int) -> None:
    """Scale the picture to fit the canvas (keeping its aspect ratio), top-left aligned."""
    request(req, "SetSceneItemTransform", {"sceneName": scene, "sceneItemId": item_id, "sceneItemTransform": {
        "positionX": 0.0, "positionY": 0.0, "boundsType": "OBS_BOUNDS_SCALE_INNER", "boundsAlignment": 0,
        "boundsWidth": float(w), "boundsHeight": float(h)}})


def apply(p: Plan) -> None:
    ctx: dict = {}
    for step in p.steps:
        step.run(ctx)
        log.debug("done: %s", step.text)
