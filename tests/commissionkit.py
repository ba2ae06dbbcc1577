"""What the commissioning-tool tests share: one simulated PLC on a free port and a gateway
config with that one Modbus TCP device, its point table `gw.csv` beside it."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import HAZGATE, Proc, wait_port


def one_plc_gateway(folder: Path, port: int, poll_interval: str = "1s") -> Path:
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


def serve(procs: list[Proc], folder: Path, scenario: Path, port: int) -> None:
    """`hazgate simulate` of the scenario, listening before this returns (the test ends it)."""
    sim = Proc([*HAZGATE, "simulate", "-s", str(scenario)], folder / "simulate.log")
    procs.append(sim)
    try:
        wait_port(port, timeout=20)
    except TimeoutError:
        pytest.fail(f"simulator did not listen on 127.0.0.1:{port}:\n{sim.output()}")
