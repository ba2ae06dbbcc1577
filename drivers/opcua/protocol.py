"""What OPC UA says of itself (drivers/registry.py lists it)."""

from __future__ import annotations

import re
from typing import Any

from drivers.base import DeviceSpec, Driver, ProtocolSpec

NODE_ID = re.compile(r"^(ns=\d+|nsu=[^;]+);[isgb]=.+$|^i=\d+$")


def parse_node_id(text: str, _ptype: str) -> str:
    if not NODE_ID.match(text):
        raise ValueError(f"{text!r} is not an OPC UA NodeId; valid: ns=2;s=Tank1.Level, ns=3;i=1001, "
                         "nsu=<namespace URI>;s=...")
    return text


# Imports in the functions below: asyncua and cryptography (tens of MB of a Pi's memory) only
# for a gateway with OPC UA devices.
def _options(keys: dict[str, Any]) -> Any:
    from drivers.opcua.options import UaOptions

    return UaOptions(**keys)


def _check_options(keys: dict[str, Any]) -> list[tuple[str, str]]:
    from drivers.opcua.options import check_options

    return check_options(keys)


def _driver(device: DeviceSpec) -> Driver:
    from drivers.opcua.driver import OpcUaDriver  # here: asyncua only when a device needs it

    return OpcUaDriver(device)


async def _browse(device: DeviceSpec, node: str | None, depth: int, limit: int, csv_out: str | None) -> int:
    from drivers.opcua.browse import browse_device  # here: asyncua only when browsing

    return await browse_device(device, node, depth, limit, csv_out)


OPCUA = ProtocolSpec(
    keys={
        "endpoint": ("url:opc.tcp", True), "mode": ("enum:subscribe|poll", False),
        "security_policy": ("enum:None|Basic256Sha256", False),
        "security_mode": ("enum:None|Sign|SignAndEncrypt", False),
        "certificate": ("path", False), "private_key": ("path", False),
        "server_certificate": ("path", False), "application_uri": ("str", False),
        "username": ("str", False), "password_file": ("path", False),
        "sampling_interval": ("duration", False), "queue_size": ("int", False),
        "deadband": ("float", False),
    },
    limits={"queue_size": (1, 1000)},
    options=_options,
    parse_address=parse_node_id,
    check_options=_check_options,
    secret_keys=("private_key", "password_file"),
    driver=_driver,
    browse=_browse,
)
