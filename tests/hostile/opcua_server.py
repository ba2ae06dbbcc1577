"""An asyncua server whose subscriptions can stall and whose values can be out of range.

    async with HostileUaServer() as plc:                 # opc.tcp://127.0.0.1:<plc.port>/
        plc.addresses["U32"]                             # "nsu=urn:hazgate:test:hostile;s=U32"
        await plc.set_value("F64", 12.5)                 # honest: declared type, Good, now
        plc.stop_publishing()                            # Read works, subscriptions go quiet
        await plc.set_source_timestamp("F64", FAR_FUTURE)
        await plc.write_raw("U32", ua.Variant(2**64 - 1, ua.VariantType.UInt64))

Variables (under the object `Hostile` in namespace `NS`): `F64` (Double), `U32` (UInt32) and
`I16` (Int16), with the values of `INITIAL` at start.

Start-up is dominated by asyncua loading the standard address space (`Server.init()`): about
1.5 s on the 2-core test box, measured in `startup_seconds`. A shelf file (`init(shelf_file)`)
does not help here: without gdbm/ndbm, Python falls back to dbm.dumb, whose file names asyncua
does not recognise, so it rebuilds the shelf every time (3 s). `stop()` takes a few
milliseconds instead of asyncua's 1 s, because it ends the server clock task itself rather than
waiting for its one-second sleep.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import time
from typing import Any

from asyncua import Server, ua
from asyncua.server.internal_subscription import InternalSubscription

NS = "urn:hazgate:test:hostile"
DECLARED = {"F64": ua.VariantType.Double, "U32": ua.VariantType.UInt32, "I16": ua.VariantType.Int16}
INITIAL: dict[str, Any] = {"F64": 1.5, "U32": 7, "I16": -3}
FAR_FUTURE = dt.datetime(9999, 12, 31, 23, 59, 59, tzinfo=dt.UTC)  # OPC UA's largest DateTime
FAR_PAST = dt.datetime(1601, 1, 1, tzinfo=dt.UTC)  # OPC UA's DateTime 0 ("no time")
HOST = "127.0.0.1"


async def _held(requestdata: object = None) -> bool:
    """Stands in for InternalSubscription.publish_results while publishing is stopped."""
    return False


class HostileUaServer:
    def __init__(self, *, port: int = 0, namespace: str = NS):
        self.port = port  # 0: a free one, known after start()
        self.namespace = namespace
        self.nodes: dict[str, ua.NodeId] = {}
        self.addresses: dict[str, str] = {}  # point-table addresses: nsu=<namespace>;s=<name>
        self.publishing = True
        self.startup_seconds = 0.0
        self.server: Server | None = None

    @property
    def endpoint(self) -> str:
        return f"opc.tcp://{HOST}:{self.port}/"

    async def start(self) -> HostileUaServer:
        t0 = time.perf_counter()
        server = Server()
        await server.init()
        server.set_endpoint(f"opc.tcp://{HOST}:{self.port}/")
        server.set_security_policy([ua.SecurityPolicyType.NoSecurity])
        idx = await server.register_namespace(self.namespace)
        folder = await server.nodes.objects.add_object(ua.NodeId("Hostile", idx), ua.QualifiedName("Hostile", idx))
        for name, vtype in DECLARED.items():
            nid = ua.NodeId(name, idx)
            await folder.add_variable(nid, ua.QualifiedName(name, idx), ua.Variant(INITIAL[name], vtype),
                                      datatype=ua.NodeId(vtype.value))
            self.nodes[name] = nid
            self.addresses[name] = f"nsu={self.namespace};s={name}"
        self._hook_new_subscriptions(server)
        self.server = server
        await server.start()
        if self.port == 0:
            assert server.bserver is not None
            self.port = server.bserver.port
        for name, value in INITIAL.items():
            await self.set_value(name, value)
        self.startup_seconds = time.perf_counter() - t0
        return self

    async def stop(self) -> None:
        if self.server is None:
            return
        iserver = self.server.iserver
        # asyncua's InternalServer.stop() waits out the clock task's asyncio.sleep(1); end it here.
        if iserver.time_task is not None:
            iserver._time_task_stop = True
            iserver.time_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await iserver.time_task
            iserver.time_task = None
        await self.server.stop()
        self.server = None

    async def __aenter__(self) -> HostileUaServer:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # --- values -----------------------------------------------------------------------

    async def set_value(self, name: str, value: Any) -> None:
        """An honest value: the declared type, status Good, source and server time now."""
        await self.write_raw(name, ua.Variant(value, DECLARED[name]))

    async def set_source_timestamp(self, name: str, when: dt.datetime) -> None:
        """The node's current value again, stamped `when` (FAR_FUTURE, FAR_PAST, any time)."""
        current = await self._node(name).read_data_value()
        await self.write_raw(name, current.Value, status=current.StatusCode, source_timestamp=when)

    async def write_raw(self, name: str, variant: ua.Variant, *, status: ua.StatusCode | None = None,
                        source_timestamp: dt.datetime | None = None) -> None:
        """Serve `variant` as the node's value, whatever its declared DataType says.

        asyncua refuses a write whose variant type differs from the node's current one, and
        Server.write_attribute_value() drops that refusal silently (only a log line). A PLC
        serving UInt64 2**64-1 on a node declared UInt32 must be modelled all the same, so the
        value is put into the address space directly and the data-change callbacks (the
        monitored items of subscriptions) are called as asyncua's own write would.
        """
        assert self.server is not None
        now = dt.datetime.now(dt.UTC)
        value = ua.DataValue(variant, StatusCode=status or ua.StatusCode(ua.StatusCodes.Good),
                             SourceTimestamp=source_timestamp or now, ServerTimestamp=now)
        attribute = self.server.iserver.aspace[self.nodes[name]].attributes[ua.AttributeIds.Value]
        attribute.value, attribute.value_callback = value, None
        for handle, callback in list(attribute.datachange_callbacks.items()):
            await callback(handle, value)

    def _node(self, name: str) -> Any:
        assert self.server is not None
        return self.server.get_node(self.nodes[name])

    # --- publishing -------------------------------------------------------------------

    def stop_publishing(self) -> None:
        """Subscriptions go silent (no data changes, no keep-alives); Read and the session live on.

        Every InternalSubscription runs a loop that calls publish_results() once per publishing
        interval; that call takes a queued Publish request of the client and answers it with
        the data changes (or a keep-alive). Here the method is replaced, on each subscription
        object (present and, via the hook, future ones), by one that publishes nothing: the
        client's Publish requests are accepted and parked, never answered, while Read, Browse
        and the session go on normally and the subscription never expires. That is what a
        server with a hung publishing engine looks like from the wire (seen on PLC OPC UA
        servers whose subscription task starves or dies while the read path keeps working):
        the only sign a client gets is the keep-alive that does not come.
        """
        self.publishing = False
        for sub in self._subscriptions():
            sub.publish_results = _held  # type: ignore[method-assign]

    def resume_publishing(self) -> None:
        """Back to asyncua's own publish_results: parked Publish requests get the queued changes."""
        self.publishing = True
        for sub in self._subscriptions():
            vars(sub).pop("publish_results", None)

    def _subscriptions(self) -> list[InternalSubscription]:
        assert self.server is not None
        return list(self.server.iserver.subscription_service.subscriptions.values())

    def _hook_new_subscriptions(self, server: Server) -> None:
        """Subscriptions created while publishing is stopped are born stalled."""
        service = server.iserver.subscription_service
        create = service.create_subscription

        async def create_subscription(*args: Any, **kwargs: Any) -> ua.CreateSubscriptionResult:
            result = await create(*args, **kwargs)
            if not self.publishing:
                service.subscriptions[result.SubscriptionId].publish_results = _held  # type: ignore[method-assign]
            return result

        service.create_subscription = create_subscription  # type: ignore[method-assign]
