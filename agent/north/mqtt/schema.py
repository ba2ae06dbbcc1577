"""Uplink messages, schema `hazgate.uplink/1` (see docs/uplink.md): topics and JSON bodies."""

from __future__ import annotations

import threading
import weakref
from operator import is_

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
    return {**env, "readings": _readings(rows, backfill)}


def _readings(rows: list[tuple], backfill: bool) -> list[dict]:
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
    return readings


class SharedReadings:
    """The `readings` arrays of the last `kept` messages, as JSON, for every uplink of this
    schema: the store hands each uplink the very row objects it handed the others (its unpacked
    chunks), so a second and third MQTT uplink taking the same rows reuse the first one's
    encoding. A message is found by its first row's identity and matched by the identity of
    every row, never by their values (the rows are kept, so no identity is reused meanwhile).
    Nothing is kept while fewer than two bodies (`join`) use it."""

    def __init__(self, kept: int = 32):
        self._kept: dict[tuple[int, bool], tuple[list[tuple], bytes]] = {}
        self._most = kept
        self._lock = threading.Lock()
        self._users: weakref.WeakSet = weakref.WeakSet()

    def join(self, user: object) -> None:
        """A body that encodes through this one (while it lives)."""
        self._users.add(user)

    def encoded(self, rows: list[tuple], backfill: bool) -> bytes:
        if len(self._users) < 2:
            self._kept.clear()
            return orjson.dumps(_readings(rows, backfill))
        key = (id(rows[0]) if rows else 0, backfill)
        with self._lock:
            hit = self._kept.get(key)
        if hit is not None and len(hit[0]) == len(rows) and all(map(is_, hit[0], rows)):
            return hit[1]
        data = orjson.dumps(_readings(rows, backfill))
        with self._lock:
            self._kept.pop(key, None)
            self._kept[key] = (list(rows), data)
            if len(self._kept) > self._most:
                del self._kept[next(iter(self._kept))]
        return data


SHARED_READINGS = SharedReadings()


def readings_message(env: dict, rows: list[tuple], backfill: bool) -> bytes:
    """encode(readings_body(env, rows, backfill)), its readings encoded once for every uplink."""
    return orjson.dumps({**env, "readings": orjson.Fragment(SHARED_READINGS.encoded(rows, backfill))})


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
