"""Events are logged at the level their severity gives (issue 17): critical -> CRITICAL (journal
priority `<2>` crit), alarm -> ERROR (`<3>`), warning -> WARNING (`<4>`), info -> INFO (`<6>`), so
`journalctl -p warning` shows every event that needs someone."""

from __future__ import annotations

import io
import logging
import os
from pathlib import Path

import pytest
from test_checks_unit import Rig, make_config

from agent.common.logs import KeyValueFormatter
from agent.service.run import journal_prefixes


@pytest.fixture
def rig(tmp_path: Path) -> Rig:
    r = Rig(make_config(tmp_path))
    r.poll()
    return r


def gas_excursion(rig: Rig) -> None:
    """Level 1 (alarm), level 2 (critical), cleared (info)."""
    rig.poll(GL=22.0)
    rig.poll(GL=45.0)
    rig.poll(GL=1.0)


def test_event_log_level_follows_severity(rig: Rig, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="hazgate.checks"):
        gas_excursion(rig)
        rig.poll(TT=85.0)  # process alarm H: warning
    events = [(r.levelno, r.fields["state"], r.fields["severity"]) for r in caplog.records if r.getMessage() == "event"]
    assert events == [(logging.ERROR, "raised", "alarm"), (logging.CRITICAL, "escalated", "critical"),
                      (logging.INFO, "cleared", "info"), (logging.WARNING, "raised", "warning")]


def test_a_critical_event_reaches_the_journal_at_crit(rig: Rig, monkeypatch: pytest.MonkeyPatch) -> None:
    """Through the service's own journal prefixes, as under systemd (stderr is the journal)."""
    st = os.fstat(2)
    monkeypatch.setenv("JOURNAL_STREAM", f"{st.st_dev}:{st.st_ino}")
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(KeyValueFormatter())
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO)
    try:
        journal_prefixes()
        gas_excursion(rig)
    finally:
        root.handlers[:], _ = saved
        root.setLevel(saved[1])
    lines = [line for line in out.getvalue().splitlines() if "msg='event'" in line]
    assert [line[:3] for line in lines] == ["<3>", "<2>", "<6>"]
    assert lines[1].startswith("<2>level=critical logger=hazgate.checks msg='event' kind='gas_alarm' "
                               "state='escalated' subject='GL' severity='critical'")
