"""`protocol = "hj212"`: its keys, its spec built from a checked `[[uplinks]]` table (PW from
an owner-only file, codes and flags checked as HJ 212-2017 writes them), and its uplink."""

from __future__ import annotations

import re
from typing import Any

from agent.model import Point
from agent.north.base import Uplink, UplinkContext
from agent.north.hj212.flags import DEFAULT_FLAGS, flag_problem
from agent.north.hj212.spec import SNAPSHOT_BATCH, Hj212Body, Hj212Spec
from agent.north.platform import Delivery
from agent.north.protocol import UplinkEntry, UplinkProtocol

ST = re.compile(r"\d{2,5}")
MN = re.compile(r"[A-Za-z0-9]{1,24}")
PW_MAX = 6  # HJ 212-2017: PW is C6
PW_FORBIDDEN = set(";,=&")


def _build(e: UplinkEntry, item: dict, values: dict) -> Hj212Spec | None:
    st, mn = values.get("st"), values.get("mn")
    if st is not None and not ST.fullmatch(st):
        e.err(("st",), "st", f"{st!r} is not a system code; valid: 2 to 5 digits as issued, "
              "e.g. \"31\" (air pollution source) or \"32\" (surface-water pollution source)")
    if mn is not None and not MN.fullmatch(mn):
        e.err(("mn",), "mn", f"{mn!r} is not a data logger id; valid: the MN as issued, 1 to 24 "
              "letters and digits (HJ 212-2017 MN is C24), e.g. \"010000A8900016F000169DC0\"")
    if "password_file" in values:
        _password(e, values["password_file"])
    minute = values.get("minute_interval")
    if minute is not None and (minute % 60 or 3600 % minute):
        e.err(("minute_interval",), "minute_interval", f"{minute:g}s does not divide an hour into "
              "whole minutes; valid: 1m, 2m, 3m, 4m, 5m, 6m, 10m, 12m, 15m, 20m, 30m or 60m")
    flags = _flags(e, item.get("flags"))
    if not e.clean or flags is None:
        return None
    delivery = Delivery(send="snapshot", interval=values.get("interval", 60.0), batch=SNAPSHOT_BATCH,
                        max_rejects=values.get("max_rejects", 10), timeout=values.get("overtime", 5.0))
    return Hj212Spec(name=values["name"], host=values["host"], port=values["port"],
                     body=Hj212Body(st=st, mn=mn, password_file=values["password_file"], flags=flags),
                     delivery=delivery, recount=values.get("recount", 3),
                     history=values.get("history", 7 * 86400.0),
                     minute_interval=values.get("minute_interval", 600.0))


def _password(e: UplinkEntry, path: Any) -> None:
    text = e.secret_text("password_file", path)
    if text is None:
        return
    if len(text) > PW_MAX or not text.isascii() or not text.isprintable() or PW_FORBIDDEN & set(text):
        e.err(("password_file",), "password_file", f"{path} does not hold an HJ 212 PW; valid: "
              f"the PW as issued, 1 to {PW_MAX} printable ASCII characters without ; , = or & "
              "(the file's content is not shown)")


def _flags(e: UplinkEntry, raw: Any) -> dict[str, str] | None:
    """`[uplinks.flags]`: quality, `over_range` or reason -> data flag, over the defaults."""
    if raw is None:
        return dict(DEFAULT_FLAGS)
    if not isinstance(raw, dict):
        e.err(("flags",), "flags", "must be a table; valid: e.g. [uplinks.flags] with "
              "timeout = \"B\" or \"declared_stop\" = \"M\"")
        return None
    flags = dict(DEFAULT_FLAGS)
    for key, letter in raw.items():
        why = flag_problem(letter)
        if why is not None:
            e.err(("flags", key), f"flags.{key}", why)
        else:
            flags[key] = letter
    return flags


def _point_warnings(spec: Hj212Spec, points: list[Point]) -> list[tuple[Point, str, str]]:
    """Points this uplink leaves out (no target_code) or cannot tell apart (a code twice)."""
    out, seen = [], {}
    for p in points:
        if not p.target_code:
            out.append((p, "target_code", f"{p.tag} has no target_code: uplink {spec.name!r} "
                        "(hj212) does not send it; valid: the platform's code for it, e.g. a01012"))
        elif p.target_code in seen:
            out.append((p, "target_code", f"{p.tag} has target_code {p.target_code!r} as "
                        f"{seen[p.target_code]} does: uplink {spec.name!r} (hj212) sends only "
                        f"{seen[p.target_code]}; valid: one point per code"))
        else:
            seen[p.target_code] = p.tag
    return out


def _uplink(spec: Hj212Spec, ctx: UplinkContext) -> Uplink:
    from agent.north.hj212.uplink import Hj212Uplink

    return Hj212Uplink(spec, ctx, ctx.timezone)


HJ212 = UplinkProtocol(
    keys={"host": ("host", True), "port": ("int", True), "st": ("str", True), "mn": ("str", True),
          "password_file": ("path", True), "interval": ("duration:1s..1d", False),
          "overtime": ("duration:1s..10m", False), "recount": ("int", False),
          "max_rejects": ("int", False), "history": ("duration:1h..30d", False),
          "minute_interval": ("duration:1m..1h", False), "flags": ("table", False)},
    build=_build, uplink=_uplink, spec_type=Hj212Spec,
    limits={"port": (1, 65535), "recount": (0, 10), "max_rejects": (1, 1000)},
    no_cipher="HJ 212 frames are plain text; only PW authenticates them", point_warnings=_point_warnings)
