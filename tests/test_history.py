"""The minute aggregates a snapshot uplink keeps for history requests (agent/pipeline/history.py),
fed rows directly: good, uncertain and bad readings folded in two passes, summed per interval,
pruned by age."""

from __future__ import annotations

import sqlite3

from agent.pipeline import history

T0 = 1_795_777_200_000  # a whole hour


def db() -> sqlite3.Connection:
    c = sqlite3.connect(":memory:")
    c.executescript(history.SCHEMA)
    return c


def test_minutes_fold_in_passes_and_sum_per_interval() -> None:
    c = db()
    first = [(T0 + 1_000, 1, 2.0, 0, None), (T0 + 2_000, 1, 4.0, 1, "clock_unsynchronized"),
             (T0 + 3_000, 1, None, 2, "timeout"), (T0 + 61_000, 1, 10.0, 0, None),
             (T0 + 1_000, 2, True, 0, None), (T0 + 1_000, 3, 99.0, 0, None)]
    history.add(c, "env", first, lambda pid: pid != 3)
    history.add(c, "env", [(T0 + 4_000, 1, -1.0, 0, None), (T0 + 5_000, 1, float("nan"), 0, None),
                           (T0 + 2_000, 2, False, 0, None)], lambda pid: pid != 3)
    history.add(c, "other", first, lambda pid: True)  # another uplink's minutes are its own
    assert history.query(c, "env", [1, 2, 3], T0, T0 + 3_599_000, 3_600_000) == [
        (T0, 1, 4, 15.0, -1.0, 10.0, 2), (T0, 2, 2, 1.0, 0.0, 1.0, 0)]
    assert history.query(c, "env", [1], T0, T0 + 60_000, 60_000) == [
        (T0, 1, 3, 5.0, -1.0, 4.0, 2), (T0 + 60_000, 1, 1, 10.0, 10.0, 10.0, 0)]
    assert history.query(c, "env", [1], T0 + 1, T0 + 60_000, 60_000) == [(T0 + 60_000, 1, 1, 10.0, 10.0, 10.0, 0)]
    history.add(c, "env", [(T0 + 120_000, 1, None, 2, "timeout")], lambda pid: True)
    assert history.query(c, "env", [1], T0 + 120_000, T0 + 120_000, 60_000) == [
        (T0 + 120_000, 1, 0, None, None, None, 1)]  # all bad: no figures


def test_prune_drops_only_older_minutes_of_that_uplink() -> None:
    c = db()
    rows = [(T0 + i * 60_000, 1, float(i), 0, None) for i in range(10)]
    history.add(c, "env", rows, lambda pid: True)
    history.add(c, "other", rows, lambda pid: True)
    history.prune(c, "env", T0 + 5 * 60_000)
    assert [r[0] for r in history.query(c, "env", [1], T0, T0 + 3_600_000, 60_000)] == [
        T0 + i * 60_000 for i in range(5, 10)]
    assert len(history.query(c, "other", [1], T0, T0 + 3_600_000, 60_000)) == 10
