"""Point registration (`[uplinks.registry]`): Jiangsu's sensor table `WC_ENT_CGQ` shape, with its
numbering trap (LOW_VALUE_01 is LL, TOP_VALUE_01 is H), `hazgate registry` as JSON and as CSV with
a BOM, the validate warning, and the records on the wire: at the first connection, again after a
reload that changes a limit (once), not again after one that changes nothing or a restart."""

from __future__ import annotations

import csv
import io
import signal
import sqlite3
import subprocess
import time
from pathlib import Path

import orjson
from conftest import HAZGATE, ROOT, Broker, Proc, free_port
from plant import DeviceSpec, PointSpec, Subscriber, write_plant, write_points
from platformkit import JIANGSU_TCP, write_secrets
from test_checks_e2e import stop_checked
from test_uplinks_e2e import start_platform

REGISTRY = """[uplinks.registry]
[uplinks.registry.envelope]
appId = "APP-EXAMPLE-0001"
serviceId = "WC_ENT_CGQ"
dataId = "{data_id}"
seq = "{seq}"
data = "{payload}"
[uplinks.registry.record]
TARGET_CODE = "{target_code}"
TARGET_NAME = "{name}"
EQUIP_CODE = "{equipment}"
GATEWAY_CODE = "{gateway}"
BIT_NO = "{tag}"
UNIT = "{unit}"
LOW_VALUE_01 = "{ll}"
LOW_VALUE_02 = "{l}"
TOP_VALUE_01 = "{h}"
TOP_VALUE_02 = "{hh}"
LOW_VALUE = "{range_low}"
TOP_VALUE = "{range_high}"
IS_USE = "{in_service}"
"""

LIMITS = {  # tag -> (ll, l, h, hh): every combination a table holds
    "TT101": (None, None, 80.0, 90.0),
    "LT101": (1.0, 2.0, None, None),
    "PT101": (0.1, 0.2, 1.5, 1.8),
    "GT101": (None, None, 20.0, 40.0),
}


def points() -> list[PointSpec]:
    out = []
    for i, (tag, limits) in enumerate(LIMITS.items()):
        cols = {k: f"{v:g}" for k, v in zip(("ll", "l", "h", "hh"), limits, strict=True) if v is not None}
        cols.update(eng_min="0", eng_max="100", equipment=f"EQ-{tag[:2]}", target_code=f"3202000001{i:02d}")
        out.append(PointSpec(tag, f"hr:{2 * i}", "float32", 10.0 + i, unit="°C" if tag[0] == "T" else "m",
                             kind="gas_lel" if tag[0] == "G" else "other", columns=cols))
    out[-1].columns.pop("target_code")  # one point not yet given its code
    return out


def plant(tmp_path: Path, broker_url: str, tcp_port: int):
    p = write_plant(tmp_path, broker_url, [DeviceSpec("dcs", points(), poll_interval="200ms")])
    write_secrets(tmp_path)
    p.config.write_text(p.config.read_text() + JIANGSU_TCP.format(
        port=tcp_port, connection="persistent", batch=50, timeout="2s", max_reply=1 << 20) + REGISTRY)
    return p


def hazgate(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*HAZGATE, *args], cwd=ROOT, capture_output=True, timeout=60)


def test_registry_maps_the_limits_as_jiangsu_numbers_them_and_writes_csv_with_a_bom(tmp_path: Path) -> None:
    p = plant(tmp_path, "mqtt://127.0.0.1:1883", 9500)
    out = hazgate("registry", "-c", str(p.config), "--uplink", "jiangsu")
    assert out.returncode == 0, out.stderr
    records = {r["BIT_NO"]: r for r in orjson.loads(out.stdout)}
    assert list(records) == list(LIMITS)
    for tag, (ll, low, h, hh) in LIMITS.items():
        r = records[tag]
        assert (r["LOW_VALUE_01"], r["LOW_VALUE_02"], r["TOP_VALUE_01"], r["TOP_VALUE_02"]) == (ll, low, h, hh), tag
        assert (r["LOW_VALUE"], r["TOP_VALUE"], r["GATEWAY_CODE"], r["IS_USE"]) == (0.0, 100.0, p.gateway_id, True)
    assert records["GT101"]["TARGET_CODE"] is None and records["TT101"]["TARGET_CODE"] == "320200000100"
    csv_path = tmp_path / "registry.csv"
    out = hazgate("registry", "-c", str(p.config), "--uplink", "jiangsu", "--format", "csv", "-o", str(csv_path))
    assert out.returncode == 0, out.stderr
    raw = csv_path.read_bytes()
    assert raw.startswith(b"\xef\xbb\xbf")  # Excel reads UTF-8 only with its BOM
    rows = list(csv.DictReader(io.StringIO(raw.decode("utf-8-sig"))))
    assert [r["BIT_NO"] for r in rows] == list(LIMITS) and rows[0]["UNIT"] == "°C"
    assert rows[2]["LOW_VALUE_01"] == "0.1" and rows[2]["TOP_VALUE_02"] == "1.8" and rows[0]["LOW_VALUE_01"] == ""
    assert rows[0]["IS_USE"] == "true"
    bad = hazgate("registry", "-c", str(p.config), "--uplink", "mqtt")
    assert bad.returncode == 2 and b"declares no [uplinks.registry] in " in bad.stderr and bad.stderr.endswith(b"valid: jiangsu\n")


def test_validate_warns_of_points_without_a_field_the_record_uses(tmp_path: Path) -> None:
    p = plant(tmp_path, "mqtt://127.0.0.1:1883", 9500)
    out = hazgate("validate", "-c", str(p.config))
    assert out.returncode == 0, out.stderr
    warnings = [line for line in out.stdout.decode().splitlines() if "warning:" in line]
    assert warnings == [
        f"{p.config}:{_line(p.config, '[uplinks.registry.record]')}: uplinks.registry.record: warning: 1 of 4 "
        "points have no target_code, which the record's {target_code} needs (e.g. GT101); they are "
        "registered with it empty; valid: fill the target_code column of their point tables"]


def _line(path: Path, text: str) -> int:
    return path.read_text().splitlines().index(text) + 1


def registrations(db: Path) -> list[list[dict]]:
    """Each registration message the platform stored: its records."""
    with sqlite3.connect(db) as c:
        rows = c.execute("SELECT data_id, body FROM platform_records WHERE kind = 'registry' ORDER BY rowid").fetchall()
    out: dict[str, list[dict]] = {}
    for data_id, body in rows:
        out.setdefault(data_id, []).append(orjson.loads(body))
    return list(out.values())


def wait_for(what: str, cond, within: float) -> None:  # noqa: ANN001
    deadline = time.monotonic() + within
    while not cond():
        assert time.monotonic() < deadline, what
        time.sleep(0.1)


def test_registration_on_first_connection_again_once_after_a_limit_changes(
        broker: Broker, procs: list[Proc], tmp_path: Path) -> None:
    tcp_port = free_port()
    p = plant(tmp_path, broker.url, tcp_port)
    db = tmp_path / "platform.db"
    start_platform(procs, p, "jiangsu", f"tcp://127.0.0.1:{tcp_port}", db)
    p.start_simulator(procs, "dcs")
    with Subscriber(broker.port, p.topic_filter) as sub:
        agent = p.start_agent(procs)
        wait_for("the first registration", lambda: len(registrations(db)) == 1, 20)
        assert [r["BIT_NO"] for r in registrations(db)[0]] == list(LIMITS)
        sub.wait_until(lambda: len(sub.readings("TT101")) >= 3, 10, "readings")
        # a reload that changes nothing registers nothing
        agent.send(signal.SIGHUP)
        time.sleep(2)
        assert len(registrations(db)) == 1
        # a limit changes: registered again, once
        table = points()
        table[0].columns["hh"] = "95"
        write_points(tmp_path / "dcs.csv", table)
        agent.send(signal.SIGHUP)
        wait_for("the second registration", lambda: len(registrations(db)) == 2, 10)
        assert registrations(db)[1][0]["TOP_VALUE_02"] == 95.0
        time.sleep(1.5)
        assert len(registrations(db)) == 2
        assert stop_checked(agent) == 0, agent.output()[-3000:]
        agent = p.start_agent(procs)  # the platform has this one already
        sub.wait_until(lambda: len(sub.readings("TT101")) >= 10, 15, "readings after the restart")
        time.sleep(1)
        assert len(registrations(db)) == 2
        assert stop_checked(agent) == 0, agent.output()[-3000:]
    with sqlite3.connect(db) as c:
        assert c.execute("SELECT violations, undecodable FROM platform_gateways").fetchall() == [(0, 0)]
