"""One paho wrapper for every MQTT user of the house (the uplink, the reference receiver, the
live view): paho's callbacks are bound once, inside this class, and handed on as calls of an
`Events` object, on the caller's event loop when one is given (paho calls them on its thread)."""

from __future__ import annotations

import contextlib
import socket
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt

MQTTMessage = mqtt.MQTTMessage
SUCCESS = mqtt.MQTT_ERR_SUCCESS
CONNECT_ERRORS = (OSError, ssl.SSLError, TimeoutError, mqtt.WebsocketConnectionError)


@dataclass(frozen=True)
class MqttOptions:
    host: str
    port: int
    client_id: str
    tls: bool = False
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    username: str | None = None
    password: str | None = None
    keepalive: int = 30
    clean_session: bool = True
    manual_ack: bool = False  # QoS 1 messages are acknowledged by `ack`, once handled
    will: tuple[str, bytes, bool] | None = None  # topic, payload, retain (QoS 1)
    max_inflight: int = 20
    reconnect: tuple[float, float] | None = None  # paho reconnects by itself, (min, max) delay


class Events:
    """What a session reports; override what you need (called on the caller's loop or thread)."""

    def connected(self, session_present: bool) -> None: ...

    def refused(self, reason: str) -> None: ...

    def lost(self, reason: str) -> None: ...

    def unreachable(self) -> None: ...

    def acked(self, mid: int) -> None: ...

    def subscribed(self, ok: bool) -> None: ...

    def message(self, msg: MQTTMessage) -> None: ...


def _direct(fn: Callable[..., Any], *args: Any) -> None:
    fn(*args)


class MqttSession:
    """One paho client. `call` runs each event (asyncio: `loop.call_soon_threadsafe`)."""

    def __init__(self, opts: MqttOptions, events: Events, call: Callable[..., Any] = _direct):
        self.opts = opts
        self._abandoned = False  # set by abandon(): no event is handed on after it
        c = self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=opts.client_id,
                                      clean_session=opts.clean_session, protocol=mqtt.MQTTv311,
                                      manual_ack=opts.manual_ack)
        c.max_inflight_messages_set(opts.max_inflight)
        if opts.will is not None:
            topic, payload, retain = opts.will
            c.will_set(topic, payload, qos=1, retain=retain)
        if opts.tls:
            c.tls_set(ca_certs=str(opts.ca_file) if opts.ca_file else None,
                      certfile=str(opts.cert_file) if opts.cert_file else None,
                      keyfile=str(opts.key_file) if opts.key_file else None,
                      tls_version=ssl.PROTOCOL_TLS_CLIENT)
        if opts.username:
            c.username_pw_set(opts.username, opts.password)
        if opts.reconnect is not None:
            c.reconnect_delay_set(*opts.reconnect)
        given = call

        def call(fn: Callable[..., Any], *args: Any) -> None:
            if not self._abandoned:
                given(fn, *args)

        def on_connect(_c: Any, _u: Any, flags: Any, rc: Any, _p: Any) -> None:
            if rc.is_failure:
                call(events.refused, str(rc))
            else:
                call(events.connected, bool(flags.session_present))

        def on_disconnect(_c: Any, _u: Any, _flags: Any, rc: Any, _p: Any) -> None:
            call(events.lost, str(rc))

        def on_publish(_c: Any, _u: Any, mid: int, _rc: Any, _p: Any) -> None:
            call(events.acked, mid)

        def on_subscribe(_c: Any, _u: Any, _mid: int, codes: list, _p: Any) -> None:
            call(events.subscribed, not any(rc.is_failure for rc in codes))

        def on_message(_c: Any, _u: Any, msg: MQTTMessage) -> None:
            call(events.message, msg)

        def on_connect_fail(_c: Any, _u: Any) -> None:
            call(events.unreachable)

        c.on_connect, c.on_disconnect, c.on_publish = on_connect, on_disconnect, on_publish
        c.on_subscribe, c.on_message, c.on_connect_fail = on_subscribe, on_message, on_connect_fail

    def connect(self) -> None:
        """Blocking TCP (and TLS) connect, then paho's network thread; CONNACK comes as an event.
        Raises one of CONNECT_ERRORS."""
        self.client.connect(self.opts.host, self.opts.port, self.opts.keepalive)
        self.client.loop_start()

    def start(self) -> None:
        """Connect in the background; paho retries by itself (`reconnect` delays)."""
        self.client.connect_async(self.opts.host, self.opts.port, keepalive=self.opts.keepalive)
        self.client.loop_start()

    def publish(self, topic: str, payload: bytes, retain: bool) -> int | None:
        """QoS 1; the message id, or None when paho refused it (not connected)."""
        info = self.client.publish(topic, payload, qos=1, retain=retain)
        return info.mid if info.rc == SUCCESS else None

    def publish_and_wait(self, topic: str, payload: bytes, retain: bool, timeout: float) -> None:
        """Blocking: publish and wait up to `timeout` for the acknowledgement (a last word)."""
        info = self.client.publish(topic, payload, qos=1, retain=retain)
        with contextlib.suppress(RuntimeError, ValueError):  # not sent: the will says it
            info.wait_for_publish(timeout)

    def subscribe(self, topics: list[tuple[str, int]]) -> None:
        self.client.subscribe(topics)

    def ack(self, mid: int, qos: int) -> None:
        self.client.ack(mid, qos)

    def close(self) -> None:
        """Disconnect (a persistent session stays at the broker) and stop paho's thread."""
        with contextlib.suppress(Exception):
            self.client.disconnect()
        self.client.loop_stop()

    def abandon(self) -> None:
        """Drop the connection at once and stop paho's thread; no event of this client is handed
        on from now (a lost connection's client is never used again).

        The socket is shut first: paho 2.2's network thread does not end while a QoS 1 message
        waits for its PUBACK on a live connection, so `loop_stop` alone would wait for as long as
        a broker withholds one."""
        self._abandoned = True
        sock = self.client.socket()
        if isinstance(sock, socket.socket):
            with contextlib.suppress(OSError):  # already closed by paho
                socket.socket.shutdown(sock, socket.SHUT_RDWR)  # the TCP socket under any TLS
        self.client.loop_stop()
        with contextlib.suppress(Exception):
            self.client.disconnect()
