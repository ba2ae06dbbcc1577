"""MQTT uplink ("north" side): drains the store to the provincial broker, QoS 1.

Drain order in every round: messages already numbered but unacknowledged (oldest first),
then events, then live readings (collected since the link came up), then the backlog. One
round is one store call (`Store.drain`) that fills the free in-flight window.
Each connection uses a fresh paho client, so what is re-sent after a reconnect is decided
here from the store, never by paho's own session replay.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
import ssl
import threading
import time
from collections.abc import Callable

import orjson
import paho.mqtt.client as mqtt

from agent import __version__
from agent.common.clock import ClockWatch
from agent.config.loader import GatewayConfig
from agent.north.mqtt.schema import (
    encode,
    envelope,
    events_body,
    meta_body,
    now_ms,
    readings_body,
    status_body,
    topic,
)
from agent.pipeline.store import AsyncStore, DrainRequest

log = logging.getLogger("hazgate.uplink")

WINDOW = 16  # messages in flight; paho scans its in-flight list on each ack, so keep it small
BACKLOG_BATCH = 2000  # readings per back-fill message
BACKLOG_INFLIGHT_BYTES = 600_000  # about two back-fill messages on the wire at once
DRAIN_BUDGET = 8000  # readings numbered per store call: the store thread's turns stay short for events
BACKOFF_MIN, BACKOFF_MAX = 0.5, 10.0
CONNECT_TIMEOUT = 10.0


class Uplink:
    def __init__(self, cfg: GatewayConfig, store: AsyncStore, started_ms: int,
                 on_state: Callable[[str], None] | None = None):
        self.cfg, self.store, self.started_ms = cfg, store, started_ms
        up = cfg.uplink
        self.topics = {k: topic(up.topic_prefix, cfg.enterprise_code, cfg.gateway_id, k)
                       for k in ("readings", "events", "meta", "status")}
        self.wake = asyncio.Event()  # something to publish (an ack freed the window, a message waits)
        self._events_waiting = False  # events stored: the next store call goes before the writer's
        self.state = "starting"  # so a broker unreachable from the start is logged as down
        self.on_state = on_state
        self._store_warned = False
        # While the store refuses writes, live readings held in memory go out directly, numbered
        # by the store's synced mark; such messages stay here until acknowledged.
        self.take_held: Callable[[int], list[tuple]] | None = None
        self.give_back: Callable[[list[tuple]], None] | None = None
        self._mem_msgs: dict[int, bytes] = {}
        self._next_memory = 0.0
        self.clock: ClockWatch | None = None  # its state goes into the status message
        self.initial_backlog: int | None = None  # last reading id when this process opened the store
        self.published = 0
        self.acked = 0
        self.reconnects = 0
        self.beat = time.monotonic()  # each turn of the connect and publish loops (the watchdog's view)
        self._client: mqtt.Client | None = None
        self._acks: list[int] = []
        self._in_flight: dict[int, tuple[int, int]] = {}  # paho mid -> (seq, payload bytes)
        self._lock = threading.Lock()
        self._connected = asyncio.Event()
        self._lost = asyncio.Event()
        self._connect_rc: str = ""
        self._watermark = 0
        self._sent_upto = 0
        self._next_live = 0.0

    # --- payload builders (run on the store thread) -------------------------------------
    def _env(self, seq: int) -> dict:
        return envelope(self.cfg.gateway_id, self.cfg.enterprise_code, seq, now_ms())

    def build_readings(self, backfill: bool):
        return lambda seq, rows: encode(readings_body(self._env(seq), rows, backfill))

    def build_events(self, seq: int, rows: list) -> bytes:
        return encode(events_body(self._env(seq), rows))

    def build_meta(self, seq: int, _rows: list) -> bytes:
        # point by point into one buffer: the descriptions of 10 000 points never exist as
        # objects at once (a 12 MB peak of small objects whose pages RSS kept)
        points = bytearray()
        for p in self.cfg.all_points():
            points += b"," if points else b"["
            points += orjson.dumps(p.metadata())
        points += b"]" if points else b"[]"
        return encode(meta_body(self._env(seq), orjson.Fragment(bytes(points))))

    def _status(self, state: str) -> bytes:
        clock = self.clock.describe() if self.clock is not None else None
        return encode(status_body(self.cfg.gateway_id, self.cfg.enterprise_code, state, __version__,
                                  self.started_ms, clock))

    def reconfigure(self, cfg: GatewayConfig) -> None:
        """A reloaded config (SIGHUP): batch size, publish interval and meta apply at once; a new
        broker address, TLS file, credential or keepalive on a new connection, started here.
        Messages in flight stay in the store and go out again on it with their seq."""
        old, self.cfg = self.cfg.uplink, cfg
        new = cfg.uplink
        fields = ("broker", "ca_file", "cert_file", "key_file", "username", "password_file", "keepalive")
        if any(getattr(old, f) != getattr(new, f) for f in fields):
            log.info("uplink settings changed: connecting again", extra={"fields": {"broker": new.broker}})
            self._lost.set()

    def events_stored(self) -> None:
        """Events are in the store: publish them now."""
        self._events_waiting = True
        self.wake.set()

    def restate_status(self) -> None:
        """Publish the retained `online` status again (its clock state changed)."""
        client = self._client
        if client is not None and self.state == "up":
            self._publish(client, None, "status", self._status("online"), True)

    # --- connection ---------------------------------------------------------------------
    def _set_state(self, state: str, reason: str = "") -> None:
        if state == self.state:
            return
        self.state = state
        if state == "up":
            log.info("uplink up", extra={"fields": {"broker": self.cfg.uplink.broker}})
        else:
            log.warning("uplink down", extra={"fields": {"broker": self.cfg.uplink.broker, "reason": reason}})
        if self.on_state:
            self.on_state(state)

    def _new_client(self, loop: asyncio.AbstractEventLoop) -> mqtt.Client:
        up = self.cfg.uplink
        client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2, client_id=self.cfg.gateway_id,
            clean_session=True, protocol=mqtt.MQTTv311,
        )
        client.max_inflight_messages_set(WINDOW)
        client.will_set(self.topics["status"], self._status("offline"), qos=1, retain=True)
        if up.tls:
            client.tls_set(
                ca_certs=str(up.ca_file) if up.ca_file else None,
                certfile=str(up.cert_file) if up.cert_file else None,
                keyfile=str(up.key_file) if up.key_file else None,
                tls_version=ssl.PROTOCOL_TLS_CLIENT,
            )
        if up.username:
            password = up.password_file.read_text().strip() if up.password_file else None
            client.username_pw_set(up.username, password)

        def on_connect(_c, _u, _flags, rc, _props):
            self._connect_rc = str(rc)
            if not rc.is_failure:
                loop.call_soon_threadsafe(self._connected.set)

        def on_disconnect(_c, _u, _flags, rc, _props):
            loop.call_soon_threadsafe(self._lost.set)

        def on_publish(_c, _u, mid, _rc, _props):
            loop.call_soon_threadsafe(self._on_ack, mid)

        client.on_connect, client.on_disconnect, client.on_publish = on_connect, on_disconnect, on_publish
        return client

    def _on_ack(self, mid: int) -> None:
        sent = self._in_flight.pop(mid, None)
        if sent is not None:
            self._acks.append(sent[0])
            self.acked += 1
            self.wake.set()

    async def _connect(self) -> mqtt.Client:
        """Connect with exponential back-off; returns a client whose CONNACK arrived."""
        loop = asyncio.get_running_loop()
        delay = BACKOFF_MIN
        while True:
            self.beat = time.monotonic()
            up = self.cfg.uplink  # a reload may have changed it
            self._connected.clear()
            self._lost.clear()
            client = self._new_client(loop)
            reason = ""
            try:
                await loop.run_in_executor(None, client.connect, up.host, up.port, int(up.keepalive))
                client.loop_start()
                await asyncio.wait_for(self._connected.wait(), CONNECT_TIMEOUT)
                return client
            except (OSError, ssl.SSLError, TimeoutError, mqtt.WebsocketConnectionError) as exc:
                reason = self._connect_rc or str(exc) or type(exc).__name__
            self._teardown(client)
            self._set_state("down", reason)
            log.debug("connect failed", extra={"fields": {"reason": reason, "retry_in": delay}})
            await asyncio.sleep(delay)
            delay = min(BACKOFF_MAX, delay * 2)

    def _teardown(self, client: mqtt.Client) -> None:
        client.loop_stop()
        client.disconnect()
        client.loop_stop()

    # --- publishing ---------------------------------------------------------------------
    def _publish(self, client: mqtt.Client, seq: int | None, kind: str, payload: bytes, retain: bool) -> bool:
        with self._lock:
            info = client.publish(self.topics[kind], payload, qos=1, retain=retain)
            if info.rc != mqtt.MQTT_ERR_SUCCESS:
                log.debug("publish refused", extra={"fields": {"rc": mqtt.error_string(info.rc), "seq": seq}})
                return False
            if seq is not None:
                self._in_flight[info.mid] = (seq, len(payload))
        self.published += 1
        return True

    async def run(self) -> None:
        """Forever: connect, drain, and on loss start again. Cancel to stop."""
        await self.store.ready.wait()
        while True:
            client = await self._connect()
            self._client = client
            if self.state == "down" and self.published:
                self.reconnects += 1
            try:
                await self._session(client)
            except Exception:  # a bug must not end the uplink: log it, reconnect
                log.exception("uplink session failed")
                await asyncio.sleep(BACKOFF_MIN)
            finally:
                self._client = None
                self._in_flight.clear()
                if self._acks:  # delivered: record it, so they are not sent again
                    with contextlib.suppress(sqlite3.Error):
                        await self.store.call("ack", self._acks)
                    self._acks = []
                await asyncio.get_running_loop().run_in_executor(None, self._teardown, client)
            self._set_state("down", "connection lost")

    async def stop(self, grace: float = 2.0) -> None:
        """Clean shutdown: let in-flight messages be acknowledged, then publish `offline`."""
        client = self._client
        if client is None or self.state != "up":
            return
        deadline = time.monotonic() + grace
        while self._in_flight and not self._lost.is_set() and time.monotonic() < deadline:
            self.wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.wake.wait(), deadline - time.monotonic())
        if self._acks:
            with contextlib.suppress(sqlite3.Error):
                await self.store.call("ack", self._acks)
            self._acks = []
        info = client.publish(self.topics["status"], self._status("offline"), qos=1, retain=True)
        with contextlib.suppress(RuntimeError, ValueError):  # not sent: the will says offline
            await asyncio.get_running_loop().run_in_executor(None, info.wait_for_publish, grace)

    async def _session(self, client: mqtt.Client) -> None:
        self._publish(client, None, "status", self._status("online"), True)
        await self._mark_backlog()
        self._set_state("up")
        self._sent_upto = 0  # highest outbox seq handed to this client
        self._next_live = time.monotonic()
        with contextlib.suppress(sqlite3.Error):  # a store refusing writes restates it next time
            await self.store.call("enqueue", "meta", True, self.build_meta)  # retained: restate it
        for seq in sorted(self._mem_msgs):  # sent from memory before the drop, not acknowledged
            if not self._publish(client, seq, "readings", self._mem_msgs[seq], False):
                return
        while not self._lost.is_set():
            self.beat = time.monotonic()
            self.wake.clear()  # before the round: an ack arriving during it still wakes us
            try:
                if await self._round(client):
                    continue
            except (sqlite3.Error, OSError) as exc:  # disk full or read-only: keep the link
                if not self._store_warned:
                    log.warning("store refuses writes: sending live readings from memory",
                                extra={"fields": {"error": str(exc)}})
                    self._store_warned = True
                if await self._round_from_memory(client):
                    continue
                await asyncio.sleep(min(1.0, max(0.05, self._next_memory - time.monotonic())))
                continue
            if self._store_warned:  # writable again: what it holds now was collected while stuck
                self._store_warned = False
                await self._mark_backlog()
            timeout = max(0.001, self._next_live - time.monotonic())
            lost = asyncio.ensure_future(self._lost.wait())
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
        if self.state == "starting" and self.initial_backlog is not None:
            self._watermark = self.initial_backlog
            return
        try:
            self._watermark = await self.store.call("last_reading_id")
        except sqlite3.Error:
            self._watermark = 0

    async def _round_from_memory(self, client: mqtt.Client) -> bool:
        """One batch of held live readings straight to the broker; True if one went out."""
        self._acks = [seq for seq in self._acks if self._mem_msgs.pop(seq, None) is None]
        now = time.monotonic()
        if (self.take_held is None or self.give_back is None or now < self._next_memory
                or len(self._in_flight) >= WINDOW):
            return False
        rows = self.take_held(self.cfg.uplink.batch_size)
        if not rows:
            self._next_memory = now + self.cfg.uplink.publish_interval
            return False
        try:
            seq = await self.store.call("reserve_seq")  # synced before the message exists
        except (sqlite3.Error, OSError):
            self.give_back(rows)  # read-only data dir: nothing can be numbered safely
            self._next_memory = now + self.cfg.uplink.publish_interval
            return False
        payload = self.build_readings(False)(seq, rows)
        self._mem_msgs[seq] = payload
        if not self._publish(client, seq, "readings", payload, False):
            self._lost.set()
            return False
        return True

    async def _round(self, client: mqtt.Client) -> bool:
        """One drain step, one store call; True if it published something (call again at once)."""
        if self._mem_msgs:  # acknowledged messages sent from memory leave memory, not the store
            self._acks = [seq for seq in self._acks if self._mem_msgs.pop(seq, None) is None]
        room = WINDOW - len(self._in_flight)
        if room <= 0 and not self._acks:
            return False
        now = time.monotonic()
        live_due = now >= self._next_live  # once per publish interval, sooner while full batches wait
        # an event published now waits on the connection behind every byte in flight: back-fill
        # only while little is (a full window of back-fill is ~4 MB, ~40 ms on loopback)
        backlog_ok = bool(self._watermark) and sum(n for _, n in self._in_flight.values()) < BACKLOG_INFLIGHT_BYTES
        acks, self._acks = self._acks, []
        req = DrainRequest(
            acks, self._sent_upto, max(0, room), self.build_events,
            self.build_readings(False) if live_due else None, self.cfg.uplink.batch_size,
            self._watermark, self.build_readings(True) if backlog_ok else None, BACKLOG_BATCH, DRAIN_BUDGET)
        urgent, self._events_waiting = self._events_waiting, False
        try:
            res = await (self.store.call_urgent if urgent else self.store.call)("drain", req)
        except BaseException:
            self._acks = acks + self._acks  # recorded on a later call (a repeat deletes nothing)
            raise
        if res.error is not None:  # delivered all the same: record later, keep draining
            self._acks = acks + self._acks
        if live_due and res.live_short:
            self._next_live = now + self.cfg.uplink.publish_interval
        if res.backlog_done:
            self._watermark = 0
        for seq, kind, retain, payload in res.messages:  # re-sends keep their seq and content
            if not self._publish(client, seq, kind, payload, retain):
                self._lost.set()
                return False
            self._sent_upto = seq
        if res.messages:
            return True
        if res.error is not None:  # nothing new can be numbered while the store refuses writes
            raise res.error
        return False
