"""`hazgate read --raw` against the simulated plant: register words in hex, each multi-register
point's value in all four byte orders, and a hint for values outside the declared ranges.

The simulator holds the values as the PLC really has them (its own point table); the gateway's
table gets two of them wrong the way technicians do: a CDAB float declared ABCD, and a value in
tenths declared without its scale.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from commissionkit import served_plc
from conftest import HAZGATE, ROOT, Proc

HEADER = "tag,address,type,byte_order,scale,eng_min,eng_max,unit\n"
# what the PLC holds: 12.5 as a CDAB float, 50.0 in tenths, -3.75 and 250.0 as CDAB floats
PLC_TABLE = HEADER + ("LT1,hr:0,float32,CDAB,,,,m\n"
                      "TT1,hr:2,int16,ABCD,0.1,,,°C\n"
                      "PT1,hr:4,float32,CDAB,,,,MPa\n"
                      "FT1,hr:6,float32,CDAB,,,,m3/h\n")
# what the gateway was told: LT1 and FT1 with wrong byte orders, TT1 without its scale, PT1 right
GATEWAY_TABLE = HEADER + ("LT1,hr:0,float32,ABCD,,0,20,m\n"
                          "TT1,hr:2,int16,ABCD,,0,100,°C\n"
                          "PT1,hr:4,float32,CDAB,,-10,10,MPa\n"
                          "FT1,hr:6,float32,DCBA,,0,500,m3/h\n")


@pytest.fixture
def gateway(tmp_path: Path, procs: list[Proc]) -> Path:
    return served_plc(tmp_path, procs, PLC_TABLE, GATEWAY_TABLE, """LT1 = { const = 12.5 }
TT1 = { const = 50.0 }
PT1 = { const = -3.75 }
FT1 = { const = 250.0 }
""")


def test_read_raw_shows_words_byte_orders_and_hints(gateway: Path) -> None:
    result = subprocess.run([*HAZGATE, "read", "--raw", "-c", str(gateway), "plc"], cwd=ROOT,
                            capture_output=True, text=True, encoding="utf-8", timeout=60)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    head = lines[0].split()
    assert head == ["TAG", "ADDRESS", "RAW", "VALUE", "UNIT", "WORDS", "ABCD", "CDAB", "BADC", "DCBA", "QUALITY"]
    rows = {line.split()[0]: dict(zip(head, line.split(None, 10), strict=True)) for line in lines[1:5]}

    lt = rows["LT1"]  # 12.5 is 0x41480000; word-swapped on the wire
    assert lt["WORDS"] == "0000_4148"
    assert float(lt["CDAB"]) == 12.5
    assert float(lt["ABCD"]) == float(lt["RAW"]) and abs(float(lt["ABCD"])) < 1e-30
    tt = rows["TT1"]  # one register: words, no byte-order columns
    assert (tt["WORDS"], tt["RAW"], tt["ABCD"], tt["CDAB"]) == ("01F4", "500", "-", "-")
    pt = rows["PT1"]
    assert float(pt["VALUE"]) == -3.75 and float(pt["CDAB"]) == -3.75

    ft = rows["FT1"]
    assert float(ft["CDAB"]) == 250.0 and float(ft["VALUE"]) == float(ft["DCBA"])

    hints = [line for line in lines if line.startswith("hint: ")]
    assert len(hints) == 3, result.stdout
    # inside 0..20 by number, but no measurement: the bytes of 12.5 in the wrong order
    assert hints[0] == f"hint: LT1: {lt['RAW']} is too close to zero to be a measurement; byte_order CDAB gives 12.5"
    assert hints[1] == "hint: TT1: 500 is outside eng_min..eng_max 0..100; scale 0.1 gives 50", hints[1]
    assert hints[2] == f"hint: FT1: {ft['RAW']} is outside eng_min..eng_max 0..500; byte_order CDAB gives 250", hints[2]
    assert lines[-1].startswith("4 points, 0 not good; ")


def test_read_without_raw_still_hints(gateway: Path) -> None:
    result = subprocess.run([*HAZGATE, "read", "-c", str(gateway), "plc"], cwd=ROOT,
                            capture_output=True, text=True, encoding="utf-8", timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[0].split() == ["TAG", "ADDRESS", "RAW", "VALUE", "UNIT", "QUALITY"]
    assert "hint: LT1: " in result.stdout and "byte_order CDAB gives 12.5" in result.stdout
