"""The preset format: schema versions and migration, and the JSON Schema generated from the node
declarations (shipped file, CLI, agreement with the loader on generated presets)."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine.cli import main
from engine.errors import PresetError, UserError
from engine.node import discover
from engine.params import PortType
from engine.preset import MIGRATIONS, SCHEMA_VERSION, load_preset, loads_preset, parse_preset
from engine.presetschema import builtin_registry, preset_schema, preset_schema_text

REPO = Path(__file__).resolve().parents[2]
SHIPPED_SCHEMA = REPO / "presets" / "preset.schema.json"


# ---- versions and migration ----------------------------------------------------------------------

SCHEMA0 = """name: Old one
avatar: face.png
pipeline:
  - node: crop
    params: {x: 4, y: 2, width: 64}
  - node: color_adjust
    gamma: 0.5
    params:
      gamma: -1.0
      saturation: 0.25
"""
SCHEMA1 = """schema: 1
name: Old one
avatar:
  images: [face.png]
pipeline:
  - node: crop
    x: 4
    y: 2
    width: 64
  - node: color_adjust
    gamma: 0.5
    saturation: 0.25
"""


@pytest.fixture
def face_dir(tmp_path):
    import cv2
    import numpy as np

    cv2.imwrite(str(tmp_path / "face.png"), np.zeros((8, 8, 3), np.uint8))
    return tmp_path


def _summary(p):
    return p.name, [i.name for i in p.avatar.images], [(n.id, n.kind, n.params, n.inputs) for n in p.nodes], p.output


def test_every_older_schema_has_a_migration_step():
    assert sorted(MIGRATIONS) == list(range(SCHEMA_VERSION))


@pytest.mark.parametrize("prefix", ["", "schema: 0\n"])
def test_schema0_migrates_to_the_same_preset_as_schema1(face_dir, prefix):
    old = loads_preset(prefix + SCHEMA0, base_dir=face_dir)
    new = loads_preset(SCHEMA1, base_dir=face_dir)
    assert _summary(old) == _summary(new)
    assert old.schema == 0 and new.schema == 1
    assert old.raw["schema"] == 1 and "params" not in old.raw["pipeline"][0]


def test_migrated_problems_keep_their_lines(face_dir):
    with pytest.raises(PresetError) as info:
        loads_preset("name: x\npipeline:\n  - node: crop\n    params:\n      x: -5\n", base_dir=face_dir, file="o.yaml")
    assert info.value.render() == "o.yaml:5: pipeline[0].x: -5 is out of range 0..8192"


def test_plain_dicts_migrate_too():
    p = parse_preset({"name": "d", "pipeline": [{"node": "mirror", "params": {"direction": "vertical"}}]})
    assert p.nodes[0].params == {"direction": "vertical"} and p.schema == 0


def test_schema1_does_not_accept_schema0_spellings(face_dir):
    with pytest.raises(PresetError, match="unknown param 'params'"):
        loads_preset("schema: 1\nname: x\npipeline:\n  - node: crop\n    params: {x: 1}\n", base_dir=face_dir)
    with pytest.raises(PresetError, match="avatar` must be a mapping"):
        loads_preset("schema: 1\nname: x\navatar: face.png\npipeline: []\n", base_dir=face_dir)


def test_newer_schema_is_refused_with_one_upgrade_message():
    with pytest.raises(PresetError) as info:
        loads_preset("schema: 3\nname: 5\nfancy_new_key: {}\npipeline:\n  - node: hologram\n", file="new.yaml")
    assert len(info.value.problems) == 1
    assert info.value.render() == ("new.yaml:1: schema: preset format version 3 is newer than this avatarcast "
                                   "understands (it reads up to 1) (upgrade avatarcast: pip install -U avatarcast)")


@pytest.mark.parametrize("value", ["one", "-1", "true", "1.5", "[1]"])
def test_bad_schema_values(value):
    with pytest.raises(PresetError, match=r"f.yaml:1: schema: schema must be a whole number.*write `schema: 1`"):
        loads_preset(f"schema: {value}\nname: x\npipeline: []\n", file="f.yaml")


def test_cli_validates_a_schema0_file(face_dir, capsys):
    (face_dir / "old.yaml").write_text(SCHEMA0)
    assert main(["preset", "validate", str(face_dir / "old.yaml")]) == 0
    assert "ok: 'Old one', 2 nodes" in capsys.readouterr().out


# ---- the JSON Schema ------------------------------------------------------------------------------

def test_shipped_schema_is_the_generated_one():
    assert SHIPPED_SCHEMA.read_text(encoding="utf-8") == preset_schema_text(builtin_registry()), (
        "presets/preset.schema.json is out of date with the node declarations: regenerate it with "
        "`avatarcast preset schema -o presets/preset.schema.json`")


def test_schema_is_valid_and_covers_every_node():
    schema = preset_schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    kinds = set(discover())
    assert set(schema["$defs"]["entry"]["properties"]["node"]["enum"]) == kinds
    for kind, cls in discover().items():
        props = schema["$defs"][f"node_{kind}"]["properties"]
        assert {p.name for p in cls.params} <= set(props)
        assert props["node"]["description"] == cls.description


def test_cli_prints_and_writes_the_schema(tmp_path, capsys):
    """The CLI describes every node it can load (installed node packs too, here also the test nodes)."""
    assert main(["preset", "schema"]) == 0
    assert capsys.readouterr().out == preset_schema_text()
    assert main(["preset", "schema", "-o", str(tmp_path / "s.json")]) == 0
    assert (tmp_path / "s.json").read_text() == preset_schema_text()


def _validator() -> jsonschema.Draft202012Validator:
    return jsonschema.Draft202012Validator(preset_schema(builtin_registry()))


def _simple_kinds() -> list[str]:
    """Built-in node kinds whose required inputs are all frames (wired implicitly to the camera)."""
    return sorted(k for k, c in builtin_registry().items()
                  if all(p.type is PortType.FRAME or p.optional for p in c.inputs))


def _valid_value(p):
    if p.type == "float":
        lo = p.min if p.min is not None else -1e6
        hi = p.max if p.max is not None else 1e6
        return st.floats(lo, hi, allow_nan=False, allow_infinity=False)
    if p.type == "int":
        lo = int(p.min) if p.min is not None else -10**6
        hi = int(p.max) if p.max is not None else 10**6
        return st.integers(lo, hi)
    if p.type == "bool":
        return st.booleans()
    if p.type == "str":
        return st.text(max_size=20)
    if p.type == "choice":
        return st.sampled_from(p.choices)
    if p.type == "color":
        return st.one_of(st.sampled_from(["black", "white", "green", "gray"]),
                         st.integers(0, 0xFFFFFF).map(lambda v: f"#{v:06x}"),
                         st.lists(st.integers(0, 255), min_size=3, max_size=3))
    if p.type == "size":
        wh = st.tuples(st.integers(16, 8192), st.integers(16, 8192))
        return st.one_of(wh.map(lambda t: f"{t[0]}x{t[1]}"), wh.map(list))
    if p.type == "path":
        return st.from_regex(r"[a-z]{1,8}/[a-z]{1,8}\.(png|cube|mp4)", fullmatch=True)
    raise AssertionError(p.type)


def _invalid_value(p):
    if p.type in ("float", "int"):
        options = [st.just("lots"), st.just([1])]
        if p.max is not None:
            options.append(st.just(p.max + 1))
        if p.min is not None:
            options.append(st.just(p.min - 1))
        return st.one_of(*options)
    if p.type == "bool":
        return st.sampled_from(["yes", 1, None])
    if p.type in ("str", "path"):
        return st.sampled_from([5, [], {"a": 1}])
    if p.type == "choice":
        return st.just("not-a-choice-" + "-".join(p.choices))
    if p.type == "color":
        return st.sampled_from(["#12345", [1, 2], [256, 0, 0], 7])
    if p.type == "size":
        return st.sampled_from(["big", [1, 2, 3], 5])
    raise AssertionError(p.type)


@st.composite
def generated_presets(draw, invalid: bool = False):
    reg = discover()
    kinds = draw(st.lists(st.sampled_from(_simple_kinds()), min_size=1 if invalid else 0, max_size=5))
    pipeline = []
    for kind in kinds:
        cls = reg[kind]
        entry = {"node": kind}
        for p in cls.params:
            if draw(st.booleans()):
                entry[p.name] = draw(_valid_value(p))
        if draw(st.booleans()):
            entry["enabled"] = draw(st.booleans())
        pipeline.append(entry)
    data = {"schema": 1, "name": draw(st.text(min_size=1, max_size=20).filter(str.strip)), "pipeline": pipeline}
    for key in ("description", "author", "license"):
        if draw(st.booleans()):
            data[key] = draw(st.text(max_size=20))
    if invalid:
        i = draw(st.integers(0, len(pipeline) - 1))
        cls = reg[pipeline[i]["node"]]
        how = draw(st.sampled_from(["param", "unknown_param", "unknown_key", "unknown_node"] if cls.params
                                   else ["unknown_param", "unknown_key", "unknown_node"]))
        if how == "param":
            p = draw(st.sampled_from(cls.params))
            pipeline[i][p.name] = draw(_invalid_value(p))
        elif how == "unknown_param":
            pipeline[i]["no_such_param"] = 1
        elif how == "unknown_key":
            data["no_such_key"] = 1
        else:
            pipeline[i]["node"] = "no_such_node"
    return data


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(generated_presets())
def test_generated_valid_presets_pass_schema_and_loader(data):
    validator = _validator()
    errors = [e.message for e in validator.iter_errors(data)]
    assert not errors, (data, errors)
    text = yaml.safe_dump(data, sort_keys=False, allow_unicode=True)
    loads_preset(text)  # raises if the loader disagrees
    assert not list(validator.iter_errors(json.loads(json.dumps(data))))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(generated_presets(invalid=True))
def test_generated_invalid_presets_fail_schema_and_loader(data):
    assert list(_validator().iter_errors(data)), data
    with pytest.raises(PresetError):
        parse_preset(data)


def test_load_preset_never_constructs_objects(tmp_path):
    f = tmp_path / "evil.yaml"
    f.write_text("name: !!python/object/apply:os.system ['touch " + str(tmp_path / "pwned") + "']\npipeline: []\n")
    with pytest.raises(UserError) as info:
        load_preset(f)
    assert "tag" in str(info.value) and not (tmp_path / "pwned").exists()


@pytest.mark.parametrize("text, why", [
    ("\x1fname: x\npipeline: []\n", "special characters are not allowed"),  # the reader, before parsing
    ('name: "\\U10001000"\npipeline: []\n', "not in range"),  # PyYAML's scanner raises ValueError
    ("name: x\npipeline: " + "[" * 5000 + "\n", "nested deeper than 32 levels"),  # recursion in compose
])
def test_yaml_that_trips_pyyaml_is_a_user_error(text, why):
    with pytest.raises(UserError, match=why) as info:
        loads_preset(text, file="odd.yaml")
    assert info.value.render().startswith("odd.yaml")
