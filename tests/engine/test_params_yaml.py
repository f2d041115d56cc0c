"""Params validate the way presets, commands and the schema need; the YAML loader refuses anything
beyond plain data and keeps line numbers."""

import pytest

from engine.errors import UserError
from engine.params import Param, ParamError, parse_color, parse_size
from engine.yamlsafe import loads


def test_float_param_range_and_types():
    p = Param("saturation", "float", 0.0, "s", min=-1, max=5)
    assert p.validate(2) == 2.0 and isinstance(p.validate(2), float)
    for bad in (6, -1.5, "0.2", True, None, float("nan")):
        with pytest.raises(ParamError):
            p.validate(bad)
    with pytest.raises(ParamError, match=r"out of range -1\.\.5"):
        p.validate(7)


def test_int_bool_choice_color_size():
    assert Param("n", "int", 1, "", min=1, max=9).validate(3.0) == 3
    with pytest.raises(ParamError):
        Param("n", "int", 1, "", min=1, max=9).validate(2.5)
    with pytest.raises(ParamError):
        Param("b", "bool", False, "").validate(1)
    with pytest.raises(ParamError, match="one of fit, fill"):
        Param("m", "choice", "fit", "", choices=("fit", "fill")).validate("crop")
    assert parse_color("#00FF10") == (0, 255, 16)
    assert parse_color([1, 2, 3]) == (1, 2, 3)
    with pytest.raises(ParamError):
        parse_color([1, 2, 300])
    assert parse_size("1280x720") == (1280, 720)
    for bad in ("1280", "0x10", "axb", [1, 2, 3]):
        with pytest.raises(ParamError):
            parse_size(bad)


def test_json_schema_carries_ranges():
    s = Param("gamma", "float", 0.0, "curve", min=-3, max=3).json_schema()
    assert s == {"description": "curve", "type": "number", "minimum": -3, "maximum": 3, "default": 0.0}


def test_yaml_lines_and_refusals():
    d = loads("name: a\npipeline:\n  - node: x\n    s: 0.2\n  - node: y\n")
    assert d.lines == {"name": 1, "pipeline": 2}
    assert d["pipeline"].lines == [3, 5]
    assert d["pipeline"][0].lines["s"] == 4
    cases = {
        "a: &x [1]\nb: *x\n": "anchors",
        "a: !!python/object/apply:os.system [ls]\n": "not allowed",
        "a: !custom 3\n": "not allowed",
        "a: 1\na: 2\n": "duplicate key",
        "a: [1,\n": "not valid YAML",
        "<<: {a: 1}\n": "merge keys",
    }
    for text, msg in cases.items():
        with pytest.raises(UserError, match=msg) as exc:
            loads(text, "p.yaml")
        assert str(exc.value).startswith("p.yaml:")


def test_billion_laughs_refused_fast():
    text = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"{chr(98 + i)}: &{chr(98 + i)} [*{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}]\n" for i in range(20))
    with pytest.raises(UserError, match="not allowed"):
        loads(text)
