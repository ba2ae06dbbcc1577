"""Back-fill benchmark: N readings buffered during an outage, then the link returns.

Prints the drain rate (readings/s delivered and acknowledged), the extra latency of live
readings while the backlog drains (against the same agent's live latency without a backlog),
and the store's size per million readings. Everything on loopback: a real Mosquitto, the
simulated PLC and `hazgate run` as processes, a paho subscriber counting in this process.

    .venv/bin/python -m bench.backfill [--readings 1000000]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from datetime import datetime
from pathlib import Path

import paho.mqtt.client as mqtt

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from agent.config import load_config  # noqa: E402
from agent.store import Store  # noqa: E402

HAZGATE = [sys.executable, "-m", "agent.cli"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise TimeoutError(port)


class Counter:
    def __init__(self, port: int, topic: str):
        self.lock = threading.Lock()
        self.backfill = 0
        self.live_latency: list[float] = []
        self.seqs: set[int] = set()
        self.last = 0.0
        c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="bench-counter", clean_session=True)
        c.on_message = self.on_message
        c.connect("127.0.0.1", port)
        c.subscribe(topic, qos=1)
        c.loop_start()
        self.client = c

    def on_message(self, _c, _u, msg) -> None:  # noqa: ANN001
        now = time.time()
        if not msg.topic.endswith("/readings"):
            return
        body = json.loads(msg.payload)
        with self.lock:
            self.seqs.add(body["seq"])
            self.last = now
            for r in body["readings"]:
                if r["backfill"]:
                    self.backfill += 1
                else:
                    self.live_latency.append(now - datetime.fromisoformat(r["ts"]).timestamp())


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--readings", type=int, default=1_000_000)
    ap.add_argument("--points", type=int, default=100, help="live points polled every 1 s during the drain")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="hazgate-bench-"))
    procs: list[subprocess.Popen] = []
    try:
        mport, pport = free_port(), free_port()
        (work / "m.conf").write_text(f"listener {mport} 127.0.0.1\nallow_anonymous true\nmax_queued_messages 0\n")
        rows = ["tag,address,type,unit"] + [f"L{i:04d},hr:{2 * i},float32,m" for i in range(args.points)]
        (work / "points.csv").write_text("\n".join(rows) + "\n")
        sig = "\n".join(f'L{i:04d} = {{ ramp = [0.0, 100.0], period = "60s" }}' for i in range(args.points))
        (work / "plant.toml").write_text(
            f'[[plcs]]\nname = "plc"\nhost = "127.0.0.1"\nport = {pport}\nunit = 1\npoints = "points.csv"\n'
            f"[plcs.signals]\n{sig}\n")
        (work / "gw.toml").write_text(
            f'[gateway]\nid = "GW-BENCH"\nenterprise_code = "1"\ndata_dir = "{work / "data"}"\n'
            f'[uplink]\nbroker = "mqtt://127.0.0.1:{mport}"\n[store]\nmax_size = "2GiB"\n'
            f'[[devices]]\nname = "plc"\nprotocol = "modbus-tcp"\nhost = "127.0.0.1"\nport = {pport}\n'
            f'poll_interval = "1s"\npoints = "points.csv"\n')
        cfg = load_config(work / "gw.toml")
        # the backlog: written straight into the store, as a long outage would leave it
        t0 = time.perf_counter()
        store = Store(cfg.data_dir)
        pids = store.pids([(f"B{i:04d}", "m", "float32") for i in range(1000)])
        base = int(time.time() * 1000) - 3_600_000
        batch = 20_000
        for start in range(0, args.readings, batch):
            store.add_readings([(base + (start + i) // 1000 * 10, pids[f"B{(start + i) % 1000:04d}"],
                                 float(i), 0, None) for i in range(min(batch, args.readings - start))])
        size = store.stats()["used_bytes"]
        store.close()
        fill_s = time.perf_counter() - t0
        mosq = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
        procs.append(subprocess.Popen([mosq, "-c", str(work / "m.conf")], stderr=subprocess.DEVNULL))
        procs.append(subprocess.Popen([*HAZGATE, "simulate", "-s", str(work / "plant.toml")], stderr=subprocess.DEVNULL))
        wait_port(mport)
        wait_port(pport)
        counter = Counter(mport, "hazchem/#")
        agent = subprocess.Popen([*HAZGATE, "run", "-c", str(work / "gw.toml")], stderr=subprocess.DEVNULL)
        procs.append(agent)
        t0 = time.monotonic()
        deadline = t0 + 600
        while time.monotonic() < deadline:
            with counter.lock:
                if counter.backfill >= args.readings:
                    break
            time.sleep(0.05)
        drain_s = time.monotonic() - t0
        cpu = sum(int(x) for x in Path(f"/proc/{agent.pid}/stat").read_text().split()[13:15]) / os.sysconf("SC_CLK_TCK")
        with counter.lock:
            during = list(counter.live_latency)
            got = counter.backfill
        time.sleep(10)  # live only, for the baseline latency
        with counter.lock:
            after = counter.live_latency[len(during):]
        lat = lambda xs, q: statistics.quantiles(xs, n=100)[q - 1] if len(xs) >= 2 else float("nan")  # noqa: E731
        print(f"backlog: {args.readings} readings, store {size / 1e6:.1f} MB "
              f"({size / args.readings * 1e6 / 1e6:.1f} MB per million), filled in {fill_s:.1f}s")
        print(f"drain: {got} back-filled readings in {drain_s:.1f}s = {got / drain_s:,.0f} readings/s, "
              f"agent CPU {cpu:.1f}s since start ({cpu / drain_s * 100:.0f}% of one core)")
        print(f"live latency during drain: p50 {lat(during, 50):.3f}s p99 {lat(during, 99):.3f}s (n={len(during)}); "
              f"after: p50 {lat(after, 50):.3f}s p99 {lat(after, 99):.3f}s (n={len(after)})")
    finally:
        for p in reversed(procs):
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
                try:
                    p.wait(10)
                except subprocess.TimeoutExpired:
                    p.kill()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
