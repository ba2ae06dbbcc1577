"""`protocol = "http"`: its keys, its spec built from a checked `[[uplinks]]` table (headers
with `secret:PATH` values), and its uplink."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from agent.north.base import Uplink, UplinkContext
from agent.north.http.spec import Header, HttpSpec
from agent.north.platform import PLATFORM_KEYS, PLATFORM_LIMITS
from agent.north.protocol import UplinkEntry, UplinkProtocol, own_key

HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
SECRET = "secret:"


def _build(e: UplinkEntry, item: dict, values: dict) -> HttpSpec | None:
    body, ack, delivery = e.body(), e.ack(), e.delivery()
    headers = _headers(e, item.get("headers"))
    if values.get("ca_file") is not None and str(values.get("url", "")).startswith("http:"):
        e.err(("ca_file",), "ca_file", "the url is http://, so no certificate is checked; "
              "valid: an https:// url with ca_file, or no ca_file")
    if not e.clean or body is None or ack is None or headers is None:
        return None
    return HttpSpec(name=values["name"], url=values["url"], body=body, delivery=delivery, ack=ack,
                    ca_file=values.get("ca_file"), headers=headers, events_url=own_key(item, "events", "url"),
                    registry_url=own_key(item, "registry", "url"))


def _headers(e: UplinkEntry, raw: Any) -> tuple[Header, ...] | None:
    if raw is None:
        return ()
    if not isinstance(raw, dict):
        e.err(("headers",), "headers", "must be a table; valid: e.g. headers = { appsecret = "
              "\"secret:secrets/mem.appsecret\" }")
        return None
    out = []
    for name, value in raw.items():
        key = f"headers.{name}"
        if not HEADER_NAME.fullmatch(name):
            e.err(("headers",), key, f"{name!r} is not an HTTP header name; valid: letters, "
                  "digits and -")
            continue
        if not isinstance(value, str) or not value:
            e.err(("headers",), key, f"{value!r} is not a text; valid: a value, or "
                  "\"secret:PATH\" for a value read from an owner-only file")
            continue
        if value.startswith(SECRET):
            path = Path(value[len(SECRET):])
            path = path if path.is_absolute() else (e.base / path).resolve()
            text = e.secret_text(key, path, ("headers",))
            if text is not None and _bad_header_value(text):
                e.err(("headers",), key, f"{path} holds line breaks or control characters; "
                      "valid: the value as issued, on one line")
            elif text is not None:
                out.append(Header(name, secret=path))
        elif _bad_header_value(value):
            e.err(("headers",), key, "holds line breaks or control characters; valid: one line")
        else:
            out.append(Header(name, value=value))
    return tuple(out)


def _bad_header_value(text: str) -> bool:
    return any(ord(c) < 32 and c != "\t" or ord(c) == 127 for c in text)


def _uplink(spec: HttpSpec, ctx: UplinkContext) -> Uplink:
    # imported here: aiohttp (about 20 MB of a Pi's memory) only for a gateway feeding such a platform
    from agent.north.http.uplink import HttpUplink

    return HttpUplink(spec, ctx, ctx.timezone)


HTTP = UplinkProtocol(
    keys={**PLATFORM_KEYS, "url": ("url:http|https", True), "headers": ("table", False)},
    build=_build, uplink=_uplink, spec_type=HttpSpec, limits=PLATFORM_LIMITS,
    events_keys={"url": ("url:http|https", False)}, http_status=True)
