"""OPC UA: readings/s through the whole agent and its CPU share, by subscription and by polling.

Everything on loopback: `hazgate simulate` serves an asyncua server with N float64 points that
all change every second; Mosquitto; `hazgate run` with one OPC UA device (1 s poll interval, no
deadband), and a paho subscriber here counting the readings that reach the broker. The agent's
CPU comes from /proc/<pid>/stat over the measuring window (100 % = one core). The baseline is a
bare asyncua client doing the same (one batched Read per second, or one subscription) in its own
process, measured the same way: what the protocol costs before hazgate adds anything.

    .venv/bin/python bench/opcua.py [--points 1000] [--seconds 30]

Every process is ended by its PID; every wait has a deadline; the work folder is removed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from agent.common.loopback import free_port, wait_port

ROOT = Path(__file__).resolve().parent.parent
PY = sys.executable
HAZGATE = [PY, "-m", "agent.cli"]
NS = "urn:hazgate:bench"
TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK  # utime + stime


class Child:
    def __init__(self, args: list[str], log: Path):
        self._log = open(log, "ab")  # noqa: SIM115 - closed in stop()
        self.p = subprocess.Popen(args, stdout=self._log, stderr=subprocess.STDOUT, cwd=ROOT)
        self.log = log

    def stop(self) -> None:
        if self.p.poll() is None:
            os.kill(self.p.pid, signal.SIGTERM)
            try:
                self.p.wait(15)
            except subprocess.TimeoutExpired:
                os.kill(self.p.pid, signal.SIGKILL)
                self.p.wait(5)
        self._log.close()


class Counter:
    """Readings arriving at the broker, with their arrival times."""

    def __init__(self, port: int):
        import paho.mqtt.client as mqtt

        self.arrivals: list[tuple[float, int]] = []  # (arrival, readings in the message)
        self.lock = threading.Lock()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"bench-{os.getpid()}")
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", port)
        self.client.subscribe("hazchem/+/+/readings", qos=1)
        self.client.loop_start()

    def _on_message(self, _c, _u, msg) -> None:  # noqa: ANN001
        n = len(json.loads(msg.payload).get("readings", []))
        with self.lock:
            self.arrivals.append((time.time(), n))

    def count(self, start: float, end: float) -> int:
        with self.lock:
            return sum(n for at, n in self.arrivals if start <= at < end)

    def rate(self, start: float, end: float) -> float:
        """Readings per second over the messages that arrived in [start, end): fence-posted from the
        first arrival to the last, the first message's readings not counted (they came before)."""
        with self.lock:
            got = [(at, n) for at, n in self.arrivals if start <= at < end]
        return sum(n for _, n in got[1:]) / (got[-1][0] - got[0][0]) if len(got) > 1 else 0.0

    def stop(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def write_plant(work: Path, points: int, ua_port: int) -> Path:
    with (work / "points.csv").open("w", encoding="utf-8") as f:
        f.write("tag,name,address,type,unit,kind\n")
        for i in range(points):
            f.write(f"P{i:04d},bench point {i},nsu={NS};s=P{i:04d},float64,m,level\n")
    signals = "\n".join(f'P{i:04d} = {{ ramp = [0.0, 100.0], period = "{50 + i % 20}s" }}' for i in range(points))
    (work / "plant.toml").write_text(
        f'[[plcs]]\nname = "bench"\nprotocol = "opcua"\nport = {ua_port}\npoints = "points.csv"\n'
        f'namespace = "{NS}"\nupdate_interval = "1s"\n\n[plcs.signals]\n{signals}\n', encoding="utf-8")
    return work / "plant.toml"


def write_gateway(work: Path, mode: str, ua_port: int, broker_port: int) -> Path:
    path = work / f"gateway-{mode}.toml"
    path.write_text(f"""[gateway]
id = "GW-BENCH-0001"
enterprise_code = "120116999999"
data_dir = "{work / ('data-' + mode)}"

[uplink]
broker = "mqtt://127.0.0.1:{broker_port}"
publish_interval = "1s"
batch_size = 2000

[clock]
sync_source = "trust"

[[devices]]
name = "bench"
protocol = "opcua"
endpoint = "opc.tcp://127.0.0.1:{ua_port}"
mode = "{mode}"
poll_interval = "1s"
timeout = "2s"
integrity_interval = "1h"
points = "points.csv"
""", encoding="utf-8")
    return path


def measure_agent(work: Path, mode: str, ua_port: int, broker_port: int, counter: Counter, seconds: float,
                  sim_pid: int) -> dict:
    began = time.time()
    agent = Child([*HAZGATE, "run", "-c", str(write_gateway(work, mode, ua_port, broker_port))], work / f"agent-{mode}.log")
    try:
        deadline = began + 30
        while counter.count(began, time.time() + 1) == 0:
            if time.time() > deadline or agent.p.poll() is not None:
                raise RuntimeError(f"no readings from the agent ({mode}); see {agent.log}")
            time.sleep(0.2)
        time.sleep(3.0)  # warm-up: sessions, subscription, store and uplink in their stride
        start, cpu0, sim0 = time.time(), cpu_seconds(agent.p.pid), cpu_seconds(sim_pid)
        time.sleep(seconds)
        end, cpu1, sim1 = time.time(), cpu_seconds(agent.p.pid), cpu_seconds(sim_pid)
        rss = next(int(ln.split()[1]) for ln in Path(f"/proc/{agent.p.pid}/status").read_text().splitlines()
                   if ln.startswith("VmRSS:"))
        time.sleep(2.5)  # let the last publishes of the window arrive
        return {"readings_per_s": counter.rate(start, end), "cpu_pct": 100 * (cpu1 - cpu0) / (end - start),
                "server_cpu_pct": 100 * (sim1 - sim0) / (end - start), "rss_mib": rss / 1024}
    finally:
        agent.stop()


async def raw_client(mode: str, ua_port: int, points: int, seconds: float) -> dict:
    """The baseline: a bare asyncua client, no hazgate; counts values it receives."""
    from asyncua import Client, ua

    client = Client(f"opc.tcp://127.0.0.1:{ua_port}", timeout=5)
    await client.connect()
    ns = (await client.get_namespace_array()).index(NS)
    nodes = [ua.NodeId(f"P{i:04d}", ns) for i in range(points)]
    got, span = 0, 0.0
    try:
        if mode == "poll":
            async def once() -> int:
                n = 0
                for k in range(0, points, 500):
                    p = ua.ReadParameters()
                    p.TimestampsToReturn = ua.TimestampsToReturn.Both
                    for nid in nodes[k : k + 500]:
                        rv = ua.ReadValueId()
                        rv.NodeId, rv.AttributeId = nid, ua.AttributeIds.Value
                        p.NodesToRead.append(rv)
                    n += len(await client.uaclient.read(p))
                return n

            await once()
            await asyncio.sleep(3)
            start, cpu0 = time.monotonic(), time.process_time()
            due = start
            while time.monotonic() - start < seconds:
                got += await once()
                due += 1.0
                await asyncio.sleep(max(0.0, due - time.monotonic()))
        else:
            sub = await client.create_subscription(1000, handler=None, queue_maxsize=10 * points)
            await sub.subscribe_data_change([client.get_node(n) for n in nodes], sampling_interval=1000)

            async def drain(until: float) -> list[float]:
                arrivals = []
                while (left := until - time.monotonic()) > 0:
                    if await sub.next_event(timeout=left) is not None:
                        arrivals.append(time.monotonic())
                return arrivals

            await drain(time.monotonic() + 3)
            start, cpu0 = time.monotonic(), time.process_time()
            arrivals = await drain(start + seconds)
            # fence-posted over whole publishes: from the first notification of the first publish to
            # the first of the last, the last publish not counted
            firsts = [t for i, t in enumerate(arrivals) if i == 0 or t - arrivals[i - 1] > 0.2]
            got = sum(1 for t in arrivals if firsts[0] <= t < firsts[-1]) if len(firsts) > 1 else 0
            span = firsts[-1] - firsts[0] if len(firsts) > 1 else float(seconds)
        end, cpu1 = time.monotonic(), time.process_time()
    finally:
        await client.disconnect()
    return {"readings_per_s": got / (span or end - start), "cpu_pct": 100 * (cpu1 - cpu0) / (end - start)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--points", type=int, default=1000)
    ap.add_argument("--seconds", type=float, default=30.0)
    ap.add_argument("--raw", choices=["poll", "subscribe"], help=argparse.SUPPRESS)
    ap.add_argument("--ua-port", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.raw:  # the baseline, in its own process so its CPU is its own
        print(json.dumps(asyncio.run(raw_client(args.raw, args.ua_port, args.points, args.seconds))))
        return 0
    work = Path(tempfile.mkdtemp(prefix="hazgate-bench-opcua-"))
    children: list[Child] = []
    counter = None
    try:
        ua_port, broker_port = free_port(), free_port()
        (work / "mosquitto.conf").write_text(f"listener {broker_port} 127.0.0.1\nallow_anonymous true\n"
                                             "persistence false\nmax_queued_messages 100000\n")
        mosquitto = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
        children.append(Child([mosquitto, "-c", str(work / "mosquitto.conf")], work / "mosquitto.log"))
        sim = Child([*HAZGATE, "simulate", "-s", str(write_plant(work, args.points, ua_port))], work / "sim.log")
        children.append(sim)
        wait_port(broker_port, 10)
        wait_port(ua_port, 60)
        counter = Counter(broker_port)
        results = {}
        for mode in ("subscribe", "poll"):
            results[mode] = measure_agent(work, mode, ua_port, broker_port, counter, args.seconds, sim.p.pid)
            raw = subprocess.run([PY, __file__, "--raw", mode, "--ua-port", str(ua_port), "--points", str(args.points),
                                  "--seconds", str(min(args.seconds, 15.0))], capture_output=True, text=True,
                                 timeout=args.seconds + 60, cwd=ROOT)
            results[mode]["raw"] = json.loads(raw.stdout.strip().splitlines()[-1]) if raw.returncode == 0 else None
        print(f"OPC UA, {args.points} points changing every second, 1 s poll interval, {args.seconds:g} s window")
        print(f"{'mode':<10} {'readings/s':>11} {'agent CPU':>10} {'agent RSS':>10} {'server CPU':>11} "
              f"{'raw asyncua: values/s':>22} {'raw CPU':>8} {'agent/raw CPU':>14}")
        for mode, r in results.items():
            raw = r["raw"] or {"readings_per_s": float("nan"), "cpu_pct": float("nan")}
            ratio = r["cpu_pct"] / raw["cpu_pct"] if raw["cpu_pct"] else float("nan")
            print(f"{mode:<10} {r['readings_per_s']:>11.0f} {r['cpu_pct']:>9.1f}% {r['rss_mib']:>7.0f} MiB "
                  f"{r['server_cpu_pct']:>10.1f}% {raw['readings_per_s']:>22.0f} {raw['cpu_pct']:>7.1f}% {ratio:>13.1f}x")
        return 0
    finally:
        if counter is not None:
            counter.stop()
        for c in reversed(children):
            c.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
