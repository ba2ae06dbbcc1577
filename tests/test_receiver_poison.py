"""`hazgate receive` fed poison (tests/hostile/poison.py) through a hostile broker on loopback:
every message is checked, stored or recorded as a violation, and acknowledged; none may raise
(a raise leaves the message unacknowledged, so the broker hands it to every restart again).

Decisions the poison kit asked for (see agent/receiver/mqtt.py, "the schema, checked by hand"):
- `value_huge_int` (2**64) is accepted: orjson reads a whole number beyond the unsigned 64-bit
  range as a double, and a double is a number (whole numbers read as integers must fit 64 bits);
- `duplicate_keys` is accepted with the last `seq`, as orjson, Python's json and JavaScript's
  JSON.parse read it (RFC 8259: names SHOULD be unique; a gateway never writes one twice).
"""

from __future__ import annotations

import asyncio
import copy
import json
import signal
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest
from conftest import HAZGATE, Proc
from hostile.mqtt_broker import HostileBroker
from hostile.poison import ENTERPRISE, GATEWAY, PREFIX, PoisonCase, cases, controls, event, message

from agent.receiver import mqtt as receiver_mqtt
from agent.receiver.mqtt import Incoming, Receiver, open_db

ACCEPTED = {  # poison cases that are valid `hazgate.uplink/1` and are stored
    "ts_far_future": "year 9999 is a valid time; plausibility is the gateway's business",
    "tag_nul": "a non-empty string",
    "tag_huge": "a non-empty string",
    "value_huge_int": "orjson reads it as the double 1.8446744073709552e19",
    "duplicate_keys": "the last seq wins, as every common JSON parser reads it",
    "oversized_2mb": "valid, only large",
}
DEEP = 300  # nesting orjson reads (its limit is 1024) but will not write again (its limit is 255)


def nested(depth: int) -> Any:
    value: Any = []
    for _ in range(depth):
        value = [value]
    return value


def extra_cases(first_seq: int) -> tuple[PoisonCase, ...]:
    """Messages that passed the checks and then broke storing them (each crashed `receive`)."""
    def events_with(seq: int, **fields: Any) -> bytes:
        body = message("events", seq)
        body["events"] = [event(**fields)]
        return json.dumps(body).encode()

    meta = message("meta", first_seq + 2)
    meta["points"][0]["range"] = nested(DEEP)
    return (
        PoisonCase("event_tag_object_with_interlock", "events",
                   events_with(first_seq, tag={"tag": "GT101"}, interlock="SIS-1"), "tag is an object"),
        PoisonCase("event_interlock_list", "events", events_with(first_seq + 1, interlock=["SIS-1"]),
                   "interlock is a list (the tag is valid)"),
        PoisonCase("meta_too_deep_to_store", "meta", json.dumps(meta).encode(),
                   f"a point field nested {DEEP} deep"),
    )


async def until(pred: Callable[[], Any], within: float, what: str) -> None:
    deadline = time.monotonic() + within
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {within}s")
        await asyncio.sleep(0.05)


async def test_receive_records_every_poison_message_and_acknowledges_it(tmp_path: Path, procs: list[Proc]) -> None:
    """The whole kit through the real command: nothing crashes it, every message is acked, every
    violation is recorded, the valid controls after the poison are stored."""
    poison = cases() + extra_cases(2000)
    good = controls(3000)
    db = tmp_path / "received.db"
    async with HostileBroker() as broker:
        rx = Proc([*HAZGATE, "receive", "--broker", broker.url, "--db", str(db)], tmp_path / "rx.log")
        procs.append(rx)
        await until(lambda: any(c.subscriptions for c in broker.live()), 20, "receiver subscribed")
        for case in poison + good:
            assert broker.deliver(case.topic(), case.payload) == 1
            await asyncio.sleep(0.01)  # a few batches, not one
        sent = len(poison + good)
        await until(lambda: len(broker.acks) >= sent or not rx.alive(), 30, "every message acknowledged")
        assert rx.alive(), rx.output()
        assert len(broker.acks) == sent
        assert rx.stop(signal.SIGTERM) == 0, rx.output()
    output = rx.log_path.read_text()
    assert "Traceback" not in output
    con = sqlite3.connect(db)
    try:
        bad = con.execute("SELECT COUNT(*) FROM violations").fetchone()[0]
        stored = {seq for (seq,) in con.execute("SELECT seq FROM messages WHERE valid = 1")}
        status = con.execute("SELECT status FROM gateways WHERE gateway = ?", (GATEWAY,)).fetchone()
    finally:
        con.close()
    rejected = [c for c in poison if c.name not in ACCEPTED]
    assert bad == len(rejected)
    assert {json.loads(c.payload)["seq"] for c in good if c.kind != "status"} <= stored
    assert status == ("online",)
    assert f"{GATEWAY}: " in output and f"violations={bad}" in output


# --- every field, every hostile value: never a raise ------------------------------------------

HOSTILE: tuple[Any, ...] = (
    {}, {"v": 1}, [], [1], 0, -1, 2**63, 1.5, True, None, "", "x", "\x00", nested(DEEP),
    "9999-12-31T23:59:59.999+00:00",
)
FIELDS = {
    "readings": ("schema", "gateway", "enterprise", "seq", "sent_at", "readings", "readings.0",
                 "readings.0.tag", "readings.0.ts", "readings.0.value", "readings.0.unit",
                 "readings.0.quality", "readings.0.reason", "readings.0.backfill", "readings.0.extra"),
    "events": ("events", "events.0", "events.0.id", "events.0.kind", "events.0.severity",
               "events.0.state", "events.0.ts", "events.0.tag", "events.0.interlock",
               "events.0.source", "events.0.value", "events.0.limit", "events.0.start"),
    "meta": ("points", "points.0", "points.0.tag", "points.0.name", "points.0.range", "points.0.limits"),
    "status": ("state", "version", "started_at", "seq"),
}


def mutated(kind: str, path: str, value: Any, seq: int) -> bytes:
    body = message(kind, seq)
    *parents, last = [int(p) if p.isdigit() else p for p in path.split(".")]
    node: Any = body
    for step in parents:
        node = node[step]
    node[last] = copy.deepcopy(value)
    return json.dumps(body).encode()  # json: any int size, NaN never


def fuzz_messages() -> list[tuple[str, bytes]]:
    out, seq = [], 10_000
    for kind, paths in FIELDS.items():
        for path in paths:
            for value in HOSTILE:
                seq += 1
                out.append((kind, mutated(kind, path, value, seq)))
    return out


def counts(db: sqlite3.Connection, rc: Receiver) -> tuple[int, int, str | None]:
    bad = db.execute("SELECT COUNT(*) FROM violations").fetchone()[0]
    good = db.execute("SELECT COUNT(*) FROM messages WHERE valid = 1").fetchone()[0]
    gw = rc.gateways.get(GATEWAY)
    return bad, good, gw.status_at if gw else None


def test_every_field_set_to_every_hostile_value_is_stored_or_recorded(tmp_path: Path) -> None:
    """Property: each message ends as exactly one of a violation row, a stored message or the
    gateway's status; `handle` never raises."""
    db = open_db(str(tmp_path / "r.db"))
    db.execute("PRAGMA synchronous=OFF")  # hundreds of one-message transactions
    rc = Receiver(db, PREFIX)
    topic = f"{PREFIX}/{ENTERPRISE}/{GATEWAY}/"
    for i, (kind, payload) in enumerate(fuzz_messages()):
        before = counts(db, rc)
        rc.handle([Incoming(topic + kind, payload, 1, False, False, i + 1, 1, 1_795_377_097_000 + i)])
        bad, good, status_at = counts(db, rc)
        outcomes = (bad - before[0], good - before[1], int(status_at != before[2]))
        assert sorted(outcomes) == [0, 0, 1], (kind, payload[:200], outcomes)


def test_a_message_the_database_refuses_becomes_a_violation(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Whatever the checks miss, the database's refusal of one message is recorded against
    that message; the rest of its batch is stored."""
    monkeypatch.setattr(receiver_mqtt, "validate", lambda *_: [])  # a check that misses everything
    db = open_db(str(tmp_path / "r.db"))
    rc = Receiver(db, PREFIX)
    refused = extra_cases(20)[0]
    batch = [Incoming(c.topic(), c.payload, 1, False, False, i, 1, 1_795_377_097_000)
             for i, c in enumerate((*controls(10)[:2], refused, *controls(30)[:1]))]
    rc.handle(batch)
    gw = rc.gateways[GATEWAY]
    assert (gw.messages, gw.readings, gw.events, gw.violations) == (3, 4, 1, 1)
    rows = db.execute("SELECT seq, problems FROM violations").fetchall()
    assert rows == [(20, rows[0][1])] and "cannot be stored" in rows[0][1]
    assert sorted(s for (s,) in db.execute("SELECT seq FROM messages WHERE valid = 1")) == [10, 11, 30]
    assert db.execute("SELECT COUNT(*) FROM events").fetchone()[0] == 1
    assert orjson.loads(db.execute("SELECT body FROM events").fetchone()[0])["tag"] == "GT101"
