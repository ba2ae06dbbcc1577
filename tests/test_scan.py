"""`hazgate scan` against a simulated PLC that serves some register ranges and refuses the rest.

The simulator serves holding and input registers from 0 up to 16 past its last point and
refuses the addresses its scenario lists (exception 2), and everything beyond. The scan must
report exactly the served ranges, show the words it read, and only ever read.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from commissionkit import served_plc
from conftest import HAZGATE, ROOT, Proc

PLC_TABLE = ("tag,address,type,byte_order\n"
             "LT1,hr:0,float32,CDAB\n"
             "TT1,hr:2,int16,ABCD\n"
             "PT1,hr:10,uint16,ABCD\n"
             "IR1,ir:0,uint16,ABCD\n")
REFUSE = ["hr:4", "hr:5", "hr:6", "hr:12", "ir:3"]
# 16 spare registers past the last point (hr:10, ir:0), minus the refused ones
SERVED_HR = "hr:0-3, hr:7-11, hr:13-26"
SERVED_IR = "ir:0-2, ir:4-16"


@pytest.fixture
def gateway(tmp_path: Path, procs: list[Proc]) -> Path:
    refuse = ", ".join(f'"{a}"' for a in REFUSE)
    return served_plc(tmp_path, procs, PLC_TABLE, "tag,address,type\nX,hr:0,uint16\n", """LT1 = { const = 12.5 }
TT1 = { const = -2 }
PT1 = { const = 4660 }
IR1 = { const = 9 }
""", unit=7, plc_keys=f"refuse = [{refuse}]\n")


def scan(gateway: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*HAZGATE, "scan", "-c", str(gateway), "plc", *args], cwd=ROOT,
                          capture_output=True, text=True, encoding="utf-8", timeout=120)


def test_scan_finds_exactly_the_served_ranges(gateway: Path) -> None:
    result = scan(gateway, "hr:0-199", "--unit", "7")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["ADDRESS", "HEX", "UINT16", "INT16", "FLOAT32"]
    assert f"answered: {SERVED_HR}" in lines, result.stdout
    rows = {line.split()[0]: line.split() for line in lines[1:] if line.startswith("hr:")}
    assert len(rows) == 4 + 5 + 14
    assert rows["hr:0"][1:3] == ["0000", "0"] and "CDAB=12.5" in rows["hr:0"]  # 12.5 word-swapped
    assert rows["hr:2"][1:4] == ["FFFE", "65534", "-2"]
    assert rows["hr:10"][1:3] == ["1234", "4660"]
    not_answered = [line for line in lines if line.startswith("not answered: ")]
    assert [line.split(": ")[1] for line in not_answered] == ["hr:4-6", "hr:12", "hr:27-199"]
    assert all("exception 2 (illegal data address)" in line for line in not_answered)
    assert lines[-1].startswith("plc 127.0.0.1:")
    assert " unit 7: hr:0-199, 23 of 200 addresses answered; " in lines[-1]

    result = scan(gateway, "ir:0-40", "--unit", "7")
    assert result.returncode == 0, result.stderr
    assert f"answered: {SERVED_IR}" in result.stdout.splitlines(), result.stdout


def test_scan_of_a_unit_nobody_serves_and_bad_usage(gateway: Path) -> None:
    result = scan(gateway, "hr:0-9")  # the config's unit 1: the simulator has no such unit
    assert result.returncode == 0, result.stderr
    assert "answered: none" in result.stdout.splitlines()
    assert " 0 of 10 addresses answered; " in result.stdout

    for args, says in ((["hr:10-5"], "must rise"), (["xx:0-9"], "hr:0-199"), (["hr:0-9", "--unit", "256"], "0-255")):
        result = scan(gateway, *args)
        assert result.returncode == 2, (args, result.stdout, result.stderr)
        assert says in result.stderr, (args, result.stderr)


def test_scan_over_rtu_answering_and_silent_units(procs: list[Proc], tmp_path: Path) -> None:
    """The same scan on a serial line (socat pty pair): unit 7 serves hr:0-22 minus hr:3; unit 5
    is silent, which reads as no answer rather than as refused."""
    from test_rtu import start_sim, wait_bus, write_bus
    from uaplant import socat_pair

    bus = socat_pair(procs, tmp_path)
    scenario, config = write_bus(tmp_path, [("u7", 7, "none"), ("u5", 5, "silent")],
                                 gateway_port=str(bus.gateway), sim_port=str(bus.device))
    scenario.write_text(scenario.read_text().replace("unit = 7\n", 'unit = 7\nrefuse = ["hr:3"]\n'))
    start_sim(procs, scenario)
    wait_bus(bus.gateway, 7)

    def rtu_scan(device: str, rng: str) -> list[str]:
        result = subprocess.run([*HAZGATE, "scan", "-c", str(config), device, rng], cwd=ROOT,
                                capture_output=True, text=True, encoding="utf-8", timeout=120)
        assert result.returncode == 0, result.stderr
        return result.stdout.splitlines()

    lines = rtu_scan("u7", "hr:0-40")
    assert "answered: hr:0-2, hr:4-22" in lines, lines
    assert [ln for ln in lines if ln.startswith("not answered: ")] == [
        "not answered: hr:3: exception 2 (illegal data address)",
        "not answered: hr:23-40: exception 2 (illegal data address)"]
    lines = rtu_scan("u5", "hr:0-9")
    assert "answered: none" in lines and "not answered: hr:0-9: no answer (timeout)" in lines, lines
