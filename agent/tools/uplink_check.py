"""`hazgate uplink check`: connects to each configured uplink (or one) with the gateway's own
settings and credentials, as the uplink itself connects (its `probe()`: the same connector,
leaving no trace), and says per step what works and what a technician should fix.

Steps: the address (DNS), the connection (TCP), TLS with the far end's certificate, and the
login where a connection proves it (MQTT: the broker's CONNACK). Nothing is published or
posted: HTTP and TCP platforms check credentials only with a message, which would be data.
Exit 0 only when every uplink checked is fine.
"""

from __future__ import annotations

import asyncio
import socket
import time
from dataclasses import dataclass

from agent import __version__
from agent.common.clock import ClockConfig, ClockWatch
from agent.config.gateway import GatewayConfig
from agent.north.adapters import make_uplink
from agent.north.base import ConnectFailed, Probe, UplinkContext, why
from agent.pipeline.store_thread import AsyncStore

DNS_TIMEOUT = 10.0
CONNECT_TIMEOUT = 30.0  # the connector's own timeouts come first
ORDER = ("address", "tcp", "tls", "login")
LABELS = {"address": "address", "tcp": "connection", "tls": "TLS", "login": "login"}
FIX = {
    "file": "restore the file named above, readable only by the agent (chmod 600 or 640 with group "
            "hazgate), or correct its path in the config",
    "address": "the host name does not resolve: check the address in the config and this box's DNS "
               "(/etc/resolv.conf)",
    "tcp": "nothing accepts connections there: check the address and port, the route, and that the "
           "firewall lets this box connect out to that port",
    "trust": "the far end's certificate is not trusted: ca_file must be the CA that signed it (ask "
             "the platform for its CA certificate), and the address must be a name or IP in it",
    "tls": "the TLS handshake failed: check that the port speaks TLS, and cert_file and key_file "
           "(the client certificate the platform issued for this gateway, and its key)",
    "closed": "the far end closed the connection before accepting it: it may refuse the client "
              "certificate (cert_file, key_file) or this client; ask the platform what its log says",
    "login": "the broker refused the login: username and password_file must be what the platform "
             "issued for this gateway (and the client certificate one it knows)",
}
STEP_OF = {"file": "file", "tcp": "tcp", "trust": "tls", "tls": "tls", "closed": "login", "login": "login"}


class _NothingHeld:
    """A probe sends nothing: no readings are held for it."""

    def take(self, limit: int) -> list[tuple]:
        return []

    def give_back(self, rows: list[tuple]) -> None:
        """Nothing was taken."""


@dataclass
class Verdict:
    name: str
    where: str
    lines: list[str]
    ok: bool


def _line(step: str, text: str) -> str:
    return f"  {step:<11} {text}"


def _tls(probe: Probe) -> str:
    return _line("TLS", "ok: the certificate is trusted and names the host" if probe.tls
                 else "not used (a plain address)")


async def _resolve(host: str, port: int) -> list[str]:
    async with asyncio.timeout(DNS_TIMEOUT):
        infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


async def check_one(name: str, probe: Probe) -> Verdict:
    """The steps of one uplink's connection, each with its outcome; the first failure ends it."""
    where = probe.connector.describe
    lines: list[str] = []
    passed: list[str] = []

    def failed(step: str, reason: str, fix: str) -> Verdict:
        lines.append(_line(LABELS.get(step, step), f"FAILED: {reason}"))
        lines.extend(_line(LABELS[s], "not tried") for s in ORDER if s not in passed and s != step)
        lines.append(_line("verdict", f"FAILED: {fix}"))
        return Verdict(name, where, lines, False)

    try:
        addresses = await _resolve(probe.host, probe.port)
    except (OSError, TimeoutError) as exc:
        return failed("address", f"{probe.host}: {why(exc)}", FIX["address"])
    lines.append(_line("address", f"ok: {probe.host} is {', '.join(addresses)}"))
    passed.append("address")
    started = time.monotonic()
    try:
        async with asyncio.timeout(CONNECT_TIMEOUT):
            link = await probe.connector.connect(lambda _seq: None, lambda _seq, _why: None)
    except ConnectFailed as exc:
        step = STEP_OF.get(exc.step, "tcp")
        if step == "file":
            lines.append(_line("file", f"FAILED: {exc}"))
            lines.append(_line("verdict", f"FAILED: {FIX['file']}"))
            return Verdict(name, where, lines, False)
        for s in ORDER[1:ORDER.index(step)]:
            passed.append(s)
            lines.append(_tls(probe) if s == "tls" else _line(LABELS[s], "ok"))
        return failed(step, str(exc), FIX.get(exc.step, FIX["tcp"]))
    except TimeoutError:
        return failed("tcp", f"no answer within {CONNECT_TIMEOUT:g}s", FIX["tcp"])
    took = time.monotonic() - started
    await link.close(2.0)
    lines.append(_line("connection", f"ok ({took * 1000:.0f} ms including TLS and login)"))
    lines.append(_tls(probe))
    if probe.login:
        lines.append(_line("login", f"accepted: {probe.login}"))
    else:
        lines.append(_line("login", "not checked: this platform checks its credentials (headers, "
                                    "cipher key) with each message; the agent's first message tells"))
    lines.append(_line("verdict", "OK"))
    return Verdict(name, where, lines, True)


async def check_uplinks(cfg: GatewayConfig, only: str | None) -> int:
    """Print each uplink's steps and verdict; 0 when all are fine, 1 otherwise."""
    store = AsyncStore(cfg.data_dir)  # never opened: a probe sends nothing
    points = cfg.all_points()
    ctx = UplinkContext(
        gateway=cfg.gateway_id, enterprise=cfg.enterprise_code, version=__version__,
        started_ms=0, store=store, clock=ClockWatch(ClockConfig(sync_source="trust"), lambda _step: None, lambda _ok: None),
        points=lambda: points, held=_NothingHeld(), on_state=lambda _n, _s, _r: None,
        events_stored=lambda: None, timezone=cfg.timezone)
    try:
        specs = [s for s in cfg.uplinks if only is None or s.name == only]
        verdicts = []
        for spec in specs:
            verdict = await check_one(spec.name, make_uplink(spec, ctx).probe())
            print(f"uplink {verdict.name} ({verdict.where})")
            for line in verdict.lines:
                print(line)
            verdicts.append(verdict)
    finally:
        await store.close()
    bad = [v.name for v in verdicts if not v.ok]
    print(f"{len(verdicts) - len(bad)} of {len(verdicts)} uplinks ok" + (f"; failed: {', '.join(bad)}" if bad else ""))
    return 1 if bad else 0
