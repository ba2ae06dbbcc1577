"""`hazgate registry`: the point-registration records an uplink sends (`[uplinks.registry]`), as
JSON, or as CSV (UTF-8 with a byte-order mark, so that Excel opens the Chinese text right) for
platforms that take registrations by spreadsheet."""

from __future__ import annotations

import csv
import io
import sqlite3
import sys
from pathlib import Path
from typing import Any

import orjson

from agent.config.gateway import GatewayConfig
from agent.north.registry import registry_of, registry_records
from agent.pipeline.declarations import Ledger

EXIT_OK, EXIT_FAIL, EXIT_USAGE = 0, 1, 2


def registry(cfg: GatewayConfig, uplink: str, fmt: str, output: str | None) -> int:
    spec = next((u for u in cfg.uplinks if u.name == uplink), None)
    with_registry = [u.name for u in cfg.uplinks if registry_of(u) is not None]
    if spec is None or uplink not in with_registry:
        why = "no such uplink" if spec is None else "this uplink declares no [uplinks.registry]"
        print(f"hazgate registry: --uplink {uplink!r}: {why} in {cfg.path}; valid: "
              f"{', '.join(with_registry) or 'none: add [uplinks.registry] to a platform uplink'}", file=sys.stderr)
        return EXIT_USAGE
    try:
        ledger = Ledger(cfg.data_dir, create=False)
        declared = ledger.active().keys()
        ledger.close()
    except (sqlite3.Error, OSError) as exc:
        print(f"hazgate registry: cannot read the declarations in {cfg.data_dir}: {exc}", file=sys.stderr)
        return EXIT_FAIL
    records = registry_records(registry_of(spec).record, cfg.all_points(), cfg.device_of(), cfg.gateway_id,
                               cfg.enterprise_code, declared)
    data = _csv(records) if fmt == "csv" else orjson.dumps(records, option=orjson.OPT_INDENT_2) + b"\n"
    if output is None:
        sys.stdout.buffer.write(data)
    else:
        Path(output).write_bytes(data)
        print(f"{len(records)} registration records written to {output}", file=sys.stderr)
    return EXIT_OK


def _csv(records: list[dict]) -> bytes:
    """One column per record key, in the template's order; nested values as JSON."""
    columns = list(dict.fromkeys(k for r in records for k in r))
    out = io.StringIO()
    w = csv.writer(out, lineterminator="\r\n")
    w.writerow(columns)
    for r in records:
        w.writerow([_cell(r.get(c)) for c in columns])
    return "\ufeff".encode() + out.getvalue().encode("utf-8")


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict | list):
        return orjson.dumps(value).decode()
    return str(value)
