"""The hostile peers of tests/hostile do what they say, seen through the plain libraries.

- Modbus TCP: every mode on the wire (raw socket), and what pymodbus 3.16.1 makes of it: it
  takes a wrong function code, extra or missing registers, a shifted address and a transaction
  id of 0 as good answers; a wrong transaction or unit id, garbage, silence, a late answer and
  a connection reset mid-frame all end as the same timeout. A late answer sent under the
  newest transaction id (a TCP-to-RTU gateway) is taken for the answer to the next request.
- Modbus RTU (socat pty pair): every mode on the wire (raw pyserial) and through pymodbus; a
  late answer (0.45 s for a 0.3 s timeout) is taken for the answer to the next request.
- MQTT: CONNECT, PUBLISH, SUBSCRIBE, PINGREQ and DISCONNECT parsed and recorded; no PUBACK
  leaves a paho publish un-acknowledged until paho re-sends it (DUP) after a dropped
  connection; PUBACKs twice and out of order on the wire; subscribers get messages byte-exact.
- OPC UA: declared types, UInt64 2**64-1 served on a UInt32 node, year 9999 and 1601 source
  timestamps; stop_publishing() silences subscriptions (no data, no keep-alive) while Read works.
- Poison payloads: each one is what its name says; the valid controls are valid.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import math
import os
import random
import shutil
import struct
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
import serial
from asyncua import Client, ua
from conftest import free_port
from hostile.modbus_image import ModbusImage, crc16
from hostile.modbus_tcp import MODES as TCP_MODES
from hostile.modbus_tcp import HostileModbusTcp
from hostile.mqtt_broker import HostileBroker
from hostile.opcua_server import DECLARED, FAR_FUTURE, FAR_PAST, INITIAL, HostileUaServer
from hostile.poison import (
    BIG,
    DEPTH,
    ENTERPRISE,
    GATEWAY,
    PREFIX,
    SCHEMA,
    SEQS,
    PoisonCase,
    cases,
    controls,
)
from hostile.rtu_slave import MODES as RTU_MODES
from hostile.rtu_slave import HostileRtuSlave
from pymodbus.client import AsyncModbusSerialClient, AsyncModbusTcpClient
from pymodbus.exceptions import ModbusIOException
from pymodbus.framer.rtu import FramerRTU

HOST = "127.0.0.1"
TIMEOUT = 0.3  # the Modbus clients' timeout; the late modes answer after 0.45 s


async def until(pred: Callable[[], Any], within: float, every: float = 0.02) -> None:
    """Wait until pred() holds; AssertionError after `within` seconds."""
    deadline = time.monotonic() + within
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {within}s")
        await asyncio.sleep(every)


def registers(frame: bytes, start: int) -> list[int]:
    return [int.from_bytes(frame[i:i + 2], "big") for i in range(start, len(frame), 2)]


# --- Modbus TCP ----------------------------------------------------------------------------

def tcp_image() -> ModbusImage:
    image = ModbusImage(64)
    image.hr[:16] = range(100, 116)
    image.ir[:16] = range(200, 216)
    image.co[:16] = [i % 3 == 0 for i in range(16)]
    image.di[:16] = [i % 2 == 1 for i in range(16)]
    return image


@pytest.fixture
async def plc() -> AsyncIterator[HostileModbusTcp]:
    async with HostileModbusTcp(tcp_image(), delay=0.45) as server:
        yield server
    assert server.errors == []


@pytest.fixture
async def client(plc: HostileModbusTcp) -> AsyncIterator[AsyncModbusTcpClient]:
    c = AsyncModbusTcpClient(HOST, port=plc.port, timeout=TIMEOUT, retries=0)
    assert await c.connect()
    yield c
    c.close()


def mbap(tid: int, unit: int, function: int, address: int, count: int) -> bytes:
    return struct.pack(">HHHBBHH", tid, 0, 6, unit, function, address, count)


async def tcp_exchange(port: int, request: bytes, within: float) -> tuple[bytes, float | None, bool]:
    """Send one request on a fresh connection: the answer (complete after 50 ms of quiet) or b"" when
    nothing came within `within` seconds, seconds to its first byte, whether the peer closed."""
    reader, writer = await asyncio.open_connection(HOST, port)
    sent = time.monotonic()
    writer.write(request)
    data, first, closed = b"", None, False
    while (left := sent + within - time.monotonic()) > 0:
        try:
            chunk = await asyncio.wait_for(reader.read(4096), 0.05 if data else left)
        except TimeoutError:
            break
        if not chunk:
            closed = True
            break
        first = first if first is not None else time.monotonic() - sent
        data += chunk
    writer.close()
    return data, first, closed


async def test_tcp_honest_answers_every_table_and_records_requests(plc, client) -> None:
    r = await client.read_holding_registers(2, count=3, device_id=7)
    assert (r.function_code, r.registers) == (3, [102, 103, 104])
    assert (await client.read_input_registers(0, count=2, device_id=7)).registers == [200, 201]
    assert (await client.read_coils(0, count=5, device_id=7)).bits[:5] == plc.image.co[:5]
    assert (await client.read_discrete_inputs(3, count=4, device_id=7)).bits[:4] == plc.image.di[3:7]
    beyond = await client.read_holding_registers(63, count=2, device_id=7)
    assert beyond.isError() and beyond.exception_code == 2
    plc.image.hr[2] = 4242  # the image is live
    assert (await client.read_holding_registers(2, count=1, device_id=7)).registers == [4242]
    assert [(q.function, q.unit, q.address, q.count, q.tid, q.mode) for q in plc.requests] == [
        (3, 7, 2, 3, 1, "honest"), (4, 7, 0, 2, 2, "honest"), (1, 7, 0, 5, 3, "honest"),
        (2, 7, 3, 4, 4, "honest"), (3, 7, 63, 2, 5, "honest"), (3, 7, 2, 1, 6, "honest")]


def tcp_answer(tid: int, unit: int, pdu: bytes) -> bytes:
    return struct.pack(">HHHB", tid, 0, len(pdu) + 1, unit) + pdu


HONEST_PDU = bytes([3, 4, 0, 104, 0, 105])  # holding registers 4 and 5
WIRE = {  # what each mode sends for mbap(0x1234, 5, 3, 4, 2), at once
    "honest": tcp_answer(0x1234, 5, HONEST_PDU),
    "tid_zero": tcp_answer(0, 5, HONEST_PDU),
    "wrong_tid": tcp_answer(0x1235, 5, HONEST_PDU),
    "wrong_unit": tcp_answer(0x1234, 6, HONEST_PDU),
    "wrong_function": tcp_answer(0x1234, 5, bytes([4, 4, 0, 204, 0, 205])),
    "extra_registers": tcp_answer(0x1234, 5, bytes([3, 6, 0, 104, 0, 105, 0, 106])),
    "fewer_registers": tcp_answer(0x1234, 5, bytes([3, 2, 0, 104])),
    "shifted": tcp_answer(0x1234, 5, bytes([3, 4, 0, 106, 0, 107])),
    "exception": tcp_answer(0x1234, 5, bytes([0x83, 2])),
}


@pytest.mark.parametrize("mode", sorted(TCP_MODES))
async def test_tcp_every_mode_on_the_wire(plc, mode: str) -> None:
    plc.mode = mode
    data, first, closed = await tcp_exchange(plc.port, mbap(0x1234, 5, 3, 4, 2), 0.7 if mode == "late" else 0.3)
    if mode in WIRE:
        assert data == WIRE[mode] and not closed
    elif mode == "garbage":
        rng = random.Random(0)  # the server's default seed
        assert data == rng.randbytes(rng.randint(1, 32)) and not closed
    elif mode == "silent":
        assert data == b"" and not closed
    elif mode == "reset_mid_frame":
        assert data == WIRE["honest"][:6] and closed
    else:
        assert mode == "late"
        assert data == WIRE["honest"] and first is not None and first >= plc.delay - 0.02
    assert [(q.function, q.unit, q.address, q.count, q.tid, q.mode) for q in plc.requests] == [(3, 5, 4, 2, 0x1234, mode)]


TAKEN = {  # what pymodbus 3.16.1 returns, without any error, for read_holding_registers(4, count=2)
    "wrong_function": (4, [204, 205]),  # a ReadInputRegistersResponse: the function code is not checked
    "extra_registers": (3, [104, 105, 106]),  # the count is not checked
    "fewer_registers": (3, [104]),
    "shifted": (3, [106, 107]),  # nothing on the wire could tell
    "tid_zero": (3, [104, 105]),  # tid 0 skips the transaction check in framer and client
}


@pytest.mark.parametrize("mode", sorted(TAKEN))
async def test_tcp_lies_pymodbus_takes_as_good_answers(plc, client, mode: str) -> None:
    plc.mode = mode
    r = await client.read_holding_registers(4, count=2, device_id=1)
    assert not r.isError()
    assert (r.function_code, r.registers) == TAKEN[mode]
    assert r.transaction_id == (0 if mode == "tid_zero" else 1)


async def test_tcp_exception_mode_answers_the_chosen_code(plc, client) -> None:
    plc.mode, plc.exception_code = "exception", 6
    r = await client.read_input_registers(0, count=2, device_id=1)
    assert r.isError() and r.exception_code == 6


@pytest.mark.parametrize("mode", ["wrong_tid", "wrong_unit", "garbage", "silent", "late", "reset_mid_frame"])
async def test_tcp_refused_lies_are_a_timeout_in_pymodbus(plc, client, mode: str) -> None:
    plc.mode = mode
    t0 = time.monotonic()
    with pytest.raises(ModbusIOException, match="No response received"):
        await client.read_holding_registers(4, count=2, device_id=1)
    assert time.monotonic() - t0 >= TIMEOUT - 0.02  # a reset mid-frame too: no connection error
    plc.mode = "honest"
    if mode == "reset_mid_frame":
        await until(lambda: plc.connections == 2 and client.connected, 2.0)  # pymodbus reconnects alone
    assert (await client.read_holding_registers(10, count=2, device_id=1)).registers == [110, 111]
    if mode == "late":  # its answer (transaction id 1) arrives now and is dropped: no request waits for it
        await asyncio.sleep(plc.delay)
        assert (await client.read_holding_registers(12, count=1, device_id=1)).registers == [112]


async def test_tcp_late_answer_under_the_newest_tid_is_taken_for_the_next_request(plc, client) -> None:
    plc.late_tid = "latest"
    plc.mode = lambda r: "late" if r.address == 0 else "silent"  # chosen per request
    with pytest.raises(ModbusIOException):
        await client.read_holding_registers(0, count=2, device_id=1)
    r = await client.read_holding_registers(10, count=2, device_id=1)
    assert r.registers == [100, 101]  # address 0's values, returned for address 10
    assert [(q.address, q.tid, q.mode) for q in plc.requests] == [(0, 1, "late"), (10, 2, "silent")]


async def test_tcp_stop_leaves_nothing_running() -> None:
    before = asyncio.all_tasks()
    plc = await HostileModbusTcp(port=free_port(), mode="late", delay=5.0).start()
    reader, writer = await asyncio.open_connection(HOST, plc.port)
    writer.write(mbap(1, 1, 3, 0, 1))
    await until(lambda: plc.requests, 1.0)
    t0 = time.monotonic()
    await plc.stop()
    assert time.monotonic() - t0 < 1.0
    assert asyncio.all_tasks() - before == set()  # no handler, no pending late answer
    assert await asyncio.wait_for(reader.read(), 1.0) == b""  # the connection was closed
    writer.close()
    with pytest.raises(OSError):
        await asyncio.open_connection(HOST, plc.port)


def test_unknown_modes_are_refused() -> None:
    with pytest.raises(ValueError, match="unknown mode"):
        HostileModbusTcp(mode="liar")
    with pytest.raises(ValueError, match="unknown mode"):
        HostileRtuSlave(mode="late_ish")
    with pytest.raises(ValueError, match="unknown mode"):
        HostileBroker(mode="puback_never")


# --- Modbus RTU ----------------------------------------------------------------------------

@pytest.fixture
def bus() -> Iterator[HostileRtuSlave]:
    if shutil.which("socat") is None:
        pytest.skip("socat is not installed (apt-get install -y socat): the RTU slave needs a pty pair")
    one, two = ModbusImage(32), ModbusImage(32)
    one.hr[:16] = range(100, 116)
    one.ir[:16] = range(200, 216)
    two.hr[:16] = range(900, 916)
    with HostileRtuSlave({1: one, 2: two}) as slave:
        yield slave
    assert slave.errors == []


@pytest.fixture
async def master(bus: HostileRtuSlave) -> AsyncIterator[AsyncModbusSerialClient]:
    c = AsyncModbusSerialClient(bus.master_port, baudrate=38400, timeout=TIMEOUT, retries=0, reconnect_delay=0)
    assert await c.connect()
    yield c
    c.close()


def rtu_request(unit: int, function: int, address: int, count: int) -> bytes:
    frame = struct.pack(">BBHH", unit, function, address, count)
    return frame + crc16(frame)


def rtu_exchange(port: str, request: bytes, within: float) -> tuple[bytes, float | None]:
    """Send one request on the master pty: the answer (complete after 30 ms of quiet) and seconds to
    its first byte, or b"" and None when nothing came within `within` seconds."""
    with serial.Serial(port, 38400, timeout=0.03) as s:
        s.reset_input_buffer()
        sent = time.monotonic()
        s.write(request)
        data, first = b"", None
        while time.monotonic() - sent < within:
            chunk = s.read(256)
            if chunk:
                first = first if first is not None else time.monotonic() - sent
                data += chunk
            elif data:
                break
        return data, first


def rtu_answer(unit: int, pdu: bytes) -> bytes:
    return bytes([unit]) + pdu + crc16(bytes([unit]) + pdu)


def test_rtu_crc_matches_pymodbus() -> None:
    for frame in (b"\x01\x03\x00\x00\x00\x01", b"\x11\x04\x00\x6b\x00\x03", bytes(range(40))):
        assert crc16(frame) == FramerRTU.compute_CRC(frame).to_bytes(2, "big")


@pytest.mark.parametrize("mode", sorted(RTU_MODES))
def test_rtu_every_mode_on_the_wire(bus, mode: str) -> None:
    bus.mode = mode
    data, first = rtu_exchange(bus.master_port, rtu_request(1, 3, 4, 2), 0.7 if mode == "late" else 0.3)
    honest = rtu_answer(1, HONEST_PDU)
    expected = {
        "honest": honest,
        "late": honest,
        "wrong_function": rtu_answer(1, bytes([4, 4, 0, 204, 0, 205])),
        "wrong_count": rtu_answer(1, bytes([3, 6, 0, 104, 0, 105, 0, 106])),
        "other_unit": rtu_answer(2, HONEST_PDU),
        "silent": b"",
    }
    if mode == "garbled":
        assert len(data) == len(honest) and sum(a != b for a, b in zip(data, honest, strict=True)) == 1
        assert crc16(data[:-2]) != data[-2:]
    else:
        assert data == expected[mode]
    if mode == "late":
        assert first is not None and first >= bus.delay - 0.02
    assert [(q.function, q.unit, q.address, q.count, q.tid, q.mode) for q in bus.requests] == [(3, 1, 4, 2, None, mode)]


async def test_rtu_honest_units_each_with_their_image(bus, master) -> None:
    assert (await master.read_holding_registers(0, count=3, device_id=1)).registers == [100, 101, 102]
    assert (await master.read_holding_registers(0, count=3, device_id=2)).registers == [900, 901, 902]
    assert (await master.read_input_registers(1, count=1, device_id=1)).registers == [201]
    beyond = await master.read_holding_registers(31, count=2, device_id=1)
    assert beyond.isError() and beyond.exception_code == 2
    with pytest.raises(ModbusIOException):  # unit 3 is not on this bus: no answer
        await master.read_holding_registers(0, count=1, device_id=3)
    assert [(q.unit, q.address, q.count, q.mode) for q in bus.requests] == [
        (1, 0, 3, "honest"), (2, 0, 3, "honest"), (1, 1, 1, "honest"), (1, 31, 2, "honest"), (3, 0, 1, "")]
    assert bus.rejected == []


@pytest.mark.parametrize("mode, taken", [
    ("wrong_function", (4, [204, 205])),  # RTU: the function code is not checked either
    ("wrong_count", (3, [104, 105, 106])),  # a good CRC over 3 registers for 2 asked
    ("garbled", None), ("silent", None), ("other_unit", None),
])
async def test_rtu_lies_through_pymodbus(bus, master, mode: str, taken: tuple | None) -> None:
    bus.mode = mode
    if taken is None:
        with pytest.raises(ModbusIOException, match="No response received"):
            await master.read_holding_registers(4, count=2, device_id=1)
    else:
        r = await master.read_holding_registers(4, count=2, device_id=1)
        assert not r.isError() and (r.function_code, r.registers) == taken
    bus.mode = "honest"
    assert (await master.read_holding_registers(10, count=2, device_id=1)).registers == [110, 111]


async def test_rtu_late_answer_is_taken_for_the_next_request(bus, master) -> None:
    bus.mode = lambda r: "late" if r.address == 0 else "honest"
    t0 = time.monotonic()
    with pytest.raises(ModbusIOException):  # 0.3 s timeout, the answer comes at 0.45 s
        await master.read_holding_registers(0, count=2, device_id=1)
    assert time.monotonic() - t0 < bus.delay
    r = await master.read_holding_registers(10, count=2, device_id=1)
    assert time.monotonic() - t0 >= bus.delay - 0.02
    assert r.registers == [100, 101]  # address 0's values, returned for address 10
    await asyncio.sleep(0.1)  # the real answer for address 10 comes right after, to no one
    assert (await master.read_holding_registers(4, count=2, device_id=1)).registers == [104, 105]
    assert [(q.address, q.mode) for q in bus.requests] == [(0, "late"), (10, "honest"), (4, "honest")]


def test_rtu_stop_ends_socat_and_the_thread() -> None:
    if shutil.which("socat") is None:
        pytest.skip("socat is not installed (apt-get install -y socat): the RTU slave needs a pty pair")
    bus = HostileRtuSlave(mode="late", delay=5.0).start()
    pid, master_port = bus.socat_pid, bus.master_port
    assert Path(master_port).exists()
    with serial.Serial(master_port, 38400, timeout=0.05) as s:
        s.write(rtu_request(1, 3, 0, 1))
        deadline = time.monotonic() + 1.0
        while not bus.requests and time.monotonic() < deadline:
            time.sleep(0.01)
    t0 = time.monotonic()
    bus.stop()  # while the slave sleeps on a late answer
    assert time.monotonic() - t0 < 1.0
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    assert not Path(master_port).exists()
    assert not [t for t in threading.enumerate() if t.name.startswith("hostile-rtu")]


# --- MQTT ----------------------------------------------------------------------------------

def mqtt_packet(first: int, body: bytes) -> bytes:
    assert len(body) < 128
    return bytes([first, len(body)]) + body


def mqtt_str(s: str) -> bytes:
    return struct.pack(">H", len(s.encode())) + s.encode()


def connect_packet(client_id: str) -> bytes:
    flags = 0x80 | 0x40 | 0x20 | 0x08 | 0x04 | 0x02  # user, password, will retain, will QoS 1, will, clean
    body = (mqtt_str("MQTT") + bytes([4, flags]) + struct.pack(">H", 30) + mqtt_str(client_id)
            + mqtt_str("gw/status") + mqtt_str("offline") + mqtt_str("user") + mqtt_str("secret"))
    return mqtt_packet(0x10, body)


def publish_packet(topic: str, payload: bytes, qos: int, pid: int = 0, retain: bool = False) -> bytes:
    head = mqtt_str(topic) + (struct.pack(">H", pid) if qos else b"")
    return mqtt_packet(0x30 | qos << 1 | retain, head + payload)


def puback(pid: int) -> bytes:
    return b"\x40\x02" + struct.pack(">H", pid)


async def test_broker_parses_and_records_a_whole_session() -> None:
    async with HostileBroker(port=free_port()) as broker:
        reader, writer = await asyncio.open_connection(HOST, broker.port)
        read = lambda n: asyncio.wait_for(reader.readexactly(n), 1.0)  # noqa: E731
        writer.write(connect_packet("gw-raw"))
        assert await read(4) == b"\x20\x02\x00\x00"
        writer.write(mqtt_packet(0x82, b"\x00\x09" + mqtt_str("a/+") + b"\x01" + mqtt_str("b/#") + b"\x02"))
        assert await read(6) == b"\x90\x04\x00\x09\x01\x01"  # QoS 2 asked, 1 granted
        writer.write(publish_packet("a/x", b"\x00\xffbinary", 1, pid=7, retain=True))
        assert await read(4) == puback(7)
        # the message comes back to us (we subscribed to a/+) under the broker's own packet id
        routed = publish_packet("a/x", b"\x00\xffbinary", 1, pid=1)
        assert await read(len(routed)) == routed
        writer.write(puback(1))
        writer.write(publish_packet("c/y", b"zero", 0))
        writer.write(b"\xc0\x00")
        assert await read(2) == b"\xd0\x00"
        writer.write(b"\xe0\x00")
        assert await asyncio.wait_for(reader.read(), 1.0) == b""  # DISCONNECT: the broker closes
        writer.close()
        await until(lambda: not broker.live(), 1.0)
        conn = broker.connections[0]
        assert (conn.client_id, conn.clean_session, conn.keepalive, conn.username) == ("gw-raw", True, 30, "user")
        assert (conn.will_topic, conn.will_payload, conn.subscriptions) == ("gw/status", b"offline", [("a/+", 1), ("b/#", 1)])
        assert (conn.pings, conn.ended) == (1, "disconnect")
        assert [(p.topic, p.payload, p.qos, p.retain, p.dup, p.packet_id, p.mode) for p in broker.publishes] == [
            ("a/x", b"\x00\xffbinary", 1, True, False, 7, "honest"), ("c/y", b"zero", 0, False, False, None, "")]
        assert broker.acks == [(0, 1)]
        assert broker.errors == []


async def test_broker_puback_twice_and_out_of_order_on_the_wire() -> None:
    async with HostileBroker(mode="puback_twice", reorder_hold=0.3) as broker:
        reader, writer = await asyncio.open_connection(HOST, broker.port)
        read = lambda n: asyncio.wait_for(reader.readexactly(n), 1.0)  # noqa: E731
        writer.write(connect_packet("gw-acks"))
        assert await read(4) == b"\x20\x02\x00\x00"
        writer.write(publish_packet("t", b"1", 1, pid=1))
        assert await read(8) == puback(1) + puback(1)
        broker.mode = "puback_out_of_order"
        writer.write(publish_packet("t", b"2", 1, pid=2) + publish_packet("t", b"3", 1, pid=3))
        assert await read(8) == puback(3) + puback(2)
        t0 = time.monotonic()
        writer.write(publish_packet("t", b"4", 1, pid=4))  # alone: held for reorder_hold
        assert await read(4) == puback(4)
        assert time.monotonic() - t0 >= 0.25
        writer.close()
        assert [p.mode for p in broker.publishes] == ["puback_twice"] + ["puback_out_of_order"] * 3


def paho_client(client_id: str) -> mqtt.Client:
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=True)
    c.reconnect_delay_set(min_delay=0.1, max_delay=0.5)
    return c


async def test_broker_no_puback_leaves_paho_unacked_until_it_resends_after_a_drop() -> None:
    async with HostileBroker(mode="no_puback") as broker:
        c = paho_client("gw-paho")
        c.connect(HOST, broker.port, keepalive=30)
        c.loop_start()
        try:
            info = c.publish("hz/readings", b"seq-1", qos=1)
            await until(lambda: broker.publishes, 2.0)
            await asyncio.sleep(0.3)
            assert not info.is_published()
            first = broker.publishes[0]
            assert (first.topic, first.payload, first.qos, first.dup, first.mode) == (
                "hz/readings", b"seq-1", 1, False, "no_puback")
            broker.mode = "honest"
            await broker.drop()
            await until(lambda: len(broker.publishes) >= 2, 3.0)  # paho re-sends on its reconnect
            again = broker.publishes[1]
            assert (again.conn, again.payload, again.packet_id, again.dup) == (1, b"seq-1", first.packet_id, True)
            await until(info.is_published, 2.0)
            c.disconnect()
        finally:
            await asyncio.to_thread(c.loop_stop)
        await until(lambda: not broker.live(), 2.0)
        assert [(k.client_id, k.ended) for k in broker.connections] == [("gw-paho", "dropped"), ("gw-paho", "disconnect")]


@pytest.mark.parametrize("mode", ["puback_twice", "puback_out_of_order"])
async def test_broker_odd_pubacks_still_complete_paho_publishes(mode: str) -> None:
    async with HostileBroker(mode=mode) as broker:
        c = paho_client("gw-odd")
        acked: list[int] = []
        c.on_publish = lambda _c, _u, mid, _rc, _p: acked.append(mid)
        c.connect(HOST, broker.port, keepalive=30)
        c.loop_start()
        try:
            infos = [c.publish("hz/events", f"m{i}".encode(), qos=1) for i in range(5)]
            await until(lambda: all(i.is_published() for i in infos), 2.0)
            await asyncio.sleep(0.1)
            assert sorted(acked) == sorted(i.mid for i in infos)  # each once, however acknowledged
            c.disconnect()
        finally:
            await asyncio.to_thread(c.loop_stop)
        assert {p.mode for p in broker.publishes} == {mode} and broker.errors == []


async def test_broker_delivers_every_poison_case_byte_exact() -> None:
    got: list[tuple[str, bytes, int]] = []
    async with HostileBroker() as broker:
        c = paho_client("receiver")
        c.on_message = lambda _c, _u, m: got.append((m.topic, m.payload, m.qos))
        c.on_connect = lambda cl, _u, _f, _rc, _p: cl.subscribe(f"{PREFIX}/#", qos=1)
        c.connect(HOST, broker.port, keepalive=30)
        c.loop_start()
        try:
            await until(lambda: broker.live() and broker.live()[0].subscriptions, 2.0)
            sent = cases() + controls()
            for case in sent:
                assert broker.deliver(case.topic(), case.payload) == 1
            await until(lambda: len(got) == len(sent), 5.0)
            assert got == [(case.topic(), case.payload, 1) for case in sent]
            await until(lambda: len(broker.acks) == len(sent), 2.0)  # paho acknowledged each one
            c.disconnect()
        finally:
            await asyncio.to_thread(c.loop_stop)


# --- OPC UA --------------------------------------------------------------------------------

async def test_opcua_declared_types_raw_values_and_timestamps() -> None:
    async with HostileUaServer() as plc, Client(plc.endpoint, timeout=2) as client:
        assert plc.startup_seconds < 10, plc.startup_seconds
        nodes = {name: client.get_node(nid) for name, nid in plc.nodes.items()}
        ns = await client.get_namespace_index(plc.namespace)
        for name, vtype in DECLARED.items():
            value = await nodes[name].read_data_value()
            assert (value.Value.VariantType, value.Value.Value) == (vtype, INITIAL[name])
            assert value.StatusCode.is_good()
            assert await nodes[name].read_data_type() == ua.NodeId(vtype.value)
            assert plc.addresses[name] == f"nsu={plc.namespace};s={name}" and plc.nodes[name].NamespaceIndex == ns
        # UInt64 2**64-1 served on the node declared UInt32
        await plc.write_raw("U32", ua.Variant(2**64 - 1, ua.VariantType.UInt64))
        raw = await nodes["U32"].read_data_value()
        assert (raw.Value.VariantType, raw.Value.Value) == (ua.VariantType.UInt64, 2**64 - 1)
        assert await nodes["U32"].read_data_type() == ua.NodeId(ua.ObjectIds.UInt32)
        await plc.set_value("U32", 5)  # honest again after it
        assert (await nodes["U32"].read_data_value()).Value == ua.Variant(5, ua.VariantType.UInt32)
        await plc.write_raw("I16", ua.Variant(-3, ua.VariantType.Int16), status=ua.StatusCode(ua.StatusCodes.UncertainLastUsableValue))
        uncertain = await nodes["I16"].read_data_value(raise_on_bad_status=False)  # it raises by default
        assert uncertain.StatusCode.value == ua.StatusCodes.UncertainLastUsableValue
        # source timestamps far ahead and far back; the value stays, the server time is now
        await plc.set_value("F64", 12.5)
        for when in (FAR_FUTURE, FAR_PAST, dt.datetime(1970, 1, 1, tzinfo=dt.UTC)):
            await plc.set_source_timestamp("F64", when)
            value = await nodes["F64"].read_data_value()
            assert (value.Value.Value, value.SourceTimestamp) == (12.5, when)
            assert abs((value.ServerTimestamp - dt.datetime.now(dt.UTC)).total_seconds()) < 5


def publish_recorder(client: Client) -> tuple[list[ua.PublishResult], Callable[[ua.NodeId], Any]]:
    """Every PublishResult of one subscription (keep-alives too), and a coroutine function that
    makes it, 50 ms publishing interval, a keep-alive every 2 intervals, monitoring a node."""
    results: list[ua.PublishResult] = []

    async def subscribe(node: ua.NodeId) -> None:
        params = ua.CreateSubscriptionParameters(RequestedPublishingInterval=50, RequestedLifetimeCount=1000,
                                                 RequestedMaxKeepAliveCount=2, PublishingEnabled=True)
        sub = await client.uaclient.create_subscription(params, results.append)
        item = ua.MonitoredItemCreateRequest(
            ItemToMonitor=ua.ReadValueId(NodeId=node, AttributeId=ua.AttributeIds.Value),
            MonitoringMode=ua.MonitoringMode.Reporting,
            RequestedParameters=ua.MonitoringParameters(ClientHandle=1, QueueSize=10))
        await client.uaclient.create_monitored_items(ua.CreateMonitoredItemsParameters(
            SubscriptionId=sub.SubscriptionId, ItemsToCreate=[item]))

    return results, subscribe


def changes(results: list[ua.PublishResult]) -> list[Any]:
    return [item.Value.Value.Value for r in results for n in r.NotificationMessage.NotificationData
            for item in getattr(n, "MonitoredItems", [])]


async def test_opcua_stop_publishing_silences_subscriptions_but_not_reads() -> None:
    async with HostileUaServer() as plc, Client(plc.endpoint, timeout=2) as client:
        results, subscribe = publish_recorder(client)
        await subscribe(plc.nodes["F64"])
        await until(lambda: changes(results) == [INITIAL["F64"]], 2.0)
        await until(lambda: len(results) >= 3, 2.0)  # keep-alives every 100 ms
        plc.stop_publishing()
        await asyncio.sleep(0.1)  # a publish already on its way may still land
        seen = len(results)
        await plc.set_value("F64", 3.5)
        born_stalled, subscribe_stalled = publish_recorder(client)
        await subscribe_stalled(plc.nodes["I16"])  # created while stopped
        await asyncio.sleep(0.6)  # 6 keep-alive periods
        assert len(results) == seen and born_stalled == []  # no data change, no keep-alive
        assert await client.get_node(plc.nodes["F64"]).read_value() == 3.5  # Read works
        plc.resume_publishing()
        await until(lambda: 3.5 in changes(results), 2.0)
        await until(lambda: changes(born_stalled) == [INITIAL["I16"]], 2.0)


# --- poison payloads -----------------------------------------------------------------------

def strict_json(payload: bytes) -> Any:
    """RFC 8259 JSON in UTF-8 (no NaN or Infinity, no byte order mark); ValueError otherwise."""
    def no_constant(name: str) -> None:
        raise ValueError(f"{name} is not JSON")

    return json.loads(payload.decode("utf-8"), parse_constant=no_constant)


def not_a_date(s: str) -> bool:
    try:
        dt.datetime.fromisoformat(s)
    except ValueError:
        return True
    return False


R = lambda b: b["readings"][0]  # noqa: E731
E = lambda b: b["events"][0]  # noqa: E731
JSON_CASES: dict[str, Callable[[Any], bool]] = {  # case name: what holds of its (strictly valid JSON) body
    "seq_string": lambda b: type(b["seq"]) is str,
    "seq_float": lambda b: type(b["seq"]) is float and b["seq"].is_integer(),
    "seq_huge": lambda b: type(b["seq"]) is int and b["seq"] >= 2**64,
    "seq_zero": lambda b: type(b["seq"]) is int and b["seq"] == 0,
    "seq_negative": lambda b: type(b["seq"]) is int and b["seq"] < 0,
    "seq_bool": lambda b: b["seq"] is True,
    "seq_missing": lambda b: "seq" not in b,
    "sent_at_number": lambda b: type(b["sent_at"]) is int,
    "schema_unknown": lambda b: b["schema"] != SCHEMA,
    "gateway_mismatch": lambda b: b["gateway"] != GATEWAY,
    "status_with_seq": lambda b: "seq" in b and "state" in b,
    "status_state_unknown": lambda b: b["state"] not in ("online", "offline"),
    "readings_not_list": lambda b: type(b["readings"]) is dict,
    "readings_null": lambda b: b["readings"] is None,
    "reading_is_list": lambda b: type(R(b)) is list,
    "ts_object": lambda b: type(R(b)["ts"]) is dict,
    "ts_not_a_date": lambda b: not_a_date(R(b)["ts"]),
    "ts_far_future": lambda b: dt.datetime.fromisoformat(R(b)["ts"]).year == 9999,
    "tag_not_string": lambda b: type(R(b)["tag"]) is int,
    "tag_empty": lambda b: R(b)["tag"] == "",
    "tag_nul": lambda b: "\x00" in R(b)["tag"],
    "tag_huge": lambda b: len(R(b)["tag"]) >= 65536,
    "value_object": lambda b: type(R(b)["value"]) is dict,
    "value_list": lambda b: type(R(b)["value"]) is list,
    "value_string": lambda b: type(R(b)["value"]) is str and float(R(b)["value"]) == 3.0,
    "value_nan_string": lambda b: R(b)["value"] == "NaN",
    "value_huge_int": lambda b: type(R(b)["value"]) is int and R(b)["value"] >= 2**64,
    "value_missing": lambda b: "value" not in R(b),
    "good_with_null": lambda b: R(b)["quality"] == "good" and R(b)["value"] is None,
    "quality_unknown": lambda b: R(b)["quality"] not in ("good", "uncertain", "bad"),
    "bad_without_reason": lambda b: R(b)["quality"] == "bad" and "reason" not in R(b),
    "backfill_string": lambda b: type(R(b)["backfill"]) is str,
    "unit_null": lambda b: R(b)["unit"] is None,
    "events_not_list": lambda b: type(b["events"]) is dict,
    "event_is_list": lambda b: type(E(b)) is list,
    "event_tag_not_string": lambda b: type(E(b)["tag"]) is int and not {"interlock", "source"} & set(E(b)),
    "event_tag_object": lambda b: type(E(b)["tag"]) is dict,
    "event_ts_object": lambda b: type(E(b)["ts"]) is dict,
    "event_value_object": lambda b: type(E(b)["value"]) is dict,
    "event_severity_unknown": lambda b: E(b)["severity"] not in ("info", "warning", "alarm", "critical"),
    "event_id_missing": lambda b: "id" not in E(b),
    "meta_points_not_list": lambda b: type(b["points"]) is dict,
    "meta_tag_twice": lambda b: len({p["tag"] for p in b["points"]}) < len(b["points"]),
    "top_level_array": lambda b: type(b) is list,
    "top_level_null": lambda b: b is None,
    "top_level_string": lambda b: type(b) is str,
    "oversized_2mb": lambda b: len(b["readings"]) > 10_000 and all(type(r) is dict for r in b["readings"]),
    "lone_surrogate": lambda b: raises(UnicodeEncodeError, lambda: R(b)["tag"].encode()),
}


def pairs_seen(payload: bytes) -> list[tuple[str, Any]]:
    return json.loads(payload, object_pairs_hook=lambda pairs: pairs)


def raises(exc: type[BaseException], f: Callable[[], Any]) -> bool:
    try:
        f()
    except exc:
        return True
    return False


OTHER_CASES: dict[str, Callable[[bytes], bool]] = {  # cases that are not strict JSON, or not plainly
    "value_nan": lambda p: raises(ValueError, lambda: strict_json(p)) and math.isnan(R(json.loads(p))["value"]),
    "value_infinity": lambda p: raises(ValueError, lambda: strict_json(p)) and R(json.loads(p))["value"] == math.inf,
    "value_minus_infinity": lambda p: raises(ValueError, lambda: strict_json(p)) and R(json.loads(p))["value"] == -math.inf,
    "deeply_nested": lambda p: p.count(b"[") >= DEPTH and raises(RecursionError, lambda: json.loads(p)),
    "invalid_utf8": lambda p: b"\xff\xfe" in p and raises(UnicodeDecodeError, lambda: p.decode("utf-8")),
    "duplicate_keys": lambda p: len([v for k, v in pairs_seen(p) if k == "seq"]) == 2,
    "utf8_bom": lambda p: p.startswith(b"\xef\xbb\xbf") and raises(ValueError, lambda: strict_json(p))
    and strict_json(p[3:])["schema"] == SCHEMA,
    "truncated": lambda p: raises(ValueError, lambda: strict_json(p)) and p.startswith(b'{"schema"'),
    "trailing_garbage": lambda p: raises(ValueError, lambda: strict_json(p)) and p.endswith(b"}\x00"),
    "empty": lambda p: p == b"",
}


def test_poison_cases_are_what_their_names_say() -> None:
    all_cases = cases()
    names = [c.name for c in all_cases]
    assert len(names) == len(set(names))
    assert set(names) == set(JSON_CASES) | set(OTHER_CASES) and not set(JSON_CASES) & set(OTHER_CASES)
    assert len(next(c for c in all_cases if c.name == "oversized_2mb").payload) >= BIG
    for case in all_cases:
        assert case.kind in ("readings", "events", "meta", "status") and case.why and type(case.payload) is bytes
        assert case.topic() == f"{PREFIX}/{ENTERPRISE}/{GATEWAY}/{case.kind}"
        if case.name in OTHER_CASES:
            assert OTHER_CASES[case.name](case.payload), case.name
            continue
        assert JSON_CASES[case.name](strict_json(case.payload)), case.name
    seqs = numbered(all_cases)
    assert len(seqs) == len(set(seqs)) and len(seqs) > 30  # no case hides behind another's seq


def numbered(some: tuple[PoisonCase, ...]) -> list[int]:
    """The seq numbers (in SEQS) of the cases that are JSON objects with a whole seq."""
    out = []
    for case in some:
        body = None if case.name in OTHER_CASES else strict_json(case.payload)
        if type(body) is dict and type(body.get("seq")) is int and body["seq"] in SEQS:
            out.append(body["seq"])
    return out


def test_poison_controls_are_valid_messages() -> None:
    highest = max(numbered(cases()))
    for case in controls():
        body = strict_json(case.payload)
        assert (body["schema"], body["gateway"], body["enterprise"]) == (SCHEMA, GATEWAY, ENTERPRISE)
        assert dt.datetime.fromisoformat(body["sent_at"]).utcoffset() is not None
        if case.kind == "status":
            assert "seq" not in body and body["state"] == "online"
        else:
            assert type(body["seq"]) is int and body["seq"] > highest
        for r in body.get("readings", []):
            assert type(r["tag"]) is str and type(r["value"]) is float and r["quality"] == "good"
            assert type(r["backfill"]) is bool and type(r["unit"]) is str
        for e in body.get("events", []):
            assert type(e["id"]) is str and e["severity"] in ("info", "warning", "alarm", "critical")
