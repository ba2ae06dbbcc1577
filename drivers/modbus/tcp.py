"""Modbus TCP driver (pymodbus async client), strictly read-only.

The connection is kept only while it is in step: after a request that got no answer of its own
(a timeout, or an answer `read_table` refuses) it is dropped, and the next request goes out on a
fresh one. A late answer then has no connection to arrive on, so it cannot be taken for a later
request, even when it comes under that request's transaction id, as a TCP-to-RTU gateway sends
it after its own serial timeout.
"""

from __future__ import annotations

import asyncio
import logging
import time

from pymodbus.client import AsyncModbusTcpClient
from pymodbus.exceptions import ConnectionException, ModbusException, ModbusIOException

from agent.model import BAD, Sample
from drivers.base import DeviceError, DeviceSpec
from drivers.modbus.answer import WrongAnswer
from drivers.modbus.read import BlockReader, checked_client, read_table

log = logging.getLogger("hazgate.modbus")

BACKOFF_MIN, BACKOFF_MAX = 0.5, 30.0


class ModbusTcpDriver:
    def __init__(self, device: DeviceSpec):
        self.device = device
        self.client = checked_client(AsyncModbusTcpClient(
            device.options.host, port=int(device.options.port), timeout=device.timeout, retries=0,
            reconnect_delay=0, name=device.name,
        ))
        self.reader = BlockReader(device, self._request)
        self._backoff = 0.0
        self._retry_at = 0.0
        self._last_error = "not connected yet"

    @property
    def connected(self) -> bool:
        return bool(self.client.connected)

    def describe(self) -> str:
        return f"Modbus TCP {self.device.options.host}:{self.device.options.port} unit {self.device.options.unit}, timeout {self.device.timeout:g}s"

    async def _connect_once(self) -> None:
        try:
            async with asyncio.timeout(self.device.timeout + 1):
                ok = await self.client.connect()
        except (TimeoutError, OSError, ModbusException) as exc:
            ok, self._last_error = False, f"connect failed: {exc or type(exc).__name__}"
        else:
            if not ok:
                self._last_error = "connection refused or timed out"
        if not ok:
            self.client.close()
            raise DeviceError(f"{self.describe()}: {self._last_error}")

    async def connect(self, attempts: int = 3) -> None:
        """Connect, retrying with exponential back-off; DeviceError says what was tried."""
        # here: only the tools connect with retries, a running agent never does
        from tenacity import AsyncRetrying, RetryError, stop_after_attempt, wait_exponential

        try:
            async for attempt in AsyncRetrying(
                stop=stop_after_attempt(attempts),
                wait=wait_exponential(multiplier=BACKOFF_MIN, max=BACKOFF_MAX),
            ):
                with attempt:
                    await self._connect_once()
        except RetryError as exc:
            raise DeviceError(f"{self.describe()}: no connection after {attempts} attempts ({self._last_error})") from exc
        self._backoff = 0.0

    async def _ensure_connected(self) -> bool:
        if self.client.connected:
            return True
        now = time.monotonic()
        if now < self._retry_at:
            return False
        try:
            await self._connect_once()
        except DeviceError:
            self._backoff = min(BACKOFF_MAX, max(BACKOFF_MIN, self._backoff * 2))
            self._retry_at = now + self._backoff
            return False
        self._backoff = 0.0
        return True

    async def _request(self, table: str, start: int, count: int):
        """One read request on a connection in step with the device; raises ModbusException,
        TimeoutError, or ConnectionError when no fresh connection can be made."""
        if not self.client.connected:  # dropped after a request without its answer
            try:
                await self._connect_once()
            except DeviceError:
                raise ConnectionError(self._last_error) from None
        try:
            return await read_table(self.client, table, start, count, self.device.options.unit)
        except (ModbusIOException, TimeoutError, WrongAnswer):
            self.client.close()  # its answer may still come: never on the connection of a later request
            raise

    async def read(self) -> list[Sample]:
        if not await self._ensure_connected():
            return [Sample(p, None, BAD, self._last_error) for p in self.device.points]
        samples, link_lost = await self.reader.read_all()
        if link_lost:
            self._last_error = link_lost
            self.client.close()
        return samples

    async def close(self) -> None:
        self.client.close()


__all__ = ["ModbusTcpDriver", "ConnectionException"]
