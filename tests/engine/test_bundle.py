"""Bundles: pack -> install -> run gives the same frames; list, show, remove, clashes, --force,
precomputed data, atomic install."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
from bundlekit import TINT_CALLS, extra_nodes, render_frames, snapshot, write_image

from engine import bundle, cache
from engine.bundle import BundleError, install, installed, pack, remove
from engine.cli import main
from engine.errors import UserError
from engine.library import find_preset, find_preset_file, user_presets_dir
from engine.preset import load_preset


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("AVATARCAST_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("AVATARCAST_CACHE", str(tmp_path / "cache"))
    cache.clear_memory()
    return tmp_path


def make_source_preset(root: Path, name: str = "Round Trip", tint: bool = True) -> Path:
    """A preset in its own folder naming files in a subfolder, a shared file twice, and two
    different files with the same base name."""
    src = root / "src"
    write_image(src / "shots" / "front.png", w=80, h=60, seed=1)
    write_image(src / "other" / "front.png", w=60, h=80, seed=2)
    write_image(src / "looks" / "tint.jpg", w=40, h=30, seed=3)
    tint_entry = "  - node: test_tint\n    image: looks/tint.jpg\n    amount: 0.4\n" if tint else ""
    text = (f"# Round trip: a test preset\n# with comments\nname: {name}\nauthor: Tester\nlicense: CC-BY-4.0\n"
            "description: crop, tint, grade, mirror\n"
            "avatar:\n  images: [shots/front.png, other/front.png, shots/front.png]\n"
            "pipeline:\n  - node: crop\n    x: 16\n    y: 8\n    width: 256\n    height: 160\n"
            + tint_entry +
            "  - node: color_adjust\n    gamma: 0.3\n    saturation: 0.5\n  - node: mirror\n")
    (src / "preset.yaml").write_text(text)
    return src / "preset.yaml"


def test_round_trip_pack_install_run_same_frames(home):
    with extra_nodes():
        original = make_source_preset(home)
        want = render_frames(load_preset(original))
        out = pack(original, home / "round-trip.avatar")
        with zipfile.ZipFile(out) as zf:
            names = set(zf.namelist())
            manifest = json.loads(zf.read("manifest.json"))
        assert names == {"manifest.json", "preset.yaml", "files/front.png", "files/front-2.png", "files/tint.jpg",
                         *(n for n in names if n.startswith("precomputed/test_tint/"))}
        assert sum(n.startswith("precomputed/") for n in names) == 1
        assert manifest["creator"] == "Tester" and manifest["license"] == "CC-BY-4.0"
        assert manifest["description"] == "crop, tint, grade, mirror"
        it = install(out)
        assert it.dir == user_presets_dir() / "round-trip"
        got = render_frames(find_preset("round-trip"))
        assert len(got) == len(want) == 4
        for a, b in zip(want, got, strict=True):
            np.testing.assert_array_equal(a, b)
        by_name = find_preset("Round Trip")
        assert by_name.file == it.preset_file
        assert [p.name for p in by_name.avatar.images] == ["front.png", "front-2.png", "front.png"]


def test_precomputed_data_seeds_the_cache_so_install_skips_the_computation(home, monkeypatch):
    with extra_nodes():
        original = make_source_preset(home)
        out = pack(original, home / "pre.avatar")
        # a fresh machine: empty cache folder, nothing in memory
        monkeypatch.setenv("AVATARCAST_CACHE", str(home / "fresh-cache"))
        cache.clear_memory()
        install(out)
        seeded = list((home / "fresh-cache" / "test_tint").glob("*.npz"))
        assert len(seeded) == 1
        before = TINT_CALLS["compute"]
        render_frames(find_preset("pre"), n=1)
        assert TINT_CALLS["compute"] == before  # found in the cache, not recomputed


def test_pack_without_precompute_hook_still_packs_and_a_failing_hook_is_skipped(home, monkeypatch):
    with extra_nodes():
        original = make_source_preset(home)

        def broken(cls, params, ctx):
            raise RuntimeError("model not downloaded")

        from bundlekit import TintNode

        monkeypatch.setattr(TintNode, "bundle_precomputed", classmethod(broken))
        out = pack(original, home / "nohook.avatar")
        with zipfile.ZipFile(out) as zf:
            assert not any(n.startswith("precomputed/") for n in zf.namelist())
        install(out)
        assert render_frames(find_preset("nohook"), n=1)


def test_cli_pack_install_list_show_render_remove(home, capsys):
    original = make_source_preset(home, tint=False)
    b = home / "cli.avatar"
    assert main(["preset", "pack", str(original), "-o", str(b), "--creator", "Someone Else"]) == 0
    assert "wrote" in capsys.readouterr().out
    assert json.loads(zipfile.ZipFile(b).read("manifest.json"))["creator"] == "Someone Else"
    assert main(["preset", "install", str(b)]) == 0
    assert "avatarcast run --preset cli" in capsys.readouterr().out
    assert main(["preset", "list"]) == 0
    out = capsys.readouterr().out
    assert "cli" in out and "Round Trip" in out and "demo" in out
    assert main(["preset", "show", "cli"]) == 0
    out = capsys.readouterr().out
    assert "files/front.png" in out and "crop -> color_adjust -> mirror" in out and "CC-BY-4.0" in out
    a, c = home / "a.png", home / "c.png"
    write_image(home / "in.png", w=320, h=180, seed=9)
    assert main(["render", str(home / "in.png"), "-o", str(a), "--preset", str(original), "--no-progress"]) == 0
    assert main(["render", str(home / "in.png"), "-o", str(c), "--preset", "cli", "--no-progress"]) == 0
    assert a.read_bytes() == c.read_bytes()
    live = home / "live.mp4"
    assert main(["run", "--preset", "cli", "--source", "demo", "--output", f"file:{live}", "--max-frames", "3",
                 "--size", "320x180"]) == 0
    assert live.stat().st_size > 0
    assert main(["preset", "remove", "Round Trip"]) == 0
    assert installed() == []
    assert main(["preset", "remove", "cli"]) == 2
    assert "no installed preset named 'cli'" in capsys.readouterr().err


def test_name_clash_refused_unless_force(home):
    original = make_source_preset(home, tint=False)
    b = pack(original, home / "clash.avatar")
    install(b)
    snap = snapshot(home / "home")
    with pytest.raises(BundleError, match="already installed.*--force"):
        install(b)
    # same display name under another id also clashes
    b2 = pack(original, home / "other-id.avatar")
    with pytest.raises(BundleError, match="named 'Round Trip' is already installed"):
        install(b2)
    assert snapshot(home / "home") == snap
    # a shipped preset's name
    b3 = pack(original, home / "demo.avatar")
    with pytest.raises(BundleError, match="shipped preset"):
        install(b3)
    assert snapshot(home / "home") == snap
    # --force replaces, atomically (no leftover temporary folders)
    (original.parent / "preset.yaml").write_text(original.read_text().replace("gamma: 0.3", "gamma: -0.5"))
    b4 = pack(original, home / "clash.avatar")
    install(b4, force=True)
    assert find_preset("clash").nodes[1].params["gamma"] == -0.5
    assert sorted(p.name for p in (home / "home" / "presets").iterdir()) == ["clash"]


def test_pack_needs_creator_and_licence_and_existing_files(home):
    src = home / "p"
    write_image(src / "a.png")
    (src / "p.yaml").write_text("name: P\navatar: {images: [a.png]}\npipeline: []\n")
    with pytest.raises(BundleError, match="creator"):
        pack(src / "p.yaml", home / "p.avatar")
    with pytest.raises(BundleError, match="licence"):
        pack(src / "p.yaml", home / "p.avatar", creator="Me")
    with pytest.raises(BundleError, match="ends in .avatar"):
        pack(src / "p.yaml", home / "p.zip", creator="Me", license="CC0-1.0")
    with extra_nodes():
        (src / "q.yaml").write_text("name: Q\nauthor: me\nlicense: CC0-1.0\npipeline:\n"
                                    "  - node: test_tint\n    image: nowhere.png\n")
        with pytest.raises(BundleError, match=r"q.yaml:6: pipeline\[0\].image: file not found"):
            pack(src / "q.yaml", home / "q.avatar")
        (src / "r.yaml").write_text("name: R\nauthor: me\nlicense: CC0-1.0\npipeline:\n"
                                    "  - node: test_tint\n    image: p.yaml\n")
        with pytest.raises(BundleError, match="carries only images"):
            pack(src / "r.yaml", home / "r.avatar")
    assert not list(home.glob("*.avatar*"))


def test_schema0_preset_packs_into_schema1(home):
    src = home / "old"
    write_image(src / "face.jpg", ".jpg")
    (src / "old.yaml").write_text("name: Old\nauthor: me\nlicense: CC0-1.0\navatar: face.jpg\n"
                                  "pipeline:\n  - node: crop\n    params: {x: 4, y: 4}\n")
    b = pack(src / "old.yaml", home / "old.avatar")
    text = zipfile.ZipFile(b).read("preset.yaml").decode()
    assert text.startswith("# packed by") and "schema: 1" in text and "params" not in text
    it = install(b)
    assert load_preset(it.preset_file).schema == 1
    assert load_preset(src / "old.yaml").schema == 0


def test_install_is_atomic_when_the_final_rename_fails(home, monkeypatch):
    original = make_source_preset(home, tint=False)
    b = pack(original, home / "atomic.avatar")
    install(b)
    snap = snapshot(home / "home")
    real_rename = bundle.os.rename
    calls = []

    def failing(src, dst):
        calls.append((src, dst))
        if len(calls) == 2:  # old moved aside; moving the new one in fails (disk error)
            raise OSError(28, "No space left on device")
        return real_rename(src, dst)

    monkeypatch.setattr(bundle.os, "rename", failing)
    with pytest.raises(OSError):
        install(b, force=True)
    monkeypatch.setattr(bundle.os, "rename", real_rename)
    assert snapshot(home / "home") == snap  # the old install is back, nothing half-written


def test_installed_presets_are_found_by_id_and_hidden_temp_dirs_are_not(home):
    root = user_presets_dir()
    (root / ".install-x").mkdir(parents=True)
    (root / ".install-x" / "preset.yaml").write_text("name: half\npipeline: []\n")
    with pytest.raises(UserError, match="no preset named 'half'"):
        find_preset_file("half")
    original = make_source_preset(home, tint=False)
    install(pack(original, home / "found.avatar"))
    assert find_preset_file("found") == root / "found" / "preset.yaml"
    remove("found")
    assert not (root / "found").exists()
