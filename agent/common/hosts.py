"""Host names and IP addresses as a technician writes them: what keeps one from being valid."""

from __future__ import annotations

import ipaddress
import re

_LABEL = re.compile(r"^(?!-)[A-Za-z0-9_-]{1,63}(?<!-)$")  # one label of a host name ('_': local names)
HOST_VALID = ("an IPv4 address such as 192.168.1.20, an IPv6 address such as fd00::20, or a host name "
              "such as plc-1.plant.local (letters, digits, '-', '_', labels joined by '.')")


def host_fault(host: str) -> str | None:
    """Why `host` (no port, no scheme) is neither an IP address nor a host name; None: it is one."""
    try:
        ipaddress.ip_address(host)
        return None
    except ValueError:
        pass
    labels = host.removesuffix(".").split(".")
    if _number(labels[-1]):  # a name ending in a number is an IPv4 address (as resolvers read it)
        return f"not an IPv4 address: {_ipv4_fault(labels)}"
    bad = next((label for label in labels if not _LABEL.match(label)), None)
    if bad is not None or len(host) > 253:
        return f"not a host name: {_label_fault(bad)}"
    return None


def _number(text: str) -> bool:
    return text.isascii() and text.isdigit()


def _ipv4_fault(parts: list[str]) -> str:
    """What keeps dotted numbers from being an IPv4 address."""
    if len(parts) != 4:
        return f"{len(parts)} numbers where an IPv4 address has 4"
    for part in parts:
        if not _number(part):
            return f"{part!r} is not a number 0-255"
        if int(part) > 255:
            return f"{part} is above 255"
        if len(part) > 1 and part.startswith("0"):
            return f"{part} has a leading zero (read as octal by some systems)"
    return "a '.' after its last number"  # all else ip_address took


def _label_fault(label: str | None) -> str:
    """What keeps one label (None: the whole name) from being part of a host name."""
    if label is None:
        return "longer than 253 characters"
    if not label:
        return "an empty label (two dots in a row, or a leading dot)"
    if ch := next((c for c in label if not (c.isascii() and (c.isalnum() or c in "-_"))), None):
        return f"{ch!r} (U+{ord(ch):04X}) cannot be part of a host name"
    if len(label) > 63:
        return f"label {label[:20]!r}... is longer than 63 characters"
    return f"label {label!r} starts or ends with '-'"
