"""`protocol = "tcp"`: its keys, its spec built from a checked `[[uplinks]]` table, and its
uplink."""

from __future__ import annotations

from agent.north.base import Uplink, UplinkContext
from agent.north.platform import PLATFORM_KEYS, PLATFORM_LIMITS
from agent.north.protocol import UplinkEntry, UplinkProtocol
from agent.north.tcp.spec import CONNECTIONS, MAX_REPLY, TcpSpec


def _build(e: UplinkEntry, item: dict, values: dict) -> TcpSpec | None:
    body, ack, delivery = e.body(), e.ack(), e.delivery()
    if values.get("ca_file") is not None and not values.get("tls", False):
        e.err(("ca_file",), "ca_file", "set, but tls is false; valid: tls = true with ca_file, "
              "or no ca_file")
    if not e.clean or body is None or ack is None:
        return None
    return TcpSpec(name=values["name"], host=values["host"], port=values["port"], body=body,
                   delivery=delivery, ack=ack, delimiter=values.get("delimiter", "@@").encode("utf-8"),
                   connection=values.get("connection", "per-message"),
                   tls=values.get("tls", False), ca_file=values.get("ca_file"),
                   max_reply=values.get("max_reply", MAX_REPLY))


def _uplink(spec: TcpSpec, ctx: UplinkContext) -> Uplink:
    # imported here: the platform link only for a gateway that feeds such a platform
    from agent.north.tcp.uplink import TcpUplink

    return TcpUplink(spec, ctx, ctx.timezone)


TCP = UplinkProtocol(
    keys={**PLATFORM_KEYS, "host": ("str", True), "port": ("int", True), "delimiter": ("str", False),
          "connection": ("enum:" + "|".join(CONNECTIONS), False), "tls": ("bool", False),
          "max_reply": ("int", False)},
    build=_build, uplink=_uplink, spec_type=TcpSpec,
    limits={**PLATFORM_LIMITS, "port": (1, 65535), "max_reply": (64, 64 << 20)})
