"""What a north protocol says of itself, for the config to ask (as drivers/base.py's
`ProtocolSpec` does for the south): its `[[uplinks]]` keys, how its typed spec is built from a
checked table, and the uplink factory. Each protocol folder holds one; agent/north/adapters.py
lists them by name."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from agent.model import Point
from agent.north.ack import AckRule
from agent.north.base import Uplink, UplinkContext
from agent.north.platform import Delivery
from agent.north.templated import BodySpec

Keys = dict[str, tuple[str, bool]]  # key -> (kind, required); kinds as agent/config/toml.py converts them


class UplinkEntry(Protocol):
    """One `[[uplinks]]` table being read, as agent/config hands it to a protocol's `build`:
    problems go through `err` with their key path, and the shared parts are built on request."""

    base: Path  # the config file's folder: relative paths start there

    @property
    def clean(self) -> bool:
        """No problem found in this table so far."""

    def err(self, path: tuple, key: str, msg: str) -> None:
        """A problem at `path` (keys inside the table), shown as `uplinks.KEY: MSG`."""

    def convert(self, kind: str, value: Any) -> Any:
        """A value as `kind` converts it; ValueError saying what is valid."""

    def secret_text(self, key: str, path: Path, path_loc: tuple | None = None) -> str | None:
        """An owner-only secret file's text, or None with the problem told."""

    def body(self) -> BodySpec | None:
        """The codec, time format and `envelope`/`record`/`events` templates as the table gives them."""

    def ack(self) -> AckRule | None:
        """`ack = {...}`: what the far end's reply must hold."""

    def delivery(self) -> Delivery:
        """`send`, `interval`, `batch`, `max_rejects`, `timeout`."""


def own_key(item: dict, table: str, key: str) -> Any:
    """A key a message kind's table (`[uplinks.events]`, `[uplinks.registry]`) gives, or None."""
    sub = item.get(table)
    return sub.get(key) if isinstance(sub, dict) else None


@dataclass(frozen=True)
class UplinkProtocol:
    keys: Keys  # beside `name` and `protocol`; "table" and "list" kinds are read by `build`
    build: Callable[[UplinkEntry, dict, dict], Any]  # (entry, table as written, converted values) -> spec | None
    uplink: Callable[[Any, UplinkContext], Uplink]  # (its spec, context) -> the uplink
    spec_type: type
    limits: dict[str, tuple[int, int]] = field(default_factory=dict)
    # keys `[uplinks.events]` and `[uplinks.registry]` take beside envelope and record (a url, a topic)
    events_keys: Keys = field(default_factory=dict)
    no_cipher: str = ""  # why its codec takes no cipher (mqtt: key_file is the TLS key); "": it takes one
    http_status: bool = False  # its replies carry an HTTP status for `ack.status`
    # (its spec, the points) -> (point, column, warning) for `hazgate validate`: points it
    # cannot send as they are
    point_warnings: Callable[[Any, list[Point]], list[tuple[Point, str, str]]] | None = None
