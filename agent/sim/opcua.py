"""The simulated plant's OPC UA servers (asyncua), one per [[plcs]] with protocol = "opcua".

Every point of the PLC's point table becomes a read-only variable under an object named after
the PLC, with the NodeId of its `address` column (namespaces named by `nsu=` are registered;
`ns=N` indexes are created as needed) and the data type of its `type` column. A loop recomputes
the scenario signals every `update_interval` and writes a value only when it (or its status)
changed, with that moment as its source timestamp, so subscriptions see real data changes.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import time
from collections.abc import Awaitable, Callable

from asyncua import Server, ua
from asyncua.common.utils import ServiceError
from asyncua.crypto.permission_rules import User, UserRole
from cryptography.hazmat.primitives import serialization

from agent.model import Point
from agent.sim.listen import listen_error
from agent.sim.scenario import SimPlc
from drivers.opcua.options import (
    certificate_uris,
    load_certificate,
    load_private_key,
    untrusted_reason,
)

log = logging.getLogger("hazgate.simulate")

VARIANT = {
    "bool": ua.VariantType.Boolean, "int16": ua.VariantType.Int16, "uint16": ua.VariantType.UInt16,
    "int32": ua.VariantType.Int32, "uint32": ua.VariantType.UInt32, "float32": ua.VariantType.Float,
    "float64": ua.VariantType.Double,
}
INT_RANGE = {"int16": (-(2**15), 2**15 - 1), "uint16": (0, 2**16 - 1), "int32": (-(2**31), 2**31 - 1),
             "uint32": (0, 2**32 - 1)}
POLICY = {
    "None": ua.SecurityPolicyType.NoSecurity,
    "Basic256Sha256_Sign": ua.SecurityPolicyType.Basic256Sha256_Sign,
    "Basic256Sha256_SignAndEncrypt": ua.SecurityPolicyType.Basic256Sha256_SignAndEncrypt,
}


class PasswordUsers:
    """Username/password logins from the scenario; no anonymous login when this is in use."""

    def __init__(self, users: dict[str, str]):
        self.users = users

    def get_user(self, iserver, username=None, password=None, certificate=None):  # noqa: ANN001, ANN201
        if username is not None and self.users.get(username) == password:
            return User(role=UserRole.User, name=username)
        return None


def raw_value(p: Point, eng: float | bool):
    raw = p.to_raw(eng)
    if p.type == "bool":
        return bool(raw)
    if p.type in INT_RANGE:
        lo, hi = INT_RANGE[p.type]
        return min(hi, max(lo, int(raw)))
    return float(raw)


class UaPlc:
    def __init__(self, plc: SimPlc, started: float):
        self.plc, self.started = plc, started
        self.o = plc.options
        self.server: Server | None = None
        self.nodes: list[tuple[Point, ua.NodeId]] = []
        self.task: asyncio.Task | None = None
        self.writes = 0

    @property
    def endpoint(self) -> str:
        return f"opc.tcp://{self.plc.host}:{self.plc.port}/"

    async def start(self) -> None:
        o = self.o
        users = o.get("users") or {}
        server = Server(user_manager=PasswordUsers(users) if users else None)
        await server.init()
        server.set_endpoint(self.endpoint)
        server.set_server_name(f"hazgate simulator: {self.plc.name}")
        server.set_security_policy([POLICY[s] for s in o["security"]])
        if users:
            server.set_identity_tokens([ua.UserNameIdentityToken])
        if o.get("certificate") is not None:
            cert = load_certificate(o["certificate"])
            key = load_private_key(o["private_key"])
            await server.load_certificate(cert.public_bytes(serialization.Encoding.DER))
            await server.load_private_key(key.private_bytes(
                serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
            if uris := certificate_uris(cert):
                await server.set_application_uri(uris[0])
        if o.get("trusted_clients") is not None:
            server.set_certificate_validator(self._check_client)
        await self._address_space(server)
        self.server = server
        try:
            await server.start()
        except OSError as exc:
            raise listen_error(self.plc.host, self.plc.port, f"OPC UA ({self.plc.name})", exc) from exc
        await self._update(force=True)
        self.task = asyncio.create_task(self._loop(), name=f"opcua-sim:{self.plc.name}")
        log.info("serving OPC UA on %s: %s (%d points, security %s%s)", self.endpoint, self.plc.name,
                 len(self.nodes), ", ".join(o["security"]), ", username logins" if users else "")

    async def _check_client(self, cert, app) -> None:  # noqa: ANN001 - x509 certificate, ApplicationDescription
        """Only client certificates in `trusted_clients` (or issued by one there) get a session."""
        reason = untrusted_reason(cert.public_bytes(serialization.Encoding.DER), self.o["trusted_clients"])
        if reason:
            shown = reason.replace("server certificate not trusted", "client certificate refused").split("; valid")[0]
            log.warning("%s; add it to trusted_clients to accept it", shown)
            raise ServiceError(ua.StatusCodes.BadCertificateUntrusted)

    async def _address_space(self, server: Server) -> None:
        own = await server.register_namespace(self.o["namespace"])
        folder = await server.nodes.objects.add_object(own, self.plc.name)
        for p in self.plc.points:
            nid = ua.NodeId.from_string(p.address)
            uri = getattr(nid, "NamespaceUri", None)
            if uri:
                idx = await server.register_namespace(uri)
            else:
                idx = nid.NamespaceIndex
                while len(await server.get_namespace_array()) <= idx:
                    n = len(await server.get_namespace_array())
                    await server.register_namespace(f"urn:hazgate:simulator:ns{n}")
            nid = ua.NodeId(nid.Identifier, idx, nid.NodeIdType)
            initial = raw_value(p, False if p.type == "bool" else 0.0)
            await folder.add_variable(nid, ua.QualifiedName(p.tag, idx), ua.Variant(initial, VARIANT[p.type]))
            self.nodes.append((p, nid))
        self._last: dict[str, tuple] = {}

    async def _update(self, force: bool = False) -> None:
        t = time.monotonic() - self.started
        now = dt.datetime.now(dt.UTC)
        status = self.o.get("status") or {}
        for p, nid in self.nodes:
            sig = self.plc.signals.get(p.tag)
            eng = sig.value(t) if sig else (False if p.type == "bool" else 0.0)
            value = raw_value(p, eng)
            code = status.get(p.tag, "Good")
            state = (value, code)
            if not force and self._last.get(p.tag) == state:
                continue
            self._last[p.tag] = state
            dv = ua.DataValue(ua.Variant(value, VARIANT[p.type]), StatusCode=ua.StatusCode(getattr(ua.StatusCodes, code)),
                              SourceTimestamp=now, ServerTimestamp=now)
            await self.server.write_attribute_value(nid, dv)  # type: ignore[union-attr]
            self.writes += 1

    async def _loop(self) -> None:
        interval = self.o.get("update_interval", 0.1)
        due = time.monotonic()
        while True:  # on a fixed cadence: an update that takes a while does not stretch the period
            due += interval
            await asyncio.sleep(max(0.0, due - time.monotonic()))
            try:
                await self._update()
            except Exception:  # noqa: BLE001 - keep serving
                log.exception("OPC UA simulator update failed")

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            await asyncio.gather(self.task, return_exceptions=True)
        if self.server is not None:
            await self.server.stop()


async def start_opcua(plcs: list[SimPlc], started: float, stoppers: list[Callable[[], Awaitable[None]]]) -> None:
    """Start one server per PLC; each started server's stop goes into `stoppers` at once."""
    for plc in plcs:
        ua_plc = UaPlc(plc, started)
        try:
            await ua_plc.start()
        except BaseException:
            await ua_plc.stop()
            raise
        stoppers.append(ua_plc.stop)
