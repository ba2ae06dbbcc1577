"""What the commissioning-tool tests share: one simulated PLC on a free port and a gateway
config with that one Modbus TCP device, its point table `gw.csv` beside it."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import HAZGATE, Proc, free_port, wait_port


def _gateway(folder: Path, port: int, poll_interval: str = "1s") -> Path:
    gateway = folder / "gateway.toml"
    gateway.write_text(f"""[gateway]
id = "GW-TEST-0001"
enterprise_code = "120116000123"
data_dir = "var"

[uplink]
broker = "mqtt://127.0.0.1:1883"

[[devices]]
name = "plc"
protocol = "modbus-tcp"
host = "127.0.0.1"
port = {port}
unit = 1
poll_interval = "{poll_interval}"
timeout = "1s"
points = "gw.csv"
""", encoding="utf-8")
    return gateway


def _serve(procs: list[Proc], folder: Path, scenario: Path, port: int) -> None:
    """`hazgate simulate` of the scenario, listening before this returns (the test ends it)."""
    sim = Proc([*HAZGATE, "simulate", "-s", str(scenario)], folder / "simulate.log")
    procs.append(sim)
    try:
        wait_port(port, timeout=20)
    except TimeoutError:
        pytest.fail(f"simulator did not listen on 127.0.0.1:{port}:\n{sim.output()}")


def served_plc(folder: Path, procs: list[Proc], plc_table: str, gateway_table: str, signals: str, *,
               unit: int = 1, plc_keys: str = "", poll_interval: str = "1s") -> Path:
    """A simulated PLC serving `plc_table` (its `[plcs.signals]` lines given, and any more
    `[[plcs]]` keys), listening on a free port; returns the gateway config whose device `plc`
    reads it with `gateway_table`."""
    port = free_port()
    (folder / "plc.csv").write_text(plc_table, encoding="utf-8")
    (folder / "gw.csv").write_text(gateway_table, encoding="utf-8")
    scenario = folder / "scenario.toml"
    scenario.write_text(f"""[[plcs]]
name = "plc"
protocol = "modbus-tcp"
host = "127.0.0.1"
port = {port}
unit = {unit}
points = "plc.csv"
{plc_keys}
[plcs.signals]
{signals}""", encoding="utf-8")
    gateway = _gateway(folder, port, poll_interval)
    _serve(procs, folder, scenario, port)
    return gateway
