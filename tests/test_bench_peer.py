"""The peer phase's counting (bench/peer.py): the same rule decides what hazgate and the peer lost."""

from __future__ import annotations

import threading
from types import SimpleNamespace

from bench.common import Unit
from bench.peer import Tally, _slave, audit, peer_keys

UNIT = Unit("plc0", 5020, 1, 3, 2, prefix="P0")  # 3 float32 at hr:0-5, 2 int16 at hr:6-7


def _tally(polls: dict[float, list[str] | None]) -> tuple[SimpleNamespace, Tally]:
    """A tally of unit plc0's polls: stamp -> the keys that arrived (None: every key)."""
    keys = peer_keys(UNIT)
    t = Tally({UNIT.name: {k: i for i, k in enumerate(keys)}})
    for ts, got in polls.items():
        t.add(ts, UNIT.name, ts, keys if got is None else got)
    return SimpleNamespace(lock=threading.Lock()), t


def test_peer_keys_follow_the_addresses_its_block_reads_name():
    assert peer_keys(UNIT) == ["F0", "F2", "F4", "I6", "I7"]
    floats, ints = _slave(UNIT)["timeseries"]
    assert (floats["address"], ints["address"]) == ("0-5", "6-7")


def test_a_complete_series_loses_nothing():
    c, t = _tally({100.0 + k: None for k in range(10)})
    a = audit(c, t, 99.5, 110.0)
    assert (a.lost, a.duplicates, a.polls) == (0, 0, 10)


def test_missing_polls_points_and_duplicates_are_counted():
    polls: dict[float, list[str] | None] = {100.0 + k: None for k in range(10) if k not in (3, 4)}
    polls[101.0] = ["F0", "F2", "F4", "I6"]  # I7 missing
    c, t = _tally(polls)
    t.add(105.0, UNIT.name, 105.0, ["F0", "F2"])  # sent again
    a = audit(c, t, 99.5, 110.0)
    assert a.lost == 2 * UNIT.n_points + 1
    assert a.duplicates == 2
    assert [(x, y) for _d, x, y in a.gaps] == [(102.0, 105.0)]


def test_a_kill_loses_the_polls_due_before_it_not_the_one_due_after():
    c, t = _tally({100.0 + k: None for k in range(5)})  # the last poll kept: 104
    assert audit(c, t, 99.5, 105.05, kill=True).lost == 0  # 105 was due 0.05 s before: in progress
    a = audit(c, t, 99.5, 106.5, kill=True)  # 105 and 106 were due: lost
    assert a.lost == 2 * UNIT.n_points
    assert a.newest_age == 2.5
