"""`[[uplinks]]` tables against case folders: a new case is a new folder.

tests/cases_uplinks/<case>/ holds a whole gateway.toml (one Modbus TCP device and its points
table, then the uplinks), the files it names, and expected.err: the exact problem lines, one
`file:line: key: message` each (`<ROOT>` stands for the repository's absolute path). Files
under `secrets/` are made owner-only before the run, files under `open/` readable by all (git
keeps no modes). The one folder without expected.err is the valid example, checked here in
full. The uplink parser runs in-process from the repository root, as `hazgate validate` runs
it, so shown paths read `tests/cases_uplinks/<case>/...`.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest

from agent.common.problems import Problems
from agent.config.toml import TomlReader
from agent.config.uplinks import load_uplinks
from agent.north.hj212.spec import Hj212Spec
from agent.north.http.spec import HttpSpec
from agent.north.mqtt.spec import MqttUplinkSpec
from agent.north.tcp.spec import TcpSpec

ROOT = Path(__file__).resolve().parent.parent
CASES_DIR = ROOT / "tests" / "cases_uplinks"
CASES = sorted(d.name for d in CASES_DIR.iterdir() if (d / "gateway.toml").is_file())
ERROR_CASES = [c for c in CASES if (CASES_DIR / c / "expected.err").is_file()]
PROBLEM = re.compile(r"^(?P<file>[^:\s][^:]*):(?P<line>[1-9]\d*): (?P<key>[A-Za-z0-9_.\-]+): (?P<msg>\S.*)$")


def run_case(case: str, monkeypatch: pytest.MonkeyPatch) -> tuple[list, list[str]]:
    monkeypatch.chdir(ROOT)
    folder = CASES_DIR / case
    for path in (folder / "secrets").glob("*"):
        path.chmod(0o600)
    for path in (folder / "open").glob("*"):
        path.chmod(0o644)
    shown = Path(f"tests/cases_uplinks/{case}/gateway.toml")
    text = shown.read_text(encoding="utf-8")
    problems = Problems()
    reader = TomlReader(shown, text, problems)
    specs = load_uplinks(reader, tomllib.loads(text).get("uplinks"), shown.parent,
                         reserved={"mqtt": "the [uplink] table"})
    return specs, [line.replace(str(ROOT), "<ROOT>") for line in problems.lines()]


def test_every_case_but_the_valid_one_expects_errors() -> None:
    assert len(ERROR_CASES) >= 15
    assert set(CASES) - set(ERROR_CASES) == {"valid_platforms"}


@pytest.mark.parametrize("case", ERROR_CASES)
def test_case(case: str, monkeypatch: pytest.MonkeyPatch) -> None:
    specs, lines = run_case(case, monkeypatch)
    assert lines == (CASES_DIR / case / "expected.err").read_text(encoding="utf-8").splitlines()
    for line in lines:
        m = PROBLEM.match(line)
        assert m, f"not file:line: key: message: {line!r}"
        text = (ROOT / m["file"]).read_text(encoding="utf-8").splitlines()[int(m["line"]) - 1]
        # the line holds one of the key's parts (`ack = { ... }` for uplinks.ack.equals) or
        # is its [section] header
        parts = m["key"].split(".")[1:]
        at_key = any(re.match(rf"\s*(\S+\s*=\s*{{.*)?{re.escape(part)}\s*=", text) for part in parts)
        assert at_key or text.lstrip().startswith("["), f"{line!r} -> line is {text!r}"
    assert "JsExampleKey" not in "\n".join(lines) and "appsecret-0001" not in "\n".join(lines)


def test_valid_platforms(monkeypatch: pytest.MonkeyPatch) -> None:
    specs, lines = run_case("valid_platforms", monkeypatch)
    assert lines == []
    js, mem, park_c, park_d, broker, env = specs
    assert isinstance(js, TcpSpec) and (js.delimiter, js.connection, js.ack.field) == (b"@@", "per-message", "code")
    assert js.body.codec.steps == ("json", "aes-128-cbc", "base64") and js.body.events is not None
    assert js.body.codec.iv == js.body.codec.key == b"JsExampleKey0001"
    assert isinstance(mem, HttpSpec) and mem.ack.status == (200,) and mem.delivery.max_rejects == 5
    [header] = mem.headers
    assert header.name == "appsecret" and header.secret.name == "mem.appsecret"
    assert "example-appsecret" not in repr(mem)  # the value is read at connect time, not kept
    assert park_c.body.codec.key != b"park-c-example-s"  # sha1prng, not the text
    assert (park_d.delivery.batch, park_d.delivery.send, park_d.ack.equals) == (20, "snapshot", "200")
    assert park_d.ack.path() == ["data", "code"]
    assert isinstance(broker, MqttUplinkSpec) and broker.topic and broker.body.time_format == "epoch_ms"
    assert isinstance(env, Hj212Spec) and (env.body.st, env.body.mn) == ("31", "010000A8900016F000169DC0")
    assert (env.delivery.send, env.delivery.interval, env.delivery.timeout, env.recount) == ("snapshot", 60, 5, 3)
    assert (env.history, env.minute_interval) == (2 * 86400, 300)
    assert env.body.flags["uncertain"] == "S" and env.body.flags["timeout"] == "B"  # over the defaults
    assert env.body.flags["modbus exception 4 (device failure)"] == "D"
    assert "123456" not in repr(env)  # the PW is read when the uplink is made, never kept in the spec
