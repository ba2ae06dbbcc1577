"""The protocol-neutral drain loop: the store's outbox to one far end, whatever the protocol.

Drain order in every round: messages already numbered but unacknowledged (oldest first), then
events, then live readings (collected since the link came up), then the backlog. One round is
one store call (`Store.drain`) that fills the free in-flight window. Each connection is a new
`Link`, so what is re-sent after a reconnect is decided here from the store, never by a
protocol library's own session replay.

In snapshot mode (`DrainSettings.snapshot`) the live message is the snapshot of the newest
boundary due (a multiple of the interval since the epoch, due a grace after it so that what was
polled just before it is stored: agent.pipeline.store.snapshot_grace), and the backlog is one
snapshot per boundary missed; the store builds both from the uplink's queue.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
import time
from dataclasses import dataclass

from agent.common.timefmt import now_ms
from agent.north.base import Body, ConnectFailed, Connector, Link, UplinkContext, UplinkStats
from agent.pipeline.store import Builder, DrainRequest, snapshot_grace

log = logging.getLogger("hazgate.uplink")

BACKLOG_BATCH = 2000  # readings per back-fill message (at most the uplink's batch)
EVENTS_BATCH = 100  # events per message (at most the uplink's batch)
BACKLOG_INFLIGHT_BYTES = 600_000  # about two back-fill messages on the wire at once
DRAIN_BUDGET = 8000  # readings numbered per store call: the store thread's turns stay short for events
BACKOFF_MIN, BACKOFF_MAX = 0.5, 10.0


@dataclass
class DrainSettings:
    window: int  # messages in flight at most
    batch: int  # readings per live message
    interval: float  # seconds between live messages (sooner while full batches wait)
    max_rejects: int = 10  # refusals of one message in a row before it is set aside
    snapshot: bool = False  # send = "snapshot": each point's latest value per interval, aligned to the clock


class Drain:
    def __init__(self, name: str, ctx: UplinkContext, settings: DrainSettings, body: Body, connector: Connector):
        self.name, self.ctx, self.settings, self.body = name, ctx, settings, body
        self.connector = connector
        self.store = ctx.store
        self.stats = UplinkStats()
        self.wake = asyncio.Event()  # something to publish (an ack freed the window, a message waits)
        self._events_waiting = False  # events stored: the next store call goes before the writer's
        self._store_warned = False
        # While the store refuses writes, live readings held in memory go out directly, numbered
        # by the store's synced mark; such messages stay here until acknowledged.
        self._mem_msgs: dict[int, bytes] = {}
        self._next_memory = 0.0
        self._link: Link | None = None
        self._acks: list[int] = []
        self._in_flight: dict[int, int] = {}  # seq -> payload bytes
        self._watermark = 0
        self._sent_upto = 0
        self._next_live = 0.0
        self._refusals: list[asyncio.Future] = []  # refusals being recorded in the store

    @property
    def link(self) -> Link | None:
        """The open link while the uplink is up."""
        return self._link if self.stats.state == "up" else None

    def configure(self, settings: DrainSettings, connector: Connector | None = None) -> None:
        """New settings apply at once; a new connector on a new connection, started here.
        Messages in flight stay in the store and go out again with their seq."""
        self.settings = settings
        if connector is not None:
            self.connector = connector
            if self._link is not None:
                log.info("uplink settings changed: connecting again",
                         extra={"fields": {"uplink": self.name, "to": connector.describe}})
                self._link.lost.set()

    def events_stored(self) -> None:
        """Events are in the store: publish them now."""
        self._events_waiting = True
        self.wake.set()

    async def restate(self, build: Builder) -> None:
        """Queue the description (meta) again, now: it changed."""
        with contextlib.suppress(sqlite3.Error):  # a store refusing writes restates it next time
            await self.store.call("enqueue", "meta", True, build, self.name)
        self.wake.set()

    # --- connection ---------------------------------------------------------------------
    def _set_state(self, state: str, reason: str = "") -> None:
        if state == self.stats.state:
            return
        self.stats.state = state
        fields = {"uplink": self.name, "to": self.connector.describe}
        if state == "up":
            log.info("uplink up", extra={"fields": fields})
        else:
            self.stats.last_error = reason
            log.warning("uplink down", extra={"fields": {**fields, "reason": reason}})
        self.ctx.on_state(self.name, state)

    def _on_ack(self, seq: int) -> None:
        if self._in_flight.pop(seq, None) is not None:
            self._acks.append(seq)
            self.stats.acked += 1
            self.wake.set()

    def _on_reject(self, seq: int, reason: str) -> None:
        """The far end answered and refused the message: counted in the store, which sets it
        aside after `max_rejects` refusals in a row; the rest is sent again on a new link."""
        if self._in_flight.pop(seq, None) is None:
            return
        self.stats.rejected += 1
        self.stats.last_error = reason
        log.warning("message refused by the far end", extra={"fields": {
            "uplink": self.name, "seq": seq, "reason": reason}})
        self._refusals.append(asyncio.ensure_future(self._record_reject(seq, reason)))
        if self._link is not None:
            self._link.lost.set()

    async def _record_reject(self, seq: int, reason: str) -> None:
        try:
            event = await self.store.call_urgent("reject", self.name, seq, reason, self.settings.max_rejects)
        except sqlite3.Error:
            return  # counted again at the next refusal
        if event is not None:
            log.error("message set aside after repeated refusals", extra={"fields": {
                "uplink": self.name, "seq": seq, "rejects": event["rejects"], "reason": reason}})
            self.ctx.events_stored()

    async def _connect(self) -> Link:
        """Connect with exponential back-off; returns an open link."""
        delay = BACKOFF_MIN
        while True:
            self.stats.beat = time.monotonic()
            try:
                return await self.connector.connect(self._on_ack, self._on_reject)
            except ConnectFailed as exc:
                reason = str(exc)
            self._set_state("down", reason)
            log.debug("connect failed", extra={"fields": {"uplink": self.name, "reason": reason, "retry_in": delay}})
            await asyncio.sleep(delay)
            delay = min(BACKOFF_MAX, delay * 2)

    def _send(self, link: Link, seq: int, kind: str, payload: bytes, retain: bool) -> bool:
        self._in_flight[seq] = len(payload)
        if not link.send(seq, kind, payload, retain):
            self._in_flight.pop(seq, None)
            return False
        self.stats.published += 1
        return True

    async def run(self) -> None:
        """Forever: connect, drain, and on loss start again. Cancel to stop."""
        await self.store.ready.wait()
        while True:
            link = await self._connect()
            self._link = link
            if self.stats.state == "down" and self.stats.published:
                self.stats.reconnects += 1
            try:
                await self._session(link)
            except Exception:  # a bug must not end the uplink: log it, reconnect
                log.exception("uplink session failed", extra={"fields": {"uplink": self.name}})
                await asyncio.sleep(BACKOFF_MIN)
            finally:
                self._link = None
                self._in_flight.clear()
                if self._acks:  # delivered: record it, so they are not sent again
                    with contextlib.suppress(sqlite3.Error):
                        await self.store.call("ack", self._acks, self.name)
                    self._acks = []
                if self._refusals:  # recorded before anything is sent again
                    await asyncio.gather(*self._refusals, return_exceptions=True)
                    self._refusals = []
                await asyncio.get_running_loop().run_in_executor(None, link.abandon)
            self._set_state("down", link.reason or "connection lost")

    async def stop(self, grace: float = 2.0) -> None:
        """Clean shutdown: let in-flight messages be acknowledged, then the link's goodbye."""
        link = self.link
        if link is None:
            return
        deadline = time.monotonic() + grace
        while self._in_flight and not link.lost.is_set() and time.monotonic() < deadline:
            self.wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.wake.wait(), deadline - time.monotonic())
        if self._acks:
            with contextlib.suppress(sqlite3.Error):
                await self.store.call("ack", self._acks, self.name)
            self._acks = []
        await link.close(grace)

    async def _session(self, link: Link) -> None:
        link.opened()
        await self._mark_backlog()
        self._set_state("up")
        self._sent_upto = 0  # highest outbox seq handed to this link
        self._next_live = time.monotonic()
        if self.body.meta is not None:
            with contextlib.suppress(sqlite3.Error):  # a store refusing writes restates it next time
                await self.store.call("enqueue", "meta", True, self.body.meta, self.name)
        for seq in sorted(self._mem_msgs):  # sent from memory before the drop, not acknowledged
            if not self._send(link, seq, "readings", self._mem_msgs[seq], False):
                return
        while not link.lost.is_set():
            self.stats.beat = time.monotonic()
            self.wake.clear()  # before the round: an ack arriving during it still wakes us
            try:
                if await self._round(link):
                    continue
            except (sqlite3.Error, OSError) as exc:  # disk full or read-only: keep the link
                if not self._store_warned:
                    log.warning("store refuses writes: sending live readings from memory",
                                extra={"fields": {"uplink": self.name, "error": str(exc)}})
                    self._store_warned = True
                if await self._round_from_memory(link):
                    continue
                await asyncio.sleep(min(1.0, max(0.05, self._next_memory - time.monotonic())))
                continue
            if self._store_warned:  # writable again: what it holds now was collected while stuck
                self._store_warned = False
                await self._mark_backlog()
            timeout = max(0.001, self._next_live - time.monotonic())
            lost = asyncio.ensure_future(link.lost.wait())
            woke = asyncio.ensure_future(self.wake.wait())
            try:
                await asyncio.wait({lost, woke}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
            finally:
                lost.cancel()
                woke.cancel()

    async def _mark_backlog(self) -> None:
        """Readings stored up to now are backlog (sent last, marked backfill); newer are live.

        On a first connection that did not have to wait (no outage), what this process polled
        meanwhile is live: only what an earlier run left behind is backlog.
        """
        if self.stats.state == "starting":
            self._watermark = self.store.opened_upto
            return
        try:
            self._watermark = await self.store.call("last_reading_id")
        except sqlite3.Error:
            self._watermark = 0

    async def _round_from_memory(self, link: Link) -> bool:
        """One batch of held live readings straight to the far end; True if one went out.
        A snapshot uplink sends nothing from memory: its snapshots are built in the store."""
        if self.settings.snapshot:
            return False
        self._acks = [seq for seq in self._acks if self._mem_msgs.pop(seq, None) is None]
        now = time.monotonic()
        if now < self._next_memory or len(self._in_flight) >= self.settings.window:
            return False
        rows = self.ctx.held.take(self.settings.batch)
        if not rows:
            self._next_memory = now + self.settings.interval
            return False
        try:
            seq = await self.store.call("reserve_seq", self.name)  # synced before the message exists
        except (sqlite3.Error, OSError):
            self.ctx.held.give_back(rows)  # read-only data dir: nothing can be numbered safely
            self._next_memory = now + self.settings.interval
            return False
        payload = self.body.readings(False)(seq, rows)
        self._mem_msgs[seq] = payload
        if not self._send(link, seq, "readings", payload, False):
            link.lost.set()
            return False
        return True

    async def _round(self, link: Link) -> bool:
        """One drain step, one store call; True if it published something (call again at once)."""
        if self._mem_msgs:  # acknowledged messages sent from memory leave memory, not the store
            self._acks = [seq for seq in self._acks if self._mem_msgs.pop(seq, None) is None]
        room = self.settings.window - len(self._in_flight)
        if room <= 0 and not self._acks:
            return False
        now = time.monotonic()
        snapshot = self.settings.snapshot
        live_due = snapshot or now >= self._next_live  # once per publish interval, sooner while full batches wait
        # an event published now waits on the connection behind every byte in flight: back-fill
        # only while little is (a full window of back-fill is ~4 MB, ~40 ms on loopback)
        backlog_ok = (snapshot or bool(self._watermark)) and sum(self._in_flight.values()) < BACKLOG_INFLIGHT_BYTES
        acks, self._acks = self._acks, []
        body = self.body
        req = DrainRequest(
            acks, self._sent_upto, max(0, room), body.events,
            body.readings(False) if live_due else None, self.settings.batch,
            self._watermark, body.readings(True) if backlog_ok else None,
            min(BACKLOG_BATCH, self.settings.batch), DRAIN_BUDGET, self.name, min(EVENTS_BATCH, self.settings.batch))
        if snapshot:
            step = round(self.settings.interval * 1000)
            grace = snapshot_grace(step)
            wall = now_ms()
            req.snapshot_interval, req.snapshot_due = step, (wall - grace) // step * step
            self._next_live = now + (req.snapshot_due + step + grace - wall) / 1000  # the next boundary due
        urgent, self._events_waiting = self._events_waiting, False
        try:
            res = await (self.store.call_urgent if urgent else self.store.call)("drain", req)
        except BaseException:
            self._acks = acks + self._acks  # recorded on a later call (a repeat deletes nothing)
            raise
        if res.error is not None:  # delivered all the same: record later, keep draining
            self._acks = acks + self._acks
        if live_due and res.live_short:
            self._next_live = now + self.settings.interval
        if res.backlog_done:
            self._watermark = 0
        for seq, kind, retain, payload in res.messages:  # re-sends keep their seq and content
            if not self._send(link, seq, kind, payload, retain):
                link.lost.set()
                return False
            self._sent_upto = seq
        if res.messages or res.more:
            return True
        if res.error is not None:  # nothing new can be numbered while the store refuses writes
            raise res.error
        return False
