"""The HJ 212 uplink through real processes on loopback: the agent (`hazgate run`) polls a
simulated PLC and feeds the reference HJ 212 platform (`hazgate receive --listen hj212://`);
the platform goes down, the agent is killed (SIGKILL) and restarted meanwhile, and afterwards
every 1 s boundary from the first upload to the last is stored exactly once, with the values
the simulator serves; the platform's requests (`--ask`) get the time, a refusal to set it, and
the hour data of what the agent polled."""

from __future__ import annotations

import signal
import sqlite3
import time
from datetime import datetime
from pathlib import Path

import pytest
from conftest import HAZGATE, Broker, Proc, free_port, wait_port
from plant import DeviceSpec, PointSpec, write_plant
from platformkit import HJ212, write_hj212_pw


def uploads(db: Path) -> list[tuple[str, str, str | None, str]]:
    """(DataTime, code, Rtd, Flag) of every stored upload, in arrival order."""
    if not db.exists():
        return []
    with sqlite3.connect(db) as c:
        return c.execute("SELECT u.data_time, v.code, v.rtd, v.flag FROM hj212_uploads u JOIN hj212_values v "
                         "ON v.qn = u.qn AND v.pno = u.pno ORDER BY u.rowid, v.rowid").fetchall()


def seconds(data_time: str) -> float:
    return datetime.strptime(data_time, "%Y%m%d%H%M%S").timestamp()


def wait(check, within: float, what: str) -> None:
    deadline = time.monotonic() + within
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


@pytest.mark.long(30)
def test_platform_down_and_agent_killed_lose_no_interval(tmp_path: Path, procs: list[Proc], broker: Broker) -> None:
    points = [PointSpec("ST_SO2", "hr:0", "float32", 35.5, unit="mg/m3", columns={"target_code": "a21026"}),
              PointSpec("ST_ON", "hr:2.0", "bool", True, columns={"target_code": "a00001"}),
              PointSpec("ST_FAN", "hr:3.0", "bool", True)]  # no target_code: not sent
    plant = write_plant(tmp_path, broker.url, [DeviceSpec("stack", points, poll_interval="200ms",
                                                          timeout="150ms")])
    port = free_port()
    write_hj212_pw(tmp_path)
    plant.config.write_text(plant.config.read_text() + HJ212.format(port=port))
    db = tmp_path / "env.db"

    def platform(*extra: str) -> Proc:
        p = Proc([*HAZGATE, "receive", "--listen", f"hj212://127.0.0.1:{port}", "--uplink-config",
                  str(plant.config), "--uplink", "env", "--db", str(db), *extra], tmp_path / f"env-{len(procs)}.log")
        procs.append(p)
        wait_port(port, 15)
        return p

    plant.start_simulator(procs, "stack")
    env = platform()
    agent = plant.start_agent(procs)
    wait(lambda: len({t for t, *_ in uploads(db)}) >= 3, 30, "three uploads")
    assert env.stop(signal.SIGTERM) == 0
    assert "acknowledged=" in env.log_path.read_text()
    time.sleep(2)
    agent.stop(signal.SIGKILL)  # with uploads waiting in its store
    agent = plant.start_agent(procs)
    time.sleep(2)
    begin, end = (time.strftime("%Y%m%d%H%M%S", time.localtime(time.time() + dt)) for dt in (-7200, 3600))
    env = platform("--ask", "1011", "--ask", "1012 SystemTime=20200101000000",
                   "--ask", f"2061 BeginTime={begin} EndTime={end}")
    back = time.time()
    wait(lambda: max(seconds(t) for t, *_ in uploads(db)) >= int(back), 30, "the uplink catching up")
    time.sleep(1.5)
    agent.stop()
    env.stop()
    rows = uploads(db)
    times = sorted({seconds(t) for t, *_ in rows})
    assert times == [float(s) for s in range(int(times[0]), int(times[-1]) + 1)], "an interval is missing"
    assert times[0] < back - 5  # the outage lies inside what arrived
    assert len(rows) == 2 * len(times), "an interval came twice or with the wrong codes"
    assert {(code, rtd, flag) for _t, code, rtd, flag in rows} == {("a21026", "35.5", "N"), ("a00001", "1", "N")}
    asked = [line for line in env.log_path.read_text().splitlines() if line.startswith("ask ")]
    assert [line.split(";CN=")[1].split(";")[0] for line in asked if line.startswith("ask 1011")] == [
        "9011", "1011", "9012"]
    assert [line.split(";CP=")[1] for line in asked if line.startswith("ask 1012")] == ["&&QnRtn=2&&"]
    hours = [line for line in asked if line.startswith("ask 2061") and ";CN=2061;" in line]
    assert hours and all("a21026-Min=35.5,a21026-Avg=35.5,a21026-Max=35.5,a21026-Flag=N" in h for h in hours)
    assert asked[-1].endswith("CP=&&ExeRtn=1&&")
    assert all(";PW=***;" in line for line in asked)  # the PW is never shown
