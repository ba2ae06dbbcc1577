"""`hazgate watch` driven in a pseudo-terminal for 3 s against the simulated plant, then Ctrl-C.

The live table must show the watched points (and only those) with their values, units,
quality, register words and the min/max seen, the range hint of a point declared without its
scale, and Ctrl-C must end it with a summary whose poll count fits the device's interval.
The process is bounded in time and ended by its PID only.
"""

from __future__ import annotations

import os
import re
import select
import signal
import subprocess
import time
from pathlib import Path

import pytest
from commissionkit import served_plc
from conftest import HAZGATE, ROOT, Proc

INTERVAL = 0.25
WATCHED_FOR = 3.0
PLC_TABLE = ("tag,address,type,byte_order,scale\n"
             "LT1,hr:0,float32,CDAB,\n"
             "TT1,hr:2,int16,ABCD,0.1\n"
             "PT1,hr:3,uint16,ABCD,\n")
GATEWAY_TABLE = ("tag,address,type,byte_order,eng_min,eng_max,unit\n"
                 "LT1,hr:0,float32,CDAB,0,10,m\n"
                 "TT1,hr:2,int16,ABCD,0,100,°C\n"  # the PLC sends tenths: no scale here
                 "PT1,hr:3,uint16,ABCD,,,kPa\n")
ANSI = re.compile(r"\x1b(\[[0-9;?]*[A-Za-z]|[()][A-Za-z0-9])")


@pytest.fixture
def gateway(tmp_path: Path, procs: list[Proc]) -> Path:
    return served_plc(tmp_path, procs, PLC_TABLE, GATEWAY_TABLE, """LT1 = { ramp = [1.0, 9.0], period = "2s" }
TT1 = { const = 50.0 }
PT1 = { const = 7 }
""", poll_interval=f"{int(INTERVAL * 1000)}ms")


def _drain(fd: int, until: float, out: bytearray) -> bool:
    """Read the pty into `out` until the time `until`; False once the other side has closed."""
    while (left := until - time.monotonic()) > 0:
        ready, _, _ = select.select([fd], [], [], left)
        if not ready:
            continue
        try:
            chunk = os.read(fd, 65536)
        except OSError:  # EIO: every holder of the terminal's other side has closed it
            return False
        if not chunk:
            return False
        out += chunk
    return True


def watch_in_pty(gateway: Path, *args: str) -> tuple[str, str, int]:
    """Output before and after Ctrl-C (ANSI codes removed) and the exit code."""
    master, slave = os.openpty()
    env = {**os.environ, "COLUMNS": "160", "LINES": "40", "TERM": "xterm-256color"}
    env.pop("NO_COLOR", None)
    proc = subprocess.Popen(
        [*HAZGATE, "watch", "-c", str(gateway), "plc", *args], cwd=ROOT, env=env,
        stdin=slave, stdout=slave, stderr=slave, start_new_session=True, close_fds=True,
        # Ctrl-C must reach it even when the test runner was started with SIGINT ignored
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),  # noqa: PLW1509
    )
    os.close(slave)
    before, after = bytearray(), bytearray()
    try:
        _drain(master, time.monotonic() + WATCHED_FOR, before)
        os.kill(proc.pid, signal.SIGINT)
        _drain(master, time.monotonic() + 10, after)
        code = proc.wait(5)
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(5)
        os.close(master)

    def text(data: bytearray) -> str:
        return ANSI.sub("", data.decode("utf-8", "replace")).replace("\r", "")

    return text(before), text(after), code


def _cells(line: str) -> list[str]:
    return [c.strip() for c in re.split(r"[│┃|]", line) if c.strip()]


def test_watch_live_table_and_summary(gateway: Path) -> None:
    live, summary, code = watch_in_pty(gateway, "--tag", "LT1", "--tag", "TT1")
    assert code == 0, live + summary
    assert "plc  127.0.0.1:" in live and f"every {INTERVAL:g}s" in live
    rows = [_cells(line) for line in live.splitlines()]
    assert ["tag", "value", "unit", "quality", "age s", "words", "min", "max"] in rows, live
    tt = [r for r in rows if r and r[0] == "TT1"]
    assert tt and tt[-1] == ["TT1", "500", "°C", "good", tt[-1][4], "01F4", "500", "500"], tt[-1]
    lt = [r for r in rows if r and r[0] == "LT1" and len(r) == 8]
    assert lt and lt[-1][2:4] == ["m", "good"]
    assert 1.0 <= float(lt[-1][6]) <= float(lt[-1][1]) <= float(lt[-1][7]) <= 9.0, lt[-1]
    assert len(lt[-1][5]) == 9 and lt[-1][5][4] == "_", lt[-1]  # two words in hex
    assert "hint: TT1: 500 is outside eng_min..eng_max 0..100; scale 0.1 gives 50" in live
    assert "PT1" not in live  # not watched

    polls = re.search(r"plc: (\d+) polls in ([\d.]+)s", summary)
    assert polls, summary
    n, seconds = int(polls.group(1)), float(polls.group(2))
    assert WATCHED_FOR - 2 < seconds < WATCHED_FOR + 2, summary
    assert seconds / INTERVAL / 2 <= n <= seconds / INTERVAL + 2, summary  # never faster; slack for load
    by_tag = {r[0]: r for r in map(_cells, summary.splitlines()) if r and r[0] in ("LT1", "TT1", "PT1")}
    assert set(by_tag) == {"LT1", "TT1"}, summary
    assert by_tag["LT1"][1] == by_tag["LT1"][2] == str(n), summary  # every read good
    assert 1.0 <= float(by_tag["LT1"][3]) < float(by_tag["LT1"][4]) <= 9.0, summary  # the ramp moved
    assert by_tag["TT1"][3:7] == ["500", "500", "500", "good"], summary


def test_watch_unknown_tag_is_a_usage_error(gateway: Path) -> None:
    result = subprocess.run([*HAZGATE, "watch", "-c", str(gateway), "plc", "--tag", "NOPE"], cwd=ROOT,
                            capture_output=True, text=True, encoding="utf-8", timeout=30)
    assert result.returncode == 2
    assert "NOPE" in result.stderr and "LT1, TT1, PT1" in result.stderr
