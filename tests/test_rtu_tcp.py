"""Modbus RTU over TCP (and UDP) through a serial device server, simulated by `hazgate simulate`.

- three units behind one device server's TCP port, one silent: the healthy units keep their
  cadence (every poll good, the rate within 10 % of what one has alone), the silent one is bad
  with `timeout` and backed off, and all of them go through one worker and one connection;
- a device server that goes away and comes back: every unit bad with what to check, then good
  again without a restart;
- `hazgate read` over TCP and UDP; a device server that refuses the connection is named as such;
- the installed unit's sandbox lets the agent reach a device server (no serial drop-in needed).
"""

from __future__ import annotations

import asyncio
import re
import subprocess
import sys
import time
from pathlib import Path

from conftest import ROOT, free_port
from test_rtu import _expected, _read, run_units, start_sim, write_bus

from agent.config.loader import load_config
from drivers.modbus.options import DeviceServer, device_server
from drivers.registry import make_driver


def test_port_names_a_device_server_or_a_serial_device() -> None:
    assert device_server("/dev/ttyUSB0") is None
    assert device_server("tcp://192.168.1.30:4001") == DeviceServer("tcp", "192.168.1.30", 4001)
    assert device_server("UDP://NPort-1.plant.local:4001/") == DeviceServer("udp", "nport-1.plant.local", 4001)
    assert str(device_server("tcp://[fd00::30]:4001")) == "tcp://[fd00::30]:4001"


async def test_three_units_behind_a_device_server_one_silent(procs, tmp_path: Path) -> None:
    server = f"tcp://127.0.0.1:{free_port()}"
    scenario, config = write_bus(tmp_path, [("gas1", 1, "none"), ("gas2", 2, "none"), ("mute", 3, "silent")],
                                 gateway_port=server, sim_port=server,
                                 timeouts={"gas1": "300ms", "gas2": "300ms", "mute": "150ms"})
    start_sim(procs, scenario)
    window = 6.0
    alone = (await run_units(config, ["gas1"], window))["gas1"]
    crowd = await run_units(config, ["gas1", "gas2", "mute"], window)
    rate_alone = alone["good_polls"] / window
    assert rate_alone >= 0.9 * 5, rate_alone  # 200 ms polls
    for name in ("gas1", "gas2"):
        r = crowd[name]
        assert r["task"].overruns <= 3, (name, r["task"].overruns)  # a loaded box delays a poll now and then
        for _, every in r["polls"]:
            assert {x.point.tag: x.value for x in every} == _expected(name.upper()), every
        rate = r["good_polls"] / window
        assert abs(rate - rate_alone) <= 0.1 * rate_alone, (name, rate_alone, rate)
    mute = crowd["mute"]
    assert mute["polls"] and all(x.quality == "bad" and x.reason == "timeout" for _, e in mute["polls"] for x in e)
    assert mute["task"].link == "down" and mute["driver"].backoffs >= 1
    # one worker for the bus: every unit's requests were counted by the same one
    assert len({r["bus_requests"] for r in crowd.values()}) == 1, [r["bus_requests"] for r in crowd.values()]
    print(f"\nbehind a device server: {rate_alone:.2f} good polls/s alone, "
          f"{crowd['gas1']['good_polls'] / window:.2f} and {crowd['gas2']['good_polls'] / window:.2f} beside a "
          f"silent unit ({len(mute['polls'])} polls reported, {mute['driver'].backoffs} back-offs); "
          f"requests on the line: {alone['bus_requests']} alone, {crowd['gas1']['bus_requests']} with them")


async def test_device_server_gone_and_back(procs, tmp_path: Path) -> None:
    server = f"tcp://127.0.0.1:{free_port()}"
    scenario, config = write_bus(tmp_path, [("u5", 5, "none")], gateway_port=server, sim_port=server)
    sim = start_sim(procs, scenario)
    driver = make_driver(load_config(config).devices[0])
    await driver.connect()
    try:
        assert all(x.quality == "good" for x in await driver.read())
        sim.stop()
        first = await driver.read()  # a request may meet the closing connection: a timeout, then the rest
        assert all(x.quality == "bad" for x in first)
        reasons = {x.reason.removeprefix("connection lost: ") for x in await driver.read()}
        assert reasons == {f"serial device server {server} does not accept a connection; check its address, that "
                           "the port is the serial line's (Moxa NPort: 4001 for port 1) in TCP Server mode, and "
                           "that no other program holds its only connection"}, reasons
        start_sim(procs, scenario)
        deadline = time.monotonic() + 10
        while not all(x.quality == "good" for x in await driver.read()):
            assert time.monotonic() < deadline, "the device server's port was not reopened"
            await asyncio.sleep(0.2)
    finally:
        await driver.close()


def test_read_over_tcp_and_udp_and_a_refusing_server(procs, tmp_path: Path) -> None:
    tcp, udp = f"tcp://127.0.0.1:{free_port()}", f"udp://127.0.0.1:{free_port()}"
    for where in (tcp, udp):
        root = tmp_path / where.partition(":")[0]
        scenario, config = write_bus(root, [("u7", 7, "none")], gateway_port=where, sim_port=where)
        start_sim(procs, scenario)
        r = _read(config, "u7")
        assert r.returncode == 0, r.stderr
        rows = {ln.split()[0]: ln for ln in r.stdout.splitlines()[1:-1]}
        for tag, value in _expected("U7").items():
            assert re.search(rf"\s{re.escape(str(value))}\s+\S+\s+good$", rows[tag]), (tag, rows[tag])
    refused = tmp_path / "tcp" / "refused.toml"
    nobody = f"tcp://127.0.0.1:{free_port()}"
    refused.write_text((tmp_path / "tcp" / "gateway.toml").read_text().replace(tcp, nobody))
    r = _read(refused, "u7")
    assert r.returncode == 1
    assert f"serial device server {nobody} does not accept a connection" in r.stderr, r.stderr


def test_unit_sandbox_lets_the_agent_reach_a_device_server(tmp_path: Path) -> None:
    unit = (ROOT / "deploy/hazgate.service").read_text()
    families = re.search(r"^RestrictAddressFamilies=(.*)$", unit, re.M)
    assert families and {"AF_INET", "AF_INET6"} <= set(families[1].split())
    assert not re.search(r"^(IPAddressDeny|PrivateNetwork|RestrictNetworkInterfaces)=", unit, re.M)
    # install.sh allows devices only for serial ports: a device server needs none (PrivateUsers stays on)
    script = (ROOT / "deploy/install.sh").read_text()
    snippet = script.split("serial_ports() {", 1)[1].split("<<'EOF'", 1)[1].split("\n", 1)[1]
    snippet = snippet.split("\nEOF\n", 1)[0]
    config = tmp_path / "gateway.toml"
    config.write_text('[[devices]]\nprotocol = "modbus-rtu"\nport = "tcp://192.168.1.30:4001"\n'
                      '[[devices]]\nprotocol = "modbus-rtu"\nport = "/dev/ttyUSB0"\n')
    out = subprocess.run([sys.executable, "-", str(config)], input=snippet, capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["/dev/ttyUSB0"]
