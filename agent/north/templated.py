"""Templated message bodies: the platforms' own envelopes and records (`[[uplinks]]`).

One message: each stored row becomes a record through the `record` template; the records, as a
JSON array, go through the codec chain (agent/north/codec.py) into the envelope's `payload`;
the `envelope` template wraps it; the body bytes are the envelope as compact UTF-8 JSON.

Record variables (readings): see agent.north.template.RECORD_VARIABLES. Event record variables
(`[uplinks.events.record]`), EVENT_VARIABLES:

| variable | value |
| --- | --- |
| `id`, `kind`, `severity`, `state` | the event's own (hazgate.uplink/1, docs/uplink.md) |
| `ts`, `ts_ms` | its time, in `time_format` / epoch milliseconds |
| `tag`, `interlock`, `source` | what it concerns (null where it has none) |
| `name` | the interlock's name, else the point's name |
| `value`, `limit`, `unit`, `level`, `reason` | where the event has them, else null |
| `target_code`, `hazard_source`, `equipment` | the event's, else its point's, else null |
| `gateway`, `enterprise` | the gateway's codes |
| `event` | the whole event as a JSON object |

Envelope variables: agent.north.template.ENVELOPE_VARIABLES; `data_id` is 32 lower-case hex
digits, new per message. Message bytes are kept by the store, so a re-send carries the same
`data_id`, `seq`, `sent_at` and records.

Times are in the gateway's time zone: `time_format` is `rfc3339` (milliseconds and offset),
`epoch_ms` (a number) or a strftime pattern such as `%Y-%m-%d %H:%M:%S`.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, tzinfo
from typing import Any

import orjson

from agent.common.timefmt import now_ms
from agent.north.base import UplinkContext
from agent.north.codec import Codec
from agent.north.record_writer import Point, RecordWriter
from agent.north.registry import registry_records
from agent.north.template import Template, split_placeholders
from agent.pipeline.store import Builder

EVENT_VARIABLES = frozenset({
    "id", "kind", "severity", "state", "ts", "ts_ms", "tag", "interlock", "source", "name",
    "value", "limit", "unit", "level", "reason", "target_code", "hazard_source", "equipment",
    "gateway", "enterprise", "event",
})
# `[uplinks.declarations.record]`: a declaration event (`hazgate declare`) in the events message
DECLARATION_VARIABLES = frozenset({
    "id", "subject", "kind", "state", "reason", "by", "since", "until", "note", "ts", "ts_ms", "name",
    "target_code", "hazard_source", "equipment", "gateway", "enterprise", "event",
})
# `[uplinks.daily.record]`: the daily `inservice_daily` event in the events message
DAILY_VARIABLES = frozenset({
    "id", "day", "from", "to", "plant", "interlocks", "detectors", "ts", "ts_ms", "gateway", "enterprise", "event",
})
# the events that may have a record of their own: [uplinks.TABLE.record] -> (event kind, its variables)
OWN_RECORDS = {"declarations": ("declaration", DECLARATION_VARIABLES), "daily": ("inservice_daily", DAILY_VARIABLES)}
TIME_FORMATS = ("rfc3339", "epoch_ms")
TEMPLATED_KEYS = {"codec": ("list", False), "time_format": ("str", False)}  # [[uplinks]] keys of a templated body
# strftime directives that mean the same on every platform Python runs on
_DIRECTIVES = set("aAwdbBmyYHIpMSfzZjUWcxXGuV%")
_DIRECTIVE = re.compile(r"%(.)", re.DOTALL)
_POINT_FIELDS = ("name", "kind", "target_code", "hazard_source", "equipment")
_EVENT_FIELDS = ("id", "kind", "severity", "state", "tag", "interlock", "source", "name", "value",
                 "limit", "unit", "level", "reason", "target_code", "hazard_source", "equipment")

TimeFormatter = Callable[[int], Any]


def time_format_problem(fmt: str) -> str | None:
    """Why `fmt` is not a time_format; None when it is."""
    if fmt in TIME_FORMATS:
        return None
    directives = _DIRECTIVE.findall(fmt)
    if not [d for d in directives if d != "%"]:
        return (f"{fmt!r} has no %-directive; valid: rfc3339, epoch_ms or a strftime pattern "
                "such as \"%Y-%m-%d %H:%M:%S\" (Java's yyyy-MM-dd HH:mm:ss) or \"%Y%m%d%H%M%S\"")
    bad = sorted({f"%{d}" for d in directives if d not in _DIRECTIVES})
    if _DIRECTIVE.sub("", fmt).endswith("%"):
        bad.append("a lone % at the end")
    if bad:
        return (f"{fmt!r}: {', '.join(bad)} is not a strftime directive; valid: "
                f"{' '.join('%' + d for d in sorted(_DIRECTIVES))}")
    return None


def time_formatter(fmt: str, tz: tzinfo | None) -> TimeFormatter:
    """epoch ms -> the time as `fmt` writes it, in `tz` (None: the system's zone)."""
    if fmt == "epoch_ms":
        return int

    def at(ms: int) -> datetime:
        dt = datetime.fromtimestamp(ms // 1000, tz).replace(microsecond=ms % 1000 * 1000)
        return dt if tz is not None else dt.astimezone()

    if fmt == "rfc3339":
        return lambda ms: at(ms).isoformat(timespec="milliseconds")
    return lambda ms: at(ms).strftime(fmt)


@dataclass(frozen=True)
class MessageTemplates:
    """One kind of message: its envelope and record templates, compiled, with the TOML tables
    they came from (the reference receiver checks messages against those)."""

    envelope: Template
    record: Template
    envelope_table: dict
    record_table: dict


@dataclass(frozen=True)
class BodySpec:
    codec: Codec
    readings: MessageTemplates
    events: MessageTemplates | None = None  # None: this uplink carries no events
    time_format: str = "rfc3339"
    # event kind -> its own record (OWN_RECORDS) and the TOML table it came from (the reference
    # receiver checks it); other events take the events record
    own_records: dict[str, tuple[Template, dict]] = field(default_factory=dict)
    registry: MessageTemplates | None = None  # point registration, the uplink's description message


def payload_paths(node: Any, path: tuple = ()) -> list[tuple[tuple, bool]]:
    """Where an envelope table mentions {payload}: (key path, True when the value is exactly
    "{payload}"). A usable envelope has exactly one, and it is whole."""
    if isinstance(node, dict):
        return [hit for k, v in node.items() for hit in payload_paths(v, (*path, k))]
    if isinstance(node, list):
        return [hit for i, v in enumerate(node) for hit in payload_paths(v, (*path, i))]
    if isinstance(node, str):
        try:
            literals, names = split_placeholders(node)
        except ValueError:
            return []
        if "payload" in names:
            return [(path, names == ["payload"] and literals == ["", ""])]
    return []


def _event_ms(ts: Any) -> int | None:
    if isinstance(ts, int | float) and not isinstance(ts, bool):
        return int(ts)
    if isinstance(ts, str):
        try:
            return round(datetime.fromisoformat(ts).timestamp() * 1000)
        except ValueError:
            return None
    return None


class TemplatedBody:
    """`Body` (agent/north/base.py) of an uplink with `[uplinks.envelope]` and `[uplinks.record]`.

    `events` is a Builder only when the uplink declares `[uplinks.events]`, else None: the
    uplink carries no events. `meta`, its description message, is the point registration when
    it declares `[uplinks.registry]`, else None. Builders are bound to the settings they were
    made with: one already handed to the store builds with those even if `reconfigure` comes
    in between."""

    def __init__(self, ctx: UplinkContext, spec: BodySpec, timezone: tzinfo | None = None):
        self.ctx = ctx
        self._source: list | None = None  # the ctx.points() list the index was built from
        self._index: dict[str, dict] = {}
        self._writer: RecordWriter | None = None  # for the readings' record and the point index of _written
        self._written: dict | None = None
        self._point_parts: dict[str, Point] = {}  # tag -> its part of the writer (RecordWriter.point)
        self.reconfigure(spec, timezone)

    def reconfigure(self, spec: BodySpec, timezone: tzinfo | None = None) -> None:
        """New templates, codec, time format or zone for messages built from now on (numbered
        ones keep their bytes)."""
        self.spec = spec
        time = time_formatter(spec.time_format, timezone)
        self._live: Builder = lambda seq, rows: self._readings(spec, time, seq, rows, False)
        self._backfill: Builder = lambda seq, rows: self._readings(spec, time, seq, rows, True)
        events, registry = spec.events, spec.registry
        self.events: Builder | None = None if events is None else (
            lambda seq, rows: self._events(spec, events, time, seq, rows))
        self.meta: Builder | None = None if registry is None else (
            lambda seq, _rows: self._envelope(spec, registry, time, seq, self._registry(registry)))

    def meta_digest(self) -> bytes:
        """The registration records as they would go now."""
        assert self.spec.registry is not None
        return orjson.dumps(self._registry(self.spec.registry))

    def _registry(self, registry: MessageTemplates) -> list[dict]:
        ctx = self.ctx
        return registry_records(registry.record, ctx.points(), ctx.devices(), ctx.gateway, ctx.enterprise,
                                ctx.declared)

    def points_changed(self) -> None:
        """The point set changed: look metadata up afresh."""
        self._source = None

    def readings(self, backfill: bool) -> Builder:
        return self._backfill if backfill else self._live

    # --- building (store thread) -----------------------------------------------------------
    def _points(self) -> dict[str, dict]:
        """tag -> the record variables that come from the point table and the gateway."""
        points = self.ctx.points()
        if points is not self._source:
            gw = {"gateway": self.ctx.gateway, "enterprise": self.ctx.enterprise}
            self._index = {p.tag: {**gw, **{f: getattr(p, f) for f in _POINT_FIELDS}} for p in points}
            self._source = points
        return self._index

    def _envelope(self, spec: BodySpec, templates: MessageTemplates, time: TimeFormatter, seq: int,
                  records: list | bytes, count: int | None = None) -> bytes:
        """records: the records, or (with their `count`) already serialised as a JSON array."""
        ctx = self.ctx
        if isinstance(records, list):
            records, count = orjson.dumps(records), len(records)
        env = templates.envelope.render({
            "payload": spec.codec.payload_json(records), "data_id": uuid.uuid4().hex, "seq": seq,
            "count": count, "sent_at": time(now_ms()), "gateway": ctx.gateway,
            "enterprise": ctx.enterprise})
        return orjson.dumps(env)

    def _writer_of(self, record: Template) -> RecordWriter:
        """The record writer of `record`, for the point index as it is now."""
        index = self._points()
        if self._writer is None or self._writer.record is not record or self._written is not index:
            self._writer, self._written, self._point_parts = RecordWriter(record), index, {}
        return self._writer

    def _point_part(self, writer: RecordWriter, tag: str) -> Point:
        """A point's part of the writer, made at its first reading (after _writer_of)."""
        fixed = self._index.get(tag)
        if fixed is None:
            fixed = {"gateway": self.ctx.gateway, "enterprise": self.ctx.enterprise,
                     **dict.fromkeys(_POINT_FIELDS, "")}
        part = self._point_parts[tag] = writer.point({**fixed, "tag": tag})
        return part

    def _readings(self, spec: BodySpec, time: TimeFormatter, seq: int, rows: list[tuple],
                  backfill: bool) -> bytes:
        """rows: (ts_ms, tag, unit, type, value, quality, reason) as the store hands them out.
        Each record is written as JSON bytes (agent/north/record_writer.py)."""
        writer = self._writer_of(spec.readings.record)
        write, parts = writer.write, self._point_parts
        stamps: dict[int, Any] = {}
        records = []
        for ts_ms, tag, unit, ptype, value, quality, reason in rows:
            if ptype == "bool" and value is not None:
                value = bool(value)
            ts = stamps.get(ts_ms)
            if ts is None:
                ts = stamps[ts_ms] = time(ts_ms)
            part = parts.get(tag) or self._point_part(writer, tag)
            records.append(write(part, (value, unit, quality, reason, ts, ts_ms, backfill)))
        return self._envelope(spec, spec.readings, time, seq, b"[" + b",".join(records) + b"]", len(records))

    def _events(self, spec: BodySpec, templates: MessageTemplates, time: TimeFormatter, seq: int,
                rows: list[dict]) -> bytes:
        """rows: event dicts as stored (hazgate.uplink/1 events)."""
        index = self._points()
        records = []
        for event in rows:
            point = index.get(event.get("tag") or "", {})
            ts_ms = _event_ms(event.get("ts"))
            own = spec.own_records.get(event.get("kind", ""))
            if own is not None:
                values = (self._declaration(event, point, time) if event["kind"] == "declaration"
                          else self._daily(event, time))
                values.update(ts_ms=ts_ms, ts=None if ts_ms is None else time(ts_ms), event=event,
                              gateway=self.ctx.gateway, enterprise=self.ctx.enterprise)
                records.append(own[0].render(values))
                continue
            values = {f: event.get(f, point.get(f)) for f in _EVENT_FIELDS}
            values.update(ts_ms=ts_ms, ts=None if ts_ms is None else time(ts_ms), event=event,
                          gateway=self.ctx.gateway, enterprise=self.ctx.enterprise)
            records.append(templates.record.render(values))
        return self._envelope(spec, templates, time, seq, records)

    @staticmethod
    def _daily(event: dict, time: TimeFormatter) -> dict:
        """The daily in-service event's own variables; its times in the uplink's time format."""
        values = {f: event.get(f) for f in ("id", "day", "plant", "interlocks", "detectors")}
        for key in ("from", "to"):
            ms = _event_ms(event.get(key))
            values[key] = None if ms is None else time(ms)
        return values

    def _declaration(self, event: dict, point: dict, time: TimeFormatter) -> dict:
        """A declaration event's own variables; its times in the uplink's time format."""
        values = {f: event.get(f) for f in ("id", "subject", "state", "reason", "by", "note")}
        for key in ("since", "until"):
            ms = _event_ms(event.get(key))
            values[key] = None if ms is None else time(ms)
        values.update({f: point.get(f) for f in ("name", "target_code", "hazard_source", "equipment")})
        if "interlock" in event:
            values["name"] = event.get("name")
        values["kind"] = "interlock" if "interlock" in event else "point"
        return values

