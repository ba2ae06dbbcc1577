"""Soak (bounded, 40 s): an OPC UA server killed and restarted over and over while two
drivers (poll and subscribe) run under the real scheduler in this process.

Every cycle both drivers must go bad with a reason while the server is away and come back good
on their own. After two warm-up cycles, the number of asyncio tasks, open sockets and file
descriptors must not grow, and the resident memory must stay flat (within a few MiB).
"""

from __future__ import annotations

import asyncio
import gc
import os
import signal
import time
from pathlib import Path

import pytest
from uaplant import NS, UaPlant, UaPoint

from agent.pipeline.scheduler import DeviceTask
from drivers.opcua.driver import OpcUaDriver

SOAK_SECONDS = 40.0
WARMUP_CYCLES = 2


def resources() -> dict[str, int]:
    fds = os.listdir("/proc/self/fd")
    sockets = 0
    for fd in fds:
        try:
            sockets += os.readlink(f"/proc/self/fd/{fd}").startswith("socket:")
        except OSError:
            continue
    rss = next(int(line.split()[1]) for line in Path("/proc/self/status").read_text().splitlines()
               if line.startswith("VmRSS:"))
    return {"tasks": len(asyncio.all_tasks()), "sockets": sockets, "fds": len(fds), "rss_kib": rss}


@pytest.mark.long(43)
async def test_repeated_server_restarts_leak_nothing(procs, tmp_path: Path) -> None:
    points = [UaPoint(f"P{i:02d}", f"nsu={NS};s=P{i:02d}", "float64", {"ramp": [0.0, 100.0], "period": "7s"})
              for i in range(20)] + [UaPoint("ON", f"nsu={NS};s=ON", "bool", {"const": True})]
    plant = UaPlant(tmp_path, points, poll_interval="250ms", timeout="500ms", update_interval="100ms").write()
    state: dict[str, dict] = {}
    tasks = []
    for mode in ("poll", "subscribe"):
        dev = plant.device_config(mode=mode)
        dev.name = mode
        st = {"last": [], "driver": OpcUaDriver(dev)}

        async def sink(device, every, report, st=st) -> None:  # noqa: ANN001
            st["last"] = every

        st["task"] = DeviceTask(dev, st["driver"], sink)
        state[mode] = st
    for st in state.values():
        tasks.append(asyncio.create_task(st["task"].run()))

    def all_good() -> bool:
        return all(st["last"] and all(r.quality == "good" for r in st["last"]) for st in state.values())

    def all_bad() -> bool:
        return all(st["last"] and all(r.quality == "bad" and r.reason for r in st["last"]) for st in state.values())

    async def until(cond, within: float, what: str) -> float:  # noqa: ANN001
        started = time.monotonic()
        while not cond():
            if time.monotonic() - started > within:
                raise AssertionError(f"{what} not within {within}s: { {m: st['last'][:2] for m, st in state.items()} }")
            await asyncio.sleep(0.05)
        return time.monotonic() - started

    samples: list[dict[str, int]] = []
    recoveries, cycles = [], 0
    deadline = time.monotonic() + SOAK_SECONDS
    try:
        while time.monotonic() < deadline or cycles < WARMUP_CYCLES + 4:
            sim = plant.start_simulator(procs)
            recoveries.append(await until(all_good, 15, "both drivers good after the restart"))
            await asyncio.sleep(1.5)
            gc.collect()
            samples.append(resources())
            sim.stop(signal.SIGKILL if cycles % 2 == 0 else signal.SIGTERM)
            procs.remove(sim)
            await until(all_bad, 5, "both drivers bad while the server is away")
            await asyncio.sleep(1.0)
            cycles += 1
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for st in state.values():
            await st["driver"].close()
    base, last = samples[WARMUP_CYCLES], samples[-1]
    trend = [s["rss_kib"] for s in samples[WARMUP_CYCLES:]]
    print(f"\n{cycles} server restarts in {SOAK_SECONDS:.0f}+ s; recovery after the server listened: "
          f"{min(recoveries):.2f}-{max(recoveries):.2f} s; reconnects poll {state['poll']['driver'].connects}, "
          f"subscribe {state['subscribe']['driver'].connects}; after warm-up: tasks {base['tasks']}->{last['tasks']}, "
          f"sockets {base['sockets']}->{last['sockets']}, fds {base['fds']}->{last['fds']}, "
          f"RSS {base['rss_kib'] / 1024:.1f}->{last['rss_kib'] / 1024:.1f} MiB (per cycle: {trend})")
    assert all(t.done() for t in tasks)
    assert all(st["driver"].connects == cycles for st in state.values()), {m: st["driver"].connects for m, st in state.items()}
    for s in samples[WARMUP_CYCLES:]:
        assert s["tasks"] <= base["tasks"], samples
        assert s["sockets"] <= base["sockets"], samples
        assert s["fds"] <= base["fds"], samples
    assert last["rss_kib"] - base["rss_kib"] < 4 * 1024, trend
