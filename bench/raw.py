"""The raw baseline: the same work as the agent with nothing but the protocol libraries.

`live`: reads the same registers with the pymodbus client (one task and one connection per
unit, blocks of up to 125 registers, one struct unpack per block) and publishes them with paho
at QoS 1 in messages of the same shape and size as the agent's. No store, no checks, no
deadband, no sequence file: what the libraries allow on this machine.

`backfill`: reads a store's buffered readings straight out of SQLite (read-only) and publishes
them at QoS 1 in messages of 2 000, as fast as the broker acknowledges them.

Both write a small JSON stats file (highest acknowledged seq, counts) twice a second and at the
end, which the benchmark reads, as it reads the agent's store for the agent.

    python -m bench.raw live --plan plan.json --broker-port P --duration 20 [--interval 1]
    python -m bench.raw backfill --db hazgate.db --broker-port P
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import sqlite3
import struct
import threading
import time
from datetime import datetime
from pathlib import Path

import orjson
import paho.mqtt.client as mqtt
from pymodbus.client import AsyncModbusTcpClient

from agent.pipeline.chunks import unpack_chunk

GATEWAY = "RAW"
BATCH = 500  # readings per message: the agent's default uplink.batch_size
BACKFILL_BATCH = 2000  # the agent's back-fill message size
MAX_UNACKED = 64  # back-pressure: paho refuses to queue past 65 535 messages
TZ = datetime.now().astimezone().tzinfo


def stamp(ts_ms: int) -> str:
    return datetime.fromtimestamp(ts_ms / 1000, TZ).isoformat(timespec="milliseconds")


class Publisher:
    """paho at QoS 1 with a bounded number of unacknowledged messages."""

    def __init__(self, port: int, stats_path: Path | None):
        self.topic = f"hazchem/1/{GATEWAY}/readings"
        self.seq = 0
        self.acked = 0
        self.acked_seq = 0
        self.published_readings = 0
        self.mid_seq: dict[int, int] = {}
        self.early: set[int] = set()
        self.lock = threading.Lock()
        self.stats_path = stats_path
        self.loop = asyncio.get_running_loop()
        self.ack_event = asyncio.Event()  # set on every PUBACK
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="bench-raw", clean_session=True)
        self.client.on_publish = self.on_publish
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()

    def on_publish(self, _c, _u, mid, _rc, _p) -> None:  # noqa: ANN001
        # paho's network thread; never hold our lock around publish() (paho's own locks: deadlock)
        with self.lock:
            seq = self.mid_seq.pop(mid, None)
            if seq is None:  # acknowledged before publish() returned its mid to us
                self.early.add(mid)
                return
            self._acked(seq)

    def _acked(self, seq: int) -> None:
        self.acked += 1
        self.acked_seq = max(self.acked_seq, seq)
        self.loop.call_soon_threadsafe(self.ack_event.set)

    async def _wait_acks(self, most_unacked: int) -> None:
        while self.seq - self.acked > most_unacked:
            self.ack_event.clear()
            if self.seq - self.acked > most_unacked:
                await self.ack_event.wait()

    async def publish(self, readings: list[dict], backfill: bool = False) -> None:
        await self._wait_acks(MAX_UNACKED - 1)
        self.seq += 1
        body = {"schema": "hazgate.uplink/1", "gateway": GATEWAY, "enterprise": "1", "seq": self.seq,
                "sent_at": stamp(int(time.time() * 1000)), "readings": readings}
        info = self.client.publish(self.topic, orjson.dumps(body), qos=1)
        if info.rc != mqtt.MQTT_ERR_SUCCESS:
            raise RuntimeError(f"publish refused: {mqtt.error_string(info.rc)}")
        with self.lock:
            if info.mid in self.early:
                self.early.discard(info.mid)
                self._acked(self.seq)
            else:
                self.mid_seq[info.mid] = self.seq
        self.published_readings += len(readings)

    def write_stats(self, **extra: object) -> None:
        if self.stats_path is None:
            return
        tmp = self.stats_path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"t": time.time(), "acked_seq": self.acked_seq, "seq": self.seq,
                                   "published_readings": self.published_readings, **extra}))
        os.replace(tmp, self.stats_path)

    async def drain(self, seconds: float = 30) -> None:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await self._wait_acks(0)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


async def poll_unit(dev: dict, pub: Publisher, interval: float, until: float, counts: list[int]) -> None:
    client = AsyncModbusTcpClient("127.0.0.1", port=dev["port"], timeout=2, retries=0)
    await client.connect()
    pending: list[dict] = []
    due = time.monotonic()
    try:
        while time.monotonic() < until:
            ts = stamp(int(time.time() * 1000))
            for b in dev["blocks"]:
                resp = await client.read_holding_registers(b["start"], count=b["count"], device_id=dev["unit"])
                regs = resp.registers
                n = len(b["tags"])
                values = struct.unpack(f">{n}{b['fmt']}", struct.pack(f">{len(regs)}H", *regs))
                scale = b["scale"]
                for tag, v in zip(b["tags"], values, strict=True):
                    pending.append({"tag": tag, "ts": ts, "value": v * scale if scale != 1.0 else v,
                                    "unit": "m", "quality": "good", "backfill": False})
            counts[0] += sum(len(b["tags"]) for b in dev["blocks"])
            while len(pending) >= BATCH:
                await pub.publish(pending[:BATCH])
                del pending[:BATCH]
            if pending and interval > 0:  # a paced poll goes out at once, like the agent's events
                await pub.publish(pending)
                pending = []
            if interval > 0:
                due += interval
                await asyncio.sleep(max(0.0, due - time.monotonic()))
            else:
                await asyncio.sleep(0)
        if pending:
            await pub.publish(pending)
    finally:
        client.close()


async def live(args: argparse.Namespace, plan: list[dict]) -> None:
    pub = Publisher(args.broker_port, Path(args.stats) if args.stats else None)
    counts = [0]
    until = time.monotonic() + args.duration

    async def stats_loop() -> None:
        while True:
            pub.write_stats(polled=counts[0])
            await asyncio.sleep(0.5)

    stats = asyncio.create_task(stats_loop())
    try:
        await asyncio.gather(*(poll_unit(d, pub, d.get("interval", args.interval), until, counts) for d in plan))
        await pub.drain()
    finally:
        stats.cancel()
        pub.write_stats(polled=counts[0], done=True)
        pub.close()


async def backfill(args: argparse.Namespace) -> None:
    db = sqlite3.connect(f"file:{args.db}?mode=ro", uri=True)
    pub = Publisher(args.broker_port, Path(args.stats) if args.stats else None)
    quality = ("good", "uncertain", "bad")
    stamps: dict[int, str] = {}
    points = {pid: (tag, unit) for pid, tag, unit in db.execute("SELECT pid, tag, unit FROM points")}
    sent = 0
    t0 = time.monotonic()
    try:
        # the agent's packed chunks (decoded with the store's own unpack_chunk), read in order,
        # published BACKFILL_BATCH readings at a time
        readings: list[dict] = []
        for taken, blob in db.execute("SELECT p.taken, c.rows FROM pending p JOIN chunks c ON c.id = p.chunk "
                                      "WHERE p.uplink = 'mqtt' ORDER BY p.chunk"):
            for ts, pid, value, q, reason in unpack_chunk(blob)[taken:]:
                s = stamps.get(ts)
                if s is None:
                    s = stamps[ts] = stamp(ts)
                tag, unit = points[pid]
                r = {"tag": tag, "ts": s, "value": value, "unit": unit, "quality": quality[q], "backfill": True}
                if reason:
                    r["reason"] = reason
                readings.append(r)
                if len(readings) == BACKFILL_BATCH:
                    await pub.publish(readings, backfill=True)
                    sent += len(readings)
                    readings = []
                    if pub.seq % 50 == 0:
                        pub.write_stats()
        if readings:
            await pub.publish(readings, backfill=True)
            sent += len(readings)
        await pub.drain()
    finally:
        pub.write_stats(done=True, readings=sent, seconds=time.monotonic() - t0)
        pub.close()
        db.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="mode", required=True)
    p = sub.add_parser("live")
    p.add_argument("--plan", required=True, help="JSON: [{port, unit, interval?, blocks: [{start, count, fmt, scale, tags}]}]")
    p.add_argument("--broker-port", type=int, required=True)
    p.add_argument("--duration", type=float, required=True)
    p.add_argument("--interval", type=float, default=0.0, help="poll interval; 0: back to back")
    p.add_argument("--stats", default=None)
    p = sub.add_parser("backfill")
    p.add_argument("--db", required=True)
    p.add_argument("--broker-port", type=int, required=True)
    p.add_argument("--stats", default=None)
    args = ap.parse_args()
    if args.mode == "live":
        asyncio.run(live(args, json.loads(Path(args.plan).read_text())))
    else:
        asyncio.run(backfill(args))


if __name__ == "__main__":
    main()
