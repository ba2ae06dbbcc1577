"""`hazgate declare`: a technician's declared stop of a point (a detector out for calibration)
or an operator's of an interlock (a bypass under a permit), its restore, and the list of both.

Written to the gateway's declarations file whether or not the agent runs; a running agent
picks it up within one poll, raises it as a `declaration` event on every uplink that carries
events, and the checks treat the subject as declared (docs/operations.md)."""

from __future__ import annotations

import sqlite3
import sys
from datetime import datetime

from agent.common.durations import parse_duration
from agent.common.timefmt import now_ms, rfc3339
from agent.config.gateway import GatewayConfig
from agent.pipeline.declarations import Declaration, DeclarationError, Ledger, in_force

EXIT_OK, EXIT_FAIL, EXIT_USAGE = 0, 1, 2


def parse_until(text: str, now: int) -> int:
    """`--until`: a time (RFC 3339 with its offset) or a duration from now ("8h"); ValueError."""
    try:
        return now + int(parse_duration(text) * 1000)
    except ValueError:
        pass
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(f"--until {text!r} is neither a time nor a duration; valid: e.g. "
                         "2026-12-01T18:00:00+08:00 or 8h") from None
    if when.tzinfo is None:
        raise ValueError(f"--until {text!r} has no UTC offset; valid: e.g. 2026-12-01T18:00:00+08:00")
    return int(when.timestamp() * 1000)


def subjects(cfg: GatewayConfig) -> tuple[set[str], set[str]]:
    """(point tags, interlock ids) a declaration may name."""
    return {p.tag for p in cfg.all_points()}, {il.id for il in cfg.rules.interlocks}


def declare(cfg: GatewayConfig, action: str, subject: str | None, reason: str | None, by: str | None,
            until: str | None, note: str | None, show_all: bool = False) -> int:
    if action == "list":
        return _list(cfg, show_all)
    tags, interlocks = subjects(cfg)
    if subject is None:
        print(f"hazgate declare {action}: name the point tag or interlock id", file=sys.stderr)
        return EXIT_USAGE
    if subject not in tags and subject not in interlocks:
        examples = ", ".join(sorted(interlocks)[:2] + sorted(tags)[:2]) or "none configured"
        print(f"hazgate declare: {subject!r} is neither a point tag nor an interlock id of {cfg.path}; "
              f"valid: e.g. {examples}", file=sys.stderr)
        return EXIT_USAGE
    if not by or not by.strip():
        print("hazgate declare: --by NAME is required: who declares it", file=sys.stderr)
        return EXIT_USAGE
    now = now_ms()
    until_ms = None
    if action == "stop":
        if not reason or not reason.strip():
            print("hazgate declare stop: --reason TEXT is required: why it is stopped (e.g. a work permit "
                  "number)", file=sys.stderr)
            return EXIT_USAGE
        if until is not None:
            try:
                until_ms = parse_until(until, now)
            except ValueError as exc:
                print(f"hazgate declare: {exc}", file=sys.stderr)
                return EXIT_USAGE
            if until_ms <= now:
                print(f"hazgate declare: --until {until} is not in the future", file=sys.stderr)
                return EXIT_USAGE
    try:
        ledger = Ledger(cfg.data_dir)
    except (sqlite3.Error, OSError) as exc:
        print(f"hazgate declare: cannot open the declarations file in {cfg.data_dir}: {exc}", file=sys.stderr)
        return EXIT_FAIL
    try:
        if action == "stop":
            d = ledger.stop(subject, reason.strip(), by.strip(), now, until_ms)  # type: ignore[union-attr]
        else:
            d = ledger.restore(subject, by.strip(), (note or "").strip(), now)
    except DeclarationError as exc:
        print(f"hazgate declare: {exc}", file=sys.stderr)
        return EXIT_FAIL
    except sqlite3.Error as exc:
        print(f"hazgate declare: cannot write {ledger.path}: {exc}", file=sys.stderr)
        return EXIT_FAIL
    finally:
        ledger.close()
    kind = "interlock" if subject in interlocks else "point"
    print(f"declaration #{d.id}: {kind} {subject} {d.state} by {d.by} at {rfc3339(d.at_ms)}"
          + (f" until {rfc3339(d.until_ms)}" if d.until_ms else ""))
    return EXIT_OK


def _list(cfg: GatewayConfig, show_all: bool) -> int:
    try:
        ledger = Ledger(cfg.data_dir, create=False)
        try:
            rows = ledger.rows()
        finally:
            ledger.close()
    except (sqlite3.Error, OSError) as exc:
        print(f"hazgate declare: cannot read the declarations file in {cfg.data_dir}: {exc}", file=sys.stderr)
        return EXIT_FAIL
    now = now_ms()
    if show_all:
        for d in rows:
            print(_line(d, now))
        return EXIT_OK
    stopped = list(in_force(rows).values())
    if not stopped:
        print("no declared stop in force")
    for d in stopped:
        print(_line(d, now))
    return EXIT_OK


def _line(d: Declaration, now: int) -> str:
    text = f"#{d.id:<4} {d.subject:<20} {d.state:<9} {rfc3339(d.at_ms)}  by {d.by}"
    if d.reason:
        text += f"  reason: {d.reason}"
    if d.note:
        text += f"  note: {d.note}"
    if d.action == "stop" and d.until_ms:
        text += f"  until {rfc3339(d.until_ms)}" + ("  EXPIRED" if now >= d.until_ms else "")
    return text
