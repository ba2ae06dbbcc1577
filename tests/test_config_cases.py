"""`hazgate validate` against Telegraf-style case folders: a new case is a new folder.

tests/cases/<case>/ holds gateway.toml, the point tables it names, and one of:
- expected.out: the exact stdout of a valid config (exit 0, nothing on stderr);
- expected.err: the exact problem lines on stderr (exit 2), one `file:line: key: message`
  per problem, WITHOUT the final "N problem(s) found" line, which the test checks itself
  against the number of lines. `<ROOT>` stands for the repository's absolute path, which
  a few messages show (e.g. a point table that is not found).

Validation runs from the repository root with a relative -c path, as a technician would,
so shown paths read `tests/cases/<case>/points.csv`. Files under a case's `secrets/` are made
owner-only before the run (git keeps no modes).
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from agent.config.loader import load_config

ROOT = Path(__file__).resolve().parent.parent
CASES_DIR = ROOT / "tests" / "cases"
CASES = sorted(d.name for d in CASES_DIR.iterdir() if (d / "gateway.toml").is_file())
PROBLEM = re.compile(r"^(?P<file>[^:\s][^:]*):(?P<line>[1-9]\d*): (?P<key>[A-Za-z0-9_.\-]+): (?P<msg>\S.*)$")


def validate(config: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "agent.cli", "validate", "-c", config],
        cwd=ROOT, capture_output=True, text=True, encoding="utf-8", timeout=60,
    )


def expected_lines(case: str) -> list[str]:
    return (CASES_DIR / case / "expected.err").read_text(encoding="utf-8").splitlines()


def test_cases_are_well_formed() -> None:
    assert len(CASES) >= 18
    for case in CASES:
        folder = CASES_DIR / case
        kinds = [n for n in ("expected.out", "expected.err") if (folder / n).is_file()]
        assert len(kinds) == 1, f"{case}: needs exactly one of expected.out / expected.err, has {kinds}"


@pytest.mark.parametrize("case", CASES)
def test_validate_case(case: str) -> None:
    folder = CASES_DIR / case
    for path in (folder / "secrets").glob("*"):
        path.chmod(0o600)
    result = validate(f"tests/cases/{case}/gateway.toml")
    stdout = result.stdout.replace(str(ROOT), "<ROOT>")
    stderr = result.stderr.replace(str(ROOT), "<ROOT>")
    if (folder / "expected.out").is_file():
        assert (result.returncode, stderr) == (0, ""), stderr
        assert stdout == (folder / "expected.out").read_text(encoding="utf-8")
        return
    want = expected_lines(case)
    got = stderr.splitlines()
    assert result.returncode == 2, stderr
    assert stdout == ""
    assert got[-1] == f"{len(want)} problem(s) found"
    assert got[:-1] == want


def _text_lines(path: Path) -> list[str] | None:
    data = path.read_bytes()
    for enc in ("utf-8-sig", "gbk"):
        try:
            text = data.decode(enc)
        except UnicodeDecodeError:
            continue
        if "\x00" not in text:
            return text.splitlines()
    return None


ERROR_CASES = [c for c in CASES if (CASES_DIR / c / "expected.err").is_file()]


@pytest.mark.parametrize("case", ERROR_CASES)
def test_expected_lines_point_at_the_right_place(case: str) -> None:
    """Every expected problem is `file:line: key: message`, and the line it names is one
    where that key really is: a `key =` line or its [section] in TOML, a data row holding
    that column in a point table, or line 1 for whole-file problems."""
    for entry in expected_lines(case):
        m = PROBLEM.match(entry)
        assert m, f"not file:line: key: message: {entry!r}"
        file, line, key, msg = m["file"], int(m["line"]), m["key"], m["msg"]
        path = ROOT / file
        assert file.startswith(f"tests/cases/{case}/") and path.is_file(), entry
        lines = _text_lines(path)
        if lines is None:  # a file that cannot be decoded can only be blamed as a whole
            assert (line, key) == (1, "encoding"), entry
            continue
        assert line <= max(len(lines), 1), entry
        text = lines[line - 1] if lines else ""
        if file.endswith(".toml"):
            if key == "toml":
                assert f"at line {line}," in msg, entry
                continue
            last = key.split(".")[-1]
            at_key = re.match(rf"\s*{re.escape(last)}\s*=", text)
            at_section = text.lstrip().startswith("[")
            whole_file = line == 1 and ("section" in msg or "[[devices]]" in msg)
            assert at_key or at_section or whole_file, f"{entry!r} -> line {line} is {text!r}"
        else:
            assert file.endswith(".csv"), entry
            header = [h.strip().lower() for h in lines[0].split(",")] if lines else []
            if line == 1:
                if "required column" in msg:
                    assert key not in header, entry
                elif key not in ("encoding", "header", "points"):
                    assert key in header, entry
                continue
            assert text.strip() and not text.lstrip().startswith("#"), f"{entry!r} -> not a data row"
            assert key in header or key == "row", f"{entry!r}: {key} is not a column of {file}"


def test_case_lines_are_exact_for_a_known_case() -> None:
    """Spelled out once in full, so the shape of a line is visible in the test itself."""
    assert expected_lines("duplicate_tags") == [
        "tests/cases/duplicate_tags/tank-farm.csv:4: tag: 'TK101_LT' is already defined at "
        "tests/cases/duplicate_tags/tank-farm.csv:2; valid: tags unique across the gateway",
        "tests/cases/duplicate_tags/reactor.csv:3: tag: 'TK101_TT' is already defined at "
        "tests/cases/duplicate_tags/tank-farm.csv:3; valid: tags unique across the gateway",
    ]
    assert expected_lines("toml_syntax_error")[0].startswith(
        "tests/cases/toml_syntax_error/gateway.toml:13: toml: syntax error: "
    )


def test_several_problems_are_all_listed() -> None:
    lines = expected_lines("several_problems")
    assert len(lines) >= 15
    files = {PROBLEM.match(x)["file"] for x in lines}  # type: ignore[index]
    assert files == {
        "tests/cases/several_problems/gateway.toml",
        "tests/cases/several_problems/points.csv",
        "tests/cases/several_problems/empty.csv",
    }


# --- encodings: the fixtures really are what their names say


GBK_NAMES = ["1#储罐液位", "1#储罐温度", "罐区有毒气体(H2S)", "R101高温联锁旁路"]


def test_gbk_fixture_is_gbk_not_utf8() -> None:
    data = (CASES_DIR / "gbk_table" / "points.csv").read_bytes()
    with pytest.raises(UnicodeDecodeError):
        data.decode("utf-8")
    text = data.decode("gbk")
    for name in GBK_NAMES:
        assert name.encode("gbk") in data and name in text


def test_bom_fixture_starts_with_a_bom() -> None:
    data = (CASES_DIR / "utf8_bom" / "points.csv").read_bytes()
    assert data.startswith(b"\xef\xbb\xbftag,")
    assert data[3:].decode("utf-8") == (CASES_DIR / "gbk_table" / "points.csv").read_bytes().decode("gbk")


def test_utf16_fixtures() -> None:
    folder = CASES_DIR / "undecodable_encoding"
    assert (folder / "utf16-bom.csv").read_bytes().startswith(b"\xff\xfet\x00a\x00g\x00")
    assert (folder / "utf16le.csv").read_bytes().startswith(b"t\x00a\x00g\x00")


@pytest.mark.parametrize("case", ["gbk_table", "utf8_bom"])
def test_chinese_names_load_intact(case: str) -> None:
    cfg = load_config(CASES_DIR / case / "gateway.toml")
    points = cfg.device("tank-farm").points
    assert [p.name for p in points] == GBK_NAMES
    assert [p.tag for p in points] == ["TK101_LT", "TK101_TT", "GT102", "R101_TZ01_BYP"]
    assert points[1].unit == "°C"


def test_valid_example_loads_as_written() -> None:
    """validate only says "valid"; check the example parses into the points it describes."""
    cfg = load_config(CASES_DIR / "valid_example" / "gateway.toml")
    pts = {p.tag: p for p in cfg.all_points()}
    assert {t: str(p.location) for t, p in pts.items() if t.startswith("TK")} == {
        "TK101_LT": "hr:0", "TK101_TT": "hr:2", "TK101_PT": "ir:0", "TK102_LT": "hr:4",
        "TK102_TT": "hr:8", "TK102_CNT": "hr:10", "TK101_ESD": "co:0", "TK101_HLA": "di:0",
    }
    assert str(pts["R101_TZ01_TRIP"].location) == "hr:110.2"  # classic 40111.2
    assert pts["TK101_TT"].byte_order == "ABCD" and pts["TK102_TT"].kind == "temperature"
    assert (pts["TK101_TT"].scale, pts["TK101_TT"].offset) == (0.1, -50.0)
    assert (pts["TK101_PT"].raw_min, pts["TK101_PT"].raw_max, pts["TK101_PT"].eng_max) == (0.0, 4000.0, 1.6)
    assert pts["TK101_ESD"].kind == "interlock_status" and pts["TK101_ESD"].equipment == "XV101"
    assert pts["TK101_HLA"].kind == "trip" and pts["TK101_HLA"].hazard_source == "320200001001"
    assert pts["TK102_CNT"].kind == "other"
    dev = cfg.device("tank-farm")
    assert (dev.timeout, dev.options.max_gap, dev.options.unit) == (0.5, 4, 1)
    assert cfg.device("reactor").integrity_interval == 300.0
    assert cfg.mqtt.tls and cfg.mqtt.batch_size == 200 and cfg.mqtt.keepalive == 60.0


def test_shipped_example_is_valid() -> None:
    result = validate("config/gateway.toml")
    assert (result.returncode, result.stderr) == (0, "")
    assert re.fullmatch(r"config/gateway\.toml: valid: 5 devices, \d+ points\n", result.stdout)


def test_missing_config_file() -> None:
    result = validate("tests/cases/no-such-case/gateway.toml")
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        "tests/cases/no-such-case/gateway.toml:1: file: config file not found",
        "1 problem(s) found",
    ]
