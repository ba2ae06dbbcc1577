"""OPC UA device options: defaults, the security checks made before any connection, and trust.

Everything here works on files only (no network), so `hazgate validate` and the start of
`hazgate run` report a wrong certificate, key, application URI or trust setting with the key
and file that are wrong, instead of a cryptic failure in the middle of a handshake.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization

CERT_HELP = "see 'The gateway certificate' in docs/device-maps.md"
CERT_SUFFIXES = (".der", ".pem", ".crt", ".cer")
DEFAULT_APPLICATION_URI = "urn:hazgate:gateway"


@dataclass
class UaOptions:
    endpoint: str
    mode: str = "subscribe"
    security_policy: str = "None"
    security_mode: str = "None"
    certificate: Path | None = None
    private_key: Path | None = None
    server_certificate: Path | None = None
    application_uri: str | None = None
    username: str | None = None
    password_file: Path | None = None
    sampling_interval: float | None = None  # seconds; None: the poll interval
    queue_size: int = 1
    deadband: float = 0.0

    @property
    def where(self) -> str:
        return self.endpoint

    @property
    def bus(self) -> str | None:
        return None

    def line(self) -> dict[str, Any]:
        return {}

    @property
    def secure(self) -> bool:
        return self.security_mode != "None" and self.security_policy != "None"

    @property
    def security(self) -> str:
        return "None" if not self.secure else f"{self.security_policy} {self.security_mode}"


# --- certificates ------------------------------------------------------------------------
def load_certificate(path: Path) -> x509.Certificate:
    """A certificate from a DER or PEM file; ValueError says what the file is not."""
    data = path.read_bytes()
    try:
        if b"-----BEGIN" in data:
            return x509.load_pem_x509_certificate(data)
        return x509.load_der_x509_certificate(data)
    except ValueError as exc:
        raise ValueError(f"{path} is not an X.509 certificate (DER or PEM): {exc}") from None


def load_private_key(path: Path):  # noqa: ANN201 - a cryptography private key
    data = path.read_bytes()
    try:
        if b"-----BEGIN" in data:
            return serialization.load_pem_private_key(data, password=None)
        return serialization.load_der_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        raise ValueError(f"{path} is not an unencrypted private key (PEM or DER): {exc}") from None


def certificate_uris(cert: x509.Certificate) -> list[str]:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    except x509.ExtensionNotFound:
        return []
    return list(san.value.get_values_for_type(x509.UniformResourceIdentifier))


def fingerprint(der: bytes) -> str:
    digest = hashlib.sha256(der).hexdigest().upper()
    return ":".join(digest[i : i + 2] for i in range(0, 16, 2)) + "…"


def describe(cert: x509.Certificate) -> str:
    cn = cert.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)
    uris = certificate_uris(cert)
    der = cert.public_bytes(serialization.Encoding.DER)
    return (f"CN={cn[0].value if cn else '?'}" + (f", URI {uris[0]}" if uris else "")
            + f", SHA-256 {fingerprint(der)}")


def trusted_certificates(path: Path) -> list[x509.Certificate]:
    """The certificates of a trust setting: one file, or every certificate file in a folder."""
    if path.is_dir():
        certs = []
        for f in sorted(path.iterdir()):
            if f.suffix.lower() in CERT_SUFFIXES and f.is_file():
                try:
                    certs.append(load_certificate(f))
                except (ValueError, OSError):
                    continue
        return certs
    return [load_certificate(path)]


def untrusted_reason(server_der: bytes, trust: Path) -> str | None:
    """None when the server's certificate is in `trust` or directly issued by one there."""
    cert = x509.load_der_x509_certificate(server_der)
    for t in trusted_certificates(trust):
        if t.public_bytes(serialization.Encoding.DER) == server_der:
            return None
        try:
            cert.verify_directly_issued_by(t)
            return None
        except (ValueError, TypeError, InvalidSignature):
            continue
    where = f"folder {trust}" if trust.is_dir() else f"file {trust}"
    return (f"server certificate not trusted: {describe(cert)} is not in {where} (nor issued by a "
            "certificate there); valid: put the server's certificate there once you have checked its fingerprint")


def application_uri(o: UaOptions) -> str:
    """The URI the gateway presents: the configured one, else the one in its certificate."""
    if o.application_uri:
        return o.application_uri
    if o.certificate is not None:
        try:
            uris = certificate_uris(load_certificate(o.certificate))
        except (ValueError, OSError):
            uris = []
        if uris:
            return uris[0]
    return DEFAULT_APPLICATION_URI


# --- validation ---------------------------------------------------------------------------
def check_options(o: dict[str, Any]) -> list[tuple[str, str]]:
    """Problems as (key, message) for one OPC UA device's converted keys."""
    problems: list[tuple[str, str]] = []
    policy, mode = o.get("security_policy", "None"), o.get("security_mode", "None")
    if policy == "None" and mode != "None":
        problems.append(("security_policy", f"'None' does not go with security_mode {mode!r}; "
                         "valid: security_policy = \"Basic256Sha256\" with Sign or SignAndEncrypt"))
    elif policy != "None" and mode == "None":
        problems.append(("security_mode", f"'None' does not go with security_policy {policy!r}; "
                         "valid: \"Sign\" or \"SignAndEncrypt\" (or security_policy = \"None\")"))
    if o.get("deadband", 0.0) < 0:
        problems.append(("deadband", f"{o['deadband']} is negative; valid: 0 or more, in the server's units"))
    if "username" in o and "password_file" not in o:
        problems.append(("password_file", "username needs password_file (a file holding only the password)"))
    if "password_file" in o and "username" not in o:
        problems.append(("username", "password_file needs username; give both or neither"))
    if "username" in o and mode != "SignAndEncrypt":
        # Without an encrypted channel the password is encrypted only if the server's user token
        # policy says so, which only the server knows (GetEndpoints): validate cannot check it,
        # and asyncua sends the password in clear text otherwise, with a warning our logs hide.
        problems.append(("username", f"the password of {o['username']!r} could cross the network unencrypted "
                         f"with security_mode {mode!r} (whether the server's user token policy encrypts it "
                         "cannot be checked before connecting); valid: security_policy = \"Basic256Sha256\" "
                         "with security_mode = \"SignAndEncrypt\", or no username and password_file (anonymous)"))
    secure = policy != "None" and mode != "None"
    needed = {
        "certificate": f"the gateway's certificate file (DER or PEM); {CERT_HELP}",
        "private_key": "the gateway's private key file (PEM)",
        "server_certificate": "the server's certificate file, or a folder of trusted certificates",
    }
    if secure:
        for key, what in needed.items():
            if key not in o:
                problems.append((key, f"required with security_mode {mode!r}; valid: {what}"))
    missing = set()
    for key in ("certificate", "private_key", "server_certificate", "password_file"):
        if key in o and not o[key].exists():
            missing.add(key)
            problems.append((key, f"{'folder or file' if key == 'server_certificate' else 'file'} {o[key]} does not exist"))
    cert = None
    if "certificate" in o and "certificate" not in missing:
        try:
            cert = load_certificate(o["certificate"])
        except (ValueError, OSError) as exc:
            problems.append(("certificate", str(exc)))
    if cert is not None:
        problems += _check_certificate(cert, o)
    if "server_certificate" in o and "server_certificate" not in missing:
        trust = o["server_certificate"]
        try:
            if not trusted_certificates(trust):
                problems.append(("server_certificate", f"folder {trust} holds no certificate; valid: "
                                 f"files ending in {', '.join(CERT_SUFFIXES)}"))
        except (ValueError, OSError) as exc:
            problems.append(("server_certificate", str(exc)))
    return problems


def _check_certificate(cert: x509.Certificate, o: dict[str, Any]) -> list[tuple[str, str]]:
    problems = []
    path = o["certificate"]
    uris = certificate_uris(cert)
    if not uris:
        problems.append(("certificate", f"{path} carries no application URI (subjectAltName URI:...); "
                         f"valid: a certificate made for the gateway's URI, {CERT_HELP}"))
    elif o.get("application_uri") and o["application_uri"] not in uris:
        problems.append(("application_uri", f"{o['application_uri']!r} is not the application URI in "
                         f"certificate {path} ({', '.join(uris)}); valid: {uris[0]!r}, or a new "
                         f"certificate made for {o['application_uri']!r}"))
    now = dt.datetime.now(dt.UTC)
    if cert.not_valid_after_utc < now:
        problems.append(("certificate", f"{path} expired on {cert.not_valid_after_utc:%Y-%m-%d}; "
                         f"valid: a current certificate, {CERT_HELP}"))
    elif cert.not_valid_before_utc > now:
        problems.append(("certificate", f"{path} is not valid before {cert.not_valid_before_utc:%Y-%m-%d %H:%M} UTC; "
                         "valid: a certificate already in force (check the gateway's clock)"))
    key_path = o.get("private_key")
    if key_path is not None and key_path.exists():
        try:
            key = load_private_key(key_path)
        except (ValueError, OSError) as exc:
            problems.append(("private_key", str(exc)))
        else:
            pub = serialization.PublicFormat.SubjectPublicKeyInfo
            enc = serialization.Encoding.DER
            if key.public_key().public_bytes(enc, pub) != cert.public_key().public_bytes(enc, pub):
                problems.append(("private_key", f"{key_path} does not belong to certificate {path}; "
                                 "valid: the key the certificate was made with"))
    return problems
