"""A new north protocol is a folder plus one line in agent/north/adapters.py: the config asks the
protocol for its keys and spec, and the assembly asks it for the uplink; nothing else names it."""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass
from pathlib import Path

import pytest

from agent.common.problems import Problems
from agent.config import uplinks as config_uplinks
from agent.config.toml import TomlReader
from agent.north import adapters
from agent.north.ack import AckRule
from agent.north.platform import PLATFORM_KEYS, PLATFORM_LIMITS, Delivery
from agent.north.protocol import UplinkEntry, UplinkProtocol
from agent.north.templated import BodySpec

ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class EchoSpec:
    name: str
    host: str
    port: int
    body: BodySpec
    ack: AckRule
    delivery: Delivery


def _build(e: UplinkEntry, item: dict, values: dict) -> EchoSpec | None:
    body, ack, delivery = e.body(), e.ack(), e.delivery()
    if values.get("port") == 7:
        e.err(("port",), "port", "7 is the echo service's own port; valid: another port")
    if not e.clean or body is None or ack is None:
        return None
    return EchoSpec(values["name"], values["host"], values["port"], body, ack, delivery)


class EchoUplink:
    def __init__(self, spec: EchoSpec, ctx: object):
        self.spec, self.ctx = spec, ctx


ECHO = UplinkProtocol(keys={**PLATFORM_KEYS, "host": ("str", True), "port": ("int", True)},
                      build=_build, uplink=EchoUplink, spec_type=EchoSpec,
                      limits={**PLATFORM_LIMITS, "port": (1, 65535)})

TOML = """
[[uplinks]]
name = "echo-1"
protocol = "echo"
host = "127.0.0.1"
port = {port}
batch = {batch}
send = "snapshot"
interval = "5s"
{extra}
[uplinks.envelope]
data = "{{payload}}"
[uplinks.record]
code = "{{tag}}"
v = "{{value}}"
"""


def load(text: str) -> tuple[list, list[str]]:
    problems = Problems()
    shown = Path("gateway.toml")
    specs = config_uplinks.load_uplinks(TomlReader(shown, text, problems), tomllib.loads(text)["uplinks"], ROOT)
    return specs, problems.lines()


@pytest.fixture
def echo(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(adapters.PROTOCOLS, "echo", ECHO)


def test_a_registered_protocol_is_read_built_and_made_without_the_config_naming_it(echo: None) -> None:
    specs, problems = load(TOML.format(port=9000, batch=50, extra=""))
    assert problems == []
    (spec,) = specs
    assert isinstance(spec, EchoSpec) and (spec.host, spec.port) == ("127.0.0.1", 9000)
    assert spec.delivery == Delivery(send="snapshot", interval=5.0, batch=50)
    assert spec.body.readings is not None and spec.body.events is None
    uplink = adapters.make_uplink(spec, "ctx")
    assert isinstance(uplink, EchoUplink) and uplink.spec is spec


def test_its_keys_limits_and_checks_are_its_own(echo: None) -> None:
    _, problems = load(TOML.format(port=7, batch=0, extra='colour = "red"'))
    assert problems == [
        "gateway.toml:10: uplinks.colour: unknown key; valid keys here: ack, batch, ca_file, codec, daily, declarations, "
        "envelope, events, host, interval, iv, iv_file, key_derivation, key_file, max_rejects, name, "
        "port, protocol, record, registry, send, time_format, timeout",
        "gateway.toml:7: uplinks.batch: 0 is out of range; valid: 1-10000",
        "gateway.toml:6: uplinks.port: 7 is the echo service's own port; valid: another port",
    ]


def test_an_unregistered_protocol_is_refused_with_the_registered_ones() -> None:
    _, problems = load(TOML.format(port=9000, batch=50, extra=""))
    assert problems == ["gateway.toml:4: uplinks.protocol: 'echo' is not valid; valid: mqtt, http, tcp, hj212"]


def test_the_config_names_no_north_protocol() -> None:
    source = (ROOT / "agent" / "config" / "uplinks.py").read_text(encoding="utf-8")
    named = re.findall(r"agent\.north\.(?:mqtt|http|tcp|hj212)\b|protocol == ", source)
    assert named == []
