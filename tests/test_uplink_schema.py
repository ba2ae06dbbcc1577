"""The JSON Schema of `hazgate.uplink/1` (docs/uplink.schema.json, issue 17) is one with the
check `hazgate receive` runs on every message: the published file is what
agent/receiver/schema.py builds from the receiver's own names and rules, the receiver's cases
(tests/test_receive.py VALID and BROKEN) get the same verdict from the schema (checked here
with the `jsonschema` package, a test dependency) as from the receiver, the agent's real
messages pass, and a message that breaks the schema is counted as a violation by the command."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest
from test_receive import (
    BROKEN,
    VALID,
    Publisher,
    _mutate,
    envelope,
    finish,
    start_receiver,
    subscribed,
    wait_for,
)

from agent.receiver.mqtt import validate
from agent.receiver.schema import text_of, uplink_schema

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "uplink.schema.json"
# broken cases whose rule a JSON Schema cannot state (the schema's description names them)
BEYOND_SCHEMA = {("gateway", "GW-2"), ("ts", "2026-02-30T19:00:00.000Z")}


def beyond(path: tuple, value: object) -> bool:
    return isinstance(value, str) and (path[-1], value) in BEYOND_SCHEMA


def schema_problems(kind: str, body: object) -> list[str]:
    schema = uplink_schema()
    one = {"$schema": schema["$schema"], "$defs": schema["$defs"], "$ref": f"#/$defs/{kind}"}
    return [e.message for e in jsonschema.Draft202012Validator(one).iter_errors(body)]


def test_the_published_schema_is_the_receivers() -> None:
    assert DOC.read_text(encoding="utf-8") == text_of(uplink_schema()), \
        "docs/uplink.schema.json is stale: python -m agent.receiver.schema > docs/uplink.schema.json"
    jsonschema.Draft202012Validator.check_schema(json.loads(DOC.read_text(encoding="utf-8")))


@pytest.mark.parametrize("kind,body", VALID)
def test_valid_messages_pass_the_schema(kind: str, body: dict) -> None:
    assert schema_problems(kind, body) == []
    assert jsonschema.Draft202012Validator(uplink_schema()).is_valid(body)  # and the whole schema


@pytest.mark.parametrize("kind,base,path,value,expected", BROKEN)
def test_broken_messages_break_the_schema(kind: str, base: dict, path: tuple, value: object, expected: str) -> None:
    body = _mutate(base, path, value)
    assert validate(kind, "E1", "GW-1", body), "the receiver's check passes it"
    if beyond(path, value):
        assert schema_problems(kind, body) == []  # the receiver's own check, beyond the schema
    else:
        assert schema_problems(kind, body), f"{path}={value!r} passes the schema"


def test_the_agents_own_messages_pass(tmp_path: Path) -> None:
    """Bodies as the MQTT uplink builds them, and the store's gateway events."""
    from agent.north.mqtt.schema import envelope as uplink_envelope
    from agent.north.mqtt.schema import events_body, readings_body, status_body
    from agent.pipeline.store import Store

    env = uplink_envelope("GW-1", "E1", 7, 1_795_377_097_250)
    rows = [(1_795_377_097_000, "TK101_LT", "m", "float32", 7.25, "good", None),
            (1_795_377_097_000, "TK101_ON", "", "bool", None, "bad", "timeout"),
            (1_795_377_097_000, "TK101_TT", "°C", "float32", 21.5, "uncertain", "clock_unsynchronized")]
    assert schema_problems("readings", json.loads(json.dumps(readings_body(env, rows, True)))) == []
    store = Store(tmp_path / "data")
    try:
        pid = store.pid("TK101_LT", "m", "float32")
        store.add_readings([(1_000, pid, 1.0, 0, None)])
        evicted = store.enforce_limits(1 << 40, 1.0)
    finally:
        store.close()
    assert schema_problems("events", events_body(env, evicted)) == []
    status = status_body("GW-1", "E1", "online", "0.1.0", 1_795_377_097_000)
    assert schema_problems("status", status) == []


def test_a_message_breaking_the_schema_is_counted_as_a_violation(broker, procs, tmp_path: Path) -> None:
    """Through the command: each broken message the schema refuses is a violation, once."""
    broken = [(kind, _mutate(base, path, value)) for kind, base, path, value, _ in BROKEN
              if not beyond(path, value) and kind != "status" and path != ("seq",)]
    report = tmp_path / "r.json"
    rx = start_receiver(procs, tmp_path, broker.url, "--idle-exit", "2", "--report", str(report))
    wait_for(lambda: subscribed(rx), 15, "receiver not subscribed")
    pub = Publisher(broker.port)
    try:
        for seq, (kind, body) in enumerate(broken, 1):
            assert schema_problems(kind, body)
            pub.send(kind, {**body, "seq": seq} if kind != "status" else body)
        pub.send("readings", {**envelope(len(broken) + 1), "readings": []})  # and one good
    finally:
        pub.close()
    assert finish(rx) == 0, rx.output()
    gw = json.loads(report.read_text())["gateways"]["GW-1"]
    assert gw["violations"] == len(broken), (gw, len(broken))
    assert gw["messages"] == 1, gw


def test_readings_encoded_once_for_every_uplink_are_each_uplinks_own() -> None:
    """A second uplink taking the very rows another took reuses their encoding; rows that are
    only equal are encoded afresh; either way the bytes are those of the body itself."""
    from agent.north.mqtt.schema import SharedReadings, encode, readings_body, readings_message
    from agent.north.mqtt.schema import envelope as uplink_envelope

    rows = [(1_795_377_097_000, f"P{i}", "m", "float32", i + 0.5, "good", None) for i in range(3)]
    equal = [(*r[:4], r[4] + 0.0, *r[5:]) for r in rows]  # new tuples, the same values
    for seq, took in ((1, rows), (2, list(rows)), (3, equal), (4, rows[:2])):
        env = uplink_envelope("GW-1", "E1", seq, 1_795_377_097_250)
        assert readings_message(env, took, seq == 4) == encode(readings_body(env, took, seq == 4))
    shared = SharedReadings()
    alone = shared.encoded(rows, False)
    assert shared.encoded(rows, False) is not alone  # one user: nothing is kept
    users = [type("Body", (), {})() for _ in range(2)]  # two live bodies
    for user in users:
        shared.join(user)
    first = shared.encoded(rows, False)
    assert shared.encoded(list(rows), False) is first
    assert shared.encoded(equal, False) is not first and shared.encoded(equal, False) == first
    assert shared.encoded(rows, True) is not first
