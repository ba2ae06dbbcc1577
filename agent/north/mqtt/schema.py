"""Uplink messages, schema `hazgate.uplink/1` (see docs/uplink.md): topics and JSON bodies."""

from __future__ import annotations

import orjson

from agent.common.timefmt import now_ms, rfc3339

SCHEMA = "hazgate.uplink/1"
SEVERITIES = ("info", "warning", "alarm", "critical")
KINDS = ("readings", "events", "meta")  # the messages that carry a sequence number


def topic(prefix: str, enterprise: str, gateway: str, kind: str) -> str:
    return f"{prefix}/{enterprise}/{gateway}/{kind}"


def envelope(gateway: str, enterprise: str, seq: int | None, sent_ms: int) -> dict:
    env = {"schema": SCHEMA, "gateway": gateway, "enterprise": enterprise}
    if seq is not None:
        env["seq"] = seq
    env["sent_at"] = rfc3339(sent_ms)
    return env


def encode(body: dict) -> bytes:
    return orjson.dumps(body)


def readings_body(env: dict, rows: list[tuple], backfill: bool) -> dict:
    """rows: (ts_ms, tag, unit, type, value, quality, reason) as the store hands them out."""
    stamps: dict[int, str] = {}
    readings = []
    for ts_ms, tag, unit, ptype, value, quality, reason in rows:
        if ptype == "bool" and value is not None:
            value = bool(value)
        ts = stamps.get(ts_ms)
        if ts is None:
            ts = stamps[ts_ms] = rfc3339(ts_ms)
        r = {"tag": tag, "ts": ts, "value": value, "unit": unit, "quality": quality, "backfill": backfill}
        if reason:
            r["reason"] = reason
        readings.append(r)
    return {**env, "readings": readings}


def events_body(env: dict, events: list[dict]) -> dict:
    return {**env, "events": events}


def meta_body(env: dict, points: list[dict] | orjson.Fragment) -> dict:
    return {**env, "points": points}


def status_body(gateway: str, enterprise: str, state: str, version: str, started_ms: int,
                clock: dict | None = None, uplinks: dict | None = None) -> dict:
    body = envelope(gateway, enterprise, None, now_ms())
    body.update(state=state, version=version, started_at=rfc3339(started_ms))
    if clock is not None:
        body["clock"] = clock
    if uplinks:
        body["uplinks"] = uplinks
    return body
