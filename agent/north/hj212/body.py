"""Real-time data (CN 2011) messages from the store's snapshots: one message per snapshot
boundary, `DataTime` that boundary, `code-Rtd` / `code-Flag` per point with a `target_code`,
split into PNUM/PNO packets when longer than a frame holds. A message's bytes are its frames,
each with its CR LF; the store keeps them, so a re-send carries the same QN and DataTime."""

from __future__ import annotations

from datetime import datetime, tzinfo

from agent.common.secrets import read_secret
from agent.common.timefmt import now_ms
from agent.north.base import UplinkContext
from agent.north.hj212.flags import flag_of
from agent.north.hj212.frame import pack
from agent.north.hj212.segment import (
    CN_REALTIME,
    Segment,
    format_data_time,
    format_qn,
    make_flag,
    realtime_cp,
    split,
)
from agent.north.hj212.spec import Hj212Body
from agent.pipeline.store import Builder, SnapshotPage


def local(ms: int, tz: tzinfo | None) -> datetime:
    """Epoch ms as a local time in `tz` (None: the system's zone)."""
    return datetime.fromtimestamp(ms / 1000, tz)


class RealtimeBody:
    """`Body` (agent/north/base.py) of an HJ 212 uplink: no events, no description message."""

    events: Builder | None = None
    meta: Builder | None = None

    def __init__(self, ctx: UplinkContext, spec: Hj212Body, timezone: tzinfo | None = None):
        self.ctx = ctx
        self._source: list | None = None  # the ctx.points() list the index was built from
        self._codes: dict[str, tuple[str, float | None]] = {}  # tag -> (code, eng_max)
        self._tags: frozenset[str] = frozenset()  # the tags of _codes
        self._last_qn = 0  # ms of the last QN given: each message has its own
        self.reconfigure(spec, timezone)

    def reconfigure(self, spec: Hj212Body, timezone: tzinfo | None = None) -> None:
        """New codes, PW, flags or zone for messages built from now on."""
        self.spec, self.timezone = spec, timezone
        self.password = read_secret(spec.password_file)

    def points_changed(self) -> None:
        self._source = None

    def meta_digest(self) -> bytes:
        return b""

    def readings(self, backfill: bool) -> Builder:
        return self._build

    def sent_tags(self) -> frozenset[str]:
        """The tags this uplink sends (those with a code)."""
        self._index()
        return self._tags

    def codes(self) -> dict[str, str]:
        """target_code -> tag, of the points this uplink sends."""
        return {code: tag for tag, (code, _max) in self._index().items()}

    def _index(self) -> dict[str, tuple[str, float | None]]:
        """tag -> (target_code, eng_max) of the points that have a code; the first point of a
        code wins (hazgate validate warns of the others)."""
        points = self.ctx.points()
        if points is not self._source:
            codes: dict[str, tuple[str, float | None]] = {}
            taken: set[str] = set()
            for p in points:
                if p.target_code and p.target_code not in taken:
                    codes[p.tag] = (p.target_code, p.eng_max)
                    taken.add(p.target_code)
            self._codes, self._tags, self._source = codes, frozenset(codes), points
        return self._codes

    def _qn(self) -> str:
        ms = max(now_ms(), self._last_qn + 1)
        self._last_qn = ms
        return format_qn(local(ms, self.timezone))

    def _build(self, seq: int, rows: list[tuple]) -> bytes:
        """rows: one snapshot page, (ts_ms, tag, unit, type, value, quality, reason) each."""
        if not isinstance(rows, SnapshotPage):
            raise TypeError("an HJ 212 uplink sends snapshots; its rows come as a SnapshotPage")
        index, flags = self._index(), self.spec.flags
        items = []
        for _ts, tag, _unit, _type, value, quality, reason in rows:
            coded = index.get(tag)
            if coded is None:
                continue
            code, eng_max = coded
            sent = value if quality != "bad" and value is not None else None
            items.append((code, sent, flag_of(flags, quality, reason, value, eng_max)))
        segment = Segment(qn=self._qn(), st=self.spec.st, cn=CN_REALTIME, pw=self.password,
                          mn=self.spec.mn, flag=make_flag(True),
                          cp=realtime_cp(format_data_time(local(rows.at, self.timezone)), items))
        return b"".join(pack(packet.text()) for packet in split(segment))
