"""Hostile peers for fault-injection tests: devices and a broker that lie, stall or break.

Every peer binds 127.0.0.1 only, runs in-process (asyncio, or a thread for the serial slave),
has `start()`/`stop()` and async (or plain) context-manager use, and leaves nothing running
after `stop()`. Each one records what it received, so a test can check what the code under
test asked for, and each one can be switched between honest and hostile behaviour at any time.

- `modbus_tcp.HostileModbusTcp`: a hand-written Modbus TCP server (MBAP + PDU);
- `rtu_slave.HostileRtuSlave`: Modbus RTU slaves on one end of a socat pseudo-terminal pair;
- `mqtt_broker.HostileBroker`: an MQTT 3.1.1 broker that can withhold or garble PUBACKs;
- `opcua_server.HostileUaServer`: an asyncua server whose subscriptions can stall, with
  out-of-range values and timestamps on demand;
- `poison`: uplink payloads (`hazgate.uplink/1`) built to break a receiver.

The "true image" of a Modbus peer (`modbus_image.ModbusImage`) is what an honest device would
answer; a test compares what the code under test reported with it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


def check_mode(mode: str | Callable[[Any], str], modes: frozenset[str]) -> str | Callable[[Any], str]:
    """`mode` if it is one of `modes` or a callable (checked per use); ValueError otherwise."""
    if not callable(mode) and mode not in modes:
        raise ValueError(f"unknown mode {mode!r}; one of {', '.join(sorted(modes))}")
    return mode


def choose(mode: str | Callable[[Any], str], record: Any, modes: frozenset[str]) -> str:
    """The mode for one request or message (a callable gets its record); stored on `record.mode`."""
    chosen = mode(record) if callable(mode) else mode
    check_mode(chosen, modes)
    record.mode = chosen
    return chosen
