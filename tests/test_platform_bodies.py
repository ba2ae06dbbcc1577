"""One set of body cases run through both ends of the wire: the builder (TemplatedBody) and the
reference platform's decoder and template checker (agent/receiver/platform.py).

tests/cases_bodies/<case>/ holds uplink.toml (one `[[uplinks]]` table and the secret files it
names, example keys only), rows.json (`kind`: readings or events, `seq`, `backfill`,
`timezone` and the rows as the store hands them to a builder) and the expected results:
expected.body (the message bytes, built with data_id 0123456789abcdef0123456789abcdef and
sent_at 2026-11-27T19:00:05.000+08:00) and expected.records.json (the records inside the
payload, decoded). Run with RECORD_BODIES=1 to write the expected files of a new case; check
them by hand before committing.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import orjson
import pytest

from agent.config.uplinks import parse_timezone
from agent.north import templated
from agent.north.templated import TemplatedBody, payload_paths
from agent.receiver.platform import PlatformReceiver, open_db
from tests.platformkit import context, load

CASES_DIR = Path(__file__).resolve().parent / "cases_bodies"
CASES = sorted(d.name for d in CASES_DIR.iterdir() if (d / "uplink.toml").is_file())
SENT_MS = 1_795_777_205_000
DATA_ID = uuid.UUID("0123456789abcdef0123456789abcdef")
RECORD = os.environ.get("RECORD_BODIES") == "1"


def case_spec(case: str):
    folder = CASES_DIR / case
    for path in (folder / "secrets").glob("*"):
        path.chmod(0o600)
    specs, problems = load(folder, (folder / "uplink.toml").read_text(encoding="utf-8"))
    assert problems == [] and len(specs) == 1, problems
    return specs[0], orjson.loads((folder / "rows.json").read_bytes())


def build(case: str, monkeypatch: pytest.MonkeyPatch) -> bytes:
    spec, given = case_spec(case)
    monkeypatch.setattr(templated, "now_ms", lambda: SENT_MS)
    monkeypatch.setattr(templated.uuid, "uuid4", lambda: DATA_ID)
    body = TemplatedBody(context(None), spec.body, parse_timezone(given["timezone"]))
    rows = [tuple(r) for r in given["rows"]] if given["kind"] == "readings" else given["rows"]
    if given["kind"] == "readings":
        return body.readings(given["backfill"])(given["seq"], rows)
    assert body.events is not None
    return body.events(given["seq"], rows)


def payload_key(spec, kind: str) -> str:
    templates = spec.body.events if kind == "events" else spec.body.readings
    [((key,), _whole)] = payload_paths(templates.envelope_table)
    return key


def test_cases_exist() -> None:
    assert len(CASES) >= 6


@pytest.mark.parametrize("case", CASES)
def test_builder_makes_the_expected_body(case: str, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = CASES_DIR / case
    got = build(case, monkeypatch)
    spec, given = case_spec(case)
    envelope = orjson.loads(got)
    payload = envelope[payload_key(spec, given["kind"])]
    records = payload if isinstance(payload, list) else spec.body.codec.decode(payload)
    if RECORD:
        (folder / "expected.body").write_bytes(got)
        (folder / "expected.records.json").write_bytes(orjson.dumps(records, option=orjson.OPT_INDENT_2) + b"\n")
    assert got == (folder / "expected.body").read_bytes()
    assert records == orjson.loads((folder / "expected.records.json").read_bytes())


@pytest.mark.parametrize("case", CASES)
def test_receiver_reads_the_expected_body(case: str, tmp_path: Path) -> None:
    spec, given = case_spec(case)
    receiver = PlatformReceiver(spec, open_db(tmp_path / "platform.db"))
    reply = receiver.handle((CASES_DIR / case / "expected.body").read_bytes())
    [gw] = receiver.gateways.values()
    assert reply.accepted and (gw.violations, gw.undecodable) == (0, 0), receiver.db.execute(
        "SELECT problems FROM platform_violations").fetchall()
    stored = [orjson.loads(b) for (b,) in receiver.db.execute("SELECT body FROM platform_records ORDER BY idx")]
    assert stored == orjson.loads((CASES_DIR / case / "expected.records.json").read_bytes())
    assert len(stored) == len(given["rows"])


@pytest.mark.parametrize("case", CASES)
def test_receiver_finds_a_record_that_breaks_the_template(case: str, tmp_path: Path) -> None:
    spec, given = case_spec(case)
    envelope = orjson.loads((CASES_DIR / case / "expected.body").read_bytes())
    codec = spec.body.codec
    key = payload_key(spec, given["kind"])
    payload = envelope[key]
    records = payload if isinstance(payload, list) else codec.decode(payload)
    records[0]["EXTRA"] = 1
    records[-1].pop(next(iter(records[-1])))
    envelope[key] = codec.payload(records)
    receiver = PlatformReceiver(spec, open_db(tmp_path / "platform.db"))
    reply = receiver.handle(orjson.dumps(envelope))
    [gw] = receiver.gateways.values()
    assert not reply.accepted and gw.violations == 1 and gw.records == 0
    [(problems,)] = receiver.db.execute("SELECT problems FROM platform_violations").fetchall()
    assert "records[0].EXTRA: is not in the template" in problems and "is missing" in problems


def test_undecodable_payload_is_counted_and_refused(tmp_path: Path) -> None:
    spec, _ = case_spec("mem_http_sm4cbc_hex")
    envelope = orjson.loads((CASES_DIR / "mem_http_sm4cbc_hex" / "expected.body").read_bytes())
    envelope["data"] = envelope["data"][:-32]  # cut: the padding no longer checks out
    receiver = PlatformReceiver(spec, open_db(tmp_path / "platform.db"))
    reply = receiver.handle(orjson.dumps(envelope))
    assert not reply.accepted and receiver.gateways["mem"].undecodable == 1
    assert orjson.loads(reply.body)["code"] == 1
