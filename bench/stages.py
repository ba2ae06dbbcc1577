"""Per-reading cost of each stage of the agent's pipeline, measured in this process with the
agent's own code on the steady-load plant (10 units of 1 000 points: 750 float32 + 250 int16,
every point with h/hh limits), so a proposal's gain can be checked in seconds. CPU time is
process time (all threads); wall time includes fsync waits. The real agent pays more per stage
than these figures (its event loop, threads and a working set shared with everything else):
compare the sum with the steady-load row of the main table.

Stages that run once per message (500 readings, the default uplink.batch_size) are divided by
500. The raw baseline's own figure (bench/raw.py, pymodbus + struct + orjson + paho) is in the
end-to-end row of the main table; this table explains the agent's side of that ratio.

    .venv/bin/python -m bench.stages [--rounds 20]
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import random
import shutil
import struct
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from bench.common import Procs, Unit, free_port, gateway_toml, start_broker

PER_MESSAGE = 500
UNITS = 10


class FakeResponse:
    def __init__(self, registers: list[int]):
        self.registers = registers
        self.bits: list[bool] = []

    def isError(self) -> bool:  # noqa: N802 - pymodbus's name
        return False


def _time(fn: Callable[[], object], rounds: int) -> tuple[float, float]:
    """(CPU seconds, wall seconds) per call: the quartile of the fastest calls, averaged (other
    load on a shared machine only ever adds time)."""
    runs = []
    for _ in range(rounds):
        c0, w0 = time.process_time(), time.perf_counter()
        fn()
        runs.append((time.process_time() - c0, time.perf_counter() - w0))
    runs.sort(key=lambda r: r[1])
    best = runs[: max(1, len(runs) // 4)]
    return sum(c for c, _ in best) / len(best), sum(w for _, w in best) / len(best)


def measure(rounds: int = 20, broker: bool = True) -> list[tuple[str, float, float, str]]:
    """[(stage, CPU µs per reading, wall µs per reading, where in the code)]."""
    from agent.app import Agent
    from agent.config.loader import load_config
    from agent.model import QUALITY_CODE
    from agent.north.mqtt.uplink import MqttUplink
    from agent.pipeline.checks.checker import Checker
    from agent.pipeline.normalize import Normalizer
    from agent.pipeline.store import Store
    from drivers.modbus.read import BlockReader

    work = Path(tempfile.mkdtemp(prefix="hazgate-stages-"))
    procs = Procs(work)
    out: list[tuple[str, float, float, str]] = []

    def add(name: str, where: str, per: int, fn: Callable[[], object]) -> None:
        try:
            cpu, wall = _time(fn, rounds)
        except Exception as exc:  # the agent's code moves on; say what broke, keep the rest
            out.append((f"{name} (failed: {type(exc).__name__}: {exc})", float("nan"), float("nan"), where))
            return
        out.append((name, cpu / per * 1e6, wall / per * 1e6, where))

    try:
        # the steady-load plant: 10 units of 1 000 points, so the working set is the real one
        units = [Unit(f"u{k}", 1, k + 1, 750, 250, prefix=f"S{k}") for k in range(UNITS)]
        for u in units:
            (work / f"{u.name}.csv").write_text(u.csv())
        cfg = load_config(gateway_toml(work, "stages", "GW-ST", 1, units, "1s"))
        devs = cfg.devices
        n = sum(len(d.points) for d in devs)
        rng = random.Random(1)

        # Modbus decode: the driver's BlockReader on canned register blocks
        readers = [BlockReader(d, None) for d in devs]  # type: ignore[arg-type]
        resps = [[FakeResponse([rng.randrange(0, 0x4000) for _ in range(b.count)]) for b in r.blocks]
                 for r in readers]
        samples: list[list] = [[] for _ in devs]

        def decode() -> None:
            for reader, rs, out in zip(readers, resps, samples, strict=True):
                out.clear()
                for b, r in zip(reader.blocks, rs, strict=True):
                    out.extend(reader._decode(b, r))

        add("decode registers into samples", "drivers/modbus/read.py BlockReader._decode", n, decode)
        decode()
        plain = [struct.pack(f">{len(r.registers)}H", *r.registers) for rs in resps for r in rs]
        add("  for scale: one struct.unpack per block", "(what the raw loop does)", n,
            lambda: [struct.unpack(f">{len(p) // 4}f", p[: len(p) // 4 * 4]) for p in plain])

        norms = [Normalizer(d.integrity_interval) for d in devs]
        ts = int(time.time() * 1000)
        polls = [nm.process(sm, ts) for nm, sm in zip(norms, samples, strict=True)]
        add("normalize (scale, quality, deadband)", "agent/pipeline/normalize.py Normalizer.process", n,
            lambda: [nm.process(sm, ts) for nm, sm in zip(norms, samples, strict=True)])

        logging.getLogger("hazgate.checks").setLevel(logging.CRITICAL + 10)  # events are measured, not printed
        checker = Checker(cfg.rules, cfg.all_points(), [])
        add("checks (every point with h/hh limits)", "agent/pipeline/checks/checker.py Checker.process", n,
            lambda: [checker.process(every) for every, _ in polls])

        agent = Agent(cfg)
        agent.checks.checker = None  # measured above

        def sink() -> None:
            agent.writer.take(agent.writer.held)
            for d, (every, report) in zip(devs, polls, strict=True):
                _run_sink(agent, d, every, report)

        add("sink: readings to row tuples", "agent/pipeline/writer.py Writer.add", n, sink)
        rows = [(ts, tag, v, QUALITY_CODE[q], r) for ts, tag, _u, _t, v, q, r in agent.writer.take(agent.writer.held)]

        store = Store(work / "store")
        spids = store.pids([(p.tag, p.unit, p.type) for p in cfg.all_points()])
        add("store: add_readings (tag -> id, pack, insert), one transaction per second",
            "agent/pipeline/store.py Store.add_readings", n, lambda: store.add_readings(rows, spids))
        body = MqttUplink(cfg.uplinks[0], agent.uplinks[0].drain.ctx).body
        build = body.readings(False)
        taken: list[int] = []

        def take() -> None:
            got = store.take_readings(build, PER_MESSAGE, 0)
            if got:
                taken.append(got[0])

        add("store: take_readings (select, JSON, outbox, delete)", "agent/pipeline/store.py Store.take_readings",
            PER_MESSAGE, take)
        from agent.north.mqtt.schema import encode, readings_body

        sample_rows = [(ts, p.tag, p.unit, p.type, 1.5, "good", None) for p in cfg.all_points()[:PER_MESSAGE]]
        env = body._env(1)
        add("  of which: message body + orjson", "agent/north/mqtt/schema.py readings_body, encode", PER_MESSAGE,
            lambda: encode(readings_body(dict(env), sample_rows, False)))
        seqs = iter(range(10**9, 2 * 10**9))
        add("store: mark_published (fsync of seq.published)", "agent/pipeline/store.py Store.mark_published",
            PER_MESSAGE, lambda: store.mark_published(next(seqs)))
        add("store: unacked (re-read the message just built)", "agent/pipeline/store.py Store.unacked", PER_MESSAGE,
            lambda: store.unacked(taken[-1] - 1, 16))
        acks = iter(list(taken))
        add("store: ack one message", "agent/pipeline/store.py Store.ack", PER_MESSAGE,
            lambda: store.ack([next(acks, 0)]))
        store.close()

        if broker:
            import paho.mqtt.client as mqtt

            port = free_port()
            start_broker(procs, port)
            payload = encode(readings_body(dict(env), sample_rows, False))
            client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="stages", clean_session=True)
            client.max_inflight_messages_set(16)
            client.connect("127.0.0.1", port)
            client.loop_start()

            def publish() -> None:
                infos = [client.publish("hazchem/1/GW-ST/readings", payload, qos=1) for _ in range(16)]
                for info in infos:
                    info.wait_for_publish(10)

            add("MQTT: paho publish QoS 1 until PUBACK (16 in flight)", "paho-mqtt, MqttLink.send",
                16 * PER_MESSAGE, publish)
            client.disconnect()
            client.loop_stop()
    finally:
        procs.stop_all()
        shutil.rmtree(work, ignore_errors=True)
    return out


def _run_sink(agent, dev, every, report) -> None:  # noqa: ANN001
    """Agent._sink is a coroutine that never awaits: drive it by hand, no event loop per call."""
    coro = agent._sink(dev, every, report)
    with contextlib.suppress(StopIteration):
        coro.send(None)


def render(rows: list[tuple[str, float, float, str]]) -> str:
    w = max(len(r[0]) for r in rows)
    lines = [f"{'stage':<{w}}  {'CPU µs/reading':>14}  {'wall µs/reading':>15}  where"]
    total = 0.0
    for name, cpu, wall, where in rows:
        if not name.startswith("  ") and cpu == cpu:
            total += cpu
        lines.append(f"{name:<{w}}  {cpu:>14.2f}  {wall:>15.2f}  {where}")
    lines.append(f"{'sum of the stages (indented rows excluded)':<{w}}  {total:>14.2f}")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description="per-reading cost of each agent stage")
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--no-broker", action="store_true")
    args = ap.parse_args()
    print(render(measure(args.rounds, not args.no_broker)))


if __name__ == "__main__":
    main()
