"""Listen addresses of the agent's local endpoints (`[health] listen`)."""

from __future__ import annotations

import ipaddress


def parse_listen(text: str) -> tuple[str, int]:
    """`[health] listen`: "127.0.0.1:9108", "[::1]:9108", "localhost:9108" or just "9108" (loopback)."""
    text = str(text).strip()
    if text.isdigit():
        host, port_text = "127.0.0.1", text
    elif text.startswith("["):
        host, _, port_text = text[1:].partition("]:")
    else:
        host, _, port_text = text.rpartition(":")
    if not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
        raise ValueError(f"{text!r} has no valid port; valid: \"127.0.0.1:9108\", \"[::1]:9108\" or \"9108\"")
    if host != "localhost":
        try:
            ipaddress.ip_address(host)
        except ValueError:
            raise ValueError(f"{text!r}: {host!r} is not an IP address; valid: an address of this box such as "
                             "127.0.0.1 (the default, loopback) or ::1") from None
    return host, int(port_text)


def is_loopback(host: str) -> bool:
    return host == "localhost" or ipaddress.ip_address(host).is_loopback
