"""Record and envelope templates: typed placeholders, text rendering, escapes, nesting, problems."""

from __future__ import annotations

import tomllib

import orjson
import pytest

from agent.north import template as template_module
from agent.north.codec import build_codec
from agent.north.template import (
    ENVELOPE_VARIABLES,
    RECORD_VARIABLES,
    compile_template,
)

RECORD = {
    "tag": "TK101_LT", "name": "Tank 101 level", "value": 7.25, "unit": "m", "quality": "good",
    "reason": None, "ts": "2026-11-22 19:00:00", "ts_ms": 1795777200000, "kind": "level",
    "target_code": "3202001", "hazard_source": "HS-01", "equipment": "TK101", "backfill": False,
    "gateway": "GW-120116-0001", "enterprise": "120116000123",
}


def compiled(table: dict, allowed=RECORD_VARIABLES, where="record"):
    tpl, problems = compile_template(table, allowed, where)
    assert problems == []
    return tpl


def test_variable_sets_are_the_contract():
    record = {"tag", "name", "value", "unit", "quality", "reason", "ts", "ts_ms", "kind",
              "target_code", "hazard_source", "equipment", "backfill", "gateway", "enterprise"}
    envelope = {"payload", "data_id", "seq", "count", "sent_at", "gateway", "enterprise"}
    assert (record, envelope) == (RECORD_VARIABLES, ENVELOPE_VARIABLES)


def test_single_variable_keeps_its_type():
    tpl = compiled({"V": "{value}", "R": "{reason}", "B": "{backfill}", "MS": "{ts_ms}",
                    "T": "{tag}"})
    assert tpl.render(RECORD) == {"V": 7.25, "R": None, "B": False, "MS": 1795777200000,
                                  "T": "TK101_LT"}
    assert tpl.variables == {"value", "reason", "backfill", "ts_ms", "tag"}


def test_mixed_strings_are_text():
    tpl = compiled({
        "V": "{value} {unit}", "R": "[{reason}]", "B": "bf={backfill}", "I": "{ts_ms}ms",
        "F": "{value}|", "TAG": "{gateway}/{tag}",
    })
    out = tpl.render({**RECORD, "ts_ms": 12})
    assert out == {"V": "7.25 m", "R": "[]", "B": "bf=false", "I": "12ms", "F": "7.25|",
                   "TAG": "GW-120116-0001/TK101_LT"}


@pytest.mark.parametrize(("value", "text"), [
    (7.0, "7.0"), (-3.5, "-3.5"), (0.1, "0.1"), (1e-05, "1e-05"), (12, "12"), (True, "true"),
    (None, ""), ([1, 2.5], "[1,2.5]"), ({"a": None}, '{"a":null}'),
])
def test_text_rendering_of_values(value, text):
    assert compiled({"X": "<{value}>"}).render({"value": value}) == {"X": f"<{text}>"}


def test_escaped_braces():
    tpl = compiled({"A": "{{value}}", "B": "{{{value}}}", "C": "}}{{", "D": "{{"})
    assert tpl.render(RECORD) == {"A": "{value}", "B": "{7.25}", "C": "}{", "D": "{"}
    assert tpl.variables == {"value"}


def test_constants_and_nested_tables_and_arrays():
    table = tomllib.loads("""
        BIT_NO = "{tag}"
        SCALE = 10
        ACTIVE = true
        RATIO = 0.5
        [META]
        UNIT = "{unit}"
        SOURCE = "gw:{gateway}"
        LIST = ["{value}", "{tag}-x", 3, ["{quality}"], { Q = "{quality}" }]
    """)
    tpl = compiled(table)
    out = tpl.render(RECORD)
    assert out == {"BIT_NO": "TK101_LT", "SCALE": 10, "ACTIVE": True, "RATIO": 0.5,
                   "META": {"UNIT": "m", "SOURCE": "gw:GW-120116-0001",
                            "LIST": [7.25, "TK101_LT-x", 3, ["good"], {"Q": "good"}]}}
    assert tpl.variables == {"tag", "unit", "gateway", "value", "quality"}


def test_renders_share_no_mutable_parts():
    tpl = compiled({"META": {"UNIT": "{unit}", "C": "const"}, "L": [1, 2]})
    first = tpl.render(RECORD)
    first["META"]["C"] = "changed"
    first["L"].append(3)
    assert tpl.render(RECORD) == {"META": {"UNIT": "m", "C": "const"}, "L": [1, 2]}


def test_unknown_variable_names_key_path_and_valid_ones():
    tpl, problems = compile_template({"VALUE": "{valu}", "META": {"X": ["ok", "{tgt}"]}},
                                     RECORD_VARIABLES, "record")
    assert tpl is None
    valid = ", ".join(sorted(RECORD_VARIABLES))
    assert problems == [f"record.VALUE: unknown variable {{valu}}; valid: {valid}",
                        f"record.META.X[1]: unknown variable {{tgt}}; valid: {valid}"]


def test_record_variable_in_envelope_is_unknown():
    _, problems = compile_template({"data": "{payload}", "t": "{tag}"}, ENVELOPE_VARIABLES,
                                   "envelope")
    assert problems == ["envelope.t: unknown variable {tag}; valid: count, data_id, enterprise, "
                        "gateway, payload, sent_at, seq"]


@pytest.mark.parametrize(("s", "expected"), [
    ("{value", "'{' at position 0 is not closed; write {{ for a literal brace"),
    ("a{va{lue}", "'{' at position 1 is not closed; write {{ for a literal brace"),
    ("value}", "'}' at position 5 closes nothing; write }} for a literal brace"),
    ("x{}", "empty placeholder {} at position 1"),
])
def test_stray_braces(s, expected):
    _, problems = compile_template({"K": s}, RECORD_VARIABLES, "record")
    assert problems == [f"record.K: {expected}"]


def test_quoted_key_in_path_and_non_table():
    _, problems = compile_template({"a b": "{nope}"}, RECORD_VARIABLES, "record")
    assert problems[0].startswith('record."a b": unknown variable {nope}')
    assert compile_template(["{tag}"], RECORD_VARIABLES, "record") == (
        None, ["record: must be a table, not list"])


def test_missing_value_raises_key_error():
    tpl = compiled({"T": "{target_code}"})
    with pytest.raises(KeyError, match="target_code"):
        tpl.render({"tag": "x"})


def test_envelope_embeds_plain_json_records_and_coded_text():
    records = [compiled({"BIT_NO": "{tag}", "VALUE": "{value}"}).render(RECORD)]
    env, _ = compile_template({"appid": "APP-1", "data": "{payload}", "n": "{count}",
                               "raw": "p={payload}"}, ENVELOPE_VARIABLES, "envelope")
    plain, _ = build_codec(["json"])
    out = env.render({"payload": plain.payload(records), "count": 1})
    assert out["data"] == [{"BIT_NO": "TK101_LT", "VALUE": 7.25}]
    assert out["raw"] == 'p=[{"BIT_NO":"TK101_LT","VALUE":7.25}]'
    assert orjson.loads(orjson.dumps(out))["data"] == records
    coded, _ = build_codec(["json", "aes-128-cbc", "base64"], "hazgate-key-0001", iv_is_key=True)
    out = env.render({"payload": coded.payload(records), "count": 1})
    assert isinstance(out["data"], str) and coded.decode(out["data"]) == records


def test_render_does_not_parse_again(monkeypatch):
    # Rendering runs per reading: after compile, the parser must never run again.
    tpl = compiled({"BIT_NO": "{tag}", "TXT": "{value} {unit}", "N": {"Q": "q={quality}"}})

    def no_parsing(s):
        raise AssertionError(f"parsed {s!r} at render time")

    monkeypatch.setattr(template_module, "_parse", no_parsing)
    records = [dict(RECORD, value=float(i)) for i in range(5000)]
    out = [tpl.render(r) for r in records]
    assert out[4999] == {"BIT_NO": "TK101_LT", "TXT": "4999.0 m", "N": {"Q": "q=good"}}
