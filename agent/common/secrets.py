"""Secrets and certificates: passwords and keys come only from files, and those files must not be
open to other users; client certificates are watched for expiry.

A secret file (uplink `password_file` and `key_file`, an OPC UA device's `private_key` and
`password_file`) is refused when any permission bit for "other" users is set, or when its group
may write it. Group read is allowed, so the files can be owned by root and readable by the
agent's group (`root:hazgate 0640`, what deploy/install.sh sets up) or owned by the agent's user
(`0600`). These checks are part of config validation: `hazgate validate`, start-up and reload
report them as `file:line: key: ...` problems.

Only paths and modes are ever logged, never a secret's content.
"""

from __future__ import annotations

import logging
import ssl
import stat
import time
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger("hazgate.secrets")

EXPIRY_WARN_DAYS = 30
UPLINK_SECRET_KEYS = ("password_file", "key_file")


def secret_file_problem(path: Path) -> str | None:
    """Why `path` is not fit to hold a secret, in words plant IT can act on; None when it is."""
    try:
        st = path.stat()
    except OSError as exc:
        return f"cannot check {path}: {exc.strerror or exc}"
    if not stat.S_ISREG(st.st_mode):
        return f"{path} is not a regular file"
    mode = stat.S_IMODE(st.st_mode)
    if mode & (stat.S_IRWXO | stat.S_IWGRP):
        who = "readable by other users" if mode & stat.S_IROTH else (
            "writable by other users" if mode & stat.S_IWOTH else
            "writable by its group" if mode & stat.S_IWGRP else "open to other users")
        return (f"{path} is {who} (mode {mode:04o}); valid: readable only by the agent: "
                f"chmod 600 {path} (owned by the agent's user) or chmod 640 with group hazgate")
    return None


# --- certificates ------------------------------------------------------------------------
@dataclass(frozen=True)
class CertInfo:
    path: Path
    use: str  # "uplink" or "device:<name>"
    not_after: float | None  # epoch seconds; None when the file could not be read
    error: str | None = None

    @property
    def days_left(self) -> float | None:
        return None if self.not_after is None else (self.not_after - time.time()) / 86400


def cert_not_after(path: Path) -> float:
    """Expiry (epoch seconds) of the first certificate in a PEM or DER file; raises ValueError."""
    data = path.read_bytes()
    try:
        from cryptography import x509  # a dependency of asyncua, present wherever hazgate runs

        cert = (x509.load_pem_x509_certificate(data) if b"-----BEGIN" in data
                else x509.load_der_x509_certificate(data))
        return cert.not_valid_after_utc.timestamp()
    except ImportError:
        pass
    if b"-----BEGIN" not in data:
        raise ValueError("a DER certificate needs the cryptography package to be read")
    info = ssl._ssl._test_decode_cert(str(path))  # type: ignore[attr-defined]  # stdlib fallback
    return ssl.cert_time_to_seconds(info["notAfter"])


def check_certificates(certificates: list[tuple[str, Path]], warn_days: float = EXPIRY_WARN_DAYS) -> list[CertInfo]:
    """Read every client certificate's expiry; log a warning under `warn_days`, an error once expired."""
    out = []
    for use, path in certificates:
        try:
            info = CertInfo(path, use, cert_not_after(path))
        except (OSError, ValueError) as exc:
            info = CertInfo(path, use, None, str(exc))
            log.warning("cannot read client certificate expiry", extra={"fields": {
                "use": use, "file": str(path), "error": str(exc)}})
            out.append(info)
            continue
        days = info.days_left
        fields = {"use": use, "file": str(path), "not_after": time.strftime(
            "%Y-%m-%dT%H:%M:%SZ", time.gmtime(info.not_after)), "days_left": round(days, 1)}
        if days is not None and days <= 0:
            log.error("client certificate has expired: the peer will refuse the gateway; renew it",
                      extra={"fields": fields})
        elif days is not None and days < warn_days:
            log.warning(f"client certificate expires in under {warn_days:g} days; renew it",
                        extra={"fields": fields})
        out.append(info)
    return out


def read_secret(path: Path) -> str:
    """A secret as its file holds it, without the trailing line break; raises OSError."""
    return path.read_text(encoding="utf-8").rstrip("\r\n")
