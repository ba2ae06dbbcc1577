"""HTTP and TCP links against the reference platform receiver (in-process, loopback only):
acceptance, refusal, 5xx, timeouts, refused connections, TLS against a private CA, per-message
and persistent TCP connections, an oversized reply frame."""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import logging
import ssl
from dataclasses import replace
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from agent.north.base import ConnectFailed
from agent.north.http.uplink import HttpConnector
from agent.north.platform import Unanswered
from agent.north.tcp.uplink import TcpConnector
from agent.north.templated import TemplatedBody
from agent.receiver.platform import (
    Controls,
    PlatformReceiver,
    PlatformServer,
    RejectRule,
    open_db,
)
from tests.conftest import free_port
from tests.platformkit import context, jiangsu_tcp, mem_http

ROWS = [(1_795_777_200_000, "TK101_LT", "m", "float32", 7.25, "good", None),
        (1_795_777_200_000, "TK101_HLA", "", "bool", 1, "good", None)]


class Verdicts:
    def __init__(self) -> None:
        self.acked: list[int] = []
        self.rejected: list[tuple[int, str]] = []
        self.changed = asyncio.Event()

    def ack(self, seq: int) -> None:
        self.acked.append(seq)
        self.changed.set()

    def reject(self, seq: int, reason: str) -> None:
        self.rejected.append((seq, reason))
        self.changed.set()


async def platform(tmp_path: Path, spec, listen: str, controls: Controls | None = None,
                   tls: ssl.SSLContext | None = None) -> tuple[PlatformReceiver, PlatformServer]:
    receiver = PlatformReceiver(spec, open_db(tmp_path / "platform.db"), controls or Controls())
    server = PlatformServer(receiver, listen, tls)
    await server.start()
    return receiver, server


async def settle(link, verdicts: Verdicts, within: float = 5.0) -> None:
    """Until the link has a verdict or is lost."""
    lost = asyncio.ensure_future(link.lost.wait())
    changed = asyncio.ensure_future(verdicts.changed.wait())
    await asyncio.wait({lost, changed}, timeout=within, return_when=asyncio.FIRST_COMPLETED)
    lost.cancel()
    changed.cancel()


# --- HTTP ---------------------------------------------------------------------------------

async def test_http_sm4_hex_with_appsecret_is_accepted_and_stored(tmp_path: Path) -> None:
    port = free_port()
    spec = mem_http(tmp_path, f"http://127.0.0.1:{port}/api/realtime")
    receiver, server = await platform(tmp_path, spec, f"http://127.0.0.1:{port}/api/realtime")
    body = TemplatedBody(context(None), spec.body)
    verdicts = Verdicts()
    link = await HttpConnector(spec, Unanswered("mem")).connect(verdicts.ack, verdicts.reject)
    try:
        assert link.send(7, "readings", body.readings(False)(7, ROWS), False)
        await settle(link, verdicts)
        assert verdicts.acked == [7] and not link.lost.is_set()
        verdicts.changed.clear()
        assert link.send(8, "readings", body.readings(True)(8, ROWS[:1]), False)
        await settle(link, verdicts)
        assert verdicts.acked == [7, 8]
    finally:
        await link.close(1.0)
        await server.stop()
    gw = receiver.gateways["GW-320200-0001"]
    assert (gw.messages, gw.records, gw.violations, gw.undecodable, gw.gaps()) == (2, 3, 0, 0, [])
    rows = receiver.db.execute("SELECT seq, tag, value FROM platform_records ORDER BY rowid").fetchall()
    assert rows == [(7, "TK101_LT", 7.25), (7, "TK101_HLA", 1), (8, "TK101_LT", 7.25)]


async def test_http_wrong_appsecret_is_no_answer_never_a_refusal(tmp_path: Path) -> None:
    port = free_port()
    spec = mem_http(tmp_path, f"http://127.0.0.1:{port}/api/realtime")
    receiver, server = await platform(tmp_path, spec, f"http://127.0.0.1:{port}/api/realtime")
    (tmp_path / "secrets" / "mem.appsecret").write_text("not-the-issued-one\n")
    verdicts = Verdicts()
    link = await HttpConnector(spec, Unanswered("mem")).connect(verdicts.ack, verdicts.reject)
    try:
        link.send(1, "readings", TemplatedBody(context(None), spec.body).readings(False)(1, ROWS), False)
        await settle(link, verdicts)
        assert link.lost.is_set() and verdicts.acked == [] and verdicts.rejected == []
    finally:
        await link.close(1.0)
        await server.stop()
    assert receiver.gateways == {}


async def test_http_refusal_names_the_reason_and_the_data_id(tmp_path: Path) -> None:
    port = free_port()
    spec = mem_http(tmp_path, f"http://127.0.0.1:{port}/api/realtime")
    receiver, server = await platform(tmp_path, spec, f"http://127.0.0.1:{port}/api/realtime",
                                      Controls(reject=RejectRule(seqs=frozenset({2}))))
    body = TemplatedBody(context(None), spec.body)
    verdicts = Verdicts()
    link = await HttpConnector(spec, Unanswered("mem")).connect(verdicts.ack, verdicts.reject)
    try:
        for seq in (1, 2, 3):
            verdicts.changed.clear()
            link.send(seq, "readings", body.readings(False)(seq, ROWS), False)
            await settle(link, verdicts)
    finally:
        await link.close(1.0)
        await server.stop()
    assert verdicts.acked == [1, 3]
    [(seq, reason)] = verdicts.rejected
    assert seq == 2 and reason.startswith("code = '1', not '0'") and "failed records" in reason
    assert receiver.gateways["GW-320200-0001"].rejected == 1


@pytest.mark.parametrize("controls", [Controls(fail=503), Controls(delay=1.5)], ids=["5xx", "timeout"])
async def test_http_5xx_and_timeout_lose_the_link_without_a_verdict(tmp_path: Path, controls: Controls) -> None:
    port = free_port()
    spec = mem_http(tmp_path, f"http://127.0.0.1:{port}/api/realtime", timeout="500ms")
    receiver, server = await platform(tmp_path, spec, f"http://127.0.0.1:{port}/api/realtime", controls)
    verdicts = Verdicts()
    link = await HttpConnector(spec, Unanswered("mem")).connect(verdicts.ack, verdicts.reject)
    try:
        link.send(1, "readings", TemplatedBody(context(None), spec.body).readings(False)(1, ROWS), False)
        await settle(link, verdicts)
        assert link.lost.is_set() and verdicts.acked == verdicts.rejected == []
        assert link.reason.startswith("HTTP 503" if controls.fail else "http://127.0.0.1")
    finally:
        await link.close(1.0)
        await server.stop()


async def test_http_refused_connection_fails_to_connect(tmp_path: Path) -> None:
    port = free_port()
    spec = mem_http(tmp_path, f"http://127.0.0.1:{port}/api/realtime")
    with pytest.raises(ConnectFailed, match=f"127.0.0.1:{port}: .*[Rr]efused"):
        await HttpConnector(spec, Unanswered("mem")).connect(lambda s: None, lambda s, r: None)


def _private_ca(folder: Path) -> tuple[Path, ssl.SSLContext]:
    """A CA and a server certificate for 127.0.0.1 signed by it: (CA file, server context)."""
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Example Park CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
          .public_key(ca_key.public_key()).serial_number(1).not_valid_before(now)
          .not_valid_after(now + datetime.timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
            .issuer_name(ca_name).public_key(key.public_key()).serial_number(2)
            .not_valid_before(now).not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .sign(ca_key, hashes.SHA256()))
    ca_file, cert_file, key_file = folder / "ca.pem", folder / "server.pem", folder / "server.key"
    ca_file.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server.load_cert_chain(cert_file, key_file)
    return ca_file, server


async def test_https_verifies_against_ca_file_and_refuses_without_it(tmp_path: Path) -> None:
    ca_file, server_tls = _private_ca(tmp_path)
    port = free_port()
    base = mem_http(tmp_path, f"https://127.0.0.1:{port}/api/realtime")
    receiver, server = await platform(tmp_path, base, f"http://127.0.0.1:{port}/api/realtime",
                                      tls=server_tls)
    try:
        with pytest.raises(ConnectFailed, match="TLS: unable to get local issuer certificate: check ca_file"):
            await HttpConnector(base, Unanswered("mem")).connect(lambda s: None, lambda s, r: None)
        spec = replace(base, ca_file=ca_file)
        verdicts = Verdicts()
        link = await HttpConnector(spec, Unanswered("mem")).connect(verdicts.ack, verdicts.reject)
        link.send(1, "readings", TemplatedBody(context(None), spec.body).readings(False)(1, ROWS), False)
        await settle(link, verdicts)
        await link.close(1.0)
        assert verdicts.acked == [1]
    finally:
        await server.stop()


# --- TCP ----------------------------------------------------------------------------------

@pytest.mark.parametrize("connection", ["per-message", "persistent"])
async def test_tcp_jiangsu_frames_accept_and_refuse(tmp_path: Path, connection: str) -> None:
    port = free_port()
    spec = jiangsu_tcp(tmp_path, port, connection)
    receiver, server = await platform(tmp_path, spec, f"tcp://127.0.0.1:{port}",
                                      Controls(reject=RejectRule(record=("BIT_NO", "TK101_HLA"))))
    body = TemplatedBody(context(None), spec.body)
    verdicts = Verdicts()
    link = await TcpConnector(spec, Unanswered("jiangsu")).connect(verdicts.ack, verdicts.reject)
    try:
        for seq, rows in ((1, ROWS[:1]), (2, ROWS), (3, ROWS[:1]), (4, ROWS[:1])):
            verdicts.changed.clear()
            assert link.send(seq, "readings", body.readings(False)(seq, rows), False)
            await settle(link, verdicts)
        assert not link.lost.is_set()
    finally:
        await link.close(1.0)
        await server.stop()
    assert verdicts.acked == [1, 3, 4] and [s for s, _ in verdicts.rejected] == [2]
    gw = receiver.gateways["jiangsu"]  # no {gateway} in this template: counted under the uplink
    # seq 2 was refused, so the platform never took it: a gap until it comes again
    assert (gw.messages, gw.records, gw.rejected, gw.violations, gw.gaps()) == (3, 3, 1, 0, [(2, 2)])
    ts = receiver.db.execute("SELECT DISTINCT ts FROM platform_records").fetchall()
    assert len(ts) == 1 and len(ts[0][0]) == len("2026-11-27 19:00:00")


async def test_tcp_refused_and_silent_platforms(tmp_path: Path) -> None:
    port = free_port()
    spec = jiangsu_tcp(tmp_path, port, "persistent", timeout="300ms")
    with pytest.raises(ConnectFailed, match="[Rr]efused"):
        await TcpConnector(spec, Unanswered("jiangsu")).connect(lambda s: None, lambda s, r: None)

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(1 << 20)
        await asyncio.sleep(2)
        writer.close()

    peer = await asyncio.start_server(silent, "127.0.0.1", port)
    verdicts = Verdicts()
    link = await TcpConnector(spec, Unanswered("jiangsu")).connect(verdicts.ack, verdicts.reject)
    try:
        link.send(1, "readings", TemplatedBody(context(None), spec.body).readings(False)(1, ROWS), False)
        await settle(link, verdicts)
        assert link.lost.is_set() and verdicts.acked == verdicts.rejected == []
    finally:
        await link.close(1.0)
        peer.close()


async def test_tcp_oversized_reply_frame_is_a_clear_error(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    port = free_port()
    spec = jiangsu_tcp(tmp_path, port, "per-message", max_reply=1024)

    async def chatty(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(1 << 20)
        writer.write(b"x" * 5000)  # no delimiter: a platform speaking another framing
        await writer.drain()
        await asyncio.sleep(1)
        writer.close()

    peer = await asyncio.start_server(chatty, "127.0.0.1", port)
    verdicts = Verdicts()
    link = await TcpConnector(spec, Unanswered("jiangsu")).connect(verdicts.ack, verdicts.reject)
    try:
        with caplog.at_level(logging.ERROR, logger="hazgate.uplink"):
            link.send(1, "readings", TemplatedBody(context(None), spec.body).readings(False)(1, ROWS), False)
            await settle(link, verdicts)
        assert link.lost.is_set() and verdicts.acked == verdicts.rejected == []
        [record] = [r for r in caplog.records if "too large" in r.getMessage()]
        assert "frames are at most 1024 bytes" in record.fields["error"]
    finally:
        await link.close(1.0)
        peer.close()


async def test_tcp_persistent_out_of_step_reply_ends_the_link(tmp_path: Path) -> None:
    port = free_port()
    spec = jiangsu_tcp(tmp_path, port, "persistent")

    async def double(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(1 << 20)
        writer.write(b'{"code":"0"}@@{"code":"0"}@@')  # two replies to one frame
        await writer.drain()
        await asyncio.sleep(1)
        writer.close()

    peer = await asyncio.start_server(double, "127.0.0.1", port)
    verdicts = Verdicts()
    link = await TcpConnector(spec, Unanswered("jiangsu")).connect(verdicts.ack, verdicts.reject)
    try:
        link.send(1, "readings", TemplatedBody(context(None), spec.body).readings(False)(1, ROWS), False)
        await asyncio.wait_for(link.lost.wait(), 3)
        assert verdicts.acked == [1]  # the first reply answered it; the second is out of step
    finally:
        await link.close(1.0)
        peer.close()
