"""Readings packed by column, CHUNK_ROWS to a row of the store's `chunks` table: one SQLite row
per poll or so instead of one per reading (the per-row cost of SQLite was most of the agent's CPU)."""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import Any

import orjson

CHUNK_ROWS = 500  # readings packed into one row of `chunks` (see pack_chunk)


def pack_chunk(stamps: Sequence[int], pids: Sequence[int], values: Sequence[Any], qualities: Sequence[int],
               reasons: Sequence[str | None]) -> bytes:
    """Readings, given by column, as one JSON blob: the first timestamp and offsets from it,
    point ids, values, then quality and reason, each a single value when the whole chunk
    shares it (the usual case). About 24 bytes per float reading."""
    t0 = stamps[0]
    quality = qualities[0] if qualities.count(qualities[0]) == len(qualities) else qualities
    reason = None if reasons.count(None) == len(reasons) else reasons
    return orjson.dumps([t0, [t - t0 for t in stamps], pids, values, quality, reason])


def unpack_chunk(blob: bytes) -> list[tuple[int, int, Any, int, str | None]]:
    t0, offsets, pids, values, quality, reason = orjson.loads(blob)
    n = len(pids)
    return list(zip([t0 + d for d in offsets], pids, values,
                    quality if isinstance(quality, list) else itertools.repeat(quality, n),
                    reason if reason is not None else itertools.repeat(None, n), strict=True))
