"""Property tests: thousands of generated and mutated presets (YAML text) and bundles (zip bytes). The
only outcomes are success or the project's own UserError/PresetError, never another exception, and
never a file written outside the install folder (the sandbox tree is compared before and after)."""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import tempfile
import zipfile
from pathlib import Path

import yaml
from bundlekit import PRESET_TEXT, extra_nodes, image_bytes, manifest_for, snapshot
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from engine import cache
from engine.bundle import Limits, install
from engine.errors import UserError
from engine.preset import loads_preset


def fuzz(examples: int) -> settings:
    return settings(max_examples=examples, deadline=None, suppress_health_check=list(HealthCheck))

TOKENS = ["&a ", "*a", "!!python/object/apply:os.system ['id']", "!!binary aGk=", "<<: ", "{", "}", "[", "]",
          ": ", "- ", "\t", "'", '"', "%YAML 1.1\n", "---\n", "...\n", "\x00", "\ufeff", "schema: 2\n",
          "schema: 0\n", "schema: -1\n", "params: {x: 1}", "avatar: x.png\n", "~/x.png", "../../x.png",
          "/etc/hostname", "node: crop\n", "node: test_tint\n  image: ../x.png\n", "inputs: {frame: nowhere}",
          "id: source", "output: zz", "1e999", ".nan", "0x1F", "  ", "\n", "#", "? ", "|\n  x", ">\n  y",
          "pipeline:\n  - node: mirror\n    inputs: mirror\n", "obs: {scenes: 5}", "enabled: maybe",
          '"\\U10001000"', '"\\x1f"', "[" * 40, "{a: " * 40]
BASE_PRESETS = [
    PRESET_TEXT,
    "name: Old\navatar: files/face.png\npipeline:\n  - node: crop\n    params: {x: 3, y: 3}\n",
    "schema: 1\nname: Wired\npipeline:\n  - node: crop\n    id: c\n    width: 64\n  - node: color_adjust\n"
    "    inputs: {frame: c}\n    saturation: 0.5\n  - node: mirror\n    inputs: source\noutput: mirror\n",
    "schema: 1\nname: Tint\npipeline:\n  - node: test_tint\n    image: files/face.png\n    amount: 0.3\n",
]


def _generated_text() -> st.SearchStrategy[str]:
    """Presets generated from the node declarations (test_preset_format), as YAML text."""
    from test_preset_format import generated_presets

    return st.one_of(generated_presets(), generated_presets(invalid=True)).map(
        lambda d: yaml.safe_dump(d, sort_keys=False, allow_unicode=True))


@st.composite
def mutated_text(draw, base: list[str] = BASE_PRESETS) -> str:
    text = draw(st.one_of(st.sampled_from(base), _generated_text()))
    for _ in range(draw(st.sampled_from([0, 0, 0, 1, 1, 2, 3, 6]))):
        op = draw(st.sampled_from(["insert", "replace", "delete", "dupline", "random"]))
        i = draw(st.integers(0, len(text)))
        j = min(len(text), i + draw(st.integers(0, 12)))
        if op == "insert":
            text = text[:i] + draw(st.sampled_from(TOKENS)) + text[i:]
        elif op == "replace":
            text = text[:i] + draw(st.sampled_from(TOKENS)) + text[j:]
        elif op == "delete":
            text = text[:i] + text[j:]
        elif op == "dupline":
            lines = text.splitlines(keepends=True) or [""]
            k = draw(st.integers(0, len(lines) - 1))
            text = "".join(lines[:k + 1] + lines[k:])
        else:
            text = text[:i] + draw(st.text(max_size=8)) + text[i:]
    return text


@contextlib.contextmanager
def sandbox():
    """A temporary folder holding the install root, the cache and the bundle; env pointed at it."""
    old = {k: os.environ.get(k) for k in ("AVATARCAST_HOME", "AVATARCAST_CACHE")}
    with tempfile.TemporaryDirectory(prefix="fuzz-") as d:
        root = Path(d)
        os.environ["AVATARCAST_HOME"] = str(root / "home")
        os.environ["AVATARCAST_CACHE"] = str(root / "cache")
        cache.clear_memory()
        try:
            yield root
        finally:
            for k, v in old.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
            cache.clear_memory()


@fuzz(1500)
@given(mutated_text())
def test_mutated_preset_text_loads_or_raises_user_error(text):
    with extra_nodes(), sandbox() as root:
        (root / "files").mkdir()
        (root / "files" / "face.png").write_bytes(FACE)
        before = snapshot(root)
        try:
            loads_preset(text, base_dir=root, file=root / "p.yaml")
            event("loaded")
        except UserError as exc:
            assert exc.render()
            event("refused")
        assert snapshot(root) == before  # loading writes nothing


FACE = image_bytes(".png", 32, 24)
JPEG = image_bytes(".jpg", 24, 32, seed=4)


def _zip(entries: list[tuple[str, bytes]], manifest: bytes | None) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        if manifest is not None:
            zf.writestr("manifest.json", manifest)
        for name, blob in entries:
            zf.writestr(name, blob)
    return buf.getvalue()


GOOD_FILES = {"preset.yaml": BASE_PRESETS[3].encode(), "files/face.png": FACE, "files/other.jpg": JPEG}
GOOD_BUNDLE = _zip(list(GOOD_FILES.items()), json.dumps(manifest_for(GOOD_FILES)).encode())
NAMES = ["preset.yaml", "files/face.png", "files/other.jpg", "files/x.cube", "files/v.mp4", "../x.png",
         "/abs.png", "C:/d.png", "files\\w.png", "files/../../e.png", "files/./face.png", "files/",
         "precomputed/test_tint/" + "ab" * 16 + ".npz", "evil.py", "files/FACE.png", "a/b/c/d.png"]


def check_install(root: Path, bundle_bytes: bytes, limits: Limits) -> None:
    bundle = root / "in.avatar"
    bundle.write_bytes(bundle_bytes)
    install_root = root / "home" / "presets"
    before = snapshot(root)
    try:
        it = install(bundle, root=install_root, limits=limits)
    except UserError as exc:
        assert exc.render()
        assert snapshot(root) == before, "a refused bundle left files behind"
        event("refused: " + " ".join(exc.message.split()[:3]))
        return
    event("installed")
    after = snapshot(root)
    new = set(after) - set(before)
    inside = {k for k in new if k.startswith(f"home/presets/{it.id}/") or k.startswith("cache/")
              or k in ("home/", "home/presets/", f"home/presets/{it.id}/")}
    assert new == inside, f"written outside the install folder: {sorted(new - inside)}"
    assert all(k.endswith((".npz", "/")) for k in new if k.startswith("cache/"))
    shutil.rmtree(root / "home")
    shutil.rmtree(root / "cache", ignore_errors=True)


@fuzz(1000)
@given(st.lists(st.tuples(st.sampled_from(["flip", "cut", "insert", "overwrite"]), st.integers(0, 1 << 20),
                          st.binary(min_size=1, max_size=8)), min_size=1, max_size=4))
def test_mutated_bundle_bytes_install_or_raise_user_error(mutations):
    data = bytearray(GOOD_BUNDLE)
    for op, pos, blob in mutations:
        pos %= max(1, len(data))
        if op == "flip":
            data[pos] ^= blob[0] or 1
        elif op == "cut":
            del data[pos:pos + len(blob) * 64]
        elif op == "insert":
            data[pos:pos] = blob
        else:
            data[pos:pos + len(blob)] = blob
    with extra_nodes(), sandbox() as root:
        check_install(root, bytes(data), Limits())


@st.composite
def structured_bundles(draw) -> bytes:
    """Bundles built entry by entry: names good and nasty, contents good and bad, manifests right,
    wrong or mangled, presets mutated."""
    entries: dict[str, bytes] = {}
    if draw(st.sampled_from([True, True, True, False])):
        entries.update(GOOD_FILES)
    for _ in range(draw(st.sampled_from([0, 0, 0, 1, 2, 4]))):
        name = draw(st.one_of(st.sampled_from(NAMES), st.from_regex(r"files/[A-Za-z0-9._\-~ ]{1,12}", fullmatch=True)))
        content = draw(st.one_of(st.sampled_from([FACE, JPEG, b"", b"\x89PNG\r\n\x1a\n", b"LUT_3D_SIZE 2\n0 0 0\n",
                                                  b"\0\0\0\x18ftypmp42", GOOD_BUNDLE]), st.binary(max_size=64)))
        entries[name] = content
    if draw(st.booleans()):
        text = draw(mutated_text()).replace("files/face.png", draw(st.sampled_from(["files/face.png", "files/other.jpg"])))
        entries["preset.yaml"] = text.encode("utf-8", "surrogatepass")
    listed = dict(entries)
    how = draw(st.sampled_from(["right"] * 6 + ["drop", "extra", "hash", "size", "field", "none", "junk"]))
    manifest = manifest_for(listed)
    if how == "drop" and listed:
        manifest["files"].pop(draw(st.sampled_from(sorted(listed))))
    elif how == "extra":
        manifest["files"]["files/ghost.png"] = {"sha256": "0" * 64, "size": 3}
    elif how == "hash" and listed:
        manifest["files"][draw(st.sampled_from(sorted(listed)))]["sha256"] = "f" * 64
    elif how == "size" and listed:
        manifest["files"][draw(st.sampled_from(sorted(listed)))]["size"] = draw(st.sampled_from([-1, 0, 10**12, "3"]))
    elif how == "field":
        key = draw(st.sampled_from(["format", "format_version", "id", "name", "creator", "license", "description",
                                    "files"]))
        manifest[key] = draw(st.sampled_from([None, 0, 2, -1, "", "../x", [], {}, "X" * 600, True]))
    raw = None if how == "none" else (draw(st.binary(max_size=40)) if how == "junk" else json.dumps(manifest).encode())
    return _zip(list(entries.items()), raw)


@fuzz(800)
@given(structured_bundles())
def test_structured_bundles_install_or_raise_user_error(bundle_bytes):
    with extra_nodes(), sandbox() as root:
        check_install(root, bundle_bytes, Limits(max_files=8, max_file_bytes=64 << 10, max_total_bytes=256 << 10))


def test_the_fuzzers_reach_success(monkeypatch):
    """Control: the unmutated inputs succeed, so the properties above test real installs too."""
    monkeypatch.setattr(__import__(__name__), "event", lambda _: None)
    with extra_nodes(), sandbox() as root:
        check_install(root, GOOD_BUNDLE, Limits())
        for text in BASE_PRESETS:
            (root / "files").mkdir(exist_ok=True)
            (root / "files" / "face.png").write_bytes(FACE)
            loads_preset(text, base_dir=root)
    yaml.safe_load(BASE_PRESETS[2])
