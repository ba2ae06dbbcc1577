"""Snapshot mode in the store (`send = "snapshot"`): per boundary each point's newest reading at
or before it, with its quality; the newest due boundary first (live), then one snapshot per
boundary missed, in order (back-fill), each with the values of its instant; the state durable
across a reopen; the work of one call bounded by the drain's budget."""

from __future__ import annotations

from pathlib import Path

import orjson

from agent.pipeline.store import DrainRequest, DrainResult, Store

STEP = 10_000  # ms: interval = "10s"
B = 1_795_777_200_000  # a boundary (a multiple of STEP)
LT, HLA, PT = ("TK101_LT", "m", "float32"), ("TK101_HLA", "", "bool"), ("PT101", "MPa", "float32")
GOOD, UNCERTAIN, BAD = 0, 1, 2


def live(seq: int, rows: list) -> bytes:
    return orjson.dumps({"backfill": False, "rows": rows})


def backfill(seq: int, rows: list) -> bytes:
    return orjson.dumps({"backfill": True, "rows": rows})


class Uplink:
    """The drain's side of one snapshot uplink: asks, collects the messages, acknowledges them."""

    def __init__(self, store: Store, name: str = "snap", room: int = 100, budget: int = 8000, batch: int = 100):
        self.store, self.name, self.room, self.budget, self.batch = store, name, room, budget, batch
        self.got: list[tuple[int, str, dict]] = []  # (seq, kind, body)
        self._acks: list[int] = []

    def call(self, due: int, backlog: bool = True) -> DrainResult:
        res = self.store.drain(DrainRequest(
            self._acks, 0, self.room, None, live, self.batch, 0, backfill if backlog else None, self.batch,
            self.budget, self.name, snapshot_interval=STEP, snapshot_due=due))
        assert res.error is None, res.error
        self._acks = [seq for seq, _k, _r, _p in res.messages]
        self.got += [(seq, kind, orjson.loads(p)) for seq, kind, _r, p in res.messages]
        return res

    def until_done(self, due: int, most: int = 1000) -> int:
        """Calls until nothing more comes; returns how many it took."""
        for n in range(1, most):
            res = self.call(due)
            if not res.messages and not res.more:
                return n
        raise AssertionError("never done")

    def snapshots(self) -> list[tuple[bool, dict[str, tuple]]]:
        """(backfill, tag -> (ts, value, quality, reason)) per message."""
        return [(body["backfill"], {r[1]: (r[0], r[4], r[5], r[6]) for r in body["rows"]})
                for _seq, _kind, body in self.got]


def opened(path: Path, uplinks: tuple[str, ...] = ("snap",)) -> Store:
    s = Store(path)
    s.set_uplinks([(name, False) for name in uplinks])
    return s


def add(s: Store, rows: list[tuple[int, tuple[str, str, str], object, int, str | None]]) -> None:
    """One chunk: (ts, point, value, quality, reason) rows."""
    pids = s.pids([LT, HLA, PT])
    s.add_readings([(ts, point[0], value, q, reason) for ts, point, value, q, reason in rows], pids)


def level(ts: int) -> float:
    """The level as the test plant reports it: seconds since B."""
    return (ts - B) / 1000


def add_level_every_second(s: Store, start: int, end: int) -> None:
    """TK101_LT every second in [start, end), one chunk per poll."""
    for ts in range(start, end, 1000):
        add(s, [(ts, LT, level(ts), GOOD, None)])


def test_a_snapshot_holds_each_points_value_at_its_boundary_with_its_quality(tmp_path: Path) -> None:
    s = opened(tmp_path)
    s.pids([PT])  # a point with no reading yet: left out
    add(s, [(B + 1000, LT, 1.0, GOOD, None), (B + 5000, HLA, 1, BAD, "timeout"),
            (B + 9000, LT, 2.0, GOOD, None), (B + 10_000, HLA, 0, GOOD, None),  # at the boundary: in it
            (B + 10_001, LT, 3.0, UNCERTAIN, "out of range")])  # after it: the next one's
    up = Uplink(s)
    up.call(B + 10_000)
    assert up.snapshots() == [(False, {"TK101_LT": (B + 9000, 2.0, "good", None),
                                       "TK101_HLA": (B + 10_000, 0, "good", None)})]
    assert up.got[0][1] == "snapshot"
    up.call(B + 10_000)  # nothing new is due
    assert len(up.got) == 1
    up.call(B + 20_000)  # no new reading for TK101_HLA: it keeps its value and time
    assert up.snapshots()[1] == (False, {"TK101_LT": (B + 10_001, 3.0, "uncertain", "out of range"),
                                         "TK101_HLA": (B + 10_000, 0, "good", None)})
    assert s.uplink_stats("snap")["readings_unsent"] == 0
    assert s.db.execute("SELECT COUNT(*) FROM chunks").fetchone()[0] == 0  # folded: no uplink needs them
    s.close()


def test_one_snapshot_per_missed_interval_after_the_live_one_with_the_values_of_their_instants(tmp_path: Path) -> None:
    s = opened(tmp_path)
    add(s, [(B, LT, level(B), GOOD, None), (B, HLA, 1, GOOD, None)])
    up = Uplink(s)
    up.call(B)
    # the platform is down from B to B + 50 s
    add_level_every_second(s, B + 1000, B + 30_001)
    add(s, [(B + 30_500, LT, 30.5, GOOD, None)])
    add(s, [(B + 29_800, HLA, 0, BAD, "timeout")])  # a slower device's poll, stored after a later one
    add_level_every_second(s, B + 31_000, B + 60_000)
    up.until_done(B + 50_000)
    snaps = up.snapshots()
    # live first (the newest boundary due), then each missed boundary once, in order
    assert [b for b, _ in snaps] == [False, False, True, True, True, True]
    at = [B, B + 50_000, B + 10_000, B + 20_000, B + 30_000, B + 40_000]
    for (_, values), boundary in zip(snaps, at, strict=True):
        assert values["TK101_LT"] == (boundary, level(boundary), "good", None)
    hla = [(1, "good"), (0, "bad"), (1, "good"), (1, "good"), (0, "bad"), (0, "bad")]
    assert [v["TK101_HLA"][1:3] for _, v in snaps] == hla
    # the tail caught up with the head: one state again, nothing folded twice from now on
    assert s.db.execute("SELECT head_at, fold_to FROM snapshots").fetchone() == (None, None)
    assert s.db.execute("SELECT COUNT(*) FROM snapshot_live").fetchone()[0] == 0
    assert s.db.execute("SELECT COUNT(*) FROM snapshot_state WHERE side = 1").fetchone()[0] == 0
    up.call(B + 60_000)
    assert up.snapshots()[-1] == (False, {"TK101_LT": (B + 59_000, 59.0, "good", None),
                                          "TK101_HLA": (B + 29_800, 0, "bad", "timeout")})
    assert [seq for seq, _k, _b in up.got] == list(range(1, 8))
    s.close()


def test_with_one_message_in_flight_a_new_boundary_goes_before_the_rest_of_the_back_fill(tmp_path: Path) -> None:
    s = opened(tmp_path)
    add(s, [(B, LT, level(B), GOOD, None)])
    up = Uplink(s, room=1)
    up.call(B)
    add_level_every_second(s, B + 1000, B + 70_000)
    up.call(B + 50_000)  # live B+50
    up.call(B + 50_000)  # back-fill B+10
    up.call(B + 60_000)  # a boundary came due meanwhile: it goes first
    up.until_done(B + 60_000)
    at = [max(ts for ts, *_ in body["rows"]) for _seq, _k, body in up.got]
    assert at == [B, B + 50_000, B + 10_000, B + 60_000, B + 20_000, B + 30_000, B + 40_000]
    assert [body["backfill"] for _s, _k, body in up.got] == [False, False, True, False, True, True, True]
    up.call(B + 70_000)
    assert up.snapshots()[-1] == (False, {"TK101_LT": (B + 69_000, 69.0, "good", None)})
    s.close()


def test_the_state_survives_a_reopen(tmp_path: Path) -> None:
    s = opened(tmp_path)
    add(s, [(B + 1000, LT, 1.0, GOOD, None), (B + 2000, HLA, 1, UNCERTAIN, "stale"),
            (B + 12_000, LT, 12.0, GOOD, None)])
    up = Uplink(s, room=1)
    up.call(B + 10_000)
    add_level_every_second(s, B + 13_000, B + 50_000)
    up.call(B + 40_000)  # live B+40 from the head
    up.budget = 1  # one chunk: the back-fill of B+20 stops part way, then the agent stops
    assert up.call(B + 40_000).more
    s.close()
    s = opened(tmp_path)
    up.store, up.budget = s, 8000
    up.until_done(B + 40_000)
    up.call(B + 50_000)
    snaps = up.snapshots()
    assert [(v["TK101_LT"][0], b) for b, v in snaps] == [
        (B + 1000, False), (B + 40_000, False), (B + 20_000, True), (B + 30_000, True), (B + 49_000, False)]
    assert all(v["TK101_HLA"] == (B + 2000, 1, "uncertain", "stale") for _, v in snaps)  # from the stored state
    assert [seq for seq, _k, _b in up.got] == list(range(1, 6))
    s.close()


def test_catch_up_numbers_one_snapshot_per_interval_within_the_budget_of_each_call(tmp_path: Path) -> None:
    s = opened(tmp_path)
    add(s, [(B, LT, 0.0, GOOD, None), (B, HLA, 1, GOOD, None)])
    up = Uplink(s, room=1000, budget=50)
    up.call(B)
    add_level_every_second(s, B + 1000, B + 300_001)  # 300 readings over 30 intervals, 300 chunks
    calls = 0
    while True:
        before, unsent = len(up.got), s.uplink_stats("snap")["readings_unsent"]
        res = up.call(B + 300_000)
        calls += 1
        if not res.messages and not res.more:
            break
        # per call at most the budget: readings folded, records built
        assert unsent - s.uplink_stats("snap")["readings_unsent"] <= 50
        assert sum(len(body["rows"]) for _s, _k, body in up.got[before:]) <= 50
        # the state stays flat: per point and side, its value now and its newest in the next interval
        assert s.db.execute("SELECT COUNT(*) FROM snapshot_state").fetchone()[0] <= 2 * 2 * 2
    boundaries = [max(ts for ts, *_ in body["rows"]) for _s, _k, body in up.got[1:]]
    assert boundaries == [B + 300_000] + [B + i * STEP for i in range(1, 30)]
    assert calls >= 300 * 2 // 50  # each reading folded twice (head and tail), 50 a call
    s.close()


def test_a_very_long_outage_numbers_at_most_the_budget_per_call(tmp_path: Path) -> None:
    s = opened(tmp_path)
    add(s, [(B, LT, 5.0, GOOD, None), (B, HLA, 1, GOOD, None)])
    up = Uplink(s, room=100_000, budget=100)
    up.call(B)
    year = B + 3_153_600 * STEP  # a year of 10 s boundaries missed, nothing stored meanwhile
    res = up.call(year)
    # the live one, then as many missed ones as 100 records allow (2 points each)
    assert [b for b, _ in up.snapshots()] == [False, False] + [True] * 49
    assert len(res.messages) == 50
    up.call(year)
    assert len(up.got) == 2 + 49 + 50
    last = max(ts for ts, *_ in up.got[-1][2]["rows"])
    assert last == B  # every back-filled snapshot holds what stood then: the readings of B
    assert s.db.execute("SELECT at FROM snapshots").fetchone()[0] == B + 99 * STEP
    s.close()


def test_an_uplink_that_sends_readings_again_forgets_its_snapshots(tmp_path: Path) -> None:
    s = opened(tmp_path, ("snap", "other"))
    add(s, [(B + 1000, LT, 1.0, GOOD, None)])
    Uplink(s).call(B + 10_000)
    Uplink(s, "other").call(B + 10_000)
    assert s.db.execute("SELECT COUNT(*) FROM snapshot_state").fetchone()[0] == 2
    s.drain(DrainRequest([], 0, 10, None, live, 100, 0, None, 100, 8000, "snap"))  # readings mode
    s.set_uplinks([("snap", False)])  # "other" removed
    for table in ("snapshots", "snapshot_state"):
        assert s.db.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0] == 0, table
    s.close()
