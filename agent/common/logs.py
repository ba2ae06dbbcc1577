"""Structured, quiet logging: one `key=value` line per event, on stderr (journald picks it up)."""

from __future__ import annotations

import logging
import sys


class KeyValueFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        msg = record.getMessage().replace("\n", " | ")
        line = f"level={record.levelname.lower()} logger={record.name} msg={msg!r}"
        fields = getattr(record, "fields", None)
        if fields:
            line += " " + " ".join(f"{k}={v!r}" if isinstance(v, str) else f"{k}={v}" for k, v in fields.items())
        if record.exc_info:
            line += " exc=" + repr(self.formatException(record.exc_info))
        return line


def setup_logging(level: str = "info") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(KeyValueFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for noisy in ("pymodbus", "asyncua"):  # library chatter stays out of the plant's journal
        logging.getLogger(noisy).setLevel(logging.CRITICAL)
