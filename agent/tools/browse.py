"""`hazgate browse`: list a device's address space, for protocols that have one."""

from __future__ import annotations

import sys

from drivers.base import DeviceSpec
from drivers.registry import PROTOCOLS


async def browse_device(device: DeviceSpec, node: str | None, depth: int, limit: int, csv_out: str | None) -> int:
    browse = PROTOCOLS[device.protocol].browse
    if browse is None:
        able = ", ".join(name for name, p in PROTOCOLS.items() if p.browse is not None)
        print(f"hazgate browse: device {device.name!r} speaks {device.protocol}, which has no address space "
              f"to list; browse serves {able} (for Modbus, read the device's register map)", file=sys.stderr)
        return 2
    return await browse(device, node, depth, limit, csv_out)
