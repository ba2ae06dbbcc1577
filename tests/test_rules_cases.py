"""Rules files (`[checks] rules`) and gas setpoints, validated like the rest of the config:
Telegraf-style case folders under tests/cases_rules/, a new case is a new folder.

Each folder holds gateway.toml, points.csv, rules.toml and either expected.out (valid: what
`hazgate validate` prints) or expected.err (the exact `file:line: key: message` lines, without
the final count; `<ROOT>` stands for the repository path). Cases run in-process from the
repository root, as a technician would run `hazgate validate -c tests/cases_rules/<case>/gateway.toml`;
one case also runs through the command line for the exit code and the count line.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from agent.common.problems import ConfigError
from agent.config.loader import load_config

ROOT = Path(__file__).resolve().parent.parent
CASES_DIR = ROOT / "tests" / "cases_rules"
CASES = sorted(d.name for d in CASES_DIR.iterdir() if (d / "gateway.toml").is_file())
ERROR_CASES = [c for c in CASES if (CASES_DIR / c / "expected.err").is_file()]
PROBLEM = re.compile(r"^(?P<file>[^:\s][^:]*):(?P<line>[1-9]\d*): (?P<key>[A-Za-z0-9_.\-]+): (?P<msg>\S.*)$")


def problems_of(case: str, monkeypatch: pytest.MonkeyPatch) -> list[str] | None:
    monkeypatch.chdir(ROOT)
    try:
        load_config(f"tests/cases_rules/{case}/gateway.toml")
    except ConfigError as exc:
        return [line.replace(str(ROOT), "<ROOT>") for line in exc.problems.lines()]
    return None


def expected(case: str) -> list[str]:
    return (CASES_DIR / case / "expected.err").read_text(encoding="utf-8").splitlines()


def test_every_kind_of_mistake_has_a_case() -> None:
    assert {"rules_toml_syntax", "rules_unknown_keys", "rules_missing_keys", "rules_unknown_tags",
            "rules_wrong_point_kinds", "rules_bad_values", "rules_duplicates", "rules_trip_limits",
            "gas_setpoints_over_ceiling", "rules_file_missing", "valid_rules"} <= set(CASES)
    for case in CASES:
        kinds = [n for n in ("expected.out", "expected.err") if (CASES_DIR / case / n).is_file()]
        assert len(kinds) == 1, f"{case}: needs exactly one of expected.out / expected.err, has {kinds}"


@pytest.mark.parametrize("case", CASES)
def test_rules_case(case: str, monkeypatch: pytest.MonkeyPatch) -> None:
    got = problems_of(case, monkeypatch)
    if (CASES_DIR / case / "expected.out").is_file():
        assert got is None, "\n".join(got or [])
        cfg = load_config(CASES_DIR / case / "gateway.toml")
        assert cfg.rules is not None and cfg.rules.interlocks, "the valid case declares an interlock"
        return
    assert got == expected(case)


@pytest.mark.parametrize("case", ERROR_CASES)
def test_lines_point_at_the_mistake(case: str) -> None:
    """Each line named holds the key: `key =`, its [section], or the `{ ... }` entry of protects."""
    for entry in expected(case):
        m = PROBLEM.match(entry)
        assert m, f"not file:line: key: message: {entry!r}"
        file, line, key = m["file"], int(m["line"]), m["key"]
        path = ROOT / file.replace("<ROOT>/", "")
        text = path.read_text(encoding="utf-8").splitlines()[line - 1]
        if file.endswith(".csv"):
            header = path.read_text(encoding="utf-8").splitlines()[0].split(",")
            assert key in header and line > 1, entry
            continue
        if key == "toml":
            assert f"at line {line}," in m["msg"], entry
            continue
        last = key.split(".")[-1]
        at_key = re.match(rf"\s*{re.escape(last)}\s*=", text) or f"{last} =" in text
        at_section = text.lstrip().startswith("[")
        at_entry = "protects" in key and "{" in text
        assert at_key or at_section or at_entry, f"{entry!r} -> line {line} is {text!r}"


def test_validate_command_exit_code_and_count() -> None:
    result = subprocess.run([sys.executable, "-m", "agent.cli", "validate", "-c",
                             "tests/cases_rules/rules_unknown_tags/gateway.toml"],
                            cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and result.stdout == ""
    want = expected("rules_unknown_tags")
    assert result.stderr.splitlines() == [*want, f"{len(want)} problem(s) found"]


def test_shipped_rules_are_valid_and_loaded() -> None:
    cfg = load_config(ROOT / "config" / "gateway.toml")
    rules = cfg.rules
    assert [il.id for il in rules.interlocks] == ["SIS-R101-TZ01"]
    il = rules.interlocks[0]
    assert (il.bypass, il.in_service, il.tripped, il.bypass_max) == (("R101_TZ01_BYP",), "R101_TZ01_ON", "R101_TZ01_TRIP", 8 * 3600.0)
    assert [(p.tag, p.above) for p in il.protects] == [("R101_TT01", 180.0)]


def test_without_a_rules_file_the_checks_use_defaults(tmp_path: Path) -> None:
    (tmp_path / "p.csv").write_text("tag,address,type,unit,kind,h,hh\nG,hr:0,float32,%LEL,gas_lel,30,40\n", encoding="utf-8")
    (tmp_path / "g.toml").write_text(
        '[gateway]\nid = "G"\nenterprise_code = "E"\ndata_dir = "d"\n[uplink]\nbroker = "mqtt://127.0.0.1:1"\n'
        '[[devices]]\nname = "d"\nprotocol = "modbus-tcp"\nhost = "127.0.0.1"\npoll_interval = "1s"\npoints = "p.csv"\n',
        encoding="utf-8")
    with pytest.raises(ConfigError) as err:  # gas ceilings hold with or without a rules file
        load_config(tmp_path / "g.toml")
    assert [p.key for p in err.value.problems.items] == ["h"]
