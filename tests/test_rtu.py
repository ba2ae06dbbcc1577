"""Modbus RTU on pseudo-terminals: socat pairs carry the bus, `hazgate simulate` answers as the slaves.

- three slaves on one bus, one silent and one answering with bad CRCs: the healthy one keeps its
  poll rate (within 10 % of what it has alone), the others are bad with their own reason and
  backed off;
- `hazgate read` over RTU for every table and type; a port that does not exist or is busy is
  named as such;
- `hazgate run` on the simulator's own virtual port: the port vanishes (simulator killed) and
  comes back, the agent reopens it alone.
"""

from __future__ import annotations

import asyncio
import re
import signal
import statistics
import subprocess
import time
from pathlib import Path

import serial
from conftest import HAZGATE, ROOT, Proc
from plant import Subscriber, parse_ts
from pymodbus.framer.rtu import FramerRTU
from uaplant import gateway_head, socat_pair, toml, write_table

from agent.config.loader import load_config
from agent.pipeline.scheduler import DeviceTask
from drivers.registry import make_driver

POINTS = [  # tag suffix, address, type, columns, engineering value
    ("LT", "hr:0", "float32", {}, 7.25),
    ("TT", "hr:2", "int16", {"scale": "0.1"}, -12.5),
    ("GT", "ir:0", "uint16", {"scale": "0.1"}, 4.5),
    ("RUN", "hr:4", "uint32", {"byte_order": "CDAB"}, 70000),
    ("BYP", "hr:6.3", "bool", {}, True),
    ("ESD", "di:1", "bool", {}, True),
    ("HLA", "co:2", "bool", {}, True),
]


def unit_rows(prefix: str) -> list[dict[str, str]]:
    return [{"tag": f"{prefix}_{t}", "address": a, "type": ty, **cols} for t, a, ty, cols, _ in POINTS]


def write_bus(root: Path, units: list[tuple[str, int, str]], *, gateway_port: str, sim_port: str | None = None,
              link: str | None = None, timeouts: dict[str, str] | None = None, poll: str = "200ms",
              broker: str = "mqtt://127.0.0.1:1883") -> tuple[Path, Path]:
    """Scenario (units with faults) and gateway config (one device per unit, all on one port)."""
    root.mkdir(parents=True, exist_ok=True)
    scenario, devices = [], []
    for name, unit, fault in units:
        write_table(root / f"{name}.csv", unit_rows(name.upper()))
        where = f"port = {toml(sim_port)}" if sim_port else f"link = {toml(link)}"
        scenario += ["[[plcs]]", f"name = {toml(name)}", 'protocol = "modbus-rtu"', where, "baudrate = 38400",
                     f"unit = {unit}", f"fault = {toml(fault)}", f"points = {toml(name + '.csv')}", "", "[plcs.signals]"]
        scenario += [f"{name.upper()}_{t} = {{ const = {toml(v)} }}" for t, _, _, _, v in POINTS] + [""]
        devices += ["[[devices]]", f"name = {toml(name)}", 'protocol = "modbus-rtu"', f"port = {toml(gateway_port)}",
                    "baudrate = 38400", f"unit = {unit}", f"poll_interval = {toml(poll)}",
                    f"timeout = {toml((timeouts or {}).get(name, '300ms'))}", f"points = {toml(name + '.csv')}", ""]
    (root / "plant.toml").write_text("\n".join(scenario), encoding="utf-8")
    (root / "gateway.toml").write_text("\n".join(gateway_head(root, broker) + devices), encoding="utf-8")
    return root / "plant.toml", root / "gateway.toml"


def start_sim(procs: list[Proc], scenario: Path, marker: str = "serving Modbus RTU", within: float = 15.0) -> Proc:
    proc = Proc([*HAZGATE, "simulate", "-s", str(scenario)], scenario.parent / f"simulate-{len(procs)}.log")
    procs.append(proc)
    deadline = time.monotonic() + within
    while marker not in proc.output():
        if not proc.alive() or time.monotonic() > deadline:
            raise AssertionError(f"simulator not serving:\n{proc.output()[-3000:]}")
        time.sleep(0.05)
    return proc


def wait_bus(port: Path, unit: int, within: float = 5.0) -> None:
    """Until `unit` answers on `port`: a freshly made socat pair drops the first ~0.3 s of traffic,
    which is the pair's start-up, not the gateway's, so every measurement starts after it."""
    frame = bytes([unit]) + bytes.fromhex("0300000001")
    frame += FramerRTU.compute_CRC(frame).to_bytes(2, "big")
    deadline = time.monotonic() + within
    with serial.Serial(str(port), 38400, timeout=0.2) as s:
        while time.monotonic() < deadline:
            s.reset_input_buffer()
            s.write(frame)
            if len(s.read(7)) == 7:
                return
    raise AssertionError(f"unit {unit} never answered on {port}")


async def run_units(config: Path, names: list[str], seconds: float) -> dict[str, dict]:
    """Poll the named devices with the real scheduler for `seconds`; per device: polls and their results."""
    cfg = load_config(config)
    out: dict[str, dict] = {}
    tasks = []
    for dev in (d for d in cfg.devices if d.name in names):
        record: dict = {"polls": [], "driver": make_driver(dev)}

        async def sink(device, every, report, record=record) -> None:  # noqa: ANN001
            record["polls"].append((time.monotonic(), every))

        record["task"] = DeviceTask(dev, record["driver"], sink)
        out[dev.name] = record
    started = time.monotonic()
    for r in out.values():
        tasks.append(asyncio.create_task(r["task"].run()))
    await asyncio.sleep(seconds)
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    for r in out.values():
        bus = getattr(r["driver"], "bus", None)
        r["bus_requests"] = bus.requests if bus else 0  # requests on the whole line, all units
        await r["driver"].close()
        r["good_polls"] = sum(1 for _, every in r["polls"] if every and all(x.quality == "good" for x in every))
        r["started"] = started
    return out


def _expected(prefix: str) -> dict[str, object]:
    return {f"{prefix}_{t}": v for t, _, _, _, v in POINTS}


async def test_three_slaves_one_silent_one_garbling(procs, tmp_path: Path) -> None:
    bus = socat_pair(procs, tmp_path)
    scenario, config = write_bus(tmp_path, [("good", 1, "none"), ("mute", 2, "silent"), ("noisy", 3, "garble")],
                                 gateway_port=str(bus.gateway), sim_port=str(bus.device),
                                 timeouts={"good": "300ms", "mute": "150ms", "noisy": "150ms"})
    start_sim(procs, scenario)
    wait_bus(bus.gateway, 1)
    window = 8.0
    alone = (await run_units(config, ["good"], window))["good"]
    crowd = await run_units(config, ["good", "mute", "noisy"], window)
    good = crowd["good"]
    # the healthy unit: every poll good with the scenario's values, the same rate as alone (within 10 %)
    want = _expected("GOOD")
    for r in (alone, good):
        assert r["task"].overruns <= 3, r["task"].overruns  # a loaded box delays a poll now and then
        for _, every in r["polls"]:
            assert {x.point.tag: x.value for x in every} == want, every
    rate_alone, rate_crowd = alone["good_polls"] / window, good["good_polls"] / window
    assert abs(rate_crowd - rate_alone) <= 0.1 * rate_alone, (rate_alone, rate_crowd)
    # the silent one times out, the garbling one is named as garbled; both down and backed off
    mute, noisy = crowd["mute"], crowd["noisy"]
    assert mute["polls"] and all(x.quality == "bad" and x.reason == "timeout" for _, e in mute["polls"] for x in e)
    assert noisy["polls"] and all(x.quality == "bad" and x.reason.startswith("modbus error: garbled answer")
                                  for _, e in noisy["polls"] for x in e), noisy["polls"][0]
    for r in (mute, noisy):
        assert r["task"].link == "down" and r["driver"].backoffs >= 2
    # bus time: the faulty units asked little once backed off (a probe now and then)
    gaps = [b - a for (a, _), (b, _) in zip(good["polls"], good["polls"][1:], strict=False)]
    print(f"\nhealthy unit: {rate_alone:.2f} good polls/s alone, {rate_crowd:.2f} with a silent and a garbling "
          f"neighbour (poll gaps {min(gaps):.3f}-{max(gaps):.3f} s, median {statistics.median(gaps):.3f} s); "
          f"faulty units: {len(mute['polls'])} and {len(noisy['polls'])} polls reported, "
          f"{mute['driver'].backoffs} and {noisy['driver'].backoffs} back-offs; requests on the line: "
          f"{alone['bus_requests']} alone, {good['bus_requests']} with them")


def _read(config: Path, device: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*HAZGATE, "read", "-c", str(config), device], cwd=ROOT, capture_output=True, text=True,
                          timeout=60)


def test_read_over_rtu_and_port_errors(procs, tmp_path: Path) -> None:
    bus = socat_pair(procs, tmp_path)
    scenario, config = write_bus(tmp_path, [("u7", 7, "none"), ("u9", 9, "none")],
                                 gateway_port=str(bus.gateway), sim_port=str(bus.device))
    start_sim(procs, scenario)
    wait_bus(bus.gateway, 7)
    for name in ("u7", "u9"):
        r = _read(config, name)
        assert r.returncode == 0, r.stderr
        rows = {ln.split()[0]: ln for ln in r.stdout.splitlines()[1:-1]}
        for tag, value in _expected(name.upper()).items():
            assert re.search(rf"\s{re.escape(str(value))}\s+\S+\s+good$", rows[tag]), (tag, rows[tag])
        assert r.stdout.splitlines()[-1].startswith("7 points, 0 not good")
    # a port that is not there
    missing = tmp_path / "missing.toml"
    missing.write_text(config.read_text().replace(str(bus.gateway), "/dev/ttyHAZGATE-NONE"))
    r = _read(missing, "u7")
    assert r.returncode == 1
    assert ("serial port /dev/ttyHAZGATE-NONE does not exist; valid: the RS-485 adapter's device, e.g. /dev/ttyUSB0"
            in r.stderr), r.stderr
    # a port another program holds
    with serial.Serial(str(bus.gateway), exclusive=True):
        r = _read(config, "u7")
    assert r.returncode == 1
    assert f"serial port {bus.gateway} is busy: another program has it open" in r.stderr, r.stderr


def test_agent_reopens_a_port_that_vanished(broker, procs, tmp_path: Path) -> None:
    link = tmp_path / "ttyVIRTUAL0"
    scenario, config = write_bus(tmp_path, [("gas3", 3, "none"), ("gas4", 4, "none")], gateway_port=str(link),
                                 link=str(link), poll="500ms", broker=broker.url)
    tags = set(_expected("GAS3")) | set(_expected("GAS4"))
    sim = start_sim(procs, scenario)
    with Subscriber(broker.port, "hazchem/120116999999/GW-TEST-0006/#") as sub:
        agent = Proc([*HAZGATE, "run", "-c", str(config)], tmp_path / "agent.log")
        procs.append(agent)
        sub.wait_until(lambda: {r["tag"] for r in sub.readings() if r["quality"] == "good"} >= tags, 20,
                       f"good readings from both units ({agent.log_path})")
        killed_at = time.time()
        sim.stop(signal.SIGKILL)  # the adapter is gone: the port's far end closes, the link dangles
        sub.wait_until(lambda: {r["tag"] for r in sub.readings(tags) if r["quality"] == "bad"
                                and parse_ts(r["ts"]) >= killed_at} >= tags, 10, "bad readings from both units")
        time.sleep(2.0)
        down = [r for r in sub.readings(tags) if parse_ts(r["ts"]) >= killed_at]
        reasons = sorted({r["reason"] for r in down})
        assert all(r["quality"] == "bad" for r in down), down[-3:]
        assert any("does not exist" in why or "failed" in why for why in reasons), reasons
        back_at = time.time()
        start_sim(procs, scenario)
        sub.wait_until(lambda: {r["tag"] for r in sub.readings(tags) if r["quality"] == "good"
                                and parse_ts(r["ts"]) >= back_at} >= tags, 20, "good readings after the port came back")
        back = min(parse_ts(r["ts"]) for r in sub.readings(tags) if r["quality"] == "good" and parse_ts(r["ts"]) >= back_at)
        assert agent.alive(), agent.output()[-3000:]
    assert "Traceback" not in agent.output(), agent.output()[-3000:]
    print(f"\nreasons while the port was gone: {reasons}; good again {back - back_at:.2f} s after the "
          "simulator restarted (start-up included)")
