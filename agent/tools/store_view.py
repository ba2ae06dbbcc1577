"""What the read-only operator commands share: the store opened beside a running agent, times
told with their age, and the config the running agent applied when the file on disk is broken."""

from __future__ import annotations

import re
import sys
import time
import tomllib
from pathlib import Path

from agent.common.running import APPLIED_FILE, AppliedConfig, load_applied
from agent.common.timefmt import rfc3339
from agent.pipeline.store import DB_NAME, Store

DEFAULT_DATA_DIR = Path("/var/lib/hazgate")
_DATA_DIR_LINE = re.compile(r'^\s*data_dir\s*=\s*["\']([^"\']+)["\']', re.MULTILINE)


def open_store(data_dir: Path) -> Store | None:
    path = data_dir / DB_NAME
    if not path.exists():
        print(f"no store at {path}: the agent has not run with this config yet", file=sys.stderr)
        return None
    return Store(data_dir, readonly=True)


def age_text(ms: int | None) -> str:
    if ms is None:
        return "never"
    secs = max(0.0, time.time() - ms / 1000)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if secs >= size:
            return f"{rfc3339(ms)} ({secs / size:.1f}{unit} ago)"
    return f"{rfc3339(ms)} ({secs:.1f}s ago)"


def data_dir_of(config: Path) -> Path:
    """The data dir a config file names, read as leniently as possible (the file may be broken):
    its TOML, else its `data_dir = "..."` line, else the installed default."""
    try:
        text = config.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return DEFAULT_DATA_DIR
    try:
        named = tomllib.loads(text).get("gateway", {}).get("data_dir")
    except tomllib.TOMLDecodeError:
        found = _DATA_DIR_LINE.search(text)
        named = found.group(1) if found else None
    if not isinstance(named, str):
        return DEFAULT_DATA_DIR
    return (config.resolve().parent / named).resolve()


def applied_config(config: Path) -> AppliedConfig | str:
    """The config the agent applied for this config file, or why there is none to fall back to."""
    data_dir = data_dir_of(config)
    try:
        applied = load_applied(data_dir)
    except FileNotFoundError:
        return f"no applied config to fall back to: no agent has run on {data_dir} with this release"
    except (OSError, ValueError) as exc:
        return f"no applied config to fall back to in {data_dir / APPLIED_FILE} ({exc.__class__.__name__}: {exc})"
    if applied.path != config.resolve():
        return f"the applied config in {data_dir} is that of {applied.path}, not {config}"
    return applied


def applied_note(applied: AppliedConfig) -> str:
    """The line that says a command works from the applied copy, not the file on disk."""
    return (f"note:    {applied.path} has problems (run hazgate validate); showing the config the agent "
            f"applied at {applied.applied_at or 'its last start or reload'}")
