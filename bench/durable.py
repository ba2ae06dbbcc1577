"""The durability window (issue 20): how long a reading waits between its collection (`ts`) and
the commit that makes it durable in the store, at 1 000 and 10 000 points/s.

The agent polls the bench's units (one unit every second; ten units every second; one unit
every 100 ms) and delivers to the bench's broker as usual. A reading's `ts` is stamped when its
poll starts, so the figure holds the poll's own duration: ten units polled at once from the one
simulator process take 90-250 ms to answer here, one unit 15-20 ms; the one unit every 100 ms
is 10 000 points/s with the store's share in plain view.
This process reads the agent's store read-only every few milliseconds and notes, for each
chunk as it first appears, the time it became visible minus its oldest reading's `ts`: in WAL
mode with `synchronous=FULL` a commit is synced before other connections see it, so this is
the collection-to-durable time of every reading of the chunk (an upper bound: the other
readings of a chunk are no older, and the look comes up to one period late). A chunk that left
before it was seen (taken into a message within a look) is counted as unseen.
"""

from __future__ import annotations

import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path

from bench.common import Unit, gateway_toml, snapshot, start_agent, wait_until, weighted_quantile
from bench.live import STOP_WAIT, Ctx

LOOK = 0.005  # seconds between looks at the store


@dataclass
class Window:
    units: int
    poll: float  # seconds between polls
    points_per_s: float
    seconds: float
    readings: int  # readings seen committed in the window
    unseen: int  # chunks that came and went between two looks
    commits: int  # distinct moments new chunks appeared
    p50: float
    p99: float
    max: float


def watch(data: Path, seconds: float) -> tuple[list[tuple[float, int]], int, int]:
    """Look at the store every LOOK s for `seconds`: (lag, readings) per chunk, unseen, commits."""
    db = sqlite3.connect(f"file:{data / 'hazgate.db'}?mode=ro", uri=True, timeout=5)
    try:
        last = db.execute("SELECT COALESCE(MAX(id), 0) FROM chunks").fetchone()[0]
        lags: list[tuple[float, int]] = []
        unseen = commits = 0
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            time.sleep(LOOK)
            try:
                rows = db.execute("SELECT id, oldest, count FROM chunks WHERE id > ? ORDER BY id", (last,)).fetchall()
                top = db.execute("SELECT seq FROM sqlite_sequence WHERE name = 'chunks'").fetchone()
            except sqlite3.OperationalError:  # a checkpoint or a writer's moment: look again
                continue
            now_ms = time.time() * 1000
            if rows:
                commits += 1
            lags += [((now_ms - oldest) / 1000, count) for _id, oldest, count in rows]
            newest = max([last, *(r[0] for r in rows), top[0] if top else 0])
            unseen += (newest - last) - len(rows)
            last = newest
        return lags, unseen, commits
    finally:
        db.close()


def run(ctx: Ctx, units: list[Unit], poll: float, warm: float, seconds: float) -> Window:
    """One agent polling `units` every `poll` seconds; the window measured over `seconds`."""
    n = sum(u.n_points for u in units)
    name = f"durable{n}-{poll * 1000:.0f}ms"
    gw = f"GW-{name.upper()}"
    cfg = gateway_toml(ctx.work, name, gw, ctx.broker_port, units, f"{poll * 1000:.0f}ms")
    data = ctx.work / f"data-{name}"
    agent = start_agent(ctx.procs, cfg, name)
    try:
        if not wait_until(lambda: snapshot(ctx.sub, gw)[0] > 0, 60):
            raise RuntimeError(f"{name}: no readings delivered within 60 s:\n{ctx.procs.log_tail(name)}")
        time.sleep(warm)
        t0 = time.monotonic()
        lags, unseen, commits = watch(data, seconds)
        elapsed = time.monotonic() - t0
    finally:
        code = ctx.procs.stop(agent, STOP_WAIT)
    if code:
        ctx.notes.append(f"agent ({name}) exited with {code}: {ctx.procs.log_tail(name, 3)}")
    return Window(len(units), poll, n / poll, elapsed, sum(c for _, c in lags), unseen, commits, weighted_quantile(lags, 0.50),
                  weighted_quantile(lags, 0.99), max((x for x, _ in lags), default=float("nan")))
