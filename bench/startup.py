"""Starting up (issue 20, item 5): `hazgate validate` of a 10 000-point gateway, and `hazgate run`
to its first acknowledged message, each timed as a whole process, `runs` times.

Baselines from the same run: the interpreter with hazgate's command line imported (`hazgate
--version`), what every hazgate command pays before its own work; and the raw loop
(`bench/raw.py live`: pymodbus and paho, no store, no checks) from its start to its first message
at the broker. A message counts as acknowledged when the bench's subscriber has it: Mosquitto
acknowledges a QoS 1 message to its publisher as it forwards it, so the subscriber's arrival is
within a loopback round trip of the PUBACK.
"""

from __future__ import annotations

import json
import subprocess
import time
from dataclasses import dataclass, field

from bench.common import (
    HAZGATE,
    PY,
    Unit,
    gateway_toml,
    quantile,
    snapshot,
    start_agent,
    wait_until,
)
from bench.live import STOP_WAIT, Ctx

FIRST_WAIT = 60.0  # seconds a start gets to deliver its first message before the run is called failed


@dataclass
class Startup:
    points: int
    validate: list[float] = field(default_factory=list)
    validate_base: list[float] = field(default_factory=list)
    first_ack: list[float] = field(default_factory=list)
    first_ack_raw: list[float] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)


def _timed(argv: list[str]) -> tuple[float, subprocess.CompletedProcess]:
    t0 = time.perf_counter()
    r = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    return time.perf_counter() - t0, r


def _first_message(ctx: Ctx, gw: str, started: float) -> float | None:
    """Seconds from `started` (wall clock) to the first readings message of `gw` at the subscriber."""
    if not wait_until(lambda: snapshot(ctx.sub, gw)[2] > 0, FIRST_WAIT, step=0.005):
        return None
    st = ctx.sub.stats(gw)
    with ctx.sub.lock:
        return st.msgs[0][0] - started


def run(ctx: Ctx, units: list[Unit], runs: int) -> Startup:
    out = Startup(points=sum(u.n_points for u in units))
    cfg = gateway_toml(ctx.work, "startup-validate", "GW-VALIDATE", ctx.broker_port, units, "1s")
    for _ in range(runs):
        secs, r = _timed([*HAZGATE, "validate", "-c", str(cfg)])
        if r.returncode != 0:
            out.failures.append(f"validate exited {r.returncode}: {(r.stderr or r.stdout)[-300:]}")
        out.validate.append(secs)
        secs, _r = _timed([*HAZGATE, "--version"])
        out.validate_base.append(secs)
    for k in range(runs):
        gw = f"GW-START{k}"
        cfg = gateway_toml(ctx.work, f"startup-{k}", gw, ctx.broker_port, units, "1s")
        started = time.time()
        p = start_agent(ctx.procs, cfg, f"startup-{k}")
        try:
            took = _first_message(ctx, gw, started)
        finally:
            ctx.procs.stop(p, STOP_WAIT)
        if took is None:
            out.failures.append(f"hazgate run ({gw}): no message within {FIRST_WAIT:g} s")
        else:
            out.first_ack.append(took)
        out.first_ack_raw.append(_raw_first(ctx, units, k))
    return out


def _raw_first(ctx: Ctx, units: list[Unit], k: int) -> float:
    """The raw loop's start to its first message; its messages come as gateway RAW."""
    plan = ctx.work / f"startup-raw-{k}.json"
    plan.write_text(json.dumps([{"port": u.port, "unit": u.unit, "blocks": u.blocks()} for u in units]))
    before = snapshot(ctx.sub, "RAW")[2]
    started = time.time()
    p = ctx.procs.start(f"startup-raw-{k}", [PY, "-m", "bench.raw", "live", "--plan", str(plan), "--broker-port",
                                             str(ctx.broker_port), "--duration", str(FIRST_WAIT), "--interval", "1",
                                             "--stats", str(ctx.work / f"startup-raw-{k}.stats")])
    try:
        if not wait_until(lambda: snapshot(ctx.sub, "RAW")[2] > before, FIRST_WAIT, step=0.005):
            return float("nan")
        st = ctx.sub.stats("RAW")
        with ctx.sub.lock:
            return st.msgs[before][0] - started
    finally:
        ctx.procs.stop(p)


def describe(values: list[float]) -> str:
    """min / median / max in seconds."""
    if not values:
        return "n/a"
    return f"{min(values):.2f} / {quantile(values, 0.5):.2f} / {max(values):.2f} s"
