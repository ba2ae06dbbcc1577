"""The MQTT uplink (`[uplink]`): `hazgate.uplink/1` over MQTT, QoS 1, to the platform's broker.

The drain loop is agent/north/drain.py; this module brings the connection (paho through
agent/north/mqtt/client.py, a fresh client per connection), the topics, the retained `status`
with its last will, and the message bodies (agent/north/mqtt/schema.py).
"""

from __future__ import annotations

import asyncio
import hashlib
import threading
from collections.abc import Callable
from pathlib import Path

import orjson

from agent.common.secrets import read_secret
from agent.common.timefmt import now_ms
from agent.north.base import ConnectFailed, Probe, UplinkContext, failed_step, why
from agent.north.drain import Drain, DrainSettings
from agent.north.mqtt.client import CONNECT_ERRORS, Events, MqttOptions, MqttSession
from agent.north.mqtt.schema import (
    SCHEMA,
    SHARED_READINGS,
    encode,
    envelope,
    events_body,
    meta_body,
    readings_message,
    status_body,
    topic,
)
from agent.north.mqtt.spec import MqttSpec, MqttUplinkSpec, without_credentials
from agent.north.templated import TemplatedBody
from agent.pipeline.store import Builder

WINDOW = 16  # messages in flight; paho scans its in-flight list on each ack, so keep it small
ACK_KEEPALIVES = 3  # keepalives a PUBACK may take before the connection is dropped and sent again
CONNECT_TIMEOUT = 10.0
CONNECTING_EXTRA = 30.0  # on top of keepalive while connecting (connect + CONNACK + back-off)
KINDS = ("readings", "events", "meta", "status")
PROBE_SUFFIX = "-check"  # a probe's client id: the gateway's and this


class Uplink1Body:
    """`hazgate.uplink/1` bodies (docs/uplink.md); the builders run on the store thread."""

    def __init__(self, ctx: UplinkContext):
        self.ctx = ctx
        self.meta: Builder | None = self.build_meta
        self.events: Builder | None = self.build_events
        SHARED_READINGS.join(self)  # a second such uplink reuses this one's encodings

    def _env(self, seq: int) -> dict:
        return envelope(self.ctx.gateway, self.ctx.enterprise, seq, now_ms())

    def readings(self, backfill: bool) -> Builder:
        return lambda seq, rows: readings_message(self._env(seq), rows, backfill)

    def build_events(self, seq: int, rows: list) -> bytes:
        return encode(events_body(self._env(seq), rows))

    def meta_digest(self) -> bytes:
        """SHA-256 of the schema, the gateway and every point's description, as `meta` says them."""
        h = hashlib.sha256(f"{SCHEMA}\n{self.ctx.gateway}\n{self.ctx.enterprise}".encode())
        for p in self.ctx.points():
            h.update(b"\n" + orjson.dumps(p.metadata()))
        return h.digest()

    def build_meta(self, seq: int, _rows: list) -> bytes:
        # point by point into one buffer: the descriptions of 10 000 points never exist as
        # objects at once (a 12 MB peak of small objects whose pages RSS kept)
        points = bytearray()
        for p in self.ctx.points():
            points += b"," if points else b"["
            points += orjson.dumps(p.metadata())
        points += b"]" if points else b"[]"
        return encode(meta_body(self._env(seq), orjson.Fragment(bytes(points))))

    def status(self, state: str) -> bytes:
        ctx = self.ctx
        return encode(status_body(ctx.gateway, ctx.enterprise, state, ctx.version, ctx.started_ms,
                                  ctx.clock.describe(), ctx.uplinks() if state == "online" else None))


class _LinkEvents(Events):
    def __init__(self, link: MqttLink):
        self.link = link

    def connected(self, session_present: bool) -> None:
        self.link.connected.set()

    def refused(self, reason: str) -> None:
        self.link.refusal = reason

    def lost(self, reason: str) -> None:
        self.link.lost.set()

    def acked(self, mid: int) -> None:
        seq = self.link.seq_of.pop(mid, None)
        if seq is not None:
            self.link.on_ack(seq)


class MqttLink:
    """One paho connection: message ids mapped back to the seq of the message they carried."""

    def __init__(self, opts: MqttOptions, topics: dict[str, str], body: Uplink1Body,
                 on_ack: Callable[[int], None], loop: asyncio.AbstractEventLoop, farewell: bool = True):
        self.topics, self.body, self.on_ack = topics, body, on_ack
        self.farewell = farewell  # close() publishes the retained `offline` status
        self.lost = asyncio.Event()
        self.connected = asyncio.Event()
        self.refusal = ""
        self.reason = ""  # MQTT refuses no single message: a refused connection says why at connect
        self.seq_of: dict[int, int] = {}  # paho mid -> seq
        self._lock = threading.Lock()  # a PUBACK may come before publish() returns its mid
        self.session = MqttSession(opts, _LinkEvents(self), loop.call_soon_threadsafe)

    def _publish(self, kind: str, payload: bytes, retain: bool, seq: int | None) -> bool:
        with self._lock:
            mid = self.session.publish(self.topics[kind], payload, retain)
            if mid is not None and seq is not None:
                self.seq_of[mid] = seq
        return mid is not None

    def send(self, seq: int, kind: str, payload: bytes, retain: bool) -> bool:
        return self._publish(kind, payload, retain, seq)

    def opened(self) -> None:
        self._publish("status", self.body.status("online"), True, None)

    def restate_status(self) -> None:
        self._publish("status", self.body.status("online"), True, None)

    async def answered(self) -> None:
        """Until the broker accepted the connection (CONNACK) or it ended."""
        waits = [asyncio.ensure_future(self.connected.wait()), asyncio.ensure_future(self.lost.wait())]
        try:
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for w in waits:
                w.cancel()

    async def close(self, grace: float) -> None:
        loop = asyncio.get_running_loop()
        if not self.farewell:
            await loop.run_in_executor(None, self.session.close)
            return
        payload = self.body.status("offline")
        await loop.run_in_executor(None, self.session.publish_and_wait, self.topics["status"], payload, True, grace)

    def abandon(self) -> None:
        self.session.abandon()


def password(path: Path) -> str:
    """The broker password from its file (never logged); ConnectFailed saying why it cannot be read."""
    try:
        return read_secret(path).strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConnectFailed(f"cannot read the password file {path}: {why(exc)}; restore it "
                            f"(readable only by the agent: chmod 600)", "file") from None


class MqttConnector:
    """Connections to the broker. A probe's (`hazgate uplink check`) has a client id of its
    own, so that it never takes the running agent's session over, and no last will."""

    def __init__(self, spec: MqttSpec, ctx: UplinkContext, body: Uplink1Body, topics: dict[str, str],
                 probe: bool = False):
        self.spec, self.ctx, self.body, self.topics, self.probe = spec, ctx, body, topics, probe
        # the broker (never a credential) and the topics under it: what one acknowledged there
        # another broker has not had
        root = topics["status"].rpartition("/")[0]
        self.describe = f"{without_credentials(spec.broker).rstrip('/')}/{root}"
        self.connect_allowance = spec.keepalive + CONNECTING_EXTRA

    def _options(self) -> MqttOptions:
        """The session's options, the password read now; ConnectFailed when it cannot be."""
        s = self.spec
        return MqttOptions(
            host=s.host, port=s.port, client_id=self.ctx.gateway + (PROBE_SUFFIX if self.probe else ""),
            tls=s.tls, ca_file=s.ca_file, cert_file=s.cert_file, key_file=s.key_file, username=s.username,
            password=password(s.password_file) if s.username and s.password_file else None,
            keepalive=int(s.keepalive),
            will=None if self.probe else (self.topics["status"], self.body.status("offline"), True),
            max_inflight=WINDOW)

    async def connect(self, on_ack: Callable[[int], None], on_reject: Callable[[int, str], None]) -> MqttLink:
        """A connected link; ConnectFailed (retried with back-off) when the broker cannot be
        reached or refuses us, and when a file read at connect (the password, a TLS file) is
        gone or unreadable: restoring it is enough, the uplink keeps trying."""
        # MQTT has no refusal of one message: PUBACK or nothing
        loop = asyncio.get_running_loop()
        try:
            link = MqttLink(self._options(), self.topics, self.body, on_ack, loop, farewell=not self.probe)
        except CONNECT_ERRORS as exc:  # paho's TLS set-up reads the CA, certificate and key files
            raise ConnectFailed(f"TLS files (ca_file, cert_file, key_file): {why(exc)}", "file") from None
        try:
            await loop.run_in_executor(None, link.session.connect)
            async with asyncio.timeout(CONNECT_TIMEOUT):
                await link.answered()
            if link.connected.is_set():
                return link
            step = "login" if link.refusal else "closed"
            reason = link.refusal or "the broker closed the connection before accepting it"
        except CONNECT_ERRORS as exc:
            step, reason = failed_step(exc), link.refusal or str(exc) or type(exc).__name__
        await loop.run_in_executor(None, link.abandon)
        raise ConnectFailed(reason, "login" if link.refusal else step)


class MqttUplink:
    """An MQTT uplink: the drain loop with an MQTT connector, and `hazgate.uplink/1` bodies on
    its topics or, given a template, the templated body on the uplink's own topic. The retained
    `status` with its last will goes on the standard topic either way."""

    def __init__(self, listed: MqttUplinkSpec, ctx: UplinkContext):
        self.listed, self.spec, self.name, self.ctx = listed, listed.mqtt, listed.name, ctx
        self.status_body = Uplink1Body(ctx)
        self.body = TemplatedBody(ctx, listed.body, ctx.timezone) if listed.body else self.status_body
        self.carries_events = self.body.events is not None
        self.drain = Drain(self.name, ctx, self._settings(self.spec), self.body, self._connector(self.spec))
        self.stats = self.drain.stats

    def _topics(self, spec: MqttSpec) -> dict[str, str]:
        ctx, listed = self.ctx, self.listed
        topics = {k: topic(spec.topic_prefix, ctx.enterprise, ctx.gateway, k) for k in KINDS}
        if listed.topic is not None:  # templated: the platform's topics
            topics.update(readings=listed.topic, events=listed.events_topic or listed.topic,
                          meta=listed.registry_topic or listed.topic)
        return topics

    def _connector(self, spec: MqttSpec) -> MqttConnector:
        return MqttConnector(spec, self.ctx, self.status_body, self._topics(spec))

    @staticmethod
    def _settings(spec: MqttSpec) -> DrainSettings:
        return DrainSettings(window=WINDOW, batch=spec.batch_size, interval=spec.publish_interval,
                             ack_warning=spec.keepalive, ack_deadline=ACK_KEEPALIVES * spec.keepalive)

    async def run(self) -> None:
        await self.drain.run()

    async def stop(self, grace: float = 2.0) -> None:
        await self.drain.stop(grace)

    def events_stored(self) -> None:
        self.drain.events_stored()

    async def points_changed(self) -> None:
        """The retained meta (or the registration) describes the new point set: restate it now."""
        if self.body is not self.status_body:
            self.body.points_changed()
        if self.body.meta is not None:  # hazgate.uplink/1's meta, or a point registration
            await self.drain.restate()

    def status_changed(self) -> None:
        """Publish the retained `online` status again: the clock or an uplink changed state."""
        link = self.drain.link
        if isinstance(link, MqttLink):
            link.restate_status()

    def reconfigure(self, listed: MqttUplinkSpec) -> None:
        """A reloaded config (SIGHUP): batch size, publish interval and the acknowledgement
        deadline apply at once; a new broker address, TLS file, credential or keepalive on a new
        connection."""
        old, self.listed, self.spec = self.spec, listed, listed.mqtt
        if listed.body is not None and isinstance(self.body, TemplatedBody):
            self.body.reconfigure(listed.body, self.ctx.timezone)
        fields = ("broker", "ca_file", "cert_file", "key_file", "username", "password_file", "keepalive")
        changed = any(getattr(old, f) != getattr(self.spec, f) for f in fields)
        self.drain.configure(self._settings(self.spec), self._connector(self.spec) if changed else None)

    def progress_allowance(self) -> float:
        """Seconds its loop may go without coming round, beyond the watchdog's own limit."""
        if self.stats.state == "up":
            return self.spec.publish_interval
        return self.drain.connector.connect_allowance

    def probe(self) -> Probe:
        """A connection as the uplink makes one, accepted only with the login and client
        certificate the broker wants; nothing published, no will."""
        spec = self.spec
        connector = MqttConnector(spec, self.ctx, self.status_body, self._topics(spec), probe=True)
        what = ["user " + spec.username] if spec.username else []
        what += ["client certificate"] if spec.cert_file else []
        return Probe(connector, spec.host, spec.port, spec.tls,
                     " and ".join(what) if what else "anonymous access")
