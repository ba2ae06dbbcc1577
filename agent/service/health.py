"""Health of a running agent: what the systemd watchdog pings on, and the local HTTP endpoint
(`/healthz`, `/metrics` in the Prometheus text format), using only the standard library.

Progress, not timers. `Progress.check()` looks at what each part of the agent has done since it
last looked:

- every device task must complete polls: its `polls` counter moves at least once within
  max(watchdog/2, 3 poll intervals + 4 timeouts per unit on its bus + 5 s). Reads have
  timeouts, so a dead PLC still completes polls (bad ones): only a hung task stops;
- each uplink's loop must come round (its `stats.beat`) within watchdog/2 plus the uplink's own
  allowance (MQTT: the publish interval, or keepalive + 30 s while it connects);
- the store thread must answer a trivial probe; a probe that waits is tolerated while the store
  thread is visibly working (its CPU time or completed I/O system calls move, read from
  /proc/self/task/<tid>): a long eviction or a slow SD card is busy, not hung. A disk whose
  writes never complete (hung storage, a frozen file system) leaves the thread in
  uninterruptible sleep with nothing moving: that is hung;
- the core tasks (writer, checks, uplink, maintenance, devices) must not have ended. Each runs
  under a supervisor (agent/app.py) that starts it again with back-off when it ends, which
  /healthz reports as a problem while it waits (a task restarting is handled inside the agent,
  not stuck); only a task whose supervisor itself ended is stuck here;
- and the event loop must run at all, or nothing here is evaluated.

The watchdog ping is sent only while nothing is stuck, so a hung agent is restarted by systemd
while a dead PLC, a broker outage or a full disk (each handled inside the agent) is not.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import resource
import socket
import sqlite3
import threading
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from agent.pipeline.metered import LATENCY_BUCKETS, MeteredDriver

log = logging.getLogger("hazgate.health")

DEFAULT_STALE = 30.0  # seconds without progress that count as stuck when systemd sets no watchdog
STATS_MIN_INTERVAL = 10.0
CLK_TCK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
PAGE_SIZE = resource.getpagesize()


# --- progress (the watchdog's conditions) -------------------------------------------------
def _thread_counters(tid: int) -> tuple[int, ...] | None:
    """CPU ticks and completed I/O system calls of one thread of this process (Linux)."""
    try:
        stat = Path(f"/proc/self/task/{tid}/stat").read_text()
        fields = stat[stat.rindex(")") + 2:].split()
        cpu = int(fields[11]) + int(fields[12])  # utime, stime
    except (OSError, ValueError, IndexError):
        return None
    io: tuple[int, ...] = ()
    with contextlib.suppress(OSError, ValueError):
        lines = dict(line.split(": ") for line in Path(f"/proc/self/task/{tid}/io").read_text().splitlines())
        io = (int(lines["syscr"]), int(lines["syscw"]))
    return (cpu, *io)


class Progress:
    """Tracks progress of the agent's parts; `check()` returns what is stuck (empty: healthy)."""

    def __init__(self, agent: Any, stale_after: float):
        self.agent = agent
        self.stale_after = stale_after
        self.since = time.monotonic()
        self._devices: dict[int, tuple[int, float]] = {}
        self._probe: asyncio.Future | None = None
        self._probe_started = 0.0
        self._thread_state: tuple[int, ...] | None = None
        self._thread_changed = self.since
        self.ages: dict[str, float] = {}
        self.problems: list[str] = []

    def _restarting(self, task: str) -> bool:
        """The core task waits to be started again: no progress by design, /healthz reports it."""
        r = self.agent.restarts.get(task)
        return r is not None and r.restart_at is not None

    def device_allowance(self, dev: Any) -> float:
        if self._restarting(f"device:{dev.name}"):
            return math.inf
        on_bus = 1
        if dev.bus is not None:  # units answer one after another on a shared line
            on_bus = sum(1 for d in self.agent.cfg.devices if d.bus == dev.bus)
        return max(self.stale_after, 3 * dev.poll_interval + 4 * dev.timeout * max(1, on_bus) + 5)

    def uplink_allowance(self, uplink: Any) -> float:
        if self._restarting(f"uplink:{uplink.name}"):
            return math.inf
        return self.stale_after + uplink.progress_allowance()

    def _probe_done(self, fut: asyncio.Future) -> None:
        if not fut.cancelled():
            fut.exception()  # a store refusing the call still answered
        self._probe = None

    def check(self) -> list[str]:
        agent, now = self.agent, time.monotonic()
        problems: list[str] = []
        ages: dict[str, float] = {}
        seen = set()
        for task in agent.devices:
            key = id(task)
            seen.add(key)
            polls, since = self._devices.get(key, (task.polls, now))
            if polls != task.polls:
                since = now
            self._devices[key] = (task.polls, since)
            age = now - since
            ages[f"device:{task.device.name}"] = age
            if age > self.device_allowance(task.device):
                problems.append(f"device {task.device.name}: no poll completed for {age:.0f}s")
        for key in set(self._devices) - seen:
            del self._devices[key]
        for t in agent.tasks:
            if t.done() and not t.cancelled():
                exc = t.exception()
                problems.append(f"task {t.get_name()} ended" + (f": {exc!r}" if exc else ""))
        store_busy = False
        if agent.store.ready.is_set():
            tid = agent.store.thread_id
            state = _thread_counters(tid) if tid is not None else None
            if state != self._thread_state:
                self._thread_state, self._thread_changed = state, now
            if self._probe is None:
                with contextlib.suppress(Exception):
                    self._probe = asyncio.ensure_future(agent.store.call("last_reading_id"))
                    self._probe_started = now
                    self._probe.add_done_callback(self._probe_done)
            else:
                waited, idle = now - self._probe_started, now - self._thread_changed
                ages["store"] = waited
                if waited > self.stale_after:
                    if state is not None and idle <= self.stale_after:
                        store_busy = True  # working through something long: busy, not hung
                    else:
                        problems.append(f"store: a call has waited {waited:.0f}s and the store thread "
                                        f"made no progress for {idle:.0f}s (disk I/O hung?)")
        for u in agent.uplinks:
            age = now - max(u.stats.beat, self.since)
            ages[f"uplink:{u.name}"] = age
            if age > self.uplink_allowance(u) and not store_busy and agent.store.ready.is_set():
                problems.append(f"uplink {u.name}: its loop has not come round for {age:.0f}s")
        self.ages, self.problems = ages, problems
        return problems

    def forget(self) -> None:
        """After a reload: new device tasks start their count now."""
        self._devices.clear()
        self.since = time.monotonic()


# --- store figures, read beside the agent ---------------------------------------------------
class StoreStats:
    """The store's counters, read on a thread of its own through a read-only connection, so a
    scrape never queues behind the agent's writes; refreshed at most every 10 s (longer if the
    query is slow on a big store)."""

    def __init__(self, data_dir: Path):
        self.data_dir = data_dir
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="health-stats")
        self._store: Any = None
        self.values: dict[str, Any] = {}
        self.active: dict[str, int] = {}
        self.at: float | None = None  # monotonic time of the last good read
        self.at_wall = 0.0  # the same, wall clock: ages are told as of the read
        self.took = 0.0
        self.error: str | None = None
        self._running = False

    def _read(self) -> tuple[dict, dict[str, int]]:
        from agent.pipeline.store import DB_NAME, Store

        if self._store is None:
            if not (self.data_dir / DB_NAME).exists():
                raise sqlite3.OperationalError("no store yet")
            self._store = Store(self.data_dir, readonly=True)
        try:
            stats = self._store.stats()
            counts: dict[str, int] = {}
            for _key, kind, _subject, _start, _data in self._store.active():
                counts[kind] = counts.get(kind, 0) + 1
        except sqlite3.Error:
            self._store.close()
            self._store = None
            raise
        return stats, counts

    async def refresh(self) -> None:
        now = time.monotonic()
        if self._running or (self.at is not None and now - self.at < max(STATS_MIN_INTERVAL, 10 * self.took)):
            return
        self._running = True
        try:
            self.values, self.active = await asyncio.get_running_loop().run_in_executor(self._pool, self._read)
            self.at, self.took, self.error = time.monotonic(), time.monotonic() - now, None
            self.at_wall = time.time()
        except (sqlite3.Error, OSError) as exc:
            self.error = str(exc)
        finally:
            self._running = False

    def oldest_age(self, figures: dict | None = None) -> float:
        """Age of the oldest unacknowledged reading when the figures were read (0: none); of one
        uplink's figures when given."""
        oldest = (figures if figures is not None else self.values).get("oldest_unsent_ms")
        return round(max(0.0, self.at_wall - oldest / 1000), 3) if oldest else 0.0

    async def close(self) -> None:
        def shut() -> None:
            if self._store is not None:
                self._store.close()

        with contextlib.suppress(RuntimeError, TimeoutError):  # bounded: a stuck disk must not hold the stop
            async with asyncio.timeout(2.0):
                await asyncio.get_running_loop().run_in_executor(self._pool, shut)
        self._pool.shutdown(wait=False)


# --- process figures ---------------------------------------------------------------------
def process_figures() -> dict[str, float]:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    out = {"cpu": usage.ru_utime + usage.ru_stime, "rss": usage.ru_maxrss * 1024.0}
    with contextlib.suppress(OSError, ValueError, IndexError):
        vsize, rss = Path("/proc/self/statm").read_text().split()[:2]
        out["vsize"], out["rss"] = int(vsize) * PAGE_SIZE, int(rss) * PAGE_SIZE
    with contextlib.suppress(OSError):
        out["fds"] = len(os.listdir("/proc/self/fd"))
    out["threads"] = threading.active_count()
    with contextlib.suppress(OSError, ValueError, IndexError, StopIteration):
        stat = Path("/proc/self/stat").read_text()
        ticks = int(stat[stat.rindex(")") + 2:].split()[19])  # starttime, in clock ticks after boot
        boot = next(int(line.split()[1]) for line in Path("/proc/stat").read_text().splitlines()
                    if line.startswith("btime "))
        out["start"] = boot + ticks / CLK_TCK
    return out


# --- Prometheus text format ---------------------------------------------------------------
def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _num(v: float) -> str:
    if v != v:
        return "NaN"
    if v in (float("inf"), float("-inf")):
        return "+Inf" if v > 0 else "-Inf"
    return repr(float(v)) if isinstance(v, float) and not v.is_integer() else str(int(v))


class Exposition:
    """Builds one scrape: each family once with HELP and TYPE, then its samples."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def family(self, name: str, kind: str, help_text: str,
               samples: list[tuple[dict[str, str], float]] | float | None) -> None:
        if samples is None:
            return
        if not isinstance(samples, list):
            samples = [({}, samples)]
        self.lines.append(f"# HELP {name} {help_text}")
        self.lines.append(f"# TYPE {name} {kind}")
        for labels, value in samples:
            self.sample(name, labels, value)

    def sample(self, name: str, labels: dict[str, str], value: float) -> None:
        text = ",".join(f'{k}="{_escape(str(v))}"' for k, v in labels.items())
        self.lines.append(f"{name}{{{text}}} {_num(value)}" if text else f"{name} {_num(value)}")

    def histogram(self, name: str, help_text: str, series: list[tuple[dict[str, str], MeteredDriver]]) -> None:
        self.lines.append(f"# HELP {name} {help_text}")
        self.lines.append(f"# TYPE {name} histogram")
        for labels, m in series:
            total = 0
            for edge, count in zip((*LATENCY_BUCKETS, float("inf")), m.buckets, strict=True):
                total += count
                self.sample(f"{name}_bucket", {**labels, "le": "+Inf" if edge == float("inf") else repr(edge)}, total)
            self.sample(f"{name}_sum", labels, m.read_sum)
            self.sample(f"{name}_count", labels, m.reads)

    def text(self) -> str:
        return "\n".join(self.lines) + "\n"


# --- the HTTP endpoint --------------------------------------------------------------------
Route = Callable[[], Awaitable[tuple[int, str, bytes]]]
REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed", 503: "Service Unavailable"}
MAX_CONNECTIONS = 16  # at once; a scrape takes milliseconds, so more means a stuck or hostile client
READ_TIMEOUT = 3.0  # seconds a connection has to send its request line and headers
WRITE_TIMEOUT = 5.0


class HealthServer:
    """A minimal HTTP/1.1 server (one request per connection) for loopback scrapes.

    Bounded, so that idle or slow clients cannot take the file descriptors the store and the
    devices need: it accepts a connection only while fewer than MAX_CONNECTIONS are open (the
    kernel's listen queue, as long again, holds the next; beyond it a client waits for its SYN
    to be answered), and closes one that has not sent its request within READ_TIMEOUT."""

    def __init__(self, host: str, port: int, routes: dict[str, Route]):
        self.host, self.port, self.routes = host, port, routes
        self._sock: socket.socket | None = None
        self._accepting: asyncio.Task | None = None
        self._connections: set[asyncio.Task] = set()
        self._slots = asyncio.Semaphore(MAX_CONNECTIONS)

    async def start(self) -> None:
        """Listen; raises OSError (the port is taken, the address is not on this box)."""
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        self._sock = socket.create_server((self.host, self.port), family=family, backlog=MAX_CONNECTIONS)
        self._sock.setblocking(False)
        self._accepting = asyncio.create_task(self._accept(self._sock), name="health-accept")
        log.info("health endpoint listening", extra={"fields": {"listen": f"{self.host}:{self.port}"}})

    async def close(self) -> None:
        if self._accepting is None or self._sock is None:
            return
        tasks = [self._accepting, *self._connections]
        for t in tasks:
            t.cancel()
        await asyncio.wait(tasks, timeout=2.0)
        self._sock.close()
        self._accepting = self._sock = None

    async def _accept(self, sock: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        failing = False
        while True:
            await self._slots.acquire()
            try:
                conn, _ = await loop.sock_accept(sock)
            except OSError as exc:  # out of descriptors (EMFILE) and the like: the agent goes first
                self._slots.release()
                if not failing:
                    log.warning("health endpoint cannot accept; retrying every second",
                                extra={"fields": {"error": str(exc)}})
                failing = True
                await asyncio.sleep(1.0)
                continue
            failing = False
            task = loop.create_task(self._connection(conn))
            self._connections.add(task)
            task.add_done_callback(self._connection_done)

    def _connection_done(self, task: asyncio.Task) -> None:
        self._connections.discard(task)
        self._slots.release()

    async def _connection(self, conn: socket.socket) -> None:
        try:
            reader, writer = await asyncio.open_connection(sock=conn, limit=8192)
        except OSError:
            conn.close()
            return
        await self._serve(reader, writer)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            try:
                async with asyncio.timeout(READ_TIMEOUT):
                    head = await reader.readuntil(b"\r\n\r\n")
            except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError, ConnectionError):
                return
            parts = head.split(b"\r\n", 1)[0].decode("latin-1").split()
            if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
                status, ctype, body = 400, "text/plain; charset=utf-8", b"bad request\n"
                method = "GET"
            else:
                method, path = parts[0], parts[1].split("?", 1)[0]
                route = self.routes.get(path)
                if route is None:
                    status, ctype, body = 404, "text/plain; charset=utf-8", \
                        ("not found; try " + ", ".join(self.routes) + "\n").encode()
                elif method not in ("GET", "HEAD"):
                    status, ctype, body = 405, "text/plain; charset=utf-8", b"GET or HEAD only\n"
                else:
                    status, ctype, body = await route()
            head_out = (f"HTTP/1.1 {status} {REASONS.get(status, 'OK')}\r\nContent-Type: {ctype}\r\n"
                        f"Content-Length: {len(body)}\r\nCache-Control: no-store\r\nConnection: close\r\n\r\n")
            writer.write(head_out.encode() + (b"" if method == "HEAD" else body))
            async with asyncio.timeout(WRITE_TIMEOUT):
                await writer.drain()
        except (ConnectionError, TimeoutError):
            pass
        except Exception:  # never let a scrape take the agent down
            log.exception("health request failed")
        finally:
            if writer.transport.get_write_buffer_size():  # a client that does not read: do not wait for it
                writer.transport.abort()
            else:
                writer.close()
            with contextlib.suppress(ConnectionError, TimeoutError):
                async with asyncio.timeout(1.0):
                    await writer.wait_closed()
