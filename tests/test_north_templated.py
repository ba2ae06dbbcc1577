"""Templated bodies: time formats and zones, data_id per message, point metadata by tag,
builders bound to their settings across a reconfiguration, events only when declared, records
written per point as they render."""

from __future__ import annotations

import orjson
import pytest

from agent.config.uplinks import parse_timezone
from agent.north.record_writer import READING_ORDER, RecordWriter
from agent.north.template import RECORD_VARIABLES, compile_template
from agent.north.templated import TemplatedBody, time_format_problem, time_formatter
from tests.platformkit import context, spec_of

MS = 1_795_777_200_123  # 2026-11-27 11:00:00.123 UTC

PLAIN = """
[[uplinks]]
name = "plain"
protocol = "http"
url = "http://127.0.0.1:1/x"
time_format = "{fmt}"
[uplinks.envelope]
id = "{{data_id}}"
seq = "{{seq}}"
n = "{{count}}"
records = "{{payload}}"
[uplinks.record]
tag = "{{tag}}"
name = "{{name}}"
hs = "{{hazard_source}}"
v = "{{value}}"
t = "{{ts}}"
late = "{{backfill}}"
"""


@pytest.mark.parametrize(("fmt", "zone", "text"), [
    ("rfc3339", "Asia/Shanghai", "2026-11-27T19:00:00.123+08:00"),
    ("rfc3339", "UTC", "2026-11-27T11:00:00.123+00:00"),
    ("%Y-%m-%d %H:%M:%S", "Asia/Shanghai", "2026-11-27 19:00:00"),
    ("%Y%m%d%H%M%S", "Asia/Shanghai", "20261127190000"),
    ("%Y%m%d%H%M%S%f", "Asia/Shanghai", "20261127190000123000"),
    ("epoch_ms", "Asia/Shanghai", MS),
])
def test_time_formats_in_the_gateway_zone(fmt: str, zone: str, text: object) -> None:
    assert time_format_problem(fmt) is None
    assert time_formatter(fmt, parse_timezone(zone))(MS) == text


@pytest.mark.parametrize("fmt", ["yyyyMMddHHmmss", "%Y-%m-%d %Q", "%Y%", "100%%"])
def test_bad_time_formats_are_named(fmt: str) -> None:
    assert fmt in time_format_problem(fmt)


def test_unknown_time_zone_says_what_is_valid() -> None:
    with pytest.raises(ValueError, match="'Asia/Shangai' is not a time zone name; valid: "):
        parse_timezone("Asia/Shangai")


def test_records_metadata_data_id_and_types(tmp_path) -> None:
    spec = spec_of(tmp_path, PLAIN.format(fmt="epoch_ms"))
    body = TemplatedBody(context(None), spec.body)
    rows = [(MS, "TK101_LT", "m", "float32", 7.25, "good", None),
            (MS, "TK101_HLA", "", "bool", 0, "good", None),
            (MS, "GONE", "", "int16", 3, "good", None)]
    one = orjson.loads(body.readings(True)(9, rows))
    two = orjson.loads(body.readings(True)(9, rows))
    assert one["id"] != two["id"] and len(one["id"]) == 32 and int(one["id"], 16) >= 0
    assert (one["seq"], one["n"]) == (9, 3)
    assert one["records"] == [
        {"tag": "TK101_LT", "name": "Tank 101 level", "hs": "320200001001", "v": 7.25, "t": MS, "late": True},
        {"tag": "TK101_HLA", "name": "Tank 101 high level switch", "hs": "", "v": False, "t": MS, "late": True},
        {"tag": "GONE", "name": "", "hs": "", "v": 3, "t": MS, "late": True},
    ]
    assert body.events is None and body.meta is None  # no [uplinks.events]: no events here


def test_a_builder_keeps_the_settings_it_was_made_with(tmp_path) -> None:
    old = spec_of(tmp_path / "a", PLAIN.format(fmt="epoch_ms"))
    new = spec_of(tmp_path / "b", PLAIN.format(fmt="%Y"))
    body = TemplatedBody(context(None), old.body)
    queued = body.readings(False)  # handed to the store before the reload
    body.reconfigure(new.body, parse_timezone("UTC"))
    rows = [(MS, "TK101_LT", "m", "float32", 1.0, "good", None)]
    assert orjson.loads(queued(1, rows))["records"][0]["t"] == MS
    assert orjson.loads(body.readings(False)(2, rows))["records"][0]["t"] == "2026"


@pytest.mark.parametrize("table", [
    {"BIT_NO": "{tag}", "VALUE": "{value}", "QUALITY": "{quality}", "COLLECT_TIME": "{ts}"},
    {"k": "100%", "v": "{value}"},
    {"a": "{value}", "b": "{unit}", "c": "{quality}", "d": "{reason}", "e": "{ts}", "f": "{backfill}"},
    {"a": "{tag}:{value}", "b": "x{unit}", "c": 3, "d": [1, "{name}", "{ts_ms}"], "e": {"f": "{backfill}"}},
    {"n": "{name}", "t": "{gateway}/{kind}"},
])
def test_a_record_written_per_point_is_the_rendered_record(table: dict) -> None:
    """A point's record writer gives the bytes of the record rendered from all its variables."""
    record, problems = compile_template(table, RECORD_VARIABLES)
    assert record is not None, problems
    fixed = {"tag": "TK101_LT", "name": "Tank \"101\" 液位", "kind": "analog", "target_code": "", "hazard_source": "",
             "equipment": None, "gateway": "GW-1", "enterprise": "E-1"}
    writer = RecordWriter(record)
    point = writer.point(fixed)
    for value in (7.25, 1e-05, None, True, 12, "text"):
        reading = (value, "m", "good", "comm error", "2026-11-27 19:00:00", MS, False)
        values = {**fixed, **dict(zip(READING_ORDER, reading, strict=True))}
        assert writer.write(point, reading) == orjson.dumps(record.render(values))
