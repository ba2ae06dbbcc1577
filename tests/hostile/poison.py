"""Poison payloads for an uplink receiver (schema `hazgate.uplink/1`, docs/uplink.md).

    for case in cases():
        publish(case.topic(), case.payload)              # {prefix}/{enterprise}/{gateway}/{kind}
    for case in controls():                              # valid messages, to show the receiver
        ...                                              # still takes good ones after the poison

Each case breaks one rule (or is merely hostile: a valid 2 MB message); its `why` says which.
Every case with a readable `seq` has a number of its own (in SEQS), so a receiver
that deduplicates by (gateway, seq) cannot drop one as a duplicate of another before checking
it. The payloads are bytes exactly as they go on the wire.
"""

from __future__ import annotations

import copy
import functools
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

SCHEMA = "hazgate.uplink/1"
PREFIX, ENTERPRISE, GATEWAY = "hazchem", "120116999999", "GW-POISON-0001"
TS = "2026-11-23T04:02:46.163+08:00"
SEQS = range(1000, 1900)  # the cases' numbers; controls() follow them
BIG = 2 * 1024 * 1024  # bytes of the oversized message, at least
DEPTH = 100_000  # nesting of the deeply nested one (parsers stop at ~1 000 or recurse away)


@dataclass(frozen=True)
class PoisonCase:
    name: str
    kind: str  # the topic's last level: readings, events, meta, status
    payload: bytes
    why: str

    def topic(self, prefix: str = PREFIX, enterprise: str = ENTERPRISE, gateway: str = GATEWAY) -> str:
        return f"{prefix}/{enterprise}/{gateway}/{self.kind}"


def reading(**fields: Any) -> dict[str, Any]:
    return {"tag": "TK101_LT", "ts": TS, "value": 3.0, "unit": "m", "quality": "good", "backfill": False,
            **fields}


def event(**fields: Any) -> dict[str, Any]:
    return {"id": "gas_alarm:GT101:raised:1795377766163", "kind": "gas_alarm", "severity": "alarm",
            "state": "raised", "ts": TS, "tag": "GT101", "unit": "%LEL", "value": 26.0, "limit": 20.0,
            "start": TS, **fields}


def message(kind: str, seq: int | None) -> dict[str, Any]:
    """A valid message of `kind` (status carries no seq)."""
    body: dict[str, Any] = {"schema": SCHEMA, "gateway": GATEWAY, "enterprise": ENTERPRISE, "sent_at": TS}
    if kind != "status":
        body["seq"] = seq
    if kind == "readings":
        body["readings"] = [reading(), reading(tag="TK101_TT", value=26.1, unit="°C")]
    elif kind == "events":
        body["events"] = [event()]
    elif kind == "meta":
        body["points"] = [{"tag": "TK101_LT", "name": "1#储罐液位", "unit": "m", "kind": "level", "type": "float32",
                           "range": [0.0, 12.0], "limits": {"ll": 1.0, "l": 2.0, "h": 10.0, "hh": 11.0}}]
    else:
        body.update(state="online", version="0.1.0", started_at=TS)
    return body


def encode(body: Any) -> bytes:
    """Compact JSON, UTF-8; NaN and Infinity written as the bare tokens JSON does not have."""
    return json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode()


Edit = Callable[[dict[str, Any]], Any]


def _edit(kind: str, seq: int, change: Edit) -> bytes:
    body = message(kind, seq)
    change(body)
    return encode(body)


def _steps(path: str) -> list[str | int]:
    """'readings.0.ts' -> ['readings', 0, 'ts']."""
    return [int(p) if p.isdigit() else p for p in path.split(".")]


def _parent(body: dict[str, Any], steps: list[str | int]) -> Any:
    node: Any = body
    for step in steps[:-1]:
        node = node[step]
    return node


def _set(path: str, value: Any) -> Edit:
    """An edit setting one field: "seq", "readings.0.ts", "events.0.tag" ..."""
    steps = _steps(path)

    def change(body: dict[str, Any]) -> None:
        _parent(body, steps)[steps[-1]] = copy.deepcopy(value)

    return change


def _drop(path: str) -> Edit:
    steps = _steps(path)

    def change(body: dict[str, Any]) -> None:
        del _parent(body, steps)[steps[-1]]

    return change


def _big_readings(seq: int) -> bytes:
    body = message("readings", seq)
    one = len(encode(reading())) + 1
    body["readings"] = [reading(value=float(i)) for i in range(BIG // one + 1)]
    return encode(body)


def _with_text(seq: int, text: str) -> str:
    """A valid readings message with its first `"tag":"TK101_LT"` replaced by raw JSON text."""
    return encode(message("readings", seq)).decode().replace('"tag":"TK101_LT"', text, 1)


@functools.cache
def cases() -> tuple[PoisonCase, ...]:
    """Every poison case, in a fixed order (built once: the big one takes a moment)."""
    seqs = iter(SEQS)

    def json_case(name: str, kind: str, change: Edit, why: str) -> PoisonCase:
        return PoisonCase(name, kind, _edit(kind, next(seqs), change), why)

    r0, e0 = "readings.0", "events.0"
    out = [
        # the envelope
        json_case("seq_string", "readings", _set("seq", "1001"), "seq is a string"),
        json_case("seq_float", "readings", _set("seq", 1002.0), "seq is a float with a whole value"),
        json_case("seq_huge", "readings", _set("seq", 2**64 + 3), "seq is beyond 64 bits"),
        json_case("seq_zero", "readings", _set("seq", 0), "seq is below 1"),
        json_case("seq_negative", "readings", _set("seq", -5), "seq is negative"),
        json_case("seq_bool", "readings", _set("seq", True), "seq is true"),
        json_case("seq_missing", "readings", _drop("seq"), "seq is missing"),
        json_case("sent_at_number", "readings", _set("sent_at", 1795377766163), "sent_at is epoch milliseconds"),
        json_case("schema_unknown", "readings", _set("schema", "hazgate.uplink/2"), "another schema"),
        json_case("gateway_mismatch", "readings", _set("gateway", "GW-SOMEONE-ELSE"),
                  "envelope gateway differs from the topic's"),
        json_case("status_with_seq", "status", _set("seq", 7), "a status message carries a seq"),
        json_case("status_state_unknown", "status", _set("state", "rebooting"), "state is not online/offline"),
        # readings
        json_case("readings_not_list", "readings", _set("readings", {"0": reading()}), "readings is an object"),
        json_case("readings_null", "readings", _set("readings", None), "readings is null"),
        json_case("reading_is_list", "readings", _set(r0, ["TK101_LT", TS, 3.0, "m", "good", False]),
                  "a reading is a list"),
        json_case("ts_object", "readings", _set(f"{r0}.ts", {"$date": 1795377766163}), "ts is an object"),
        json_case("ts_not_a_date", "readings", _set(f"{r0}.ts", "2026-02-30T04:02:46.163+08:00"),
                  "ts is 30 February"),
        json_case("ts_far_future", "readings", _set(f"{r0}.ts", "9999-12-31T23:59:59.999+00:00"),
                  "ts in year 9999 (valid syntax)"),
        json_case("tag_not_string", "readings", _set(f"{r0}.tag", 101), "tag is a number"),
        json_case("tag_empty", "readings", _set(f"{r0}.tag", ""), "tag is empty"),
        json_case("tag_nul", "readings", _set(f"{r0}.tag", "TK101\u0000LT"), "tag holds a NUL character"),
        json_case("tag_huge", "readings", _set(f"{r0}.tag", "T" * 65536), "tag of 64 KiB"),
        json_case("value_object", "readings", _set(f"{r0}.value", {"v": 3.0}), "value is an object"),
        json_case("value_list", "readings", _set(f"{r0}.value", [3.0]), "value is a list"),
        json_case("value_string", "readings", _set(f"{r0}.value", "3.0"), "value is a numeric string"),
        json_case("value_nan_string", "readings", _set(f"{r0}.value", "NaN"), 'value is the string "NaN"'),
        json_case("value_huge_int", "readings", _set(f"{r0}.value", 2**64), "value is beyond 64 bits"),
        json_case("value_nan", "readings", _set(f"{r0}.value", float("nan")), "value is the bare token NaN"),
        json_case("value_infinity", "readings", _set(f"{r0}.value", float("inf")),
                  "value is the bare token Infinity"),
        json_case("value_minus_infinity", "readings", _set(f"{r0}.value", float("-inf")),
                  "value is the bare token -Infinity"),
        json_case("value_missing", "readings", _drop(f"{r0}.value"), "value is missing"),
        json_case("good_with_null", "readings", _set(f"{r0}.value", None), "quality good with value null"),
        json_case("quality_unknown", "readings", _set(f"{r0}.quality", "GOOD"), "quality is not a known code"),
        json_case("bad_without_reason", "readings", _set(f"{r0}.quality", "bad"), "quality bad without a reason"),
        json_case("backfill_string", "readings", _set(f"{r0}.backfill", "false"), "backfill is a string"),
        json_case("unit_null", "readings", _set(f"{r0}.unit", None), "unit is null"),
        # events
        json_case("events_not_list", "events", _set("events", {"0": event()}), "events is an object"),
        json_case("event_is_list", "events", _set(e0, ["gas_alarm", TS]), "an event is a list"),
        json_case("event_tag_not_string", "events", _set(f"{e0}.tag", 101),
                  "the event's tag is a number (and it names no interlock)"),
        json_case("event_tag_object", "events", _set(f"{e0}.tag", {"tag": "GT101"}), "the event's tag is an object"),
        json_case("event_ts_object", "events", _set(f"{e0}.ts", {"$date": 1795377766163}),
                  "the event's ts is an object"),
        json_case("event_value_object", "events", _set(f"{e0}.value", {"v": 26.0}), "the event's value is an object"),
        json_case("event_severity_unknown", "events", _set(f"{e0}.severity", "fatal"), "severity is not known"),
        json_case("event_id_missing", "events", _drop(f"{e0}.id"), "the event has no id"),
        # meta
        json_case("meta_points_not_list", "meta", _set("points", {"TK101_LT": {}}), "points is an object"),
        json_case("meta_tag_twice", "meta", lambda b: b["points"].append(dict(b["points"][0])),
                  "a tag is listed twice"),
        # not the JSON it should be
        PoisonCase("deeply_nested", "readings",
                   _with_text(next(seqs), '"tag":' + "[" * DEPTH + "]" * DEPTH).encode(),
                   f"a tag nested {DEPTH} arrays deep"),
        PoisonCase("invalid_utf8", "readings",
                   _with_text(next(seqs), '"tag":"TK101_LT\udcff\udcfe"').encode("utf-8", "surrogateescape"),
                   "bytes 0xFF 0xFE inside a string: not UTF-8"),
        PoisonCase("lone_surrogate", "readings", _with_text(next(seqs), '"tag":"TK\\ud800101"').encode(),
                   "a \\ud800 escape: valid JSON syntax, not encodable as UTF-8"),
        PoisonCase("duplicate_keys", "readings",
                   encode(message("readings", next(seqs)))[:-1] + f',"seq":{next(seqs)}}}'.encode(),
                   "seq given twice with different numbers"),
        PoisonCase("utf8_bom", "readings", b"\xef\xbb\xbf" + encode(message("readings", next(seqs))),
                   "a UTF-8 byte order mark before the JSON"),
        PoisonCase("truncated", "readings", encode(message("readings", next(seqs)))[:60], "cut off mid-message"),
        PoisonCase("trailing_garbage", "readings", encode(message("readings", next(seqs))) + b"}\x00",
                   "bytes after the JSON object"),
        PoisonCase("empty", "readings", b"", "no payload at all"),
        PoisonCase("top_level_array", "readings", encode([message("readings", next(seqs))]),
                   "the message is a JSON array"),
        PoisonCase("top_level_null", "readings", b"null", "the message is null"),
        PoisonCase("top_level_string", "events", b'"events"', "the message is a JSON string"),
        PoisonCase("oversized_2mb", "readings", _big_readings(next(seqs)),
                   f"a valid readings message of at least {BIG} bytes"),
    ]
    return tuple(out)


def controls(first_seq: int = SEQS.stop) -> tuple[PoisonCase, ...]:
    """One valid message per kind, numbered from `first_seq` (above every poison case's seq)."""
    return tuple(PoisonCase(f"valid_{kind}", kind, encode(message(kind, first_seq + i)), "valid")
                 for i, kind in enumerate(("readings", "events", "meta", "status")))
