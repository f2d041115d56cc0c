"""Preset loading: every mistake named with file, line, field and value; all collected at once."""

import textwrap

import pytest

from engine.errors import PresetError
from engine.preset import load_preset, loads_preset


def write(tmp_path, text, name="p.yaml"):
    f = tmp_path / name
    f.write_text(textwrap.dedent(text))
    return f


def errors_of(tmp_path, text):
    with pytest.raises(PresetError) as exc:
        load_preset(write(tmp_path, text))
    return exc.value.problems


def test_minimal_contract_loads(tmp_path):
    (tmp_path / "mona.jpg").write_bytes(b"\xff\xd8\xff\xe0" + b"\0" * 20)
    p = load_preset(write(tmp_path, """
        name: Mona Lisa
        avatar:
          images: [mona.jpg]
        pipeline:
          - node: color_adjust
            saturation: 0.2
    """))
    assert p.name == "Mona Lisa"
    assert p.avatar.images == [tmp_path / "mona.jpg"]
    assert p.nodes[0].params["saturation"] == 0.2 and p.nodes[0].params["gamma"] == 0.0
    assert p.output == ("color_adjust", "frame")


@pytest.mark.parametrize("body, line, field, text", [
    ("pipeline:\n  - node: blur9000\n", 3, "pipeline[0].node", "unknown node 'blur9000'"),
    ("pipeline:\n  - node: color_adjust\n    saturatoin: 1\n", 4, "pipeline[0].saturatoin", "unknown param"),
    ("pipeline:\n  - node: color_adjust\n    saturation: lots\n", 4, "pipeline[0].saturation", "expected a number"),
    ("pipeline:\n  - node: color_adjust\n    saturation: 9\n", 4, "pipeline[0].saturation", "9 is out of range -1..5"),
    ("pipeline:\n  - node: mirror\n    id: a\n  - node: mirror\n    id: a\n", 6, "pipeline[1].id", "duplicate id 'a'"),
    ("pipeline:\n  - node: mirror\n    inputs: {frame: ghost}\n", 4, "pipeline[0].inputs.frame", "'ghost'"),
    ("pipeline:\n  - node: mirror\n    id: a\n    inputs: b\n  - node: mirror\n    id: b\n    inputs: a\n", None,
     "pipeline", "cycle"),
])
def test_each_mistake_is_located(tmp_path, body, line, field, text):
    probs = errors_of(tmp_path, "name: t\n" + body)
    assert len(probs) == 1, [p.render() for p in probs]
    p = probs[0]
    assert text in p.message
    assert p.where.field == field
    if line is not None:
        assert p.where.line == line
    assert str(p.where.file).endswith("p.yaml")


def test_missing_name_and_all_errors_collected(tmp_path):
    probs = errors_of(tmp_path, """
        pipeline:
          - node: color_adjust
            gamma: 7
            hue_shift: 999
          - node: nope
        avatar:
          images: [missing.png]
    """)
    msgs = " | ".join(p.render() for p in probs)
    assert "missing `name`" in msgs and "gamma" in msgs and "hue_shift" in msgs and "nope" in msgs
    assert "image not found: 'missing.png'" in msgs
    assert len(probs) == 5


def test_image_that_is_not_an_image(tmp_path):
    (tmp_path / "fake.png").write_text("hello")
    probs = errors_of(tmp_path, "name: t\navatar: {images: [fake.png]}\npipeline: []\n")
    assert "not an image" in probs[0].message and probs[0].where.line == 2


def test_explicit_wiring_and_output(tmp_path):
    p = loads_preset("""
name: wired
output: graded
pipeline:
  - node: mirror
    id: flipped
  - node: color_adjust
    id: graded
    inputs: {frame: source}
  - node: resize
    inputs: flipped.frame
    size: 64x32
""")
    assert [n.id for n in p.nodes] == ["flipped", "graded", "resize"]
    assert p.node("graded").inputs == {"frame": ("source", "frame")}
    assert p.node("resize").inputs == {"frame": ("flipped", "frame")}
    assert p.output == ("graded", "frame")


def test_forward_reference_is_sorted():
    p = loads_preset("name: f\npipeline:\n  - node: mirror\n    inputs: g\n  - node: color_adjust\n    id: g\n"
                     "    inputs: source\n")
    assert [n.id for n in p.nodes] == ["g", "mirror"]


def test_newer_schema_refused_with_upgrade_hint(tmp_path):
    probs = errors_of(tmp_path, "schema: 99\nname: t\npipeline: []\n")
    assert "upgrade avatarcast" in probs[0].render()
