"""Declarations through the whole house: `hazgate declare` before and while the agent runs, the
events on the MQTT uplink and as `[uplinks.declarations]` records on a platform, the checks'
answer (a silenced detector, a declared bypass), and an agent restart in between."""

from __future__ import annotations

import sqlite3
import subprocess
import time
from pathlib import Path

import orjson
from conftest import HAZGATE, ROOT, Broker, Proc, free_port
from plant import DeviceSpec, Subscriber, write_plant
from platformkit import JIANGSU_TCP, write_secrets
from test_checks_e2e import Layout, events, finish_plant, start_sims, stop_checked
from test_uplinks_e2e import start_platform

RULES = """
[defaults]
flatline = "off"

[[detectors]]
tag = "GD"
fault = "GD_FLT"

[[interlocks]]
id = "IL-D"
name = "D reactor trip"
bypass = "D_BYP"
protects = [ { tag = "D_TT", trip_above = 150.0 } ]
"""

PLATFORM_EVENTS = """[uplinks.events]
[uplinks.events.envelope]
serviceId = "ALARM"
dataId = "{data_id}"
seq = "{seq}"
data = "{payload}"
[uplinks.events.record]
EVENT_ID = "{id}"
KIND = "{kind}"
STATE = "{state}"
[uplinks.declarations.record]
EQUIP_CODE = "{subject}"
IS_USE = "{state}"
STOP_REMARK = "{reason}"
STOP_PSN = "{by}"
STOP_TIME = "{since}"
"""


def declare(config: Path, *args: str) -> str:
    out = subprocess.run([*HAZGATE, "declare", "-c", str(config), *args], cwd=ROOT, capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return out.stdout


def of(sub: Subscriber, subject: str, kind: str | None = None) -> list[dict]:
    return [e.body for e in events(sub) if e.about == subject and (kind is None or e["kind"] == kind)]


def platform_records(db: Path) -> list[dict]:
    with sqlite3.connect(db) as c:
        return [orjson.loads(b) for (b,) in c.execute(
            "SELECT body FROM platform_records WHERE kind = 'events' ORDER BY rowid")]


def test_declared_stop_silences_the_detector_reaches_every_uplink_and_survives_a_restart(
        broker: Broker, procs: list[Proc], tmp_path: Path) -> None:
    a = Layout()
    dev = DeviceSpec("plc-d", [
        a.f("GD", {"const": 3.0}, unit="%LEL", kind="gas_lel", eng_min=0, eng_max=100, h=20, hh=40),
        a.b("GD_FLT", {"const": True}, kind="detector_fault"),  # faulty the whole time
        a.b("D_BYP", {"const": True}, kind="bypass"),
        a.f("D_TT", {"const": 60.0}, unit="°C", kind="temperature"),
    ], poll_interval="200ms", timeout="300ms")
    plant = write_plant(tmp_path, broker.url, [dev], publish_interval="200ms")
    finish_plant(plant, time.time(), RULES)
    write_secrets(tmp_path)
    tcp_port = free_port()
    plant.config.write_text(plant.config.read_text() + JIANGSU_TCP.format(
        port=tcp_port, connection="persistent", batch=50, timeout="2s", max_reply=1 << 20) + PLATFORM_EVENTS)
    # declared while the agent is not running
    assert "point GD stopped by Wang" in declare(plant.config, "stop", "GD", "--reason", "calibration",
                                                 "--by", "Wang", "--until", "1h")
    db = tmp_path / "platform.db"
    start_platform(procs, plant, "jiangsu", f"tcp://127.0.0.1:{tcp_port}", db)
    start_sims(plant, procs, ["plc-d"])
    with Subscriber(broker.port, plant.topic_filter) as sub:
        agent = plant.start_agent(procs)
        sub.wait_until(lambda: of(sub, "GD", "declaration") and of(sub, "IL-D", "interlock_bypass"), 20,
                       "the declaration and the bypass")
        (stopped,) = of(sub, "GD", "declaration")
        assert (stopped["state"], stopped["by"], stopped["reason"], stopped["tag"]) == ("stopped", "Wang",
                                                                                        "calibration", "GD")
        bypass = of(sub, "IL-D", "interlock_bypass")[0]
        assert (bypass["state"], bypass["severity"], bypass["declared"]) == ("on", "critical", False)
        sub.wait_until(lambda: len(sub.readings("GD")) >= 5, 10, "GD readings")
        assert all((r["quality"], r["reason"]) == ("uncertain", "declared_stop") for r in sub.readings("GD"))
        # the bypass declared while the agent runs: picked up within a poll or so
        declared_at = time.monotonic()
        declare(plant.config, "stop", "IL-D", "--reason", "permit HS-118", "--by", "Zhao")
        sub.wait_until(lambda: any(b["state"] == "declared" for b in of(sub, "IL-D", "interlock_bypass")), 5,
                       "the bypass declared")
        assert time.monotonic() - declared_at < 3
        assert stop_checked(agent) == 0, agent.output()[-3000:]
        # restarted: nothing announced again, the stop still in force
        agent = plant.start_agent(procs)
        restarted = time.time()
        sub.wait_until(lambda: any(time.time() > restarted and r for r in sub.readings("GD")[-1:]) and
                       len(sub.of_kind("readings")) > 0, 15, "readings after the restart")
        time.sleep(1.5)
        assert [d["state"] for d in of(sub, "GD", "declaration")] == ["stopped"]
        status = subprocess.run([*HAZGATE, "status", "-c", str(plant.config)], cwd=ROOT, capture_output=True,
                                text=True, timeout=60).stdout
        assert "declared: 2 stops in force" in status, status
        assert "GD                   by Wang since" in status and ": calibration; until " in status, status
        assert of(sub, "GD", "detector_fault") == [], "a declared detector raised a fault"
        assert sub.readings("GD")[-1]["reason"] == "declared_stop"
        # restored: the fault it has shows at once
        declare(plant.config, "restore", "GD", "--by", "Wang", "--note", "sensor replaced")
        sub.wait_until(lambda: of(sub, "GD", "detector_fault"), 10, "the fault after the restore")
        assert [d["state"] for d in of(sub, "GD", "declaration")] == ["stopped", "restored"]
        assert of(sub, "GD", "detector_fault")[0]["cause"] == "fault"
        assert stop_checked(agent) == 0, agent.output()[-3000:]
    # the platform got the declarations as its own records, beside the other events
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and sum("IS_USE" in r for r in platform_records(db)) < 3:
        time.sleep(0.2)
    recs = platform_records(db)
    decl = [r for r in recs if "IS_USE" in r]
    assert [(r["EQUIP_CODE"], r["IS_USE"], r["STOP_PSN"]) for r in decl] == [
        ("GD", "stopped", "Wang"), ("IL-D", "stopped", "Zhao"), ("GD", "restored", "Wang")]
    assert decl[0]["STOP_REMARK"] == "calibration" and decl[0]["STOP_TIME"]
    assert any(r.get("KIND") == "interlock_bypass" and r.get("STATE") == "declared" for r in recs)
    with sqlite3.connect(db) as c:
        assert c.execute("SELECT violations, undecodable FROM platform_gateways").fetchall() == [(0, 0)]
