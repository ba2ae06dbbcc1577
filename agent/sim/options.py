"""Scenario keys of a simulated PLC beyond Modbus TCP: the serial side of Modbus RTU, OPC UA.

```toml
[[plcs]]                            # Modbus RTU slaves: one [[plcs]] per unit, several per port
name = "gas-bus-1-u3"
protocol = "modbus-rtu"
link = "/tmp/hazgate-gas-bus-1"     # a virtual serial port created by the simulator for the gateway
# port = "/dev/ttyUSB1"             # or: serve on an existing serial device (one end of a socat pair)
# port = "tcp://127.0.0.1:4001"     # or: be a serial device server (Moxa NPort...): RTU frames over TCP
                                    # (udp://127.0.0.1:4001: over UDP); the units of one port share it
baudrate = 9600                     # parity = "N", stopbits = 1, bytesize = 8
unit = 3
fault = "none"                      # none | silent (never answers) | garble (answers with a bad CRC)
points = "points/gas-bus-1.csv"

[[plcs]]                            # an OPC UA server
name = "reactor-sis-ua"
protocol = "opcua"
host = "127.0.0.1"
port = 4840
points = "points/reactor-sis-opcua.csv"   # NodeIds in the address column become variables
security = ["None"]                 # and/or "Basic256Sha256_Sign", "Basic256Sha256_SignAndEncrypt"
# certificate = "pki/server-cert.der"    # the server's own certificate and key (needed for security)
# private_key = "pki/server-key.pem"
# trusted_clients = "pki/trusted"        # only these client certificates are accepted (default: any)
# users = { operator = "secret" }        # username/password logins (then no anonymous login)
update_interval = "100ms"           # how often values are recomputed (a change is written with its time)
[plcs.status]                       # a status code served instead of Good for some tags
R101_PT01 = "UncertainLastUsableValue"
```
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from agent.common.durations import parse_duration
from agent.common.problems import Problems
from drivers.modbus.options import device_server

SIM_PROTOCOLS = ("modbus-tcp", "modbus-rtu", "opcua")
RTU_FAULTS = ("none", "silent", "garble")
UA_SECURITY = ("None", "Basic256Sha256_Sign", "Basic256Sha256_SignAndEncrypt")
SERIAL = {"baudrate": (9600, (300, 921600)), "bytesize": (8, (7, 8)), "stopbits": (1, (1, 2))}


def plc_options(proto: str, raw: dict, base: Path, tags: set[str], problems: Problems, file: str,
                where: str) -> dict[str, Any]:
    o: dict[str, Any] = {}

    def err(key: str, msg: str) -> None:
        problems.add(file, 1, f"{where}.{key}", msg)

    def path(key: str) -> Path | None:
        v = raw.get(key)
        if v is None:
            return None
        if not isinstance(v, str) or not v:
            err(key, f"{v!r} is not a path")
            return None
        return Path(v) if Path(v).is_absolute() else base / v

    if proto == "modbus-rtu":
        port, link = raw.get("port"), raw.get("link")
        if (port is None) == (link is None):
            err("port", "give either port (a serial device to serve on, e.g. one end of a socat pair) "
                "or link (a path where the simulator creates a virtual serial port for the gateway)")
        for key, value in (("port", port), ("link", link)):
            if value is not None and (not isinstance(value, str) or not value):
                err(key, f"{value!r} is not a path such as \"/dev/ttyUSB1\" or \"/tmp/hazgate-bus\"")
        o["server"] = None
        if isinstance(port, str):
            try:
                o["server"] = device_server(port)
            except ValueError as exc:
                err("port", str(exc))
            if o["server"] and not (o["server"].host.startswith("127.") or o["server"].host in ("localhost", "::1")):
                err("port", f"{port!r}: the simulator serves on loopback only; valid: tcp://127.0.0.1:PORT")
        o["serial_port"], o["link"] = port, link
        for key, (default, (lo, hi)) in SERIAL.items():
            value = raw.get(key, default)
            if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
                err(key, f"{value!r} is out of range; valid: {lo}-{hi}")
            o[key] = value
        o["parity"] = raw.get("parity", "N")
        if o["parity"] not in ("N", "E", "O"):
            err("parity", f"{o['parity']!r} is not valid; valid: N, E, O")
        o["fault"] = raw.get("fault", "none")
        if o["fault"] not in RTU_FAULTS:
            err("fault", f"{o['fault']!r} is not valid; valid: {', '.join(RTU_FAULTS)}")
    elif proto == "opcua":
        security = raw.get("security", ["None"])
        if not isinstance(security, list) or not security or any(s not in UA_SECURITY for s in security):
            err("security", f"{security!r} is not valid; valid: a list of {', '.join(UA_SECURITY)}")
            security = ["None"]
        o["security"] = security
        for key in ("certificate", "private_key", "trusted_clients"):
            o[key] = path(key)
            if o[key] is not None and not o[key].exists():
                err(key, f"{o[key]} does not exist")
        if any(s != "None" for s in security) and (o["certificate"] is None or o["private_key"] is None):
            err("certificate", "security other than None needs the server's certificate and private_key")
        users = raw.get("users", {})
        if not isinstance(users, dict) or not all(isinstance(v, str) for v in users.values()):
            err("users", f"{users!r} is not valid; valid: a table such as {{ operator = \"secret\" }}")
            users = {}
        o["users"] = users
        status = raw.get("status", {})
        if not isinstance(status, dict):
            err("status", "must be a table of tag = \"StatusCodeName\"")
            status = {}
        from asyncua import ua  # only a scenario with an OPC UA server pays for this import

        for tag, name in status.items():
            if tag not in tags:
                err(f"status.{tag}", "no such tag in the point table")
            elif not isinstance(name, str) or not hasattr(ua.StatusCodes, name):
                err(f"status.{tag}", f"{name!r} is not an OPC UA status code; valid: e.g. Good, "
                    "UncertainLastUsableValue, BadSensorFailure, BadCommunicationError")
        o["status"] = status
        try:
            o["update_interval"] = parse_duration(raw.get("update_interval", "100ms"))
        except ValueError as exc:
            err("update_interval", str(exc))
            o["update_interval"] = 0.1
        o["namespace"] = raw.get("namespace", "urn:hazgate:simulator")
    return o
