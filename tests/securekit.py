"""A secured Mosquitto for tests: TLS with a test CA, client certificates required, and a
password file (no anonymous clients), on a free loopback port.

`make_pki(folder)` writes a CA, the broker's certificate for 127.0.0.1, a client certificate
and a second CA the broker does not trust; `SecureBroker` serves with them and one user.
"""

from __future__ import annotations

import datetime
import ipaddress
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from conftest import Broker

USER, PASSWORD = "GW-TEST-0001", "pw-5c1e8b07"


@dataclass(frozen=True)
class Pki:
    ca: Path  # signed the broker's and the client's certificates
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    stranger_ca: Path  # a CA nobody here trusts
    stranger_cert: Path  # a client certificate it signed
    stranger_key: Path


def certificate(path: Path, *, name: str | None = None, issuer: tuple | None = None, ip: str | None = None,
                days: float = 30, since_days: float = 1, der: bool = False, key_file: bool = True) -> tuple:
    """(certificate, key): the certificate written to `path` (PEM, or DER), its key beside it as
    `.key` (0600) unless `key_file` is false. Self-signed (a CA) when `issuer` is None, else
    signed by issuer = (certificate, key); valid from `since_days` ago for `days` from now."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name or path.stem)])
    now = datetime.datetime.now(datetime.UTC)
    ca = issuer is None
    issuer_cert, issuer_key = (None, key) if ca else issuer
    b = (x509.CertificateBuilder().subject_name(subject)
         .issuer_name(subject if ca else issuer_cert.subject).public_key(key.public_key())
         .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(days=since_days))
         .not_valid_after(now + datetime.timedelta(days=days))
         .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if ip is not None:
        b = b.add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(ip))]), critical=False)
    cert = b.sign(issuer_key, hashes.SHA256())
    path.write_bytes(cert.public_bytes(serialization.Encoding.DER if der else serialization.Encoding.PEM))
    if key_file:
        key_path = path.with_suffix(".key")
        key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                               serialization.NoEncryption()))
        key_path.chmod(0o600)
    return cert, key


def _issue(folder: Path, name: str, issuer: tuple | None, ip: str | None = None) -> tuple:
    """`name.pem` and `name.key` in `folder`."""
    return certificate(folder / f"{name}.pem", name=name, issuer=issuer, ip=ip)


def make_pki(folder: Path) -> Pki:
    folder.mkdir(parents=True, exist_ok=True)
    ca = _issue(folder, "ca", None)
    _issue(folder, "broker", ca, ip="127.0.0.1")
    _issue(folder, "client", ca)
    stranger = _issue(folder, "stranger-ca", None)
    _issue(folder, "stranger", stranger)
    f = folder
    return Pki(f / "ca.pem", f / "broker.pem", f / "broker.key", f / "client.pem", f / "client.key",
               f / "stranger-ca.pem", f / "stranger.pem", f / "stranger.key")


def secret_file(path: Path, text: str) -> Path:
    """An owner-only file holding `text` (a password)."""
    path.write_text(text + "\n")
    path.chmod(0o600)
    return path


class SecureBroker(Broker):
    """Mosquitto on mqtts://127.0.0.1:PORT: a client certificate signed by the test CA and the
    user USER with PASSWORD, nothing less."""

    def __init__(self, workdir: Path, pki: Pki):
        super().__init__(workdir)
        self.pki = pki
        passwords = workdir / "mosquitto.passwd"
        exe = shutil.which("mosquitto_passwd") or "/usr/bin/mosquitto_passwd"
        subprocess.run([exe, "-b", "-c", str(passwords), USER, PASSWORD], check=True, timeout=30,
                       capture_output=True)
        self.conf.write_text(
            f"user root\nper_listener_settings true\nlistener {self.port} 127.0.0.1\n"
            f"cafile {pki.ca}\ncertfile {pki.server_cert}\nkeyfile {pki.server_key}\n"
            f"require_certificate true\nallow_anonymous false\npassword_file {passwords}\n"
            "persistence false\n")

    @property
    def url(self) -> str:
        return f"mqtts://127.0.0.1:{self.port}"


def secure_uplink(config: Path, pki: Pki, password_file: Path, cert: Path | None = None,
                  key: Path | None = None, ca: Path | None = None) -> None:
    """Give `[uplink]` of a gateway config (tests/plant.py) the secured broker's trust, a
    client certificate (default: the one the test CA signed) and the login."""
    keys = (f'ca_file = "{ca or pki.ca}"\ncert_file = "{cert or pki.client_cert}"\n'
            f'key_file = "{key or pki.client_key}"\nusername = "{USER}"\npassword_file = "{password_file}"\n')
    config.write_text(config.read_text().replace("[uplink]\n", "[uplink]\n" + keys, 1))
