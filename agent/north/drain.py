"""The protocol-neutral drain loop: the store's outbox to one far end, whatever the protocol.

Drain order in every round: messages already numbered but unacknowledged (oldest first), then
events, then live readings (collected since the link came up), then the backlog. One round is
one store call (`Store.drain`) that fills the free in-flight window and, for an uplink with
`ahead` (a platform, one message in flight), numbers that many more messages in the same
transaction: they wait here, durable in the outbox, and go out in order as acknowledgements
free the window, with no store call between them; their acknowledgements are recorded on the
next store call (an acknowledgement not yet recorded only means the message is sent again
after a crash). Each connection is a new `Link`, so what is re-sent after a reconnect is
decided here from the store, never by a protocol library's own session replay.

Connections are paced by one back-off per uplink (agent/north/backoff.py): full jitter up to a
one-second cap, reset only when the far end acknowledges something, so the first attempt after
a loss, a refused connection and a far end that takes connections but answers nothing are all
paced alike. After connecting, the first live readings go out as soon as they are stored
(looked for every FIRST_LIVE_LOOK), not a publish interval later.

Three guards, whatever the protocol:
- a message in flight has a deadline (the adapter's `ack_deadline`): when the oldest has waited
  longer, the connection is dropped and everything unacknowledged goes again with its seq;
- no record can stop the drain: the builders handed to the store build a batch that fails row
  by row, leave out the rows that fail alone and report them (a `record_set_aside` event);
- the description (`meta`) is queued again only when it differs from the one last acknowledged
  (a note in the store's state) and is not already waiting in the outbox.

In snapshot mode (`DrainSettings.snapshot`) the live message is the snapshot of the newest
boundary due (a multiple of the interval since the epoch, due a grace after it so that what was
polled just before it is stored: agent.pipeline.store.snapshot_grace), and the backlog is one
snapshot per boundary missed; the store builds both from the uplink's queue.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import math
import sqlite3
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from agent.common.timefmt import now_ms, rfc3339
from agent.north.backoff import Backoff
from agent.north.base import Body, ConnectFailed, Connector, Link, UplinkContext, UplinkStats
from agent.pipeline.store import Builder, DrainRequest, SnapshotPage, snapshot_grace

log = logging.getLogger("hazgate.uplink")

BACKLOG_BATCH = 2000  # readings per back-fill message (at most the uplink's batch)
EVENTS_BATCH = 100  # events per message (at most the uplink's batch)
BACKLOG_INFLIGHT_BYTES = 600_000  # about two back-fill messages on the wire at once
DRAIN_BUDGET = 8000  # readings numbered per store call: the store thread's turns stay short for events
FIRST_LIVE_LOOK = 0.1  # seconds between looks for the first live readings after connecting
LET_GO = 5.0  # seconds at most to record a lost session's acknowledgements and drop its link
SET_ASIDE = "record_set_aside"  # the gateway event reporting records left out of a message
SHOWN = 200  # characters of a set-aside record in the error log


@dataclass
class DrainSettings:
    window: int  # messages in flight at most
    batch: int  # readings per live message
    interval: float  # seconds between live messages (sooner while full batches wait)
    max_rejects: int = 10  # refusals of one message in a row before it is set aside
    # messages numbered beyond the window in one store call, held ready (sent as the window
    # frees): fewer store transactions and mark syncs per message; events numbered later wait
    # behind them
    ahead: int = 0
    snapshot: bool = False  # send = "snapshot": each point's latest value per interval, aligned to the clock
    # the adapter's bounds on an acknowledgement (MQTT: 1 and 3 keepalives); inf: none of the
    # drain's own (a link that times out each reply itself)
    ack_warning: float = math.inf  # seconds one may take before it is worth a warning
    ack_deadline: float = math.inf  # seconds the oldest in flight may wait: then a new connection
    # snapshot mode: the tags whose readings the store keeps per minute, and for how long (ms;
    # 0: none), for a platform's history requests (agent/pipeline/history.py)
    history_tags: Callable[[], frozenset[str]] = frozenset
    history_ms: int = 0


@dataclass
class SetAside:
    """Rows of one message that could not be built, each alone: left out of that message."""

    kind: str  # readings | events
    seq: int
    rows: list
    reason: str


class Drain:
    def __init__(self, name: str, ctx: UplinkContext, settings: DrainSettings, body: Body, connector: Connector):
        self.name, self.ctx, self.settings, self.body = name, ctx, settings, body
        self.connector = connector
        self.store = ctx.store
        self.stats = UplinkStats(ack_warning=settings.ack_warning, ack_deadline=settings.ack_deadline)
        self.backoff = Backoff()
        self.wake = asyncio.Event()  # something to publish (an ack freed the window, a message waits)
        self._stopped = False  # stop() is done: no new session, the current one ends
        self._events_waiting = False  # events stored: the next store call goes before the writer's
        self._store_warned = False
        # While the store refuses writes, live readings held in memory go out directly, numbered
        # by the store's synced mark; such messages stay here until acknowledged.
        self._mem_msgs: dict[int, bytes] = {}
        self._next_memory = 0.0
        self._link: Link | None = None
        self._acks: list[int] = []
        # seq -> (payload bytes, sent on this connection, first sent), in the order sent
        self._in_flight: dict[int, tuple[int, float, float]] = {}
        self._carried: dict[int, float] = {}  # seq -> first sent, of those in flight when the link went
        self._ready: deque[tuple[int, str, bool, bytes]] = deque()  # numbered, handed out, not yet sent
        self._watermark = 0
        self._sent_upto = 0
        self._next_live = 0.0
        self._live_by = 0.0  # until then (monotonic), with no live message yet, look for one often
        self._refusals: list[asyncio.Future] = []  # refusals being recorded in the store
        self._drop_reason = ""  # why this side ended the connection
        self._set_aside: list[SetAside] = []  # filled by the guarded builders (store thread)
        self._meta_key = f"meta_acked:{name}"  # state key: digest of the meta last acknowledged
        self._meta_acked: str | None = None
        self._meta_sent: tuple[int, str] | None = None  # (seq, digest) of the meta in the outbox
        self._meta_note_due = False  # acknowledged, not yet noted in the store

    @property
    def link(self) -> Link | None:
        """The open link while the uplink is up."""
        return self._link if self.stats.state == "up" else None

    def configure(self, settings: DrainSettings, connector: Connector | None = None) -> None:
        """New settings apply at once; a new connector on a new connection, started here.
        Messages in flight stay in the store and go out again with their seq."""
        self.settings = settings
        self.stats.ack_warning, self.stats.ack_deadline = settings.ack_warning, settings.ack_deadline
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

    async def restate(self) -> None:
        """The points changed: queue the description (meta) now, if it says something new."""
        await self._restate_meta()
        self.wake.set()

    def _meta_digest(self) -> str:
        """The description and where it goes: a new broker has not had it."""
        return hashlib.sha256(self.connector.describe.encode() + b"\n" + self.body.meta_digest()).hexdigest()

    async def _restate_meta(self) -> None:
        """Queue the description unless the far end acknowledged this very one, or it waits in
        the outbox (a message there goes again, with its seq, on every connection)."""
        build = self.body.meta
        if build is None:
            return
        digest = await asyncio.get_running_loop().run_in_executor(None, self._meta_digest)
        with contextlib.suppress(sqlite3.Error):  # a store refusing writes restates it next time
            if self._meta_acked is None:
                self._meta_acked = await self.store.call("get_state", self._meta_key)
            if digest == self._meta_acked or (self._meta_sent is not None and digest == self._meta_sent[1]):
                return
            self._meta_sent = (await self.store.call("enqueue", "meta", True, build, self.name), digest)

    async def _note_meta(self) -> None:
        """Remember, durably, which description the far end acknowledged."""
        with contextlib.suppress(sqlite3.Error):  # noted on a later turn
            await self.store.call("set_state", {self._meta_key: self._meta_acked})
            self._meta_note_due = False

    # --- records that cannot be built -------------------------------------------------------
    def _guarded(self, kind: str, build: Builder) -> Builder:
        """`build` for the store's drain: a batch it cannot build is built row by row; rows that
        fail alone are left out of the message and noted (reported after the store call)."""
        def guarded(seq: int, rows: list) -> bytes:
            try:
                return build(seq, rows)
            except Exception as exc:  # noqa: BLE001 - whatever a record makes a builder raise
                failed = exc
            like = rows.part if isinstance(rows, SnapshotPage) else list  # a snapshot keeps its boundary
            kept, aside, reason = [], [], ""
            for row in rows:
                try:
                    build(seq, like([row]))
                except Exception as exc:  # noqa: BLE001
                    aside.append(row)
                    reason = reason or f"{type(exc).__name__}: {exc}"
                else:
                    kept.append(row)
            if not aside:  # every record builds alone: not a record's fault
                raise failed
            self._set_aside.append(SetAside(kind, seq, aside, reason))
            return build(seq, like(kept))

        return guarded

    async def _report_set_aside(self) -> None:
        """Log each set-aside batch at error and raise a `record_set_aside` gateway event."""
        noted, self._set_aside = self._set_aside, []
        for a in noted:
            log.error("records set aside: they cannot be built into a message", extra={"fields": {
                "uplink": self.name, "kind": a.kind, "seq": a.seq, "count": len(a.rows), "reason": a.reason,
                "first": repr(a.rows[0])[:SHOWN]}})
            if all(isinstance(r, dict) and r.get("kind") == SET_ASIDE for r in a.rows):
                continue  # a report that cannot be built is not reported again, round after round
            ts = now_ms()
            event = {"id": f"{SET_ASIDE}-{self.name}-{a.seq}", "kind": SET_ASIDE, "severity": "alarm",
                     "state": "dropped", "ts": rfc3339(ts), "source": "gateway", "uplink": self.name,
                     "message_kind": a.kind, "seq": a.seq, "count": len(a.rows), "reason": a.reason}
            with contextlib.suppress(sqlite3.Error):  # the store refuses writes: the log says it
                await self.store.call_urgent("add_event", ts, event)
                self.ctx.events_stored()  # a gateway event: every uplink publishes it

    # --- connection ---------------------------------------------------------------------
    def _set_state(self, state: str, reason: str = "") -> None:
        """A change of state, or, while down, of the reason why (status shows the latest)."""
        was = self.stats.state
        if state == was and (state == "up" or reason == self.stats.last_error):
            return
        self.stats.state = state
        fields = {"uplink": self.name, "to": self.connector.describe}
        if state == "up":
            log.info("uplink up", extra={"fields": fields})
        else:
            self.stats.last_error = reason
            log.warning("uplink down" if state != was else "uplink still down, for another reason",
                        extra={"fields": {**fields, "reason": reason}})
        self.ctx.on_state(self.name, state, reason if state != "up" else "")

    def _on_ack(self, seq: int) -> None:
        if self._in_flight.pop(seq, None) is not None:
            self.backoff.reset()
            self._acks.append(seq)
            self.stats.acked += 1
            self._track_oldest()
            if self._meta_sent is not None and seq == self._meta_sent[0]:
                self._meta_acked, self._meta_sent = self._meta_sent[1], None
                self._meta_note_due = True
            self.wake.set()

    def _track_oldest(self) -> None:
        """The stats' oldest unacknowledged message: the first sending counts, so the age goes
        on growing across reconnects while the far end takes messages and never acknowledges."""
        firsts = [first for _n, _sent, first in self._in_flight.values()]
        self.stats.unacked_since = min(firsts) if firsts else None

    def _oldest_sent(self) -> float | None:
        """When the oldest message in flight went out on this connection (None: nothing is)."""
        return next(iter(self._in_flight.values()))[1] if self._in_flight else None

    def _overdue(self, link: Link) -> bool:
        """The oldest message in flight is past its deadline: drop the connection (True)."""
        sent = self._oldest_sent()
        waited = 0.0 if sent is None else time.monotonic() - sent
        if waited <= self.settings.ack_deadline:
            return False
        self._drop_reason = f"no acknowledgement for {waited:.0f}s (deadline {self.settings.ack_deadline:g}s)"
        log.warning("no acknowledgement within the deadline: connecting again", extra={"fields": {
            "uplink": self.name, "to": self.connector.describe, "waited_s": round(waited, 1),
            "deadline_s": self.settings.ack_deadline, "in_flight": len(self._in_flight)}})
        link.lost.set()
        return True

    def _wait_time(self) -> float:
        """Seconds until something is due: live readings (while the window has room), the
        deadline of the oldest message in flight, and a turn at least every publish interval."""
        now = time.monotonic()
        due = now + self.settings.interval
        if len(self._in_flight) < self.settings.window:
            due = min(due, self._next_live)
        sent = self._oldest_sent()
        if sent is not None:
            due = min(due, sent + self.settings.ack_deadline)
        return max(0.001, due - now)

    def _on_reject(self, seq: int, reason: str) -> None:
        """The far end answered and refused the message: counted in the store, which sets it
        aside after `max_rejects` refusals in a row; the rest is sent again on a new link."""
        if self._in_flight.pop(seq, None) is None:
            return
        self._track_oldest()
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

    async def _connect(self, delay: float) -> Link:
        """An open link: the first attempt after `delay` seconds, each next one after the
        uplink's back-off."""
        while True:
            if delay:
                await asyncio.sleep(delay)
            self.stats.beat = time.monotonic()
            try:
                return await self.connector.connect(self._on_ack, self._on_reject)
            except ConnectFailed as exc:
                delay = self.backoff.next_delay()
                self._set_state("down", str(exc))
                log.debug("connect failed", extra={"fields": {
                    "uplink": self.name, "reason": str(exc), "retry_in": round(delay, 3)}})

    def _send(self, link: Link, seq: int, kind: str, payload: bytes, retain: bool) -> bool:
        now = time.monotonic()
        self._in_flight[seq] = (len(payload), now, self._carried.pop(seq, now))
        sent = link.send(seq, kind, payload, retain)
        if sent:
            self.stats.published += 1
        else:
            self._in_flight.pop(seq, None)
        self._track_oldest()
        return sent

    async def run(self) -> None:
        """Forever: connect, drain, and on loss start again. Cancel to stop."""
        await self.store.ready.wait()
        delay = 0.0  # the first connection at once; after a loss, the back-off's
        while not self._stopped:  # a cancel is the usual end; this one holds when a library swallowed it
            link = await self._connect(delay)
            self._link = link
            if self.stats.state == "down" and self.stats.published:
                self.stats.reconnects += 1
            try:
                await self._session(link)
            except Exception:  # a bug must not end the uplink: log it, reconnect (after the back-off)
                log.exception("uplink session failed", extra={"fields": {"uplink": self.name}})
            finally:
                self._link = None
                self._carried = {seq: first for seq, (_n, _sent, first) in self._in_flight.items()}
                self._in_flight.clear()  # the stats keep their oldest: still unacknowledged
                try:  # bounded: a stop must not wait on a store or a protocol library that hangs
                    async with asyncio.timeout(LET_GO):
                        await self._let_go(link)
                except TimeoutError:
                    log.warning("the lost link was not let go within the bound; going on",
                                extra={"fields": {"uplink": self.name, "seconds": LET_GO}})
            if self._stopped:
                return
            self._set_state("down", self._drop_reason or link.reason or "connection lost")
            self._drop_reason = ""
            delay = self.backoff.next_delay()

    async def _let_go(self, link: Link) -> None:
        """After a session: what was acknowledged and refused recorded (before anything is sent
        again), the link's connection dropped."""
        await self._record_acks()
        if self._refusals:
            await asyncio.gather(*self._refusals, return_exceptions=True)
            self._refusals = []
        await asyncio.get_running_loop().run_in_executor(None, link.abandon)

    async def _record_acks(self) -> None:
        """Delivered: record it, so they are not sent again (and which meta the far end has)."""
        if self._acks:
            with contextlib.suppress(sqlite3.Error):
                await self.store.call("ack", self._acks, self.name)
            self._acks = []
        if self._meta_note_due:
            await self._note_meta()

    async def stop(self, grace: float = 2.0) -> None:
        """Clean shutdown: let in-flight messages be acknowledged, then the link's goodbye.
        The session (still open meanwhile, for those acknowledgements) ends after it."""
        try:
            link = self.link
            if link is None:
                return
            deadline = time.monotonic() + grace
            while self._in_flight and not link.lost.is_set() and time.monotonic() < deadline:
                self.wake.clear()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(deadline - time.monotonic()):
                        await self.wake.wait()
            await self._record_acks()
            await link.close(grace)
        finally:
            self._stopped = True
            self.wake.set()

    async def _session(self, link: Link) -> None:
        link.opened()
        await self._mark_backlog()
        self._set_state("up")
        self._sent_upto = 0  # highest outbox seq handed to this link
        self._ready.clear()  # in the outbox: handed out again from there
        self._next_live = time.monotonic()
        self._live_by = self._next_live + self.settings.interval
        await self._restate_meta()
        for seq in sorted(self._mem_msgs):  # sent from memory before the drop, not acknowledged
            if not self._send(link, seq, "readings", self._mem_msgs[seq], False):
                return
        while not link.lost.is_set() and not self._stopped:
            self.stats.beat = time.monotonic()
            if self._overdue(link):
                return
            if self._meta_note_due:
                await self._note_meta()
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
            timeout = self._wait_time()
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
        payload = self._guarded("readings", self.body.readings(False))(seq, rows)
        await self._report_set_aside()
        self._mem_msgs[seq] = payload
        if not self._send(link, seq, "readings", payload, False):
            link.lost.set()
            return False
        return True

    def _send_ready(self, link: Link) -> bool | None:
        """Messages numbered ahead, in order, while the window has room: True if any went,
        None if the link failed."""
        sent = False
        while self._ready and len(self._in_flight) < self.settings.window:
            seq, kind, retain, payload = self._ready.popleft()
            if not self._send(link, seq, kind, payload, retain):
                link.lost.set()
                return None
            sent = True
        return sent

    async def _round(self, link: Link) -> bool:
        """One drain step: messages numbered ahead go first, with no store call; else one store
        call. True if it published something (call again at once)."""
        if self._mem_msgs:  # acknowledged messages sent from memory leave memory, not the store
            self._acks = [seq for seq in self._acks if self._mem_msgs.pop(seq, None) is None]
        if self._ready:
            return bool(self._send_ready(link))
        room = self.settings.window - len(self._in_flight)
        if room <= 0 and not self._acks:
            return False
        room += self.settings.ahead
        now = time.monotonic()
        snapshot = self.settings.snapshot
        live_due = snapshot or now >= self._next_live  # once per publish interval, sooner while full batches wait
        # an event published now waits on the connection behind every byte in flight: back-fill
        # only while little is (a full window of back-fill is ~4 MB, ~40 ms on loopback)
        backlog_ok = (snapshot or bool(self._watermark)) and sum(n for n, _s, _f in self._in_flight.values()) < BACKLOG_INFLIGHT_BYTES
        acks, self._acks = self._acks, []
        body, guard = self.body, self._guarded
        req = DrainRequest(
            acks, self._sent_upto, max(0, room), guard("events", body.events) if body.events else None,
            guard("readings", body.readings(False)) if live_due else None, self.settings.batch,
            self._watermark, guard("readings", body.readings(True)) if backlog_ok else None,
            min(BACKLOG_BATCH, self.settings.batch), DRAIN_BUDGET, self.name, min(EVENTS_BATCH, self.settings.batch))
        if snapshot:
            step = round(self.settings.interval * 1000)
            grace = snapshot_grace(step)
            wall = now_ms()
            req.snapshot_interval, req.snapshot_due = step, (wall - grace) // step * step
            if self.settings.history_ms:
                req.history, req.history_ms = self.settings.history_tags(), self.settings.history_ms
            self._next_live = now + (req.snapshot_due + step + grace - wall) / 1000  # the next boundary due
        urgent, self._events_waiting = self._events_waiting, False
        try:
            res = await (self.store.call_urgent if urgent else self.store.call)("drain", req)
        except BaseException:
            self._acks = acks + self._acks  # recorded on a later call (a repeat deletes nothing)
            self._set_aside.clear()  # rolled back with the call: nothing was left out
            raise
        if res.error is not None:  # delivered all the same: record later, keep draining
            self._acks = acks + self._acks
            self._set_aside.clear()  # numbering rolled back: nothing was left out
        elif self._set_aside:
            await self._report_set_aside()
        if res.live:
            self._live_by = 0.0
        if live_due and res.live_short:
            soon = now < self._live_by  # no live message yet on this connection: look again soon
            self._next_live = now + (min(FIRST_LIVE_LOOK, self.settings.interval) if soon else self.settings.interval)
        if res.backlog_done:
            self._watermark = 0
        if res.messages:  # re-sends keep their seq and content
            self._ready.extend(res.messages)
            self._sent_upto = res.messages[-1][0]
        if self._send_ready(link) is None:
            return False
        if res.messages or res.more:
            return True
        if res.error is not None:  # nothing new can be numbered while the store refuses writes
            raise res.error
        return False
