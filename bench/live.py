"""Live polling, measured the same way for the agent and for the raw baseline.

A run: start the publisher (`hazgate run` or bench/raw.py), wait for its first readings at the
subscriber, warm up, then measure a window: readings delivered (at the subscriber) and
acknowledged (the publisher saw the PUBACK: the agent's store records the last acknowledged
seq, the raw loop writes it to a stats file), the publisher's CPU from /proc/<pid>/stat, its
RSS, and the latency of live readings (arrival minus collection time).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from bench.common import (
    PY,
    Plant,
    Procs,
    Subscriber,
    Unit,
    acked_readings,
    cpu_seconds,
    gateway_toml,
    hwm_bytes,
    rss_bytes,
    snapshot,
    start_agent,
    store_state,
    wait_until,
    weighted_quantile,
)
from bench.profile import record

STOP_WAIT = 15.0  # seconds the agent gets to stop after SIGTERM before it is killed


@dataclass
class Ctx:
    """One benchmark run's shared pieces: folder, processes, broker, simulated plant, subscriber."""

    work: Path
    procs: Procs
    broker_port: int
    plant: Plant
    sub: Subscriber
    sim_pid: int = 0
    broker_pid: int = 0
    notes: list[str] = field(default_factory=list)

    def machine_cpu(self) -> dict[str, float]:
        """CPU seconds so far of the helpers that share the two cores with the publisher."""
        out = {"bench": sum(os.times()[:2])}
        for name, pid in (("simulator", self.sim_pid), ("mosquitto", self.broker_pid)):
            if pid:
                with contextlib.suppress(FileNotFoundError):
                    out[name] = cpu_seconds(pid)
        return out


@dataclass
class Window:
    """What one publisher did during the measured window."""

    who: str
    seconds: float
    delivered: int
    acked: int
    polled: int
    cpu_s: float
    rss: int
    hwm: int
    lat_p50: float
    lat_p99: float
    helpers: dict[str, float]
    exit_code: int | None = None
    started: float = 0.0  # wall clock when the publisher was started
    events: list = field(default_factory=list)
    watched: list = field(default_factory=list)
    probes: tuple = ()  # what `probe` returned at the window's start and end, when given

    @property
    def rate(self) -> float:
        return self.delivered / self.seconds

    @property
    def acked_rate(self) -> float:
        return self.acked / self.seconds

    @property
    def cpu_us(self) -> float:
        return self.cpu_s / self.delivered * 1e6 if self.delivered else float("nan")

    @property
    def cpu_share(self) -> float:
        return self.cpu_s / self.seconds


def _measure(ctx: Ctx, who: str, gw: str, pid: int, warm: float, window: float,
             acked_seq, polled, profile: Path | None = None,  # noqa: ANN001
             probe: Callable[[], object] | None = None) -> Window:
    """Wait for the first live reading, warm up, measure `window` seconds (with py-spy
    recording the process into `profile` meanwhile, if given; `probe` called at both ends)."""
    sub = ctx.sub
    if not wait_until(lambda: snapshot(sub, gw)[0] > 0, 60):
        raise RuntimeError(f"{who}: no readings arrived within 60 s")
    time.sleep(warm)
    st = sub.stats(gw)
    with sub.lock:
        n_lat, n_ev, n_w = len(st.live_lat), len(st.events), len(st.watched)
    q0 = probe() if probe else None
    live0, c0, p0, h0 = snapshot(sub, gw)[0], cpu_seconds(pid), polled(), ctx.machine_cpu()
    t0 = time.time()
    spy = record(pid, window, profile) if profile else None
    time.sleep(window)
    live1, c1, p1, h1 = snapshot(sub, gw)[0], cpu_seconds(pid), polled(), ctx.machine_cpu()
    t1 = time.time()
    q1 = probe() if probe else None
    rss, hwm = rss_bytes(pid), hwm_bytes(pid)
    time.sleep(1.0)  # acknowledgements of the window's last messages get recorded
    if spy is not None:
        try:
            spy.wait(30)
        except subprocess.TimeoutExpired:
            spy.kill()
            spy.wait()
    acked = acked_readings(sub, gw, t0, t1, acked_seq())
    with sub.lock:
        lat = [(x, n) for _at, x, n in st.live_lat[n_lat:]]
        events = list(st.events[n_ev:])
        watched = list(st.watched[n_w:])
    seconds = t1 - t0
    helpers = {k: (h1[k] - h0.get(k, 0.0)) / seconds for k in h1}
    return Window(who, seconds, live1 - live0, acked, p1 - p0, c1 - c0, rss, hwm,
                  weighted_quantile(lat, 0.50), weighted_quantile(lat, 0.99), helpers,
                  events=events, watched=watched, probes=(q0, q1) if probe else ())


def run_raw(ctx: Ctx, units: list[Unit], interval: float, warm: float, window: float,
            intervals: dict[str, float] | None = None) -> Window:
    """The raw baseline polling `units` (back to back when interval is 0)."""
    plan = [{"port": u.port, "unit": u.unit, "blocks": u.blocks(),
             **({"interval": intervals[u.name]} if intervals and u.name in intervals else {})} for u in units]
    plan_path, stats_path = ctx.work / "raw-plan.json", ctx.work / "raw-stats.json"
    plan_path.write_text(json.dumps(plan))
    stats_path.unlink(missing_ok=True)

    def stats() -> dict:
        try:
            return json.loads(stats_path.read_text())
        except (FileNotFoundError, ValueError):
            return {}

    started = time.time()
    p = ctx.procs.start("raw", [PY, "-m", "bench.raw", "live", "--plan", str(plan_path), "--broker-port",
                                str(ctx.broker_port), "--duration", str(warm + window + 70), "--interval",
                                str(interval), "--stats", str(stats_path)])
    try:
        w = _measure(ctx, "raw", "RAW", p.pid, warm, window,
                     lambda: stats().get("acked_seq", 0), lambda: stats().get("polled", 0))
    finally:
        w_exit = ctx.procs.stop(p)
    w.exit_code, w.started = w_exit, started
    return w


def run_agent(ctx: Ctx, name: str, units: list[Unit], poll: str, warm: float, window: float,
              timeout: str = "900ms", extra: str = "", polls: dict[str, str] | None = None,
              profile: Path | None = None, wrap: Sequence[str] = (), health: int = 0,
              probe: Callable[[], object] | None = None) -> Window:
    """`hazgate run` polling `units`, each every `poll` (or polls[unit name]); started through
    `wrap`, with its health endpoint on loopback port `health` if given."""
    gw = f"GW-{name.upper()}"
    cfg = gateway_toml(ctx.work, name, gw, ctx.broker_port, units, poll, timeout, extra_device=extra,
                       polls=polls)
    if health:
        cfg.write_text(cfg.read_text() + f'\n[health]\nlisten = "127.0.0.1:{health}"\n')
    data = ctx.work / f"data-{name}"
    started = time.time()
    p = start_agent(ctx.procs, cfg, name, wrap)
    try:
        w = _measure(ctx, "agent", gw, p.pid, warm, window,
                     lambda: store_state(data)["last_ack_seq"], lambda: store_state(data)["stored_readings"],
                     profile, probe)
    except Exception:
        print(ctx.procs.log_tail(name))
        raise
    finally:
        code = ctx.procs.stop(p, STOP_WAIT)
    w.exit_code, w.started = code, started
    if code == -signal.SIGKILL:
        ctx.notes.append(f"agent ({name}) did not stop within {STOP_WAIT:g} s of SIGTERM and was killed")
    elif code:
        ctx.notes.append(f"agent ({name}) exited with {code}: {ctx.procs.log_tail(name, 3)}")
    return w
