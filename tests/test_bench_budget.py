"""The budget phase's cgroup handling (bench/budget.py), on a folder standing in for a hierarchy."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench import budget
from bench.common import Procs


def test_v1_hierarchy_gets_the_cfs_quota_and_is_removed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(budget, "_mounts", lambda: [("cgroup", tmp_path, {"rw", "cpu"})])
    cg = budget.make_cgroup("t")
    assert isinstance(cg, budget.Cgroup) and cg.version == 1
    assert (tmp_path / "t" / "cpu.cfs_quota_us").read_text() == "25000"
    assert (tmp_path / "t" / "cpu.cfs_period_us").read_text() == "100000"
    assert cg.wrap()[-1] == str(tmp_path / "t" / "cgroup.procs")
    (cg.path / "cpu.stat").write_text("nr_periods 600\nnr_throttled 186\nthrottled_time 9400000000\n")
    assert cg.throttled() == (600, 186, 9.4)
    for f in cg.path.iterdir():  # a real cgroup's files go with its rmdir
        f.unlink()
    assert cg.remove(Procs(tmp_path)) is None and not cg.path.exists()


def test_v2_with_the_cpu_controller_is_preferred(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    v1, v2 = tmp_path / "v1", tmp_path / "v2"
    v1.mkdir(), v2.mkdir()
    (v2 / "cgroup.controllers").write_text("cpu io memory\n")
    (v2 / "cgroup.subtree_control").write_text("")
    monkeypatch.setattr(budget, "_mounts", lambda: [("cgroup", v1, {"cpu"}), ("cgroup2", v2, {"rw"})])
    cg = budget.make_cgroup("t")
    assert isinstance(cg, budget.Cgroup) and cg.version == 2
    assert (v2 / "cgroup.subtree_control").read_text() == "+cpu"
    assert (v2 / "t" / "cpu.max").read_text() == "25000 100000"
    (cg.path / "cpu.stat").write_text("usage_usec 5\nnr_periods 10\nnr_throttled 4\nthrottled_usec 250000\n")
    assert cg.throttled() == (10, 4, 0.25)


def test_no_cpu_hierarchy_or_none_writable_is_a_reason(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "cgroup.controllers").write_text("hugetlb\n")  # this box's v2: no cpu controller
    monkeypatch.setattr(budget, "_mounts", lambda: [("cgroup2", tmp_path, {"rw"}), ("cgroup", tmp_path, {"cpuacct"})])
    assert "no cgroup v2 with the cpu controller" in budget.make_cgroup("t")
    missing = tmp_path / "gone"  # mkdir under a folder that is not there fails as a read-only one would
    monkeypatch.setattr(budget, "_mounts", lambda: [("cgroup", missing / "x", {"cpu"})])
    assert "cannot make a cgroup" in budget.make_cgroup("t")


def test_overruns_and_polls_are_read_per_device() -> None:
    body = ('# TYPE hazgate_device_polls_total counter\nhazgate_device_polls_total{device="plc0"} 61\n'
            'hazgate_device_polls_total{device="ev"} 300\nhazgate_device_overruns_total{device="plc0"} 0\n'
            'hazgate_device_overruns_total{device="ev"} 2\nhazgate_device_up{device="ev"} 1\n')
    assert budget.parse_counters(body) == {("polls", "plc0"): 61, ("polls", "ev"): 300, ("overruns", "plc0"): 0,
                                           ("overruns", "ev"): 2}
