"""`hazgate read` against the simulated plant on loopback: every type, byte order, bit and table.

A scenario of constants serves one PLC gateway with two units on a free loopback port; the
gateway config points `read` at it. The printed table must carry the scenario's values in
engineering units, a refused address must cost only its own point, and a stopped PLC must
make `read` fail with exit 1 naming the host:port it tried.
"""

from __future__ import annotations

import math
import subprocess
from pathlib import Path

import pytest
from conftest import HAZGATE, ROOT, Proc, free_port, wait_port

# tag, address, type, byte order, scale, offset, raw_min, raw_max, eng_min, eng_max, unit, value
PLANT: list[tuple] = [
    ("F32_ABCD", "hr:0", "float32", "ABCD", "", "", "", "", "", "", "m", 12.5),
    ("F32_CDAB", "hr:2", "float32", "CDAB", "", "", "", "", "", "", "m", -3.75),
    ("F32_BADC", "hr:4", "float32", "BADC", "", "", "", "", "", "", "MPa", 1234.5),
    ("F32_DCBA", "hr:6", "float32", "DCBA", "", "", "", "", "", "", "MPa", 0.15625),
    ("F64_ABCD", "hr:8", "float64", "ABCD", "", "", "", "", "", "", "°C", 98765.4),
    ("F64_CDAB", "hr:12", "float64", "CDAB", "", "", "", "", "", "", "°C", -0.001234),
    ("F64_BADC", "hr:16", "float64", "BADC", "", "", "", "", "", "", "°C", 3.14159),
    ("F64_DCBA", "hr:20", "float64", "DCBA", "", "", "", "", "", "", "°C", -271828.0),
    ("I16_ABCD", "hr:24", "int16", "ABCD", "", "", "", "", "", "", "", -1234),
    ("I16_CDAB", "hr:25", "int16", "CDAB", "", "", "", "", "", "", "", -2),
    ("I16_BADC", "hr:26", "int16", "BADC", "", "", "", "", "", "", "", -12345),
    ("I16_DCBA", "hr:27", "int16", "DCBA", "", "", "", "", "", "", "", 32767),
    ("U16_ABCD", "hr:28", "uint16", "ABCD", "", "", "", "", "", "", "", 65535),
    ("U16_CDAB", "hr:29", "uint16", "CDAB", "", "", "", "", "", "", "", 4660),
    ("U16_BADC", "hr:30", "uint16", "BADC", "", "", "", "", "", "", "", 1),
    ("U16_DCBA", "hr:31", "uint16", "DCBA", "", "", "", "", "", "", "", 40000),
    ("I32_ABCD", "hr:32", "int32", "ABCD", "", "", "", "", "", "", "", -100000),
    ("I32_CDAB", "hr:34", "int32", "CDAB", "", "", "", "", "", "", "", -2),
    ("I32_BADC", "hr:36", "int32", "BADC", "", "", "", "", "", "", "", 305419896),
    ("I32_DCBA", "hr:38", "int32", "DCBA", "", "", "", "", "", "", "", -123456789),
    ("U32_ABCD", "hr:40", "uint32", "ABCD", "", "", "", "", "", "", "", 4000000000),
    ("U32_CDAB", "hr:42", "uint32", "CDAB", "", "", "", "", "", "", "", 70000),
    ("U32_BADC", "hr:44", "uint32", "BADC", "", "", "", "", "", "", "", 2309737967),
    ("U32_DCBA", "hr:46", "uint32", "DCBA", "", "", "", "", "", "", "", 1),
    # scaling: scale/offset on an integer, a raw range, scale/offset on a float
    ("SCALED_I16", "hr:48", "int16", "ABCD", "0.1", "-50", "", "", "", "", "°C", 21.3),
    ("RANGE_U16", "hr:49", "uint16", "BADC", "", "", "0", "4000", "0", "100", "%", 25.0),
    ("SCALED_F32", "hr:50", "float32", "CDAB", "2", "1", "", "", "", "", "m", 6.0),
    # bits of one register (zero-based and classic notation) and a whole-register bool
    ("BIT0", "hr:52.0", "bool", "", "", "", "", "", "", "", "", True),
    ("BIT3", "hr:52.3", "bool", "", "", "", "", "", "", "", "", False),
    ("BIT7", "40053.7", "bool", "", "", "", "", "", "", "", "", True),
    ("BIT15", "hr:52.15", "bool", "", "", "", "", "", "", "", "", True),
    ("WORD_BOOL", "hr:53", "bool", "", "", "", "", "", "", "", "", True),
    # input registers
    ("IR_U16", "ir:0", "uint16", "ABCD", "0.01", "", "", "", "", "", "MPa", 3.5),
    ("IR_F32", "ir:1", "float32", "DCBA", "", "", "", "", "", "", "m3/h", -7.25),
    ("IR_I32", "30004", "int32", "CDAB", "", "", "", "", "", "", "", -42),
    # coils and discrete inputs, including far ones and classic notation
    ("CO0", "co:0", "bool", "", "", "", "", "", "", "", "", True),
    ("CO1", "co:1", "bool", "", "", "", "", "", "", "", "", False),
    ("CO17", "co:17", "bool", "", "", "", "", "", "", "", "", True),
    ("CO_CLASSIC", "00020", "bool", "", "", "", "", "", "", "", "", True),
    ("DI0", "di:0", "bool", "", "", "", "", "", "", "", "", False),
    ("DI3", "di:3", "bool", "", "", "", "", "", "", "", "", True),
    ("DI20", "10021", "bool", "", "", "", "", "", "", "", "", True),
]

# a device with one address the PLC refuses (P5 at hr:5); everything else must still read
PICKY: list[tuple] = [
    ("P0", "hr:0", "float32", "ABCD", "", "", "", "", "", "", "", 1.5),
    ("P2", "hr:2", "int16", "ABCD", "", "", "", "", "", "", "", -7),
    ("P3", "hr:3", "uint16", "ABCD", "", "", "", "", "", "", "", 9),
    ("P4", "hr:4", "uint16", "ABCD", "", "", "", "", "", "", "", 44),
    ("P5", "hr:5", "uint16", "ABCD", "", "", "", "", "", "", "", 55),
    ("P6", "hr:6", "float32", "CDAB", "", "", "", "", "", "", "", 2.25),
    ("P8", "hr:8", "int32", "ABCD", "", "", "", "", "", "", "", -8),
    ("PI0", "ir:0", "int16", "ABCD", "", "", "", "", "", "", "", -3),
    ("PC0", "co:0", "bool", "", "", "", "", "", "", "", "", True),
]
REFUSED = "hr:5"

HEADER = "tag,address,type,byte_order,scale,offset,raw_min,raw_max,eng_min,eng_max,unit"


def _table(rows: list[tuple]) -> str:
    return HEADER + "\n" + "".join(",".join(str(c) for c in r[:-1]) + "\n" for r in rows)


def _const(value: object) -> str:
    return "true" if value is True else "false" if value is False else repr(value)


def _signals(rows: list[tuple]) -> str:
    return "".join(f"{r[0]} = {{ const = {_const(r[-1])} }}\n" for r in rows)


def write_plant(folder: Path, port: int) -> tuple[Path, Path]:
    (folder / "plant.csv").write_text(_table(PLANT), encoding="utf-8")
    (folder / "picky.csv").write_text(_table(PICKY), encoding="utf-8")
    scenario = folder / "scenario.toml"
    scenario.write_text(f"""# simulated plant for test_read_cli: constants only, so every value is exact
[[plcs]]
name = "plant"
protocol = "modbus-tcp"
host = "127.0.0.1"
port = {port}
unit = 1
points = "plant.csv"

[plcs.signals]
{_signals(PLANT)}
[[plcs]]
name = "picky"
protocol = "modbus-tcp"
host = "127.0.0.1"
port = {port}
unit = 2
points = "picky.csv"
refuse = ["{REFUSED}"]

[plcs.signals]
{_signals(PICKY)}""", encoding="utf-8")
    gateway = folder / "gateway.toml"
    gateway.write_text(f"""[gateway]
id = "GW-TEST-0001"
enterprise_code = "120116000123"
data_dir = "var"

[uplink]
broker = "mqtt://127.0.0.1:1883"

[[devices]]
name = "plant"
protocol = "modbus-tcp"
host = "127.0.0.1"
port = {port}
unit = 1
poll_interval = "1s"
timeout = "1s"
points = "plant.csv"

[[devices]]
name = "picky"
protocol = "modbus-tcp"
host = "127.0.0.1"
port = {port}
unit = 2
poll_interval = "1s"
timeout = "1s"
points = "picky.csv"
""", encoding="utf-8")
    return scenario, gateway


def read(gateway: Path, device: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*HAZGATE, "read", "-c", str(gateway), device], cwd=ROOT,
                          capture_output=True, text=True, encoding="utf-8", timeout=60)


def parse_table(stdout: str) -> tuple[dict[str, dict[str, str]], str]:
    """Rows of the printed table by tag, and the summary line."""
    lines = stdout.splitlines()
    assert lines[0].split() == ["TAG", "ADDRESS", "RAW", "VALUE", "UNIT", "QUALITY"], stdout
    rows = {}
    for line in lines[1:-1]:
        tag, address, raw, value, unit, quality = line.split(None, 5)
        rows[tag] = {"address": address, "raw": raw, "value": value, "unit": unit, "quality": quality}
    return rows, lines[-1]


def assert_value(tag: str, shown: str, want: object) -> None:
    if isinstance(want, bool):
        assert shown == str(want), (tag, shown, want)
    elif isinstance(want, int):
        assert shown == str(want), (tag, shown, want)  # integers print exactly
    else:
        got = float(shown)  # printed with 6 significant digits
        assert math.isfinite(got) and got == pytest.approx(want, rel=5e-6, abs=1e-9), (tag, shown, want)


@pytest.fixture
def plant(tmp_path: Path, procs: list[Proc]) -> tuple[Proc, Path, int]:
    port = free_port()
    scenario, gateway = write_plant(tmp_path, port)
    sim = Proc([*HAZGATE, "simulate", "-s", str(scenario)], tmp_path / "simulate.log")
    procs.append(sim)
    try:
        wait_port(port, timeout=20)
    except TimeoutError:
        pytest.fail(f"simulator did not listen on 127.0.0.1:{port}:\n{sim.output()}")
    return sim, gateway, port


def test_read_every_type_order_bit_and_table(plant: tuple[Proc, Path, int]) -> None:
    _, gateway, _ = plant
    result = read(gateway, "plant")
    assert result.returncode == 0, result.stderr
    rows, summary = parse_table(result.stdout)
    assert set(rows) == {r[0] for r in PLANT}
    for tag, address, *_, unit, want in PLANT:
        row = rows[tag]
        assert row["quality"] == "good", (tag, row)
        assert row["address"] == address
        assert row["unit"] == (unit or "-")
        assert_value(tag, row["value"], want)
    # raw values before scaling
    assert rows["SCALED_I16"]["raw"] == "713"
    assert rows["RANGE_U16"]["raw"] == "1000"
    assert float(rows["SCALED_F32"]["raw"]) == 2.5
    assert rows["IR_U16"]["raw"] == "350"
    assert rows["U32_BADC"]["raw"] == "2309737967"
    assert summary.startswith(f"{len(PLANT)} points, 0 not good; ")


def test_refused_address_and_stopped_plc(plant: tuple[Proc, Path, int]) -> None:
    sim, gateway, port = plant
    result = read(gateway, "picky")
    assert result.returncode == 0, result.stderr
    rows, summary = parse_table(result.stdout)
    assert set(rows) == {r[0] for r in PICKY}
    refused = rows.pop("P5")
    assert refused["quality"].startswith("bad") and "exception 2" in refused["quality"], refused
    assert refused["value"] == "-" and refused["raw"] == "-"
    for tag, *_, want in PICKY:
        if tag in rows:
            assert rows[tag]["quality"] == "good", (tag, rows[tag])
            assert_value(tag, rows[tag]["value"], want)
    assert summary.startswith(f"{len(PICKY)} points, 1 not good; ")

    # the other unit on the same PLC gateway is untouched by the refusal
    assert read(gateway, "plant").returncode == 0

    # PLC stopped: nothing listens any more
    sim.stop()
    result = read(gateway, "plant")
    assert result.returncode == 1, (result.stdout, result.stderr)
    assert f"127.0.0.1:{port}" in result.stderr
    assert "plant" in result.stderr
    assert result.stdout == ""


def test_unknown_device_is_a_usage_error(tmp_path: Path) -> None:
    _, gateway = write_plant(tmp_path, free_port())
    result = read(gateway, "no-such-plc")
    assert result.returncode == 2
    assert "no-such-plc" in result.stderr and "plant, picky" in result.stderr
