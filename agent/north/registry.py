"""Point registration (`[uplinks.registry]`): one record per point in the platform's own shape,
such as Jiangsu's sensor table `WC_ENT_CGQ` (docs/platforms.md 4.7).

The same records go to the platform (as the uplink's description message, sent on its first
connection and again when they change) and to `hazgate registry` (JSON, or CSV for platforms
that take registrations by spreadsheet).
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import Any

from agent.model import Point
from agent.north.template import Template

REGISTRY_VARIABLES = frozenset({
    "tag", "name", "unit", "kind", "target_code", "hazard_source", "equipment", "ll", "l", "h", "hh",
    "range_low", "range_high", "device", "gateway", "enterprise", "in_service",
})
# what identifies a point to a platform, which `hazgate validate` warns of when a record needs it
# and a point lacks it (an empty limit is meaningful, not a gap); a switch has no unit or range
IDENTITY = ("name", "target_code", "hazard_source", "equipment")
MEASURE = ("unit", "range_low", "range_high")


def registry_of(spec: Any) -> Any:
    """The uplink spec's `[uplinks.registry]` templates (MessageTemplates), or None: an uplink
    of another body, or one that registers nothing."""
    return getattr(getattr(spec, "body", None), "registry", None)


def point_values(p: Point) -> dict[str, Any]:
    """A point's own registry variables (None where its table leaves the cell empty)."""
    return {"tag": p.tag, "kind": p.kind, "name": p.name or None, "unit": p.unit or None,
            "target_code": p.target_code or None, "hazard_source": p.hazard_source or None,
            "equipment": p.equipment or None, "ll": p.ll, "l": p.l, "h": p.h, "hh": p.hh,
            "range_low": p.eng_min, "range_high": p.eng_max}


def registry_records(record: Template, points: list[Point], devices: Mapping[str, str], gateway: str,
                     enterprise: str, declared: Collection[str]) -> list[dict]:
    """Every point's record, in point-table order; `in_service` is false under a declared stop."""
    out = []
    for p in points:
        values = point_values(p)
        values.update(device=devices.get(p.tag), gateway=gateway, enterprise=enterprise,
                      in_service=p.tag not in declared)
        out.append(record.render(values))
    return out


def missing(record: Template, points: list[Point]) -> dict[str, list[str]]:
    """variable the record uses -> the tags of the points that lack it."""
    out: dict[str, list[str]] = {}
    for p in points:
        values = point_values(p)
        for v in (*IDENTITY, *(MEASURE if p.type != "bool" else ())):
            if v in record.variables and values[v] is None:
                out.setdefault(v, []).append(p.tag)
    return out
