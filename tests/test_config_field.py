"""What a technician meets on a first day in a plant (issue 17): defaults that fit the keys they go
with, hosts, unit ranges, spreadsheet tables (separators, Chinese column names, byte-order
numbers), full-width punctuation named, and warnings that leave a config valid.

The case folders in tests/cases/ show the exact `hazgate validate` lines; these pin down the
values loaded and the edges between the cases.
"""

from __future__ import annotations

import logging
import re
import subprocess
import sys
from pathlib import Path

import pytest
from plant import DeviceSpec, Subscriber, simple_points, write_plant

from agent.common.problems import Problems, fullwidth_note
from agent.config.loader import TIMEOUT_MAX_POLLS, default_timeout, load_config
from agent.config.toml import check_host, load_toml
from agent.service.run import log_config_warnings

ROOT = Path(__file__).resolve().parent.parent
CASES = ROOT / "tests" / "cases"
HEAD = ('[gateway]\nid = "GW-U"\nenterprise_code = "E1"\ndata_dir = "data"\n\n'
        '[uplink]\nbroker = "mqtt://127.0.0.1:1883"\n\n')


def gateway(tmp_path: Path, device: str, table: str, *, encoding: str = "utf-8") -> Path:
    """A one-device gateway.toml whose device (TOML lines `device`) reads points.csv = `table`."""
    (tmp_path / "points.csv").write_text(table, encoding=encoding)
    config = tmp_path / "gateway.toml"
    config.write_text(HEAD + '[[devices]]\nname = "plc"\npoints = "points.csv"\n' + device, encoding="utf-8")
    return config


def problems_of(config: Path) -> list[str]:
    result = subprocess.run([sys.executable, "-m", "agent.cli", "validate", "-c", str(config)],
                            cwd=ROOT, capture_output=True, text=True, encoding="utf-8", timeout=60)
    assert result.returncode == 2, result.stdout
    return [line.split(":", 1)[1] for line in result.stderr.splitlines()[:-1]]  # without the file


MODBUS = 'protocol = "modbus-tcp"\nhost = "127.0.0.1"\nport = 5020\npoll_interval = "1s"\n'


# --- 1. defaults that fit --------------------------------------------------------------------
@pytest.mark.parametrize("poll", [0.01, 0.05, 0.1, 0.2, 0.399, 0.4, 1.0, 60.0, 86400.0])
def test_the_default_timeout_passes_the_rule_a_written_one_must(poll: float) -> None:
    timeout = default_timeout(poll)
    assert timeout < poll * TIMEOUT_MAX_POLLS
    assert timeout == min(2.0, 5 * poll) and timeout >= 0.01  # within the key's own range too


def test_fast_polls_without_a_timeout_key_get_one_that_fits() -> None:
    cfg = load_config(CASES / "fast_poll_default_timeout" / "gateway.toml")
    assert {d.name: (d.poll_interval, d.timeout) for d in cfg.devices} == {
        "dcs": (0.2, 1.0), "gas-bus": (0.1, 0.5), "sis": (0.1, 0.5)}
    example = load_config(CASES / "valid_example" / "gateway.toml")
    assert example.device("reactor").timeout == 2.0  # 500 ms poll: 2 s, as before
    assert example.device("reactor").integrity_interval == 300.0


def test_a_written_timeout_is_still_held_to_ten_intervals(tmp_path: Path) -> None:
    config = gateway(tmp_path, MODBUS.replace('"1s"', '"200ms"') + 'timeout = "2s"\n', "tag,address,type\nA,hr:0,uint16\n")
    assert problems_of(config) == [
        "16: devices.timeout: 2.0s is ten or more poll intervals; valid: below 2s, or no timeout key (then 1s)"]


def test_fast_polls_without_a_timeout_key_run(tmp_path: Path, broker, procs) -> None:
    """`hazgate run` against the simulator: both devices are read at their cadence, all good."""
    devices = [DeviceSpec("fast", simple_points("F"), poll_interval="200ms"),
               DeviceSpec("faster", simple_points("G"), poll_interval="100ms")]
    plant = write_plant(tmp_path, broker.url, devices)
    text = plant.config.read_text(encoding="utf-8")
    plant.config.write_text(re.sub(r"(?m)^timeout = .*\n", "", text), encoding="utf-8")
    assert "timeout" not in plant.config.read_text(encoding="utf-8")
    assert load_config(plant.config).device("faster").timeout == 0.5
    for d in devices:
        plant.start_simulator(procs, d.name)
    with Subscriber(broker.port, plant.topic_filter) as sub:
        agent = plant.start_agent(procs)
        sub.wait_until(lambda: len(sub.readings("F_LT")) >= 10 and len(sub.readings("G_LT")) >= 20, 20,
                       "readings of both devices")
        started = min(r["_at"] for r in sub.readings({"F_LT", "G_LT"}))
        sub.wait_until(lambda: max(r["_at"] for r in sub.readings("G_LT")) > started + 2.0, 10, "two seconds of readings")
    assert agent.alive(), agent.output()
    for tag, interval in (("F_LT", 0.2), ("G_LT", 0.1)):
        window = [r for r in sub.readings(tag) if started + 0.5 <= r["_at"] <= started + 2.0]
        assert len(window) >= 1.5 / interval * 0.7, f"{tag}: {len(window)} readings in 1.5 s"
        assert {r["quality"] for r in sub.readings(tag)} == {"good"}


# --- 2. hosts and units ------------------------------------------------------------------------
@pytest.mark.parametrize("host", ["192.168.1.20", "fd00::20", "fe80::1%eth0", "plc-1.plant.local",
                                  "PLC_2", "localhost", "plc-1.plant.local."])
def test_hosts_that_pass(host: str) -> None:
    assert check_host(host) == host


@pytest.mark.parametrize(("host", "why"), [
    ("192.168.1.2555", "2555 is above 255"),
    ("192.168.1", "3 numbers where an IPv4 address has 4"),
    ("192.168.01.2", "01 has a leading zero"),
    ("192.168.1.2.", "a '.' after its last number"),
    ("127.0.0.1:5021", 'holds port 5021, which belongs in the port key; valid: host = "127.0.0.1" and port = 5021'),
    ("[fd00::20]:502", 'valid: host = "fd00::20" and port = 502'),
    ("plc-1.plant.local:502", 'valid: host = "plc-1.plant.local" and port = 502'),
    ("modbus://10.0.0.7", 'is a URL (modbus://); valid: host = "10.0.0.7", the host alone'),
    ("plc..local", "an empty label"),
    ("-plc", "starts or ends with '-'"),
    ("plc 1", "' ' (U+0020) cannot be part of a host name"),
    ("x" * 64, "longer than 63 characters"),
    ("", "is not a host"),
    (502, "is not a host"),
])
def test_hosts_refused_say_why(host: object, why: str) -> None:
    with pytest.raises(ValueError, match=re.escape(why)):
        check_host(host)


def test_unit_ranges_per_transport() -> None:
    cfg = load_config(CASES / "valid_example" / "gateway.toml")
    assert cfg.device("tank-farm").options.unit == 1
    lines = (CASES / "modbus_unit_ranges" / "expected.err").read_text(encoding="utf-8").splitlines()
    assert [line.rsplit(": ", 1)[1] for line in lines] == ["0-255", "1-247", "1-247"]


# --- 2. spreadsheet tables -------------------------------------------------------------------
def test_semicolon_table_is_read_with_its_decimal_commas() -> None:
    cfg = load_config(CASES / "semicolon_table" / "gateway.toml")
    pts = {p.tag: p for p in cfg.all_points()}
    assert pts["TK101_TT"].name == "Tank 101 temperature; top"
    assert (pts["TK101_TT"].scale, pts["TK101_TT"].offset, pts["TK101_TT"].deadband) == (0.1, -50.0, 0.2)
    assert (pts["TK101_LT"].h, pts["TK101_LT"].hh, pts["TK101_LT"].deadband) == (10.5, 11.5, 0.01)
    assert (pts["TK101_PT"].scale, pts["TK101_PT"].eng_max) == (0.001, 1.6)
    assert str(pts["TK101_TT"].location) == "hr:2"


def test_tab_separated_table_is_read(tmp_path: Path) -> None:
    config = gateway(tmp_path, MODBUS, "tag\taddress\ttype\tscale\nA\thr:0\tuint16\t0.5\n")
    assert [(p.tag, p.scale) for p in load_config(config).all_points()] == [("A", 0.5)]


def test_a_comma_table_keeps_commas_though_its_cells_hold_semicolons(tmp_path: Path) -> None:
    config = gateway(tmp_path, 'protocol = "opcua"\nendpoint = "opc.tcp://127.0.0.1:4840"\npoll_interval = "1s"\n',
                     "tag,address,type\nA,ns=2;s=Tank1.Level,float32\nB,nsu=urn:x;s=T;2,float32\n")
    assert [p.address for p in load_config(config).all_points()] == ["ns=2;s=Tank1.Level", "nsu=urn:x;s=T;2"]


def test_a_decimal_comma_outside_a_semicolon_table_is_no_number(tmp_path: Path) -> None:
    config = gateway(tmp_path, MODBUS, 'tag,address,type,scale\nA,hr:0,uint16,"0,5"\n')
    assert problems_of(config) == ["2: scale: '0,5' is not a number; valid: a finite decimal number such as 12.5"]


def test_chinese_column_names_load_as_their_columns() -> None:
    cfg = load_config(CASES / "chinese_headers" / "gateway.toml")
    pts = {p.tag: p for p in cfg.all_points()}
    lt = pts["TK101_LT"]
    assert (lt.name, str(lt.location), lt.type, lt.byte_order, lt.unit, lt.kind) == (
        "1#储罐液位", "hr:0", "float32", "ABCD", "m", "level")
    assert (lt.eng_min, lt.eng_max, lt.deadband, lt.ll, lt.l, lt.h, lt.hh) == (0.0, 12.0, 0.01, 1.0, 2.0, 10.0, 11.0)
    assert (lt.hazard_source, lt.equipment, lt.target_code) == ("320200001001", "TK101", "LT-001")
    assert (pts["TK101_TT"].scale, pts["TK101_TT"].offset) == (0.1, -50.0)
    gt = pts["GT101"]
    assert (gt.type, gt.raw_min, gt.raw_max, gt.eng_max, gt.kind, gt.hazard_source) == (
        "uint16", 0.0, 4095.0, 100.0, "gas_lel", "320200001001")
    assert (pts["GT102"].scale, pts["GT102"].h) == (0.1, 10.0)


def test_every_alias_is_documented() -> None:
    from agent.config.points import BYTE_ORDER_ALIASES, HEADER_ALIASES

    doc = (ROOT / "docs" / "device-maps.md").read_text(encoding="utf-8")
    for alias, column in HEADER_ALIASES.items():
        assert re.search(rf"^\| `{column}` \|.*`{alias}`", doc, re.M), f"{alias} -> {column} is not in 2.2"
    for digits, order in BYTE_ORDER_ALIASES.items():
        assert re.search(rf"^\| `{order}` \| `{digits}` \|", doc, re.M), f"{digits} -> {order} is not in 2.5"


def test_a_column_named_twice_is_refused(tmp_path: Path) -> None:
    config = gateway(tmp_path, MODBUS, "tag,位号,address,type\nA,A,hr:0,uint16\n")
    assert problems_of(config) == ["1: 位号: names the column tag a second time (first as 'tag'); valid: each column once"]


def test_byte_order_numbers_are_the_named_orders() -> None:
    cfg = load_config(CASES / "byte_order_digits" / "gateway.toml")
    assert [p.byte_order for p in cfg.all_points()] == ["ABCD", "CDAB", "BADC", "DCBA", "CDAB"]


def test_a_wrong_byte_order_lists_the_numbers_too(tmp_path: Path) -> None:
    config = gateway(tmp_path, MODBUS, "tag,address,type,byte_order\nA,hr:0,float32,3421\n")
    assert problems_of(config) == [
        "2: byte_order: '3421' is not a byte order; valid: ABCD, CDAB, BADC, DCBA (or as numbers: 1234, 3412, 2143, 4321)"]


# --- 2. full-width punctuation ---------------------------------------------------------------
def test_fullwidth_note_names_character_code_point_and_ascii() -> None:
    assert fullwidth_note("hr：100") == "full-width colon '：' (U+FF1A); use ':'"
    assert fullwidth_note("1，5") == "full-width comma '，' (U+FF0C); use ','"
    assert fullwidth_note("1。5") == "ideographic full stop '。' (U+3002); use '.'"
    assert fullwidth_note("ｈｒ：１００") == ("full-width colon '：' (U+FF1A); use ':'; "
                                         "full-width letters or digits 'ｈｒ１００'; use 'hr100'")
    assert fullwidth_note("1#储罐液位 °C") is None


def test_a_toml_syntax_error_names_the_fullwidth_character() -> None:
    problems = Problems()
    assert load_toml('[gateway]\nid ＝ "GW-1"\n', "gateway.toml", problems) is None
    assert problems.lines()[0].startswith(
        "gateway.toml:2: toml: full-width equals sign '＝' (U+FF1D); use '='; syntax error: ")
    problems = Problems()
    assert load_toml('[gateway]\nid = “GW-1”\n', "gateway.toml", problems) is None
    assert "left double quotation mark '“' (U+201C); use '\"'" in problems.lines()[0]


# --- 2. warnings -----------------------------------------------------------------------------
def test_warnings_leave_the_config_valid_and_run_logs_them(caplog: pytest.LogCaptureFixture) -> None:
    cfg = load_config(CASES / "warnings_shown" / "gateway.toml")
    assert [(w.line, w.key) for w in cfg.warnings] == [
        (3, "hh"), (3, "hazard_source"), (4, "ll"), (4, "equipment"), (4, "target_code"), (5, "hh")]
    assert cfg.all_points()[1].hazard_source == "3.20E+11"  # kept as written: a warning, not an error
    with caplog.at_level(logging.WARNING, logger="hazgate.service"):
        log_config_warnings(cfg)
    assert [(r.levelno, r.getMessage().split(": warning")[0]) for r in caplog.records][:2] == [
        (logging.WARNING, "config warning: tests/cases/warnings_shown/tanks.csv:3: hh: HH 120 is above eng_max 80, "
         "outside the instrument range: the instrument cannot show such a value, so this alarm may never be "
         "raised; valid: a limit within eng_min..eng_max, or the range corrected"),
        (logging.WARNING, "config warning: tests/cases/warnings_shown/tanks.csv:3: hazard_source: '3.20E+11' is in "
         "scientific notation, as a spreadsheet shows a long number: the platform would get this text, not the "
         "code; valid: the code as issued, typed into a column formatted as Text (docs/device-maps.md 2.1)"),
    ]


def test_limits_within_the_range_or_without_one_give_no_warning() -> None:
    assert load_config(CASES / "valid_example" / "gateway.toml").warnings == []
    assert load_config(CASES / "chinese_headers" / "gateway.toml").warnings == []


def test_problems_keep_warnings_apart() -> None:
    problems = Problems()
    problems.warn("p.csv", 3, "hh", "HH 120 is above eng_max 80")
    assert not problems and len(problems) == 0 and problems.lines() == []
    assert str(problems.warnings[0]) == "p.csv:3: hh: warning: HH 120 is above eng_max 80"
