"""Back-fill benchmark: N readings buffered during an outage, then the link returns.

Prints the drain rate (readings/s delivered and acknowledged) beside the raw baseline (the same
rows read straight out of SQLite and published at QoS 1, bench/raw.py), the extra latency of
live readings while the backlog drains (against the same agent's live latency after it), the
latency of alarm events during and after the drain, and the store's size per million readings.
Everything on loopback: a real Mosquitto, the simulated PLC and `hazgate run` as processes, a
paho subscriber counting in this process.

    .venv/bin/python -m bench.backfill [--readings 1000000] [--points 100]
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from bench.common import (
    PY,
    Plant,
    Procs,
    Subscriber,
    Unit,
    cpu_seconds,
    free_port,
    gateway_toml,
    hwm_bytes,
    start_agent,
    start_broker,
    start_simulator,
    store_state,
    weighted_quantile,
)
from bench.events import Latency, agent_events
from bench.live import Ctx

EVENT_POLL = "200ms"


@dataclass
class Backfill:
    readings: int
    store_bytes: int
    fill_s: float
    drained: int
    drain_s: float
    agent_cpu_s: float
    raw_drained: int
    raw_drain_s: float
    raw_cpu_s: float
    live_during: tuple[float, float, int]  # p50, p99, readings
    live_after: tuple[float, float, int]
    events_during: Latency
    events_after: Latency
    agent_exit: int | None
    hwm: int = 0  # the agent's peak RSS, from start to the end of the live window after the drain

    @property
    def rate(self) -> float:
        return self.drained / self.drain_s if self.drain_s else float("nan")

    @property
    def raw_rate(self) -> float:
        return self.raw_drained / self.raw_drain_s if self.raw_drain_s else float("nan")

    @property
    def mb_per_million(self) -> float:
        return self.store_bytes / self.readings * 1e6 / 1e6


def fill_store(data_dir: Path, config: Path, readings: int) -> tuple[int, float]:
    """The backlog: written straight into the store, as a long outage would leave it."""
    from agent.config.loader import load_config
    from agent.pipeline.store import Store

    cfg = load_config(config)
    t0 = time.perf_counter()
    store = Store(cfg.data_dir)
    try:
        pids = store.pids([(f"B{i:04d}", "m", "float32") for i in range(1000)])
        base = int(time.time() * 1000) - 3_600_000
        batch = 20_000
        for start in range(0, readings, batch):
            store.add_readings([(base + (start + i) // 1000 * 10, pids[f"B{(start + i) % 1000:04d}"],
                                 float(i), 0, None) for i in range(min(batch, readings - start))])
        size = store.stats()["used_bytes"]
    finally:
        store.close()
    return size, time.perf_counter() - t0


def _drain_window(sub: Subscriber, gw: str, target: int, deadline: float) -> tuple[int, float, float]:
    """Wait until `target` back-filled readings arrived; (count, first arrival, last arrival)."""
    while time.monotonic() < deadline:
        st = sub.stats(gw)
        with sub.lock:
            if st.backfill >= target:
                break
        time.sleep(0.05)
    st = sub.stats(gw)
    with sub.lock:
        return st.backfill, st.first_backfill, st.last_backfill


def run(ctx: Ctx, live: Unit, ev: Unit | None, readings: int, after_s: float = 10.0,
        drain_timeout: float = 600.0, raw: bool = True, wrap: Sequence[str] = (), also: Sequence[Unit] = (),
        name: str = "bf") -> Backfill:
    """Fill the store, drain it with the raw baseline (if `raw`), then with the agent (started
    through `wrap`, polling `also` at 1 s beside `live`), and measure the live readings and
    events during and after the drain. `name`: the agent's config, data folder and gateway id."""
    units = [live, *also] + ([ev] if ev else [])
    polls = {ev.name: EVENT_POLL} if ev else None
    gw = f"GW-{name.upper()}"
    cfg = gateway_toml(ctx.work, name, gw, ctx.broker_port, units, "1s", polls=polls)
    data = ctx.work / f"data-{name}"
    size, fill_s = fill_store(data, cfg, readings)

    raw_n, raw_s, raw_cpu = 0, float("nan"), float("nan")
    if raw:  # the baseline reads the same rows before the agent drains them
        p = ctx.procs.start("raw-backfill", [PY, "-m", "bench.raw", "backfill", "--db", str(data / "hazgate.db"),
                                             "--broker-port", str(ctx.broker_port)])
        raw_n, first, last = _drain_window(ctx.sub, "RAW", readings, time.monotonic() + drain_timeout)
        raw_s = last - first
        raw_cpu = cpu_seconds(p.pid)
        ctx.procs.stop(p)

    sub = ctx.sub
    started = time.time()
    agent = start_agent(ctx.procs, cfg, name, wrap)
    n, first, last = _drain_window(sub, gw, readings, time.monotonic() + drain_timeout)
    cpu = cpu_seconds(agent.pid)
    ctx.notes.append(f"back-fill{'' if name == 'bf' else f' ({gw})'}: agent start to first back-filled reading {first - started:.1f}s; "
                     f"agent CPU {cpu:.1f}s from start to the end of the drain ({cpu / (last - started) * 100:.0f}% of one core)")
    drain_end = time.time()
    time.sleep(after_s)  # live only, for the baseline latency
    st = sub.stats(gw)
    with sub.lock:
        during = [(x, k) for at, x, k in st.live_lat if at < drain_end]
        after = [(x, k) for at, x, k in st.live_lat if at >= drain_end]
        events = list(st.events)
    hwm = hwm_bytes(agent.pid)
    code = ctx.procs.stop(agent)
    if code:
        ctx.notes.append(f"back-fill agent exited with {code}")
    store_state(data)  # still readable after the run
    return Backfill(
        readings, size, fill_s, n, last - first if n else float("nan"), cpu, raw_n, raw_s, raw_cpu,
        (weighted_quantile(during, 0.5), weighted_quantile(during, 0.99), sum(k for _, k in during)),
        (weighted_quantile(after, 0.5), weighted_quantile(after, 0.99), sum(k for _, k in after)),
        agent_events(ctx.plant, events, 0.0, drain_end, since=started + 2.0) if ev else Latency(0, *(float("nan"),) * 4),
        agent_events(ctx.plant, events, drain_end, since=started + 2.0) if ev else Latency(0, *(float("nan"),) * 4),
        code, hwm,
    )


def plant_units(port: int, points: int) -> tuple[Unit, Unit]:
    """The live device polled every second during the drain, and the event points."""
    live = Unit("bflive", port, 1, points, limits=False, prefix="L")
    ev = Unit("ev", port, 2, 0, prefix="V", events=[0.5 + (k * 0.37) % 1.0 for k in range(20)], event_period=2.0)
    return live, ev


def main() -> None:
    ap = argparse.ArgumentParser(description="back-fill benchmark")
    ap.add_argument("--readings", type=int, default=1_000_000)
    ap.add_argument("--points", type=int, default=100, help="live points polled every 1 s during the drain")
    ap.add_argument("--no-raw", action="store_true", help="skip the raw SQLite->MQTT baseline")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="hazgate-bench-"))
    procs = Procs(work)
    sub = None
    try:
        mport, pport = free_port(), free_port()
        live, ev = plant_units(pport, args.points)
        plant = Plant(work, [live, ev])
        sim = start_simulator(procs, plant)
        broker = start_broker(procs, mport)
        sub = Subscriber(mport)
        ctx = Ctx(work, procs, mport, plant, sub, sim.pid, broker.pid)
        r = run(ctx, live, ev, args.readings, raw=not args.no_raw)
        print(f"backlog: {r.readings} readings, store {r.store_bytes / 1e6:.1f} MB "
              f"({r.mb_per_million:.1f} MB per million), filled in {r.fill_s:.1f}s")
        print(f"drain: {r.drained} back-filled readings in {r.drain_s:.1f}s = {r.rate:,.0f} readings/s, "
              f"agent CPU {r.agent_cpu_s:.1f}s since start")
        if not args.no_raw:
            print(f"raw baseline (SQLite -> paho QoS 1): {r.raw_drained} readings in {r.raw_drain_s:.1f}s = "
                  f"{r.raw_rate:,.0f} readings/s, CPU {r.raw_cpu_s:.1f}s; agent/raw {r.rate / r.raw_rate:.2f}")
        (d50, d99, dn), (a50, a99, an) = r.live_during, r.live_after
        print(f"live latency during drain: p50 {d50:.3f}s p99 {d99:.3f}s (n={dn}); "
              f"after: p50 {a50:.3f}s p99 {a99:.3f}s (n={an})")
        for name, e in (("during drain", r.events_during), ("after", r.events_after)):
            print(f"events {name}: poll->wire p50 {e.poll_p50 * 1e3:.0f} ms p99 {e.poll_p99 * 1e3:.0f} ms, "
                  f"change->wire p50 {e.change_p50 * 1e3:.0f} ms p99 {e.change_p99 * 1e3:.0f} ms (n={e.n})")
        for note in ctx.notes:
            print("note:", note)
    finally:
        if sub is not None:
            sub.close()
        procs.stop_all()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
