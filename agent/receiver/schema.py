"""The JSON Schema of `hazgate.uplink/1` (docs/uplink.schema.json), built from the rules and
names `hazgate receive` checks every message with (agent/receiver/mqtt.py `validate`).

`python -m agent.receiver.schema > docs/uplink.schema.json` writes the published file;
tests/test_uplink_schema.py keeps the file equal to this and runs the receiver's cases (valid
and broken messages) through both the schema and the receiver's check, which must agree.
What a schema cannot say, the receiver checks besides (in the schema's description).
"""

from __future__ import annotations

import json

from agent.model import QUALITIES
from agent.north.mqtt.schema import SCHEMA, SEVERITIES
from agent.receiver.mqtt import INT64_MAX, INT64_MIN, KINDS, STATES, TIME_RULE

DIALECT = "https://json-schema.org/draft/2020-12/schema"
TIME = (r"^[0-9]{4}-(0[1-9]|1[0-2])-(0[1-9]|[12][0-9]|3[01])[Tt]([01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9]"
        r"\.[0-9]{3}([Zz]|[+-]([01][0-9]|2[0-3]):[0-5][0-9])$")
BEYOND = ("Checked by the receiver besides: `gateway` and `enterprise` equal the topic's; a time is a "
          "real calendar date (not 30 February); a whole number read as an integer fits 64 bits; "
          "no tag is listed twice in `meta`. The topic's last level names the message: "
          + ", ".join(f"`{k}`" for k in KINDS) + ".")


def _ref(name: str) -> dict:
    return {"$ref": f"#/$defs/{name}"}


def _message(description: str, required: list[str], properties: dict, extra: dict | None = None) -> dict:
    body = {"type": "object", "required": required, "properties": properties, **(extra or {})}
    return {"description": description, "allOf": [_ref("envelope"), body]}


def uplink_schema() -> dict:
    """Every message of `hazgate.uplink/1`, one definition per topic kind. Fields may be added."""
    text = {"type": "string", "minLength": 1}
    defs = {
        "text": text,
        "time": {"type": "string", "pattern": TIME, "description": TIME_RULE},
        "int64": {"type": "integer", "minimum": INT64_MIN, "maximum": INT64_MAX},
        "seq": {"type": "integer", "minimum": 1, "maximum": INT64_MAX,
                "description": "per gateway, one counter for readings, events and meta; +1 per message"},
        "envelope": {
            "type": "object", "required": ["schema", "gateway", "enterprise", "sent_at"],
            "properties": {"schema": {"const": SCHEMA}, "gateway": _ref("text"), "enterprise": _ref("text"),
                           "sent_at": _ref("time")}},
        "reading": {
            "type": "object", "required": ["tag", "ts", "value", "unit", "quality", "backfill"],
            "properties": {
                "tag": _ref("text"), "ts": _ref("time"),
                "value": {"type": ["number", "boolean", "null"]},
                "unit": {"type": "string"}, "quality": {"enum": list(QUALITIES)},
                "reason": {"type": "string", "description": "why, when quality is not good: docs/reasons.md"},
                "backfill": {"type": "boolean"}},
            "if": {"properties": {"quality": {"const": QUALITIES[0]}}},
            "then": {"properties": {"value": {"not": {"type": "null"}}}},
            "else": {"required": ["reason"], "properties": {"reason": _ref("text")}}},
        "event": {
            "type": "object", "required": ["id", "kind", "severity", "state", "ts"],
            "properties": {
                "id": {"anyOf": [_ref("text"), _ref("int64")]}, "kind": _ref("text"),
                "severity": {"enum": list(SEVERITIES)}, "state": _ref("text"), "ts": _ref("time"),
                "tag": {"anyOf": [{"type": "null"}, _ref("text")]},
                "interlock": {"anyOf": [{"type": "null"}, _ref("text")]},
                "value": {"type": ["number", "string", "boolean", "null"]},
                "limit": {"type": ["number", "string", "boolean", "null"]}},
            "anyOf": [{"required": ["tag"], "properties": {"tag": _ref("text")}},
                      {"required": ["interlock"], "properties": {"interlock": _ref("text")}},
                      {"required": ["source"], "properties": {"source": {"const": "gateway"}}}]},
        "point": {"type": "object", "required": ["tag"], "properties": {"tag": _ref("text")}},
        "readings": _message("topic {prefix}/{enterprise}/{gateway}/readings", ["seq", "readings"],
                             {"seq": _ref("seq"), "readings": {"type": "array", "items": _ref("reading")}}),
        "events": _message("topic {prefix}/{enterprise}/{gateway}/events", ["seq", "events"],
                           {"seq": _ref("seq"), "events": {"type": "array", "items": _ref("event")}}),
        "meta": _message("topic {prefix}/{enterprise}/{gateway}/meta (retained)", ["seq", "points"],
                         {"seq": _ref("seq"), "points": {"type": "array", "items": _ref("point")}}),
        "status": _message("topic {prefix}/{enterprise}/{gateway}/status (retained; offline is the last will)",
                           ["state", "version", "started_at"],
                           {"state": {"enum": list(STATES)}, "version": _ref("text"), "started_at": _ref("time")},
                           {"not": {"required": ["seq"]}}),
    }
    return {"$schema": DIALECT, "$id": "urn:hazgate:uplink:1", "title": SCHEMA,
            "description": f"Every message of {SCHEMA} (docs/uplink.md). {BEYOND}",
            "anyOf": [_ref(k) for k in KINDS], "$defs": defs}


def text_of(schema: dict) -> str:
    """The published file's text."""
    return json.dumps(schema, indent=2, ensure_ascii=False) + "\n"


if __name__ == "__main__":
    print(text_of(uplink_schema()), end="")
