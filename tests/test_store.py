"""The SQLite outbox: sequence numbers, re-sends, ack, drain order, bounds and evictions."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import orjson
import pytest

from agent.pipeline.chunks import CHUNK_ROWS, pack_chunk, unpack_chunk
from agent.pipeline.store import Store


def build(seq: int, rows: list) -> bytes:
    return orjson.dumps({"seq": seq, "rows": rows})


def add(store: Store, n: int, ts: int = 1_700_000_000_000, tag: str = "T1") -> None:
    pid = store.pid(tag, "m", "float32")
    store.add_readings([(ts + i, pid, float(i), 0, None) for i in range(n)])


def test_seq_increases_by_one_and_survives_reopen(tmp_path: Path) -> None:
    s = Store(tmp_path)
    add(s, 10)
    assert s.take_readings(build, 4) == (1, 4)
    assert s.take_readings(build, 4) == (2, 4)
    s.close()
    s = Store(tmp_path)
    assert s.take_readings(build, 4) == (3, 2)
    assert s.take_readings(build, 4) is None
    assert [u[0] for u in s.unacked()] == [1, 2, 3]


def test_resend_keeps_seq_and_content_until_ack(tmp_path: Path) -> None:
    s = Store(tmp_path)
    add(s, 3)
    s.take_readings(build, 10)
    first = s.unacked()
    s.close()
    s = Store(tmp_path)  # a restart: the unacknowledged message is still there, unchanged
    assert s.unacked() == first
    s.ack([1])
    assert s.unacked() == []
    assert s.stats()["last_ack_seq"] == 1


def test_insertion_order_not_timestamp_order(tmp_path: Path) -> None:
    s = Store(tmp_path)
    pid = s.pid("T1", "m", "float32")
    s.add_readings([(2000, pid, 1.0, 0, None), (1000, pid, 2.0, 0, None)])  # clock stepped back
    s.take_readings(build, 10)
    rows = orjson.loads(s.unacked()[0][3])["rows"]
    assert [r[4] for r in rows] == [1.0, 2.0]


def test_messages_cut_across_packed_chunks_keep_every_reading_once(tmp_path: Path) -> None:
    """Readings are packed CHUNK_ROWS to a row; a message may end inside a chunk and the next
    one goes on from there: every reading leaves exactly once, in order."""
    s = Store(tmp_path)
    add(s, CHUNK_ROWS + 7)  # two chunks in one commit
    add(s, 3, ts=1_800_000_000_000)  # a third
    sizes, values = [], []
    while (taken := s.take_readings(build, 333)) is not None:
        sizes.append(taken[1])
    for _seq, _kind, _retain, payload in s.unacked(limit=10):
        values += [r[4] for r in orjson.loads(payload)["rows"]]
    assert sizes == [333, CHUNK_ROWS + 10 - 333]
    assert values == [float(i) for i in range(CHUNK_ROWS + 7)] + [0.0, 1.0, 2.0]
    assert s.stats()["readings_unsent"] == 0
    s.close()
    assert Store(tmp_path).stats()["stored_readings"] == CHUNK_ROWS + 10  # counted for good


def test_chunk_packing_round_trips_mixed_rows() -> None:
    rows = [(1_000, 1, 1.5, 0, None), (990, 2, True, 0, None), (1_010, 3, None, 2, "timeout"),
            (1_000, 4, 7, 1, "clock_unsynchronized")]
    assert unpack_chunk(pack_chunk(*zip(*rows, strict=True))) == rows
    uniform = [(5_000 + i, i, float(i), 0, None) for i in range(10)]
    assert unpack_chunk(pack_chunk(*zip(*uniform, strict=True))) == uniform
    assert len(pack_chunk(*zip(*uniform, strict=True))) < len(orjson.dumps(uniform)) * 0.7  # by column, shared fields once


def test_partly_taken_chunk_counts_and_exports_only_its_rest(tmp_path: Path) -> None:
    s = Store(tmp_path)
    add(s, 10)
    s.take_readings(build, 4)
    assert s.stats()["readings_unsent"] == 6
    assert [r[4] for r in s.queued()] == [float(i) for i in range(4, 10)]
    assert s.stats()["oldest_unsent_ms"] == 1_700_000_000_000  # the message in the outbox holds the oldest
    s.ack([1])
    assert s.stats()["oldest_unsent_ms"] == 1_700_000_000_004
    raised = s.enforce_limits(1 << 30, 1.0)  # all too old: the rest is evicted, and counted right
    assert [e["count"] for e in raised] == [6]


def test_store_of_one_row_per_reading_is_packed_on_open(tmp_path: Path) -> None:
    """A store left by hazgate 0.1 (one row per reading in `readings`) opens with its readings
    packed into chunks, in order, none lost."""
    db = sqlite3.connect(tmp_path / "hazgate.db")
    db.executescript("""
        CREATE TABLE points(pid INTEGER PRIMARY KEY, tag TEXT NOT NULL, unit TEXT NOT NULL, type TEXT NOT NULL,
                            UNIQUE(tag, unit, type));
        CREATE TABLE readings(id INTEGER PRIMARY KEY AUTOINCREMENT, ts INTEGER NOT NULL, pid INTEGER NOT NULL,
                              value REAL, quality INTEGER NOT NULL, reason TEXT);
        INSERT INTO points VALUES (1, 'T1', 'm', 'float32');""")
    db.executemany("INSERT INTO readings(ts, pid, value, quality, reason) VALUES (?,?,?,?,?)",
                   [(1000 + i, 1, float(i), 2 if i == 3 else 0, "timeout" if i == 3 else None) for i in range(1200)])
    db.commit()
    db.close()
    s = Store(tmp_path)
    rows = list(s.queued())
    assert [r[4] for r in rows] == [float(i) for i in range(1200)]
    assert rows[3][5:] == ("bad", "timeout") and rows[0][:4] == (1000, "T1", "m", "float32")
    assert s.db.execute("SELECT COUNT(*) FROM chunks").fetchone()[0] == 3
    assert not s.db.execute("SELECT 1 FROM sqlite_master WHERE name='readings'").fetchone()


def test_live_and_backlog_split_by_watermark(tmp_path: Path) -> None:
    s = Store(tmp_path)
    add(s, 5)
    mark = s.last_reading_id()
    add(s, 3, ts=1_800_000_000_000)
    assert s.take_readings(build, 100, mark) == (1, 3)  # live: after the watermark
    assert s.take_readings(build, 100, 0, mark) == (2, 5)  # backlog: up to it
    assert s.take_readings(build, 100) is None


def test_events_taken_in_order(tmp_path: Path) -> None:
    s = Store(tmp_path)
    for i in range(3):
        s.add_event(i, {"id": f"e{i}"})
    assert s.take_events(lambda seq, rows: orjson.dumps(rows)) == 1
    assert [e["id"] for e in orjson.loads(s.unacked()[0][3])] == ["e0", "e1", "e2"]


def test_size_limit_evicts_oldest_readings_never_events_and_reports(tmp_path: Path) -> None:
    s = Store(tmp_path)
    s.add_event(1, {"id": "alarm-1", "kind": "alarm"})
    for batch in range(8):
        add(s, 2000, ts=1_900_000_000_000 + batch * 2000)
    used = s.used_bytes()
    limit = used // 2
    raised = s.enforce_limits(limit, 10 * 365 * 86400.0)
    assert len(raised) == 1 and raised[0]["kind"] == "buffer_eviction"
    assert raised[0]["count"] > 0 and "size limit" in raised[0]["reason"]
    assert s.stats()["evicted_readings"] == raised[0]["count"]
    # the oldest went first: what is left starts right after the evicted range
    first_left = next(s.queued())[0]
    assert first_left == 1_900_000_000_000 + raised[0]["count"]
    bodies = [orjson.loads(b) for (b,) in s.db.execute("SELECT body FROM events ORDER BY id")]
    assert [b["id"] for b in bodies][0] == "alarm-1"  # events survive
    assert bodies[-1]["kind"] == "buffer_eviction"  # and the eviction itself is reported
    # new data reuses the freed pages: the file does not keep growing
    size_before = s.db.execute("PRAGMA page_count").fetchone()[0]
    add(s, 2000, ts=2_000_000_000_000)
    assert s.db.execute("PRAGMA page_count").fetchone()[0] <= size_before + 2


def test_age_limit_evicts_prefix_in_insertion_order(tmp_path: Path) -> None:
    s = Store(tmp_path)
    add(s, 10, ts=1_000)  # 1970: far older than any limit
    add(s, 5, ts=10**13)  # far future: young
    raised = s.enforce_limits(1 << 30, 86400.0)
    assert [e["count"] for e in raised] == [10]
    assert [r[0] for r in s.queued()] == [10**13 + i for i in range(5)]


def test_disk_full_raises_then_recovers(tmp_path: Path) -> None:
    s = Store(tmp_path)
    add(s, 10)
    pages = s.db.execute("PRAGMA page_count").fetchone()[0]
    s.db.execute(f"PRAGMA max_page_count={pages}")
    with pytest.raises(sqlite3.OperationalError, match="full"):
        for _ in range(20):
            add(s, 1000)
    s.db.execute("PRAGMA max_page_count=1000000")
    add(s, 1000)  # space returned: writes work again, nothing before was damaged
    assert s.db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"


def test_corrupt_store_is_set_aside_and_seq_never_reused(tmp_path: Path) -> None:
    s = Store(tmp_path)
    add(s, 5)
    s.take_readings(build, 2)
    s.take_readings(build, 2)
    s.mark_published(2)  # as the uplink does before seq 1 and 2 go on the wire
    s.close()
    (tmp_path / "hazgate.db").write_bytes(b"garbage, not SQLite" * 100)  # a destroyed file
    (tmp_path / "hazgate.db-wal").unlink(missing_ok=True)
    s = Store(tmp_path)
    assert s.set_aside is not None and s.set_aside.exists()
    events = [orjson.loads(b) for (b,) in s.db.execute("SELECT body FROM events")]
    assert [e["kind"] for e in events] == ["store_reset"]
    seq = s.take_events(lambda seq, rows: b"{}")
    assert seq is not None and seq > 2  # continues above every number used before: a gap, no reuse


def test_a_failed_take_leaves_everything_as_it_was(tmp_path: Path) -> None:
    """Moving rows into the outbox is one transaction: a failure half-way changes nothing."""
    s = Store(tmp_path)
    add(s, 5)

    s.take_readings(build, 2)  # seq 1

    def fail_after_insert(seq: int, rows: list) -> bytes:
        s.db.execute("INSERT INTO outbox(uplink, seq, kind, retain, created, count, payload) "
                     "VALUES ('mqtt', 999, 'x', 0, 0, 0, x'00')")
        raise RuntimeError("crash between the outbox insert and the delete")

    with pytest.raises(RuntimeError):
        s.take_readings(fail_after_insert, 2)
    assert [u[0] for u in s.unacked()] == [1]  # the half-done message was rolled back
    assert s.stats()["readings_unsent"] == 3
    assert s.take_readings(build, 10) == (2, 3)  # seq 2 is still the next one


def test_a_rolled_back_database_never_reuses_a_published_seq(tmp_path: Path) -> None:
    s = Store(tmp_path)
    add(s, 6)
    for _ in range(3):
        s.take_readings(build, 2)
    s.mark_published(3)
    s.set_state({"next_seq": 2})  # what a torn write that lost the last commits leaves behind
    s.close()
    s = Store(tmp_path)
    assert s.enqueue("meta", True, build) == 4  # continues above what went on the wire
    s.close()
    s = Store(tmp_path)  # a normal restart keeps counting, no jump
    assert s.enqueue("meta", True, build) == 5
