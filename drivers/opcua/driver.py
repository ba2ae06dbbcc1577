"""OPC UA driver (asyncua client), strictly read-only.

Two modes per device:

- `poll`: every poll is one batched Read service call (in chunks of READ_CHUNK nodes);
- `subscribe` (default): one subscription with a data-change monitored item per point
  (sampling interval, queue size, absolute deadband); every poll hands on what arrived since
  the previous one, and the last value of points that did not change.

The server's status code becomes the quality (Good -> good, Uncertain* -> uncertain, Bad* ->
bad, the status name as the reason). Every sample goes through drivers/plausible.py: a value its
point's type cannot hold is bad, and a source time far ahead of ours or before 2000 is dropped
(the reading keeps the collection time) with the point uncertain. The server's source timestamp
becomes the reading's timestamp when it is a new one for that point. A value seen again is
stamped with the time it was last confirmed: the collection time in poll mode, the server's
latest publish response in subscribe mode (the subscription publishes every half poll interval,
keep-alives included). A source time older than the point's previous reading (a value older
than the session, a server clock behind ours) becomes the collection time too, so each tag's
timestamps only move forward and no reading repeats an earlier one.

A subscription that goes silent (no publish response, not even a keep-alive, for STALL_PERIODS
keep-alive periods) while the session still answers reads would otherwise hand on frozen values
as good: its points become uncertain (last value) with the reason `subscription_stalled`, and
the session is renewed (at once, then with back-off while it keeps stalling).

The driver owns its reconnection: a lost session (socket closed, watchdog probe failed,
subscription ended by the server, two read timeouts in a row) is torn down completely and a
fresh one is opened with back-off (0.5 s doubling to 30 s); the subscription is created anew.
In between every point is `bad` with the reason. Nothing here writes to the server: the only
services used are GetEndpoints, CreateSession/ActivateSession, Read, Browse (hazgate browse),
CreateSubscription/CreateMonitoredItems and Publish.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as dt
import logging
import time
from collections import deque
from collections.abc import Iterable

from asyncua import Client, ua
from asyncua.client.ua_client import UaClientState
from asyncua.common.subscription import (
    DataChangeEvent,
    OverflowPolicy,
    StatusChangeEvent,
    Subscription,
)
from asyncua.crypto.security_policies import SecurityPolicyBasic256Sha256
from cryptography.hazmat.primitives import serialization

from agent.model import BAD, GOOD, UNCERTAIN, Sample
from drivers.base import DeviceError, DeviceSpec
from drivers.opcua.options import (
    UaOptions,
    application_uri,
    load_certificate,
    load_private_key,
    untrusted_reason,
)
from drivers.plausible import checked

log = logging.getLogger("hazgate.opcua")

BACKOFF_MIN, BACKOFF_MAX = 0.5, 30.0
READ_CHUNK = 500  # nodes per Read request (servers limit MaxNodesPerRead; 500 is widely accepted)
ITEMS_CHUNK = 1000  # monitored items per CreateMonitoredItems request
PENDING_MAX = 64  # values kept per point between two polls in subscribe mode
PUBLISH_MIN_MS = 50.0
SESSION_TIMEOUT_MS = 60_000  # the server drops our session (and subscription) a minute after we vanish
DISCONNECT_TIMEOUT = 2.0
TIMEOUTS_BEFORE_DROP = 2
# A server answers a queued Publish request at least once per keep-alive period (revised
# publishing interval x revised max keep-alive count; we ask for a count of 1, so half a poll
# interval), with data or a keep-alive. One late answer can be load or the network; none for 3
# periods means its publishing has stopped. Never under 1 s, so scheduling jitter on a busy
# gateway is not taken for a stall (asyncua's own check uses 1.5 periods, also at least 1 s).
STALL_PERIODS = 3
STALL_MIN = 1.0
POLICIES = {"Basic256Sha256": SecurityPolicyBasic256Sha256}
LOGIN_CODES = {"BadIdentityTokenInvalid", "BadIdentityTokenRejected", "BadUserAccessDenied"}
CERT_CODES = {"BadCertificateUntrusted", "BadSecurityChecksFailed", "BadCertificateInvalid",
              "BadCertificateUseNotAllowed", "BadCertificateIssuerUseNotAllowed", "BadCertificateRevoked"}
REFUSALS = LOGIN_CODES | CERT_CODES | {"BadCertificateUriInvalid"}  # retrying cannot help `hazgate read`


class PermanentError(DeviceError):
    """A setting is wrong (trust, endpoint offered, password file): retrying cannot help."""


class RequestCount:
    """What `hazgate read` prints as the number of requests (Read service calls)."""

    requests = 0


def quality_of(status: ua.StatusCode | None) -> tuple[str, str | None]:
    if status is None or status.is_good():
        return GOOD, None
    return (UNCERTAIN if status.is_uncertain() else BAD), f"opc ua {status.name}"


def convert(ptype: str, value: object) -> float | int | bool:
    """The raw value of a point from an OPC UA variant value; ValueError names what came.

    A bool point takes a Boolean, or 0 and 1; any other number is passed on as it is, for
    drivers/plausible.py to refuse."""
    if ptype == "bool":
        if isinstance(value, bool):
            return value
        if isinstance(value, int | float):
            return bool(value) if value in (0, 1) else value
    elif isinstance(value, bool):
        return int(value)
    elif isinstance(value, int | float):
        return value
    shown = "null" if value is None else f"{type(value).__name__} {str(value)[:40]!r}"
    raise ValueError(f"the server sent {shown}, not a {'boolean' if ptype == 'bool' else 'number'}; "
                     "check the type column and the NodeId")


def epoch(t: dt.datetime | None) -> float | None:
    if t is None:
        return None
    if t.tzinfo is None:
        t = t.replace(tzinfo=dt.UTC)
    return t.timestamp()


def status_reason(exc: ua.UaStatusCodeError, cert: str | None, user: str | None) -> str:
    name = ua.StatusCode(exc.code).name
    if name in LOGIN_CODES:
        return f"the server refused the login of user {user!r} ({name}); check username and password_file"
    if name in CERT_CODES:
        return (f"the server refused the gateway certificate {cert} ({name}); "
                "valid: add that certificate to the server's trusted clients")
    if name == "BadCertificateUriInvalid":
        return f"the server refused the application URI of the gateway ({name}); check application_uri"
    return f"the server refused the session: {name}"


def _first_cert(der: bytes) -> bytes:
    """The leading certificate of a DER blob that may carry its chain after it."""
    if len(der) > 4 and der[1] == 0x82:
        return der[: int.from_bytes(der[2:4], "big") + 4]
    return der


def chunks(items: list[int], size: int) -> Iterable[list[int]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


class OpcUaDriver:
    def __init__(self, device: DeviceSpec):
        self.device = device
        self.opts: UaOptions = device.options
        self.points = device.points
        self.reader = RequestCount()
        n = len(self.points)
        self._client: Client | None = None
        self._nodes: list[ua.NodeId | None] = [None] * n
        self._unresolved: dict[int, str] = {}
        self._lost: str | None = None
        self._last_error = "not connected yet"
        self._logged_error: str | None = None
        self._backoff = 0.0
        self._retry_at = 0.0
        self._timeouts = 0
        # subscribe mode: what arrived since the last poll, and the last value of each point
        self._sub: Subscription | None = None
        self._stall_after = STALL_MIN  # seconds of silence that make the subscription stalled
        self._stalls = 0  # renewals for a stall since the last publish response
        self._consumer: asyncio.Task | None = None
        self._pending: list[deque] = [deque(maxlen=PENDING_MAX) for _ in range(n)]
        self._latest: list[ua.DataValue | None] = [None] * n
        # timestamps: last ts handed on per point, last source timestamp seen per point
        self._last_ts = [0.0] * n
        self._seen_src: list[float | None] = [None] * n
        self._confirmed = 0.0
        self.notifications = 0
        self.connects = 0

    # --- interface -------------------------------------------------------------------
    @property
    def connected(self) -> bool:
        c = self._client
        return c is not None and self._lost is None and c.state is UaClientState.CONNECTED

    def describe(self) -> str:
        return f"OPC UA {self.opts.endpoint} ({self.opts.mode}, security {self.opts.security}, timeout {self.device.timeout:g}s)"

    async def connect(self, attempts: int = 3) -> None:
        """Connect now, retrying with back-off; DeviceError says what was tried and why it failed."""
        for attempt in range(attempts):
            try:
                await self._connect_once()
                return
            except PermanentError as exc:
                raise DeviceError(f"{self.describe()}: {exc}") from None
            except DeviceError:
                if attempt + 1 < attempts:
                    await asyncio.sleep(BACKOFF_MIN * 2**attempt)
        raise DeviceError(f"{self.describe()}: no session after {attempts} attempts ({self._last_error})")

    async def read(self) -> list[Sample]:
        now = time.time()
        try:
            if not await self._ensure_connected():
                return self._all_bad(self._last_error)
            if self.opts.mode == "poll":
                return await self._poll(now)
            return await self._from_subscription(now)
        except asyncio.CancelledError:
            raise
        except (ConnectionError, OSError, ua.UaError) as exc:
            reason = f"connection lost: {self.explain(exc)}"
            await self._drop(reason)
            return self._all_bad(reason)
        except Exception as exc:  # a surprise in the library must not end the device
            log.exception("read failed", extra={"fields": {"device": self.device.name}})
            return self._all_bad(f"internal error: {exc!r}")

    async def close(self) -> None:
        await self._drop("closed")

    async def open_session(self) -> Client:
        """A bare session with this device's endpoint, security and login (for hazgate browse);
        end it with end_session. DeviceError says what was tried and why it failed."""
        try:
            return await self._open()
        except DeviceError as exc:
            raise DeviceError(f"{self.describe()}: {exc}") from None
        except Exception as exc:  # noqa: BLE001 - every failure becomes one readable line
            raise DeviceError(f"{self.describe()}: {self.explain(exc)}") from None

    async def end_session(self, client: Client) -> None:
        await self._dispose(client)

    # --- connection ------------------------------------------------------------------
    async def _ensure_connected(self) -> bool:
        if self._client is not None:
            if self.connected:
                return True
            await self._drop(f"connection lost: {self._lost or 'the session ended'}")
        if time.monotonic() < self._retry_at:
            return False
        try:
            await self._connect_once()
        except DeviceError:
            return False
        return True

    def explain(self, exc: BaseException) -> str:
        if isinstance(exc, ua.UaStatusCodeError):
            return status_reason(exc, str(self.opts.certificate), self.opts.username)
        if isinstance(exc, ConnectionRefusedError):
            return "connection refused"
        if isinstance(exc, TimeoutError):
            return f"no answer within {self.device.timeout:g}s"
        text = str(exc).strip()
        return text or type(exc).__name__

    async def _connect_once(self) -> None:
        """One attempt; on failure schedule the next one and raise DeviceError."""
        client: Client | None = None
        try:
            client = await self._open()
            await self._prepare(client)
        except asyncio.CancelledError:
            await self._abandon(client)
            raise
        except Exception as exc:  # noqa: BLE001 - every failure becomes the reason of the readings
            await self._abandon(client)
            self._last_error = str(exc) if isinstance(exc, DeviceError) else f"connect failed: {self.explain(exc)}"
            self._backoff = min(BACKOFF_MAX, max(BACKOFF_MIN, self._backoff * 2))
            self._retry_at = time.monotonic() + self._backoff
            if self._last_error != self._logged_error:
                self._logged_error = self._last_error
                log.warning("OPC UA connect failed", extra={"fields": {
                    "device": self.device.name, "endpoint": self.opts.endpoint, "reason": self._last_error,
                    "retry_in": f"{self._backoff:g}s"}})
            if isinstance(exc, PermanentError):
                raise
            if isinstance(exc, ua.UaStatusCodeError) and ua.StatusCode(exc.code).name in REFUSALS:
                raise PermanentError(self._last_error) from exc
            raise DeviceError(self._last_error) from exc
        self._client = client
        self._lost = None
        self._backoff = 0.0
        self._timeouts = 0
        self._logged_error = None
        self.connects += 1
        log.info("OPC UA session up", extra={"fields": {
            "device": self.device.name, "endpoint": self.opts.endpoint, "mode": self.opts.mode,
            "security": self.opts.security, "points": len(self.points), "unresolved": len(self._unresolved)}})

    def _password(self) -> str:
        path = self.opts.password_file
        try:
            return path.read_text(encoding="utf-8").rstrip("\r\n")  # type: ignore[union-attr]
        except (OSError, UnicodeDecodeError) as exc:
            raise PermanentError(f"password_file {path}: cannot read it: {exc}") from None

    async def _open(self) -> Client:
        o = self.opts
        watchdog = max(0.5, min(2 * self.device.poll_interval, 5.0))
        client = Client(o.endpoint, timeout=self.device.timeout, watchdog_intervall=watchdog)
        client.application_uri = application_uri(o)
        client.name = client.description = f"hazgate {self.device.name}"
        client.product_uri = "urn:hazgate"
        client.session_timeout = SESSION_TIMEOUT_MS
        if o.username:
            client.set_user(o.username)
            client.set_password(self._password())
        try:
            if o.secure:
                server_der = await self._trusted_server_certificate(client)
                try:
                    cert = load_certificate(o.certificate).public_bytes(serialization.Encoding.DER)  # type: ignore[arg-type]
                    key = load_private_key(o.private_key).private_bytes(  # type: ignore[arg-type]
                        serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
                except (ValueError, OSError) as exc:
                    raise PermanentError(str(exc)) from None
                await client.set_security(POLICIES[o.security_policy], cert, key, server_certificate=server_der,
                                          mode=getattr(ua.MessageSecurityMode, o.security_mode))
            client.connection_lost_callback = self._on_connection_lost
            async with asyncio.timeout(2 * self.device.timeout + 1):
                await client.connect()
        except BaseException:
            await self._dispose(client)
            raise
        return client

    async def _on_connection_lost(self, exc: Exception) -> None:
        self._lost = self._lost or self.explain(exc)

    async def _trusted_server_certificate(self, client: Client) -> bytes:
        """The server's certificate for our policy and mode, checked against server_certificate."""
        o = self.opts
        async with asyncio.timeout(self.device.timeout + 1):
            endpoints = await client.connect_and_get_server_endpoints()
        policy_uri = POLICIES[o.security_policy].URI
        mode = getattr(ua.MessageSecurityMode, o.security_mode)
        match = [ep for ep in endpoints if ep.SecurityPolicyUri == policy_uri and ep.SecurityMode == mode]
        if not match:
            offered = sorted({f"{ep.SecurityPolicyUri.rsplit('#', 1)[-1]}/{ep.SecurityMode.name}" for ep in endpoints})
            raise PermanentError(f"the server offers no {o.security_policy}/{o.security_mode} endpoint; it offers "
                                 f"{', '.join(offered)}; valid: one of those in security_policy/security_mode")
        der = _first_cert(match[0].ServerCertificate or b"")
        if not der:
            raise PermanentError("the server's endpoint carries no certificate")
        reason = untrusted_reason(der, o.server_certificate)  # type: ignore[arg-type]
        if reason:
            raise PermanentError(reason)
        return der

    async def _prepare(self, client: Client) -> None:
        """Resolve NodeIds against the server's namespaces; subscribe; read the starting values."""
        namespaces = await client.get_namespace_array()
        self._unresolved = {}
        for i, p in enumerate(self.points):
            try:
                nid = ua.NodeId.from_string(p.address)
            except Exception as exc:  # noqa: BLE001 - asyncua raises several types for bad text
                self._unresolved[i] = f"bad NodeId {p.address!r}: {exc}"
                continue
            uri = getattr(nid, "NamespaceUri", None)
            if uri:
                if uri not in namespaces:
                    self._unresolved[i] = f"namespace {uri!r} is not on the server (it has {', '.join(namespaces[1:])[:200]})"
                    continue
                nid = ua.NodeId(nid.Identifier, namespaces.index(uri), nid.NodeIdType)
            self._nodes[i] = nid
        started = time.time()
        for i in range(len(self.points)):
            self._last_ts[i] = max(self._last_ts[i], started - self.device.poll_interval)
            self._seen_src[i] = None
            self._pending[i].clear()
            self._latest[i] = None
        if self.opts.mode == "subscribe":
            await self._subscribe(client)
            idxs = [i for i in range(len(self.points)) if i not in self._unresolved]
            read_at = time.time()
            for i, dv in zip(idxs, await self._read_values(client, idxs), strict=True):
                if self._latest[i] is None:
                    self._latest[i] = dv
            self._confirmed = read_at

    async def _subscribe(self, client: Client) -> None:
        o = self.opts
        # a publish (data or keep-alive) every half poll interval: by each poll the server has
        # confirmed recently that nothing else changed, and unchanged values carry that time
        params = ua.CreateSubscriptionParameters()
        params.RequestedPublishingInterval = max(PUBLISH_MIN_MS, self.device.poll_interval * 500)
        params.RequestedMaxKeepAliveCount = 1
        params.RequestedLifetimeCount = 600
        params.MaxNotificationsPerPublish = 0
        params.PublishingEnabled = True
        params.Priority = 0
        sampling_ms = (o.sampling_interval or self.device.poll_interval) * 1000
        # Made here rather than with Client.create_subscription, whose stale-subscription watchdog
        # (asyncua 2.1.0) recreates a silent subscription and resets its last_publish_at: a stalled
        # server would look alive. This driver watches and renews its subscription itself.
        sub = Subscription(client.uaclient.session, params, None,
                           queue_maxsize=max(1000, 4 * len(self.points) * o.queue_size),
                           overflow=OverflowPolicy.DROP_OLDEST)
        self._sub = sub
        revised = await sub.init()
        period = revised.RevisedPublishingInterval / 1000 * max(1, revised.RevisedMaxKeepAliveCount)
        self._stall_after = max(STALL_MIN, STALL_PERIODS * period)
        idxs = [i for i in range(len(self.points)) if i not in self._unresolved]
        for part in chunks(idxs, ITEMS_CHUNK):
            requests = [self._item_request(i, sampling_ms) for i in part]
            results = await sub.create_monitored_items(requests)
            for i, res in zip(part, results, strict=True):
                if isinstance(res, ua.StatusCode):
                    self._unresolved[i] = f"opc ua {res.name} (cannot monitor this node)"
        self._consumer = asyncio.create_task(self._consume(sub), name=f"opcua-subscription:{self.device.name}")

    def _item_request(self, i: int, sampling_ms: float) -> ua.MonitoredItemCreateRequest:
        rv = ua.ReadValueId()
        rv.NodeId = self._nodes[i]
        rv.AttributeId = ua.AttributeIds.Value
        mp = ua.MonitoringParameters()
        mp.ClientHandle = i + 1
        mp.SamplingInterval = sampling_ms
        mp.QueueSize = self.opts.queue_size
        mp.DiscardOldest = True
        if self.opts.deadband > 0 and self.points[i].type != "bool":
            f = ua.DataChangeFilter()
            f.Trigger = ua.DataChangeTrigger.StatusValue
            f.DeadbandType = ua.DeadbandType.Absolute
            f.DeadbandValue = self.opts.deadband
            mp.Filter = f
        mir = ua.MonitoredItemCreateRequest()
        mir.ItemToMonitor = rv
        mir.MonitoringMode = ua.MonitoringMode.Reporting
        mir.RequestedParameters = mp
        return mir

    async def _consume(self, sub) -> None:  # noqa: ANN001 - asyncua Subscription
        try:
            async for ev in sub:
                if isinstance(ev, DataChangeEvent):
                    i = ev.data.monitored_item.ClientHandle - 1
                    if 0 <= i < len(self.points):
                        dv = ev.data.monitored_item.Value
                        self._latest[i] = dv
                        self._pending[i].append(dv)
                        self.notifications += 1
                elif isinstance(ev, StatusChangeEvent):
                    self._lost = self._lost or f"subscription ended by the server ({ev.notification.Status.name})"
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - any failure means: reconnect
            self._lost = self._lost or f"subscription failed: {exc!r}"

    async def _drop(self, reason: str, retry_in: float = 0.0) -> None:
        """Tear the session down completely; a later poll reconnects (`retry_in` s from now, then
        with back-off)."""
        client, self._client = self._client, None
        consumer, self._consumer = self._consumer, None
        self._sub = None
        self._lost = None
        if consumer is not None:
            consumer.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await consumer
        if client is None:
            return
        self._last_error = reason
        if reason != "closed":
            log.warning("OPC UA session lost", extra={"fields": {"device": self.device.name, "reason": reason}})
            self._backoff = 0.0
            self._retry_at = time.monotonic() + retry_in  # one attempt then; back-off from there
        await self._dispose(client)

    async def _abandon(self, client: Client | None) -> None:
        """Undo a connection attempt that failed half-way (the subscription consumer included)."""
        consumer, self._consumer, self._sub = self._consumer, None, None
        if consumer is not None:
            consumer.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await consumer
        if client is not None:
            await self._dispose(client)

    @staticmethod
    async def _dispose(client: Client) -> None:
        try:
            async with asyncio.timeout(DISCONNECT_TIMEOUT):
                await client.disconnect()
        except Exception:  # noqa: BLE001 - the server may already be gone (TimeoutError included)
            pass
        finally:
            with contextlib.suppress(Exception):
                client.disconnect_socket()

    # --- reading ---------------------------------------------------------------------
    def _all_bad(self, reason: str) -> list[Sample]:
        return [Sample(p, None, BAD, reason) for p in self.points]

    async def _read_values(self, client: Client, idxs: list[int]) -> list[ua.DataValue]:
        out: list[ua.DataValue] = []
        for part in chunks(idxs, READ_CHUNK):
            params = ua.ReadParameters()
            params.MaxAge = 0
            params.TimestampsToReturn = ua.TimestampsToReturn.Both
            for i in part:
                rv = ua.ReadValueId()
                rv.NodeId = self._nodes[i]
                rv.AttributeId = ua.AttributeIds.Value
                params.NodesToRead.append(rv)
            self.reader.requests += 1
            out.extend(await client.uaclient.read(params))
        return out

    async def _poll(self, now: float) -> list[Sample]:
        idxs = [i for i in range(len(self.points)) if i not in self._unresolved]
        try:
            values = await self._read_values(self._client, idxs)  # type: ignore[arg-type]
        except TimeoutError:
            self._timeouts += 1
            if self._timeouts >= TIMEOUTS_BEFORE_DROP:
                await self._drop(f"connection lost: {self._timeouts} reads without an answer")
            return self._all_bad("timeout")
        self._timeouts = 0
        by_index = dict(zip(idxs, values, strict=True))
        out = []
        for i, p in enumerate(self.points):
            if i in self._unresolved:
                out.append(Sample(p, None, BAD, self._unresolved[i]))
                continue
            dv = by_index[i]
            src = epoch(dv.SourceTimestamp or dv.ServerTimestamp)
            fresh = src is not None and src != self._seen_src[i]
            self._seen_src[i] = src
            out.append(self._sample(i, dv, now, fresh))
        return out

    def _confirmed_at(self) -> float:
        """Wall-clock time of the server's latest publish response: values are known up to then."""
        mono = getattr(self._sub, "last_publish_at", None)
        if mono is not None:
            self._confirmed = max(self._confirmed, time.time() - (time.monotonic() - mono))
        return self._confirmed

    async def _from_subscription(self, now: float) -> list[Sample]:
        await asyncio.sleep(0)  # let the consumer take in what the latest publish delivered
        confirmed = self._confirmed_at()
        if self._sub is not None and self._sub.last_publish_at is not None:
            self._stalls = 0
        stall = None
        if now - confirmed > self._stall_after:
            stall = (f"subscription_stalled: no publish response or keep-alive from the server for more "
                     f"than {self._stall_after:g} s; renewing the session")
        out = []
        for i, p in enumerate(self.points):
            if i in self._unresolved:
                out.append(Sample(p, None, BAD, self._unresolved[i]))
                continue
            pending = self._pending[i]
            if pending:
                while pending:
                    out.append(self._sample(i, pending.popleft(), now, True))
            elif (dv := self._latest[i]) is not None:
                s = self._sample(i, dv, now, False, None if stall else confirmed)
                if stall and s.quality != BAD:  # the last value, no longer confirmed
                    s = dataclasses.replace(s, quality=UNCERTAIN, reason=stall)
                out.append(s)
            else:
                out.append(Sample(p, None, BAD, "no value from the server yet"))
        if stall:
            self._stalls += 1  # renew at once, then back off while it keeps stalling
            retry_in = 0.0 if self._stalls == 1 else min(BACKOFF_MAX, BACKOFF_MIN * 2 ** (self._stalls - 2))
            await self._drop(stall, retry_in)
        return out

    def _sample(self, i: int, dv: ua.DataValue, now: float, fresh: bool, confirmed: float | None = None) -> Sample:
        p = self.points[i]
        quality, reason = quality_of(dv.StatusCode)
        raw = None
        if quality != BAD:
            try:
                raw = convert(p.type, dv.Value.Value if dv.Value is not None else None)
            except ValueError as exc:
                quality, reason = BAD, f"decode error: {exc}"
        src = epoch(dv.SourceTimestamp or dv.ServerTimestamp)
        s = checked(Sample(p, raw, quality, reason, src), now)  # an implausible src comes back None
        ts = None
        if fresh:
            if s.ts is not None and s.ts > self._last_ts[i]:
                ts = s.ts
        elif confirmed is not None and s.ts == src and self._last_ts[i] < confirmed <= now:
            ts = confirmed  # unchanged as of the server's latest confirmation
        self._last_ts[i] = max(self._last_ts[i], ts or now)
        return dataclasses.replace(s, ts=ts)
