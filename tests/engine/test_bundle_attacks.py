"""Malicious bundles: one test per attack. Each must be refused with a clear message (naming the bundle
and what is wrong) and leave the sandbox (install folder, cache, everything around) exactly as it was."""

from __future__ import annotations

import hashlib
import io
import os
import stat
import struct
import uuid
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest
from bundlekit import (
    PRESET_TEXT,
    build_zip,
    extra_nodes,
    good_files,
    image_bytes,
    manifest_for,
    snapshot,
)

from engine import cache
from engine.bundle import Limits, install
from engine.errors import UserError


@pytest.fixture
def sandbox(tmp_path, monkeypatch):
    monkeypatch.setenv("AVATARCAST_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("AVATARCAST_CACHE", str(tmp_path / "cache"))
    cache.clear_memory()
    (tmp_path / "home" / "presets" / "existing").mkdir(parents=True)
    (tmp_path / "home" / "presets" / "existing" / "preset.yaml").write_text("name: Existing\npipeline: []\n")
    return tmp_path


def refused(sandbox: Path, bundle: Path, match: str, **kw) -> str:
    """Install must raise a UserError matching ``match`` and change nothing in the sandbox."""
    before = snapshot(sandbox)
    with pytest.raises(UserError, match=match) as info:
        install(bundle, **kw)
    assert snapshot(sandbox) == before
    msg = info.value.render()
    assert str(bundle) in msg, msg  # says which file
    assert "Traceback" not in msg
    if os.environ.get("SHOW_REFUSALS"):
        print(f"\nREFUSED: {msg}")
    return msg


def test_a_good_bundle_installs(sandbox):
    """The control case: the same builder without the attack installs fine."""
    it = install(build_zip(sandbox / "good.avatar", good_files()))
    assert (it.dir / "files" / "face.png").is_file()


# ---- paths escaping the install folder -----------------------------------------------------------

@pytest.mark.parametrize("name, why", [
    ("../evil.png", r"'\.\.'"),
    ("files/../../evil.png", r"'\.\.'"),
    ("../../../../../../tmp/evil.png", r"'\.\.'"),
    ("/tmp/avatarcast-evil.png", "absolute path"),
    ("C:/Windows/evil.png", "drive letter"),
    ("C:evil.png", "drive letter"),
    ("files\\..\\..\\evil.png", "backslash"),
    ("files/./face.png", r"'\.' path component"),
])
def test_path_escaping_the_install_folder(sandbox, name, why):
    files = {**good_files(), name: b"x"}
    msg = refused(sandbox, build_zip(sandbox / "b.avatar", files), f"unsafe path.*{why}")
    assert name in msg or repr(name)[1:-1] in msg
    assert not Path("/tmp/avatarcast-evil.png").exists()


def test_symlink_entry(sandbox):
    link = zipfile.ZipInfo("files/face.png")
    link.create_system = 3
    link.external_attr = (stat.S_IFLNK | 0o777) << 16
    files = good_files()
    files.pop("files/face.png")
    manifest = manifest_for({**files, "files/face.png": b"/etc/passwd"})
    refused(sandbox, build_zip(sandbox / "b.avatar", files, manifest, extra=[(link, b"/etc/passwd")]),
            "files/face.png: is a symbolic link")


def test_special_file_entry(sandbox):
    fifo = zipfile.ZipInfo("files/face.png")
    fifo.external_attr = (stat.S_IFIFO | 0o644) << 16
    files = good_files()
    manifest = manifest_for(files)
    files.pop("files/face.png")
    refused(sandbox, build_zip(sandbox / "b.avatar", files, manifest, extra=[(fifo, b"")]), "special file")


# ---- manifest -----------------------------------------------------------------------------------

def test_file_not_in_manifest(sandbox):
    files = good_files()
    refused(sandbox, build_zip(sandbox / "b.avatar", files, manifest_for(files),
                               extra=[("files/extra.png", image_bytes())]),
            "files/extra.png: is in the bundle but not in its manifest")


def test_wrong_hash(sandbox):
    files = good_files()
    manifest = manifest_for(files)
    files["files/face.png"] = image_bytes(seed=99)  # same size, different bytes
    manifest["files"]["files/face.png"]["size"] = len(files["files/face.png"])
    refused(sandbox, build_zip(sandbox / "b.avatar", files, manifest), "face.png: its SHA-256 differs")


def test_listed_but_missing(sandbox):
    files = good_files()
    manifest = manifest_for({**files, "files/ghost.png": b"boo"})
    refused(sandbox, build_zip(sandbox / "b.avatar", files, manifest), "ghost.png: is listed in the manifest but missing")


def test_no_manifest_and_not_a_zip(sandbox):
    b = sandbox / "b.avatar"
    with zipfile.ZipFile(b, "w") as zf:
        zf.writestr("preset.yaml", PRESET_TEXT)
    refused(sandbox, b, "no manifest.json")
    b.write_bytes(b"#!/bin/sh\nrm -rf ~\n")
    refused(sandbox, b, "damaged or not an avatarcast bundle")


def test_manifest_from_a_newer_avatarcast(sandbox):
    files = good_files()
    refused(sandbox, build_zip(sandbox / "b.avatar", files, manifest_for(files, format_version=7)),
            "newer than this avatarcast.*upgrade avatarcast")


@pytest.mark.parametrize("bad", [b"[" * 200_000, b"{\"format\": 1", b"\xff\xfe"])
def test_manifest_not_json(sandbox, bad):
    refused(sandbox, build_zip(sandbox / "b.avatar", good_files(), bad), "manifest.json: not valid JSON")


def test_manifest_id_escaping(sandbox):
    files = good_files()
    refused(sandbox, build_zip(sandbox / "b.avatar", files, manifest_for(files, id="../../evil")),
            "id must be lower-case")


# ---- sizes --------------------------------------------------------------------------------------

def test_too_many_files(sandbox):
    files = good_files()
    extra = [(f"files/f{i}.png", b"x") for i in range(300)]
    refused(sandbox, build_zip(sandbox / "b.avatar", files, extra=extra), "too many files: 303")


def test_file_over_the_size_limit(sandbox):
    files = {**good_files(), "files/big.mp4": b"\0\0\0\x18ftypmp42" + bytes(300_000)}
    refused(sandbox, build_zip(sandbox / "b.avatar", files, method=zipfile.ZIP_STORED),
            r"files/big.mp4: is 293.0 KiB unpacked \(the limit is 195.3 KiB a file\)",
            limits=Limits(max_file_bytes=200_000))


def test_total_over_the_size_limit(sandbox):
    files = {**good_files(), **{f"files/v{i}.mp4": b"\0\0\0\x18ftypmp42" + bytes(90_000) for i in range(4)}}
    refused(sandbox, build_zip(sandbox / "b.avatar", files, method=zipfile.ZIP_STORED),
            "unpacks to more than 293.0 KiB in all", limits=Limits(max_total_bytes=300_000))


def test_bundle_file_over_the_size_limit(sandbox):
    refused(sandbox, build_zip(sandbox / "b.avatar", good_files()), "the bundle is",
            limits=Limits(max_bundle_bytes=1000))


def test_zip_bomb_by_compression_ratio(sandbox):
    """20 MiB of zeros deflate to about 20 KiB: over the 50x ratio limit (default limits)."""
    files = {**good_files(), "files/bg.mp4": b"\0\0\0\x18ftypmp42" + bytes(20 << 20)}
    refused(sandbox, build_zip(sandbox / "b.avatar", files), "files/bg.mp4: zip bomb")


def test_zip_bomb_with_lying_sizes_is_caught_while_unpacking(sandbox):
    """The header says 1 KiB but the data inflates to 5 MiB: reading stops at the declared size and
    the CRC no longer matches."""
    big = b"\0\0\0\x18ftypmp42" + bytes(5 << 20)
    files = {**good_files(), "files/bg.mp4": big}
    manifest = manifest_for(files)
    manifest["files"]["files/bg.mp4"]["size"] = 1024
    b = build_zip(sandbox / "b.avatar", files, manifest)
    raw = bytearray(b.read_bytes())
    # patch the uncompressed size in the central directory entry of files/bg.mp4
    name = b"files/bg.mp4"
    i = raw.rfind(b"PK\x01\x02", 0, raw.rfind(name))
    raw[i + 24:i + 28] = struct.pack("<I", 1024)
    b.write_bytes(bytes(raw))
    refused(sandbox, b, "damaged or not an avatarcast bundle|unpacks to more than|SHA-256")


def test_duplicate_names(sandbox):
    files = good_files()
    with pytest.warns(UserWarning):
        b = build_zip(sandbox / "b.avatar", files, extra=[("files/face.png", image_bytes(seed=5))])
    refused(sandbox, b, "appears twice")
    b = build_zip(sandbox / "c.avatar", files, extra=[("files/FACE.png", image_bytes(seed=5))])
    refused(sandbox, b, "appears twice")


# ---- images -------------------------------------------------------------------------------------

def _png_claiming(w: int, h: int) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 1000)) + \
        chunk(b"IEND", b"")


def _jpeg_claiming(w: int, h: int) -> bytes:
    data = bytearray(image_bytes(".jpg"))
    i = data.find(b"\xff\xc0")
    data[i + 5:i + 9] = struct.pack(">HH", h, w)
    return bytes(data)


def _bmp_claiming(w: int, h: int) -> bytes:
    header = b"BM" + struct.pack("<IHHI", 54 + 16, 0, 0, 54)
    dib = struct.pack("<IiiHHIIiiII", 40, w, h, 1, 24, 0, 16, 2835, 2835, 0, 0)
    return header + dib + bytes(16)


def _webp_claiming(w: int, h: int) -> bytes:
    vp8x = b"VP8X" + struct.pack("<I", 10) + bytes(4) + (w - 1).to_bytes(3, "little") + (h - 1).to_bytes(3, "little")
    body = b"WEBP" + vp8x
    return b"RIFF" + struct.pack("<I", len(body)) + body


@pytest.mark.parametrize("ext, make", [(".png", _png_claiming), (".jpg", _jpeg_claiming),
                                       (".bmp", _bmp_claiming), (".webp", _webp_claiming)])
def test_decompression_bomb_image_header(sandbox, ext, make):
    bomb = make(16000, 16000)
    files = {"preset.yaml": PRESET_TEXT.replace("face.png", f"face{ext}").encode(), f"files/face{ext}": bomb}
    msg = refused(sandbox, build_zip(sandbox / "b.avatar", files), "decompression bomb: its header claims 16000x16000")
    assert f"files/face{ext}" in msg


@pytest.mark.parametrize("content, why", [
    (b"\x7fELF\x02\x01\x01" + bytes(200), "not an image"),
    (b"#!/bin/sh\nrm -rf ~\n", "not an image"),
    (b"<?php system($_GET['c']); ?>", "not an image"),
    (image_bytes(".jpg"), "named .png but holds a JPEG image"),
    (image_bytes(".png")[:60], "cannot be decoded"),
])
def test_non_image_disguised_as_image(sandbox, content, why):
    files = {**good_files(), "files/face.png": content}
    refused(sandbox, build_zip(sandbox / "b.avatar", files), f"files/face.png: {why}")


def test_video_and_lut_that_are_not(sandbox):
    files = {**good_files(), "files/bg.mp4": b"MZ\x90\x00" + bytes(100)}
    refused(sandbox, build_zip(sandbox / "b.avatar", files), "files/bg.mp4: not a .mp4 video")
    files = {**good_files(), "files/look.cube": b"import os\nos.system('x')\n"}
    refused(sandbox, build_zip(sandbox / "c.avatar", files), "files/look.cube: line 1 of the .cube LUT")


def test_unexpected_file_types_and_places(sandbox):
    for name in ("files/evil.py", "files/model.pt", "evil.sh", "files/sub/face.png", "precomputed/x/notakey.npz",
                 "files/CON.png", "files/nul.jpg"):
        files = {**good_files(), name: b"print('hi')"}
        refused(sandbox, build_zip(sandbox / f"{uuid.uuid4().hex}.avatar", files),
                "(is a file type bundles do not carry|is in an unexpected place|Windows device)")


def test_pickled_precomputed_data(sandbox):
    buf = io.BytesIO()
    np.savez(buf, evil=np.array([{"a": 1}], dtype=object))
    name = "precomputed/avatar_mesh/" + hashlib.sha256(b"x").hexdigest()[:32] + ".npz"
    files = {**good_files(), name: buf.getvalue()}
    refused(sandbox, build_zip(sandbox / "b.avatar", files), "not plain numeric arrays")


# ---- the preset inside ----------------------------------------------------------------------------

@pytest.mark.parametrize("yaml_text, why", [
    ("name: &a x\npipeline: []\n", r"anchors \(&a\) are not allowed"),
    ('a: &a ["lol","lol"]\nb: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]\nc: [*b,*b,*b,*b,*b,*b,*b,*b,*b]\n'
     "name: x\npipeline: []\n", "anchors"),
    ("name: !!python/object/apply:os.system ['touch /tmp/pwned']\npipeline: []\n", "tag.*not allowed"),
    ("name: x\npipeline: !!set {a, b}\n", "tag.*not allowed"),
    ("<<: {name: x}\npipeline: []\n", "merge keys"),
    ("name: x\npipeline: []\nname: y\n", "duplicate key"),
])
def test_yaml_aliases_and_tags(sandbox, yaml_text, why):
    files = {**good_files(), "preset.yaml": yaml_text.encode()}
    refused(sandbox, build_zip(sandbox / "b.avatar", files), why)
    assert not Path("/tmp/pwned").exists()


@pytest.mark.parametrize("ref", ["../../../../etc/hostname", "/etc/hostname", "~/.ssh/id_rsa.png", "C:/x.png",
                                 "files/../manifest.json", "preset.yaml", "files\\face.png"])
def test_preset_referencing_a_file_outside_its_bundle(sandbox, ref):
    text = PRESET_TEXT.replace("[files/face.png]", f"['{ref}']")
    files = {**good_files(), "preset.yaml": text.encode()}
    msg = refused(sandbox, build_zip(sandbox / "b.avatar", files), "which is outside the bundle")
    assert "preset.yaml:6: avatar.images[0]" in msg


def test_path_param_outside_the_bundle_also_in_a_schema0_preset(sandbox):
    with extra_nodes():
        for i, text in enumerate([
            "schema: 1\nname: x\npipeline:\n  - node: test_tint\n    image: ../../x.png\n",
            "name: x\npipeline:\n  - node: test_tint\n    params: {image: /etc/hostname}\n",  # schema 0, nested
        ]):
            files = {**good_files(), "preset.yaml": text.encode()}
            msg = refused(sandbox, build_zip(sandbox / f"b{i}.avatar", files), "which is outside the bundle")
            assert "pipeline[0].image" in msg


def test_bad_preset_inside_is_reported_with_bundle_file_and_line(sandbox):
    text = "schema: 1\nname: x\npipeline:\n  - node: color_adjust\n    gamma: 99\n"
    files = {**good_files(), "preset.yaml": text.encode()}
    msg = refused(sandbox, build_zip(sandbox / "b.avatar", files), "out of range")
    assert "b.avatar/preset.yaml:5: pipeline[0].gamma" in msg
    text = "schema: 5\nname: x\npipeline: []\n"
    files = {**good_files(), "preset.yaml": text.encode()}
    refused(sandbox, build_zip(sandbox / "c.avatar", files), "upgrade avatarcast")
