"""`hazgate receive`: the schema validator, the sequence bookkeeping, and the command against a
real Mosquitto (duplicates, gaps, late arrivals, violations, kill and restart, broker restart),
plus the real agent's messages passing through it."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sqlite3
import subprocess
import threading
import time
from pathlib import Path

import orjson
import paho.mqtt.client as mqtt
import pytest

from agent.receiver.mqtt import (
    Incoming,
    Receiver,
    SeqSet,
    _is_time,
    open_db,
    parse_broker,
    validate,
)
from tests.conftest import HAZGATE, ROOT, Proc, free_port, wait_port

PREFIX = "hazchem"
TS = "2026-11-22T19:00:00.000+08:00"


# --- message builders ------------------------------------------------------------------

def envelope(seq: int | None, gateway: str = "GW-1", enterprise: str = "E1") -> dict:
    env = {"schema": "hazgate.uplink/1", "gateway": gateway, "enterprise": enterprise}
    if seq is not None:
        env["seq"] = seq
    env["sent_at"] = "2026-11-22T19:00:01.250+08:00"
    return env


def reading(tag: str = "TK101_LT", value=7.25, quality: str = "good", reason: str | None = None, **kw) -> dict:
    r = {"tag": tag, "ts": TS, "value": value, "unit": "m", "quality": quality, "backfill": False}
    if reason is not None:
        r["reason"] = reason
    r.update(kw)
    return r


def readings_msg(seq: int, n: int = 3, gateway: str = "GW-1", enterprise: str = "E1") -> dict:
    return {**envelope(seq, gateway, enterprise), "readings": [reading(f"T{i}", float(i)) for i in range(n)]}


def event(**kw) -> dict:
    e = {"id": "ev-1", "kind": "limit", "severity": "alarm", "state": "active", "ts": TS,
         "tag": "TK101_LT", "value": 11.2, "limit": 11.0}
    e.update(kw)
    return e


def events_msg(seq: int, **kw) -> dict:
    return {**envelope(seq), "events": [event(**kw)]}


def meta_msg(seq: int) -> dict:
    return {**envelope(seq), "points": [{"tag": "TK101_LT", "name": "1#储罐液位", "unit": "m", "kind": "level"}]}


def status_msg(state: str = "online") -> dict:
    return {**envelope(None), "state": state, "version": "0.1.0", "started_at": "2026-11-22T18:00:00.000+08:00"}


def topic(kind: str, gateway: str = "GW-1", enterprise: str = "E1") -> str:
    return f"{PREFIX}/{enterprise}/{gateway}/{kind}"


# --- validator ------------------------------------------------------------------------------

VALID = [
    ("readings", readings_msg(1)),
    ("readings", {**envelope(2), "readings": [reading(value=None, quality="bad", reason="timeout"),
                                              reading(value=True), reading(value=3),
                                              reading(quality="uncertain", reason="stale", value=1.0)]}),
    ("readings", {**envelope(3), "readings": []}),
    ("events", events_msg(4)),
    ("events", events_msg(5, tag=None, interlock="SIS-R101-TZ01", value=True, limit=None)),
    ("events", {**envelope(6), "events": [event(id=17)]}),
    ("meta", meta_msg(7)),
    ("status", status_msg("online")),
    ("status", status_msg("offline")),
]


@pytest.mark.parametrize("kind,body", VALID)
def test_valid_messages_have_no_problems(kind, body):
    assert validate(kind, "E1", "GW-1", body) == []


def _mutate(body: dict, path: tuple, value) -> dict:
    body = json.loads(json.dumps(body, ensure_ascii=False))
    node = body
    for k in path[:-1]:
        node = node[k]
    if value is KeyError:
        del node[path[-1]]
    else:
        node[path[-1]] = value
    return body


# (kind, message, path, value put there (KeyError: taken out), what the problem says)
BROKEN = [
    ("readings", readings_msg(1), ("schema",), "hazgate.uplink/2", "schema:"),
    ("readings", readings_msg(1), ("gateway",), "GW-2", "does not match the topic's 'GW-1'"),
    ("readings", readings_msg(1), ("enterprise",), KeyError, "enterprise:"),
    ("readings", readings_msg(1), ("seq",), KeyError, "seq:"),
    ("readings", readings_msg(1), ("seq",), 0, "seq:"),
    ("readings", readings_msg(1), ("seq",), "7", "seq:"),
    ("readings", readings_msg(1), ("seq",), True, "seq:"),
    ("readings", readings_msg(1), ("sent_at",), "2026-11-22T19:00:01+08:00", "sent_at:"),
    ("readings", readings_msg(1), ("sent_at",), "2026-11-22 19:00:01.250", "sent_at:"),
    ("readings", readings_msg(1), ("readings",), KeyError, "readings:"),
    ("readings", readings_msg(1), ("readings", 1, "tag"), "", "readings[1].tag"),
    ("readings", readings_msg(1), ("readings", 0, "ts"), "2026-11-22T19:00:00.000", "readings[0].ts"),
    ("readings", readings_msg(1), ("readings", 0, "ts"), "2026-02-30T19:00:00.000Z", "readings[0].ts"),
    ("readings", readings_msg(1), ("readings", 0, "value"), KeyError, "readings[0].value: is missing"),
    ("readings", readings_msg(1), ("readings", 0, "value"), "7.2", "readings[0].value"),
    ("readings", readings_msg(1), ("readings", 0, "value"), None, "null with quality good"),
    ("readings", readings_msg(1), ("readings", 0, "unit"), None, "readings[0].unit"),
    ("readings", readings_msg(1), ("readings", 2, "quality"), "ok", "readings[2].quality"),
    ("readings", readings_msg(1), ("readings", 0, "quality"), "bad", "readings[0].reason: required with quality bad"),
    ("readings", readings_msg(1), ("readings", 0, "quality"), "uncertain", "readings[0].reason"),
    ("readings", readings_msg(1), ("readings", 0, "backfill"), 0, "readings[0].backfill"),
    ("readings", readings_msg(1), ("readings", 0), [1, 2], "readings[0]: is not an object"),
    ("events", events_msg(1), ("events", 0, "severity"), "fatal", "events[0].severity"),
    ("events", events_msg(1), ("events", 0, "id"), KeyError, "events[0].id"),
    ("events", events_msg(1), ("events", 0, "kind"), "", "events[0].kind"),
    ("events", events_msg(1), ("events", 0, "state"), KeyError, "events[0].state"),
    ("events", events_msg(1), ("events", 0, "ts"), 1795377097, "events[0].ts"),
    ("events", events_msg(1), ("events", 0, "tag"), KeyError, "neither a tag nor an interlock"),
    ("events", events_msg(1), ("events", 0, "limit"), [1, 2], "events[0].limit"),
    ("events", events_msg(1), ("events",), {"id": 1}, "events:"),
    ("meta", meta_msg(1), ("points",), KeyError, "points:"),
    ("meta", meta_msg(1), ("points", 0, "tag"), None, "points[0].tag"),
    ("status", status_msg(), ("state",), "up", "state:"),
    ("status", status_msg(), ("version",), "", "version:"),
    ("status", status_msg(), ("started_at",), KeyError, "started_at:"),
    ("status", status_msg(), ("seq",), 5, "a status message carries no seq"),
]


@pytest.mark.parametrize("kind,base,path,value,expected", BROKEN)
def test_validator_names_the_problem(kind, base, path, value, expected):
    problems = validate(kind, "E1", "GW-1", _mutate(base, path, value))
    assert problems, f"{path}={value!r} passed"
    assert any(expected in p for p in problems), problems


def test_gateway_events_from_the_store_pass(tmp_path: Path):
    """The agent's own events (buffer evictions) concern no tag: `"source": "gateway"` stands in."""
    from agent.pipeline.store import Store

    store = Store(tmp_path / "data")
    try:
        pid = store.pid("TK101_LT", "m", "float32")
        store.add_readings([(1_000, pid, 1.0, 0, None), (2_000, pid, 2.0, 0, None)])
        evicted = store.enforce_limits(1 << 40, 1.0)
    finally:
        store.close()
    assert evicted and all(e["kind"] == "buffer_eviction" for e in evicted)
    assert validate("events", "E1", "GW-1", {**envelope(1), "events": evicted}) == []
    no_subject = {k: v for k, v in evicted[0].items() if k != "source"}
    assert validate("events", "E1", "GW-1", {**envelope(1), "events": [no_subject]})


def test_validator_rejects_non_objects_and_bounds_its_list():
    assert validate("readings", "E1", "GW-1", [1, 2]) == ["message: is a JSON list, not an object"]
    many = {**envelope(1), "readings": [reading(quality="nope") for _ in range(500)]}
    problems = validate("readings", "E1", "GW-1", many)
    assert len(problems) == 11 and problems[-1].startswith("...")
    assert validate("readings", "E1", "GW-1", {**readings_msg(1), "added_field": 1}) == []  # fields may be added
    dup = {**meta_msg(1), "points": [{"tag": "A"}, {"tag": "A"}]}
    assert any("listed twice" in p for p in validate("meta", "E1", "GW-1", dup))


@pytest.mark.parametrize("text,ok", [
    ("2026-11-22T19:00:00.000+08:00", True),
    ("2026-11-22T19:00:00.000Z", True),
    ("2026-11-22t19:00:00.000z", True),
    ("2026-11-22T19:00:00.000-05:30", True),
    ("2026-11-22T19:00:00+08:00", False),  # no milliseconds
    ("2026-11-22T19:00:00.0001+08:00", False),
    ("2026-11-22T19:00:00.00+08:00", False),
    ("2026-11-22T19:00:00.000", False),  # no offset
    ("2026-11-22T19:00:00.000+0800", False),
    ("2026-11-22T24:00:00.000+08:00", False),
    ("2026-13-22T19:00:00.000+08:00", False),
    ("2026-11-22T19:00:00.000+24:00", False),
    ("２026-11-22T19:00:00.000+08:00", False),
    (1795377097000, False),
    (None, False),
])
def test_rfc3339_with_milliseconds_and_offset(text, ok):
    assert _is_time(text) is ok


def test_agent_timestamps_pass():
    from agent.common.timefmt import now_ms, rfc3339

    assert _is_time(rfc3339(now_ms()))
    assert _is_time(rfc3339(0))


# --- sequence bookkeeping ------------------------------------------------------------------

def test_seqset_ranges_and_missing():
    s = SeqSet()
    for n in (5, 1, 2, 3, 9, 7, 8):
        assert s.add(n)
    assert not s.add(2)
    assert (s.lo, s.hi) == ([1, 5, 7], [3, 5, 9])
    assert s.missing(1, 9) == [(4, 4), (6, 6)]
    assert s.add(6) and s.add(4)
    assert (s.lo, s.hi) == ([1], [9])
    assert s.missing(1, 12) == [(10, 12)]
    assert 9 in s and 10 not in s and 0 not in s
    assert SeqSet([(5, 6), (1, 2), (3, 4), (9, 9)]).lo == [1, 9]


def _incoming(kind: str, body, *, mid: int = 1, retain: bool = False, dup: bool = False,
              gateway: str = "GW-1") -> Incoming:
    payload = body if isinstance(body, bytes) else json.dumps(body).encode()  # json: any int size
    return Incoming(topic(kind, gateway), payload, 1, retain, dup, mid, 1, 1795377097000)


def test_receiver_counts_and_reloads_from_db(tmp_path: Path):
    db = open_db(str(tmp_path / "r.db"))
    rc = Receiver(db, PREFIX)
    rc.handle([
        _incoming("meta", meta_msg(1), retain=True),  # retained copy: seen, opens no range
        _incoming("readings", readings_msg(10)),
        _incoming("readings", readings_msg(11)),
        _incoming("readings", readings_msg(11)),  # published twice by the gateway
        _incoming("readings", readings_msg(11), dup=True),  # the broker re-delivering to us
        _incoming("meta", meta_msg(1), retain=True),  # retained copy again, on a resubscribe
        _incoming("readings", readings_msg(14)),
        _incoming("events", events_msg(12)),  # late: below the highest seen
        _incoming("status", status_msg()),
        _incoming("readings", b"{not json"),
        _incoming("readings", {**readings_msg(15), "gateway": "GW-9"}),
    ])
    gw = rc.gateways["GW-1"]
    assert (gw.messages, gw.readings, gw.events, gw.meta) == (5, 9, 1, 1)
    assert (gw.duplicates, gw.redelivered, gw.out_of_order, gw.violations) == (1, 1, 1, 2)
    assert (gw.first, gw.highest, gw.gaps()) == (10, 15, [(13, 13)])
    assert gw.status == "online" and gw.enterprise == "E1"
    assert rc.lines() == ["GW-1: messages=5 readings=9 duplicates=1 gaps=1 out_of_order=1 violations=2 missing=[13]"]
    assert db.execute("SELECT COUNT(*) FROM readings").fetchone()[0] == 9
    assert db.execute("SELECT event_id, severity, tag, value, limit_value FROM events").fetchall() == [
        ("ev-1", "alarm", "TK101_LT", 11.2, 11.0)]
    assert db.execute("SELECT COUNT(*) FROM violations WHERE gateway='GW-1'").fetchone()[0] == 2
    # a restarted receiver picks up where this one stopped
    again = Receiver(db, PREFIX)
    assert again.report() == rc.report()
    again.handle([_incoming("readings", readings_msg(13)), _incoming("readings", readings_msg(14))])
    gw = again.gateways["GW-1"]
    assert (gw.messages, gw.duplicates, gw.out_of_order, gw.gaps()) == (6, 2, 2, [])


def test_numbers_beyond_64_bits_are_violations_not_crashes(tmp_path: Path):
    huge = {**envelope(1), "readings": [reading(value=2**64)]}
    assert any("64-bit" in p for p in validate("readings", "E1", "GW-1", huge))
    assert validate("readings", "E1", "GW-1", {**readings_msg(1), "seq": 2**63})
    # JSON parsers differ: orjson reads 2**63 .. 2**64-1 as int (SQLite cannot store it), more as float
    rc = Receiver(open_db(str(tmp_path / "r.db")), PREFIX)
    rc.handle([_incoming("readings", {**envelope(1), "readings": [reading(value=2**63)]}),
               _incoming("readings", {**readings_msg(2), "seq": 2**63}),
               _incoming("events", events_msg(3, value=2**64 - 1)),
               _incoming("readings", {**envelope(4), "readings": [reading(value=2**70)]})])
    gw = rc.gateways["GW-1"]
    assert (gw.violations, gw.messages, gw.readings) == (3, 1, 1)


def test_parse_broker():
    assert parse_broker("mqtt://127.0.0.1:1884") == ("127.0.0.1", 1884, False)
    assert parse_broker("mqtts://platform.example") == ("platform.example", 8883, True)
    for bad in ("127.0.0.1:1883", "http://x:1", "mqtt://", "mqtt://h:99999", "mqtt://h:1/topic"):
        with pytest.raises(ValueError):
            parse_broker(bad)


# --- against Mosquitto -------------------------------------------------------------------------

def wait_for(cond, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(0.05)
    raise TimeoutError(f"{what} after {timeout}s")


class Publisher:
    """A gateway stand-in: publishes hand-built messages at QoS 1 and waits for each PUBACK."""

    def __init__(self, port: int, client_id: str = "test-gateway"):
        self.c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id)
        self.c.connect("127.0.0.1", port)
        self.c.loop_start()

    def send(self, kind: str, body, gateway: str = "GW-1", enterprise: str = "E1", retain: bool = False) -> None:
        payload = body if isinstance(body, bytes) else orjson.dumps(body)
        info = self.c.publish(topic(kind, gateway, enterprise), payload, qos=1, retain=retain)
        info.wait_for_publish(5)
        assert info.is_published()

    def close(self) -> None:
        self.c.disconnect()
        self.c.loop_stop()


def start_receiver(procs: list[Proc], tmp_path: Path, url: str, *extra: str, name: str = "receiver") -> Proc:
    log = tmp_path / f"{name}.log"
    p = Proc([*HAZGATE, "receive", "--broker", url, "--db", str(tmp_path / "recv.db"), *extra], log)
    procs.append(p)
    return p


def stored_readings(db_path: Path) -> int:
    """Readings the receiver has stored so far (0 while its database is not there yet)."""
    try:
        with contextlib.closing(sqlite3.connect(f"file:{db_path}?mode=ro", uri=True, timeout=1)) as db:
            return db.execute("SELECT COUNT(*) FROM readings").fetchone()[0]
    except sqlite3.Error:
        return 0


def subscribed(p: Proc, times: int = 1) -> bool:
    return p.output().count("msg='subscribed'") >= times


def finish(p: Proc, timeout: float = 30.0) -> int:
    try:
        return p.p.wait(timeout)
    except subprocess.TimeoutExpired:
        p.stop(signal.SIGKILL)
        raise AssertionError(f"receiver did not exit within {timeout}s:\n{p.output()}") from None


def test_receive_reports_duplicates_gaps_late_arrivals_and_violations(broker, procs, tmp_path: Path):
    report = tmp_path / "r.json"
    rx = start_receiver(procs, tmp_path, broker.url, "--idle-exit", "2", "--report", str(report))
    wait_for(lambda: subscribed(rx), 15, "receiver not subscribed")
    pub = Publisher(broker.port)
    try:
        pub.send("status", status_msg(), retain=True)
        pub.send("meta", meta_msg(1), retain=True)
        pub.send("readings", readings_msg(2))
        pub.send("readings", readings_msg(3))
        pub.send("readings", readings_msg(3))  # duplicate
        pub.send("readings", readings_msg(5))  # 4 is missing
        pub.send("readings", readings_msg(7))
        pub.send("readings", readings_msg(6))  # out of order
        pub.send("events", events_msg(8))
        # violations, each of another kind; 9-12 carry a seq, so they are no gap
        pub.send("readings", _mutate(readings_msg(9), ("readings", 0, "quality"), "ok"))
        pub.send("readings", {**readings_msg(10), "gateway": "GW-X"})
        pub.send("readings", _mutate(readings_msg(11), ("readings", 1, "quality"), "bad"))  # no reason
        pub.send("events", _mutate(events_msg(12), ("events", 0, "ts"), "2026-11-22T19:00:00Z"))
        pub.send("status", {**status_msg(), "seq": 13})
        pub.send("readings", b"\xff not json")
        # a second gateway the receiver meets mid-stream: it starts at its lowest seq
        pub.send("readings", readings_msg(100, n=2, gateway="GW-2", enterprise="E2"), gateway="GW-2", enterprise="E2")
        pub.send("readings", readings_msg(101, n=2, gateway="GW-2", enterprise="E2"), gateway="GW-2", enterprise="E2")
    finally:
        pub.close()
    assert finish(rx) == 0, rx.output()
    out = rx.output()
    assert "GW-1: messages=7 readings=15 duplicates=1 gaps=1 out_of_order=1 violations=6 missing=[4]" in out
    assert "GW-2: messages=2 readings=4 duplicates=0 gaps=0 out_of_order=0 violations=0 missing=[]" in out
    r = json.loads(report.read_text())
    gw1 = r["gateways"]["GW-1"]
    assert gw1["missing"] == [[4, 4]] and gw1["gaps"] == 1 and gw1["missing_count"] == 1
    assert (gw1["first_seq"], gw1["highest_seq"], gw1["events"], gw1["meta"]) == (1, 12, 1, 1)
    assert gw1["status"]["state"] == "online" and gw1["enterprise"] == "E1"
    assert r["gaps"] is True

    db = sqlite3.connect(tmp_path / "recv.db")
    problems = [row[0] for row in db.execute("SELECT problems FROM violations ORDER BY rowid")]
    assert len(problems) == 6
    for expected in ("quality", "does not match the topic", "reason: required", "events[0].ts",
                     "carries no seq", "not UTF-8 JSON"):
        assert any(expected in p for p in problems), (expected, problems)
    assert db.execute("SELECT COUNT(*), COUNT(DISTINCT seq) FROM readings WHERE gateway='GW-1'").fetchone() == (15, 5)
    db.close()

    # the same db again, --fail-on-gaps: the gap is still there (state persisted): exit 1
    rx2 = start_receiver(procs, tmp_path, broker.url, "--idle-exit", "1", "--fail-on-gaps", name="rx2")
    assert finish(rx2) == 1, rx2.output()
    assert "GW-1: messages=7 readings=15 duplicates=1 gaps=1" in rx2.output()

    # seq 4 published while no receiver runs: the broker keeps it for the session; gap closed
    pub = Publisher(broker.port)
    pub.send("readings", readings_msg(4))
    pub.close()
    rx3 = start_receiver(procs, tmp_path, broker.url, "--idle-exit", "2", "--fail-on-gaps", name="rx3")
    assert finish(rx3) == 0, rx3.output()
    assert "GW-1: messages=8 readings=18 duplicates=1 gaps=0 out_of_order=2 violations=6 missing=[]" in rx3.output()


def test_receiver_killed_and_restarted_loses_nothing(broker, procs, tmp_path: Path):
    n, per = 150, 5
    report = tmp_path / "r.json"
    rx = start_receiver(procs, tmp_path, broker.url, "--duration", "60")
    wait_for(lambda: subscribed(rx), 15, "receiver not subscribed")
    sent: list[int] = []

    def gateway() -> None:
        pub = Publisher(broker.port)
        try:
            for seq in range(1, n + 1):
                pub.send("readings", readings_msg(seq, n=per))
                sent.append(seq)
                time.sleep(0.02)
        finally:
            pub.close()

    t = threading.Thread(target=gateway, daemon=True)
    t.start()
    wait_for(lambda: len(sent) >= 40, 20, "publisher stalled")
    rx.stop(signal.SIGKILL)  # by PID, mid-stream
    killed_at = len(sent)
    db = sqlite3.connect(tmp_path / "recv.db")
    stored = db.execute("SELECT COUNT(*) FROM messages").fetchone()[0]
    db.close()
    assert 0 < stored <= killed_at
    time.sleep(0.5)
    rx2 = start_receiver(procs, tmp_path, broker.url, "--idle-exit", "2", "--fail-on-gaps",
                         "--report", str(report), name="rx2")
    t.join(30)
    assert not t.is_alive() and len(sent) == n
    assert finish(rx2) == 0, rx2.output()
    assert f"GW-1: messages={n} readings={n * per} duplicates=0 gaps=0 out_of_order=0 violations=0 missing=[]" in rx2.output()
    gw = json.loads(report.read_text())["gateways"]["GW-1"]
    assert gw["first_seq"] == 1 and gw["highest_seq"] == n
    db = sqlite3.connect(tmp_path / "recv.db")
    assert db.execute("SELECT COUNT(*), COUNT(DISTINCT seq) FROM readings").fetchone() == (n * per, n)
    db.close()


def test_receiver_reconnects_after_broker_restart(broker, procs, tmp_path: Path):
    rx = start_receiver(procs, tmp_path, broker.url, "--idle-exit", "15")
    wait_for(lambda: subscribed(rx), 15, "receiver not subscribed")
    pub = Publisher(broker.port)
    pub.send("readings", readings_msg(1))
    pub.close()
    broker.kill()
    time.sleep(0.5)
    broker.start()  # same port; this broker keeps no sessions: the receiver subscribes again
    wait_for(lambda: subscribed(rx, 2), 20, "receiver did not come back")
    pub = Publisher(broker.port)
    pub.send("readings", readings_msg(2))
    pub.close()
    wait_for(lambda: "msg='disconnected'" in rx.output(), 1, "no disconnect logged")
    wait_for(lambda: stored_readings(tmp_path / "recv.db") == 6, 15, "the second message not stored")
    os.kill(rx.pid, signal.SIGTERM)
    assert finish(rx, 15) == 0, rx.output()
    assert "GW-1: messages=2 readings=6 duplicates=0 gaps=0" in rx.output()


@pytest.mark.parametrize("url", ["127.0.0.1:1883", "http://127.0.0.1:1883", "mqtt://", "mqtt://127.0.0.1:99999"])
def test_bad_broker_url_exits_2(tmp_path: Path, url: str):
    r = subprocess.run([*HAZGATE, "receive", "--broker", url, "--db", str(tmp_path / "r.db"), "--idle-exit", "1"],
                       cwd=ROOT, capture_output=True, text=True, timeout=30)
    assert r.returncode == 2, r.stderr
    assert "valid: mqtt://host:port" in r.stderr or "Port" in r.stderr or "port" in r.stderr


def test_unusable_db_or_numbers_exit_2(tmp_path: Path):
    from agent.pipeline.store import Store

    Store(tmp_path / "gw").close()  # the gateway's own store, given by mistake
    url = f"mqtt://127.0.0.1:{free_port()}"
    for db, extra in ((tmp_path, []), (tmp_path / "no" / "such" / "dir.db", []),
                      (tmp_path / "gw" / "hazgate.db", []), (tmp_path / "ok.db", ["--idle-exit", "0"]),
                      (tmp_path / "ok.db", ["--duration", "-1"])):
        r = subprocess.run([*HAZGATE, "receive", "--broker", url, "--db", str(db), *extra],
                           cwd=ROOT, capture_output=True, text=True, timeout=30)
        assert r.returncode == 2, (db, extra, r.stderr)
        assert r.stderr.startswith("hazgate receive: --"), r.stderr


def test_unreachable_broker_exits_1(tmp_path: Path):
    r = subprocess.run([*HAZGATE, "receive", "--broker", f"mqtt://127.0.0.1:{free_port()}",
                        "--db", str(tmp_path / "r.db"), "--idle-exit", "1.5"],
                       cwd=ROOT, capture_output=True, text=True, timeout=30)
    assert r.returncode == 1
    assert "never reached the broker" in r.stderr


def test_agent_messages_pass_the_receiver(broker, procs, tmp_path: Path):
    """What `hazgate run` really publishes (simulated plant) is valid, complete and in order."""
    mport = free_port()
    plant = (ROOT / "config/plant.toml").read_text().replace("port = 5020", f"port = {mport}")
    plant = plant.replace('"points/', f'"{ROOT}/config/points/')
    (tmp_path / "plant.toml").write_text(plant)
    gw = (ROOT / "config/gateway.toml").read_text().replace("port = 5020", f"port = {mport}")
    gw = gw.replace('"points/', f'"{ROOT}/config/points/').replace("mqtt://127.0.0.1:1883", broker.url)
    gw = gw.replace('rules = "rules.toml"', f'rules = "{ROOT}/config/rules.toml"')
    gw = gw.replace('data_dir = "../var/hazgate"', f'data_dir = "{tmp_path / "data"}"')
    uport, link = free_port(), tmp_path / "gas-bus-1"  # the OPC UA server and the RTU bus: this test's own
    plant = plant.replace("port = 4840", f"port = {uport}").replace("/tmp/hazgate-gas-bus-1", str(link))
    (tmp_path / "plant.toml").write_text(plant)
    gw = gw.replace("127.0.0.1:4840", f"127.0.0.1:{uport}").replace("/tmp/hazgate-gas-bus-1", str(link))
    (tmp_path / "gateway.toml").write_text(gw)
    report = tmp_path / "r.json"
    rx = start_receiver(procs, tmp_path, broker.url, "--idle-exit", "3", "--fail-on-gaps", "--report", str(report))
    sim = Proc([*HAZGATE, "simulate", "-s", str(tmp_path / "plant.toml")], tmp_path / "sim.log")
    procs.append(sim)
    wait_port(mport, 20)
    wait_for(lambda: subscribed(rx), 15, "receiver not subscribed")
    agent = Proc([*HAZGATE, "run", "-c", str(tmp_path / "gateway.toml")], tmp_path / "agent.log")
    procs.append(agent)
    db_ready = tmp_path / "recv.db"

    def readings_messages() -> int:
        with sqlite3.connect(db_ready) as db:
            return db.execute("SELECT COUNT(*) FROM messages WHERE kind='readings'").fetchone()[0]

    wait_for(lambda: readings_messages() >= 3, 30, "agent sent too little")
    assert agent.stop(signal.SIGTERM) == 0, agent.output()
    assert finish(rx) == 0, rx.output()
    g = json.loads(report.read_text())["gateways"]["GW-120116-0001"]
    assert (g["violations"], g["duplicates"], g["gaps"], g["out_of_order"]) == (0, 0, 0, 0), rx.output()
    assert g["meta"] == 1 and g["first_seq"] == 1 and g["readings"] >= 16
    assert g["enterprise"] == "120116000123"
    assert g["status"]["state"] == "offline" and g["status"]["version"]

