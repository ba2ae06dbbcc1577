"""Test plants for OPC UA and Modbus RTU: scenario + gateway config + point tables in a temp folder.

    plant = UaPlant(tmp_path, points, mode="poll")       # an OPC UA server on a free loopback port
    plant.write(broker_url)                              # plant.toml, gateway.toml, points.csv
    plant.start_simulator(procs)                         # `hazgate simulate`, waits for the port

    bus = socat_pair(procs, tmp_path)                    # a pseudo-terminal pair carrying one RTU bus

Certificates for the security tests are made with `cryptography` (`make_cert`) or, where the
documentation's own command is under test, with openssl.
"""

from __future__ import annotations

import asyncio
import csv
import dataclasses
import datetime as dt
import json
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from conftest import HAZGATE, Proc, free_port, wait_port
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from agent.config.points import Point
from drivers.base import DeviceSpec

NS = "urn:hazgate:test:plant"


def toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str | Path):
        return json.dumps(str(value), ensure_ascii=False)
    if isinstance(value, list):
        return "[" + ", ".join(toml(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{k} = {toml(v)}" for k, v in value.items()) + " }"
    raise TypeError(value)


@dataclass
class UaPoint:
    tag: str
    address: str
    type: str
    signal: dict[str, Any] | None = None  # scenario signal; None: the point holds 0/false
    status: str | None = None  # an OPC UA status code served instead of Good
    columns: dict[str, str] = field(default_factory=dict)
    served: bool = True  # False: in the gateway's table only (a node the server does not have)


def write_table(path: Path, rows: list[dict[str, str]]) -> Path:
    columns = list(dict.fromkeys(k for r in rows for k in r))
    with path.open("w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=columns)
        w.writeheader()
        w.writerows(rows)
    return path


def gateway_head(root: Path, broker_url: str = "mqtt://127.0.0.1:1883") -> list[str]:
    return ["[gateway]", 'id = "GW-TEST-0006"', 'enterprise_code = "120116999999"',
            f"data_dir = {toml(root / 'data')}", "", "[uplink]", f"broker = {toml(broker_url)}",
            'publish_interval = "200ms"', "", "[clock]", 'sync_source = "trust"  # test boxes may lack NTP', ""]


@dataclass
class UaPlant:
    root: Path
    points: list[UaPoint]
    mode: str = "poll"
    poll_interval: str = "500ms"
    timeout: str = "1s"
    port: int = field(default_factory=free_port)
    server: dict[str, Any] = field(default_factory=dict)  # more scenario keys (security, users ...)
    device: dict[str, Any] = field(default_factory=dict)  # more gateway device keys
    update_interval: str = "50ms"
    t0: float | None = None

    @property
    def endpoint(self) -> str:
        return f"opc.tcp://127.0.0.1:{self.port}"

    @property
    def scenario(self) -> Path:
        return self.root / "plant.toml"

    @property
    def config(self) -> Path:
        return self.root / "gateway.toml"

    def write(self, broker_url: str = "mqtt://127.0.0.1:1883") -> UaPlant:
        self.root.mkdir(parents=True, exist_ok=True)
        rows = [{"tag": p.tag, "name": p.tag, "address": p.address, "type": p.type, **p.columns} for p in self.points]
        write_table(self.root / "points.csv", rows)
        write_table(self.root / "served.csv", [r for r, p in zip(rows, self.points, strict=True) if p.served])
        lines = [f"t0 = {self.t0!r}", ""] if self.t0 is not None else []
        lines += ["[[plcs]]", 'name = "ua"', 'protocol = "opcua"', 'host = "127.0.0.1"', f"port = {self.port}",
                  'points = "served.csv"', f"namespace = {toml(NS)}", f"update_interval = {toml(self.update_interval)}"]
        lines += [f"{k} = {toml(v)}" for k, v in self.server.items()]
        served = [p for p in self.points if p.served]
        lines += ["", "[plcs.signals]"] + [f"{p.tag} = {toml(p.signal)}" for p in served if p.signal]
        lines += ["", "[plcs.status]"] + [f"{p.tag} = {toml(p.status)}" for p in served if p.status]
        self.scenario.write_text("\n".join(lines) + "\n", encoding="utf-8")
        dev = ["[[devices]]", 'name = "ua"', 'protocol = "opcua"', f"endpoint = {toml(self.endpoint)}",
               f"mode = {toml(self.mode)}", f"poll_interval = {toml(self.poll_interval)}",
               f"timeout = {toml(self.timeout)}", 'points = "points.csv"']
        dev += [f"{k} = {toml(v)}" for k, v in self.device.items()]
        self.config.write_text("\n".join(gateway_head(self.root, broker_url) + dev) + "\n", encoding="utf-8")
        return self

    def start_simulator(self, procs: list[Proc], timeout: float = 20.0) -> Proc:
        n = sum(1 for p in procs if str(self.scenario) in p.args)
        proc = Proc([*HAZGATE, "simulate", "-s", str(self.scenario)], self.root / f"simulate-{n}.log")
        procs.append(proc)
        try:
            wait_port(self.port, timeout)
        except TimeoutError:
            raise AssertionError(f"simulator not listening:\n{proc.output()[-3000:]}") from None
        return proc

    def device_config(self, **options: Any) -> DeviceSpec:
        """The gateway device as load_config would build it (for drivers run inside the test)."""
        from agent.config.loader import load_config

        dev = load_config(self.config).devices[0]
        return dataclasses.replace(dev, options=dataclasses.replace(dev.options, **options))


def make_cert(folder: Path, name: str, uri: str, *, server: bool = False, days: int = 365) -> tuple[Path, Path]:
    """A self-signed application certificate (DER) and its key (PEM), as OPC UA wants them."""
    folder.mkdir(parents=True, exist_ok=True)
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    now = dt.datetime.now(dt.UTC)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    usage = [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH] if server else [ExtendedKeyUsageOID.CLIENT_AUTH]
    cert = (
        x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(days=1 + max(0, 1 - days)))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName([x509.UniformResourceIdentifier(uri), x509.DNSName("localhost")]), False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), True)
        .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=True, key_encipherment=True,
                                     data_encipherment=True, key_agreement=False, key_cert_sign=False,
                                     crl_sign=False, encipher_only=False, decipher_only=False), True)
        .add_extension(x509.ExtendedKeyUsage(usage), False)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = folder / f"{name}-cert.der", folder / f"{name}-key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.DER))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    key_path.chmod(0o600)  # a private key readable by others is a config problem
    return cert_path, key_path


@dataclass
class SerialPair:
    """Two linked pseudo-terminals made by socat: `gateway` for the agent, `device` for the slaves."""

    gateway: Path
    device: Path
    proc: Proc


def socat_pair(procs: list[Proc], root: Path, name: str = "bus") -> SerialPair:
    exe = shutil.which("socat") or "/usr/bin/socat"
    if not Path(exe).exists():
        raise AssertionError("socat is not installed: apt-get install -y socat")
    gw, dev = root / f"{name}-gw", root / f"{name}-dev"
    proc = Proc([exe, "-d", "-d", f"pty,raw,echo=0,link={gw}", f"pty,raw,echo=0,link={dev}"], root / f"socat-{name}.log")
    procs.append(proc)
    deadline = time.monotonic() + 5
    while not (gw.exists() and dev.exists()):
        if time.monotonic() > deadline or not proc.alive():
            raise AssertionError(f"socat made no pty pair:\n{proc.output()}")
        time.sleep(0.02)
    return SerialPair(gw, dev, proc)


def point(tag: str, address: str, ptype: str) -> Point:
    return Point(tag=tag, address=address, type=ptype, line=2, file="test")


async def read_until(driver: Any, pred: Any, within: float, every: float = 0.2) -> list[Any]:
    """Call driver.read() until pred(samples) holds; return those samples (AssertionError on timeout)."""
    deadline = time.monotonic() + within
    samples: list[Any] = []
    while time.monotonic() < deadline:
        samples = await driver.read()
        if pred(samples):
            return samples
        await asyncio.sleep(every)
    raise AssertionError(f"condition not met within {within}s; last samples: {samples}")
