"""deploy/install.sh into a temporary root (DESTDIR-style): the tree and its modes, idempotence,
an edited config kept, upgrade and rollback with the store untouched, uninstall; and the unit
checked by `systemd-analyze verify` and `security` where systemd-analyze is installed.

Offline: the program is installed from a wheelhouse (the path for plant boxes without internet)
holding a wheel of this tree, made here by hand (a zip of agent/ and drivers/ with its
dist-info), since building one with setuptools would need the package index.
"""

from __future__ import annotations

import base64
import hashlib
import os
import re
import shutil
import stat
import subprocess
import zipfile
from pathlib import Path

import orjson
import pytest
from conftest import ROOT

from agent import release_version, write_build_file

SYSTEM_PYTHON = "/usr/bin/python3"


def _python() -> str:
    for exe in (SYSTEM_PYTHON, shutil.which("python3")):
        if exe and subprocess.run([exe, "-c", "import venv, ensurepip, sys; sys.exit(sys.version_info < (3, 11))"],
                                  capture_output=True).returncode == 0:
            return exe
    pytest.skip("no python3 >= 3.11 with venv/ensurepip (apt-get install python3-venv)")


def snapshot(dst: Path) -> Path:
    """The parts of this tree install.sh uses, copied (other engineers keep editing the tree)."""
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    dst.mkdir(parents=True)
    for name in ("agent", "drivers", "deploy", "docs", "config"):
        shutil.copytree(ROOT / name, dst / name, ignore=ignore)
    for name in ("pyproject.toml", "constraints.txt", "README.md"):
        shutil.copy(ROOT / name, dst / name)
    return dst


def make_wheel(src: Path, out: Path, version: str, with_test_deps: bool = False) -> Path:
    """A pure-Python wheel of src/agent and src/drivers, as setuptools would build it.
    with_test_deps: the release also finds this test run's dependencies (a .pth file naming its
    site-packages), as installing them would need the package index; the release can then load
    a config (`hazgate validate`)."""
    out.mkdir(parents=True, exist_ok=True)
    dist = f"hazgate-{version}.dist-info"
    files = {f.relative_to(src).as_posix(): f.read_bytes()
             for pkg in ("agent", "drivers") for f in sorted((src / pkg).rglob("*.py"))}
    if with_test_deps:
        files["hazgate_test_deps.pth"] = f"{Path(orjson.__file__).parent.parent}\n".encode()
    files[f"{dist}/METADATA"] = f"Metadata-Version: 2.1\nName: hazgate\nVersion: {version}\n".encode()
    files[f"{dist}/WHEEL"] = b"Wheel-Version: 1.0\nGenerator: tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
    files[f"{dist}/entry_points.txt"] = b"[console_scripts]\nhazgate = agent.cli:main\n"
    record = []
    for name, data in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        record.append(f"{name},sha256={digest},{len(data)}")
    record.append(f"{dist}/RECORD,,")
    files[f"{dist}/RECORD"] = ("\n".join(record) + "\n").encode()
    path = out / f"hazgate-{version}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        for name, data in files.items():
            z.writestr(name, data)
    return path


def run_install(src: Path, dest: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(src / "deploy" / "install.sh"), *args, "--destdir", str(dest)],
                          capture_output=True, text=True, timeout=180,
                          env={**os.environ, "PYTHON": _python(), "PIP_NO_INDEX": "1"})


def install(src: Path, dest: Path, *args: str) -> str:
    r = run_install(src, dest, *args)
    assert r.returncode == 0, f"install.sh {' '.join(args)} failed:\n{r.stdout}\n{r.stderr}"
    return r.stdout + r.stderr


def mode(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


def current(dest: Path, link: str = "current") -> str:
    return os.readlink(dest / "opt/hazgate" / link)


def test_install_upgrade_rollback_uninstall_into_a_temporary_root(tmp_path: Path) -> None:
    src = snapshot(tmp_path / "src")
    dest = tmp_path / "root"
    wh1 = tmp_path / "wh1"
    make_wheel(src, wh1, "0.1.0", with_test_deps=True)
    out = install(src, dest, "install", "--wheelhouse", str(wh1), "--pip-args", "--no-deps")
    print(out)

    # the program: one release, a virtual environment naming its real path, docs and deploy files
    rel = current(dest)
    assert re.fullmatch(r"releases/0\.1\.0-[0-9a-f]{10}", rel), rel
    release = dest / "opt/hazgate" / rel
    assert (release / ".complete").is_file()
    exe = release / "bin" / "hazgate"
    assert exe.is_file() and mode(exe) & 0o111
    for script in (release / "bin").iterdir():
        if script.is_file() and not script.is_symlink():
            text = script.read_text(errors="replace")
            assert str(dest) not in text, f"{script} names the staging root"
    # pip writes `#!/bin/sh` + `exec PYTHON` when the build path is too long for a `#!` line
    # (pytest-xdist's temporary folders are); either way the script runs the release's python
    head = exe.read_text().splitlines()[:2]
    assert head[0].startswith(f"#!/opt/hazgate/{rel}/bin/python") or (
        head[0] == "#!/bin/sh" and f"/opt/hazgate/{rel}/bin/python" in head[1]), head
    version = subprocess.run([str(release / "bin" / "python"), "-I", "-m", "agent.cli", "--version"],
                             capture_output=True, text=True, timeout=30)
    assert version.stdout.strip() == "hazgate 0.1.0", version
    assert (release / "share/doc/hazgate/operations.md").is_file()
    assert (release / "share/hazgate/deploy/hazgate.service").is_file()
    assert not mode(release) & 0o022 and not mode(exe) & 0o022, "the program must not be writable by the agent"

    # config: root:hazgate 0750 folders and 0640 files, data_dir set for the box, no simulator scenario
    conf = dest / "etc/hazgate"
    assert mode(conf) == 0o750
    for d in ("secrets", "pki", "points"):
        assert mode(conf / d) == 0o750, d
    assert mode(conf / "gateway.toml") == 0o640
    assert sorted(p.name for p in (conf / "points").iterdir()) == sorted(p.name for p in (src / "config/points").iterdir())
    assert all(mode(p) == 0o640 for p in (conf / "points").iterdir())
    assert not (conf / "plant.toml").exists()
    assert re.search(r'(?m)^data_dir = "/var/lib/hazgate"', (conf / "gateway.toml").read_text())
    check = subprocess.run([*map(str, (ROOT / ".venv/bin/hazgate",)), "validate", "-c", str(conf / "gateway.toml")],
                           capture_output=True, text=True, timeout=60)
    assert check.returncode == 0, check.stderr
    # state, unit, CLI wrapper, enablement
    assert mode(dest / "var/lib/hazgate") == 0o750
    unit = dest / "usr/local/lib/systemd/system/hazgate.service"
    assert unit.read_text() == (src / "deploy/hazgate.service").read_text() and mode(unit) == 0o644
    wants = dest / "etc/systemd/system/multi-user.target.wants/hazgate.service"
    assert os.readlink(wants) == "/usr/local/lib/systemd/system/hazgate.service"
    wrapper = dest / "usr/local/bin/hazgate"
    assert mode(wrapper) == 0o755 and "runuser -u hazgate" in wrapper.read_text()
    # the example's serial port is a simulator's file, not a device: no device access granted
    assert not (dest / "etc/systemd/system/hazgate.service.d").exists()

    # again, unchanged: nothing rebuilt, nothing overwritten; an edited file is kept
    store = dest / "var/lib/hazgate/hazgate.db"
    store.write_bytes(b"buffered readings")
    gw = conf / "gateway.toml"
    edited = gw.read_text().replace('/tmp/hazgate-gas-bus-1', '/dev/ttyUSB0') + "# edited by the technician\n"
    gw.write_text(edited)
    out = install(src, dest, "install", "--wheelhouse", str(wh1), "--pip-args", "--no-deps")
    assert "is already installed" in out, out
    assert current(dest) == rel and len(list((dest / "opt/hazgate/releases").iterdir())) == 1
    assert gw.read_text() == edited
    assert (conf / "gateway.toml.dist").is_file() and mode(conf / "gateway.toml.dist") == 0o640
    # the RTU devices now name a real port: a drop-in grants exactly that device
    dropin = dest / "etc/systemd/system/hazgate.service.d/10-serial-ports.conf"
    text = dropin.read_text()
    assert "DeviceAllow=/dev/ttyUSB0 rw" in text and "PrivateUsers=no" in text and "SupplementaryGroups=dialout" in text
    assert text.count("DeviceAllow=") == 1  # two units on one bus: one port

    # upgrade: a new release becomes current, the old one previous; config and store untouched
    wh2 = tmp_path / "wh2"
    make_wheel(src, wh2, "0.1.1", with_test_deps=True)
    install(src, dest, "install", "--wheelhouse", str(wh2), "--pip-args", "--no-deps")
    assert current(dest).startswith("releases/0.1.1-") and current(dest, "previous") == rel
    assert gw.read_text() == edited and store.read_bytes() == b"buffered readings"

    # rollback: back to the first release; again: forward
    install(src, dest, "rollback")
    assert current(dest) == rel and current(dest, "previous").startswith("releases/0.1.1-")
    assert store.read_bytes() == b"buffered readings"

    # uninstall keeps config and store; --purge removes them
    install(src, dest, "uninstall")
    assert not (dest / "opt/hazgate").exists() and not unit.exists() and not wrapper.exists()
    assert not wants.exists() and not dropin.exists()
    assert gw.read_text() == edited and store.read_bytes() == b"buffered readings"
    install(src, dest, "uninstall", "--purge")
    assert not conf.exists() and not (dest / "var/lib/hazgate").exists()


def test_a_release_that_refuses_the_config_is_not_switched_to(tmp_path: Path) -> None:
    """Before: the upgrade switched to the new release whatever it made of the config, and the
    service failed at its next restart; a rollback restarted without checking either."""
    old_src = snapshot(tmp_path / "src")
    dest = tmp_path / "root"
    make_wheel(old_src, tmp_path / "wh1", "0.1.0", with_test_deps=True)
    install(old_src, dest, "install", "--wheelhouse", str(tmp_path / "wh1"), "--pip-args", "--no-deps")
    old = current(dest)
    # the new release requires a [gateway] key the installed config lacks
    new_src = snapshot(tmp_path / "src2")
    loader = new_src / "agent/config/loader.py"
    loader.write_text(loader.read_text().replace('"timezone": ("str", False),',
                                                 '"timezone": ("str", False), "region": ("level", True),', 1))
    make_wheel(new_src, tmp_path / "wh2", "0.1.1", with_test_deps=True)
    r = run_install(new_src, dest, "install", "--wheelhouse", str(tmp_path / "wh2"), "--pip-args", "--no-deps")
    assert r.returncode == 1, r.stdout + r.stderr
    assert re.search(r"(?m)^  \S+/etc/hazgate/gateway\.toml:\d+: gateway\.region: required key is missing$",
                     r.stderr), r.stderr  # the problem, as validate says it
    assert ("release 0.1.1-" in r.stderr and "refuses /etc/hazgate/gateway.toml (problems above): not switched; "
            f"{old.removeprefix('releases/')} stays installed and running" in r.stderr), r.stderr
    assert "restarted" not in r.stdout + r.stderr
    assert current(dest) == old and not (dest / "opt/hazgate/previous").exists()
    assert (dest / "opt/hazgate" / old / ".complete").is_file()
    check = subprocess.run([str(dest / "opt/hazgate" / old / "bin/python"), "-m", "agent.cli", "validate", "-c",
                            str(dest / "etc/hazgate/gateway.toml")], capture_output=True, text=True, timeout=60)
    assert check.returncode == 0, check.stderr  # the old release still runs on it

    # with the key the new release is switched to; the old one refuses the key: no rollback
    gw = dest / "etc/hazgate/gateway.toml"
    gw.write_text(gw.read_text().replace("[gateway]\n", '[gateway]\nregion = "3202"\n', 1))
    install(new_src, dest, "install", "--wheelhouse", str(tmp_path / "wh2"), "--pip-args", "--no-deps")
    new = current(dest)
    assert new.startswith("releases/0.1.1-") and current(dest, "previous") == old
    r = run_install(new_src, dest, "rollback")
    assert r.returncode == 1 and "region" in r.stderr, r.stdout + r.stderr
    assert f"release {old.removeprefix('releases/')} refuses /etc/hazgate/gateway.toml (problems above): not rolled " \
           f"back; {new.removeprefix('releases/')} stays current and running" in r.stderr, r.stderr
    assert current(dest) == new and current(dest, "previous") == old


def test_the_release_folder_and_version_carry_the_commit(tmp_path: Path) -> None:
    """A wheel built after `agent.write_build_file()` names its release by the tree's version
    (tag or pyproject's version plus commit), in the release folder and in `--version`."""
    src = snapshot(tmp_path / "src")
    version = write_build_file(ROOT, src / "agent")
    assert version == release_version(ROOT)
    make_wheel(src, tmp_path / "wh", "0.1.0")
    dest = tmp_path / "root"
    install(src, dest, "install", "--wheelhouse", str(tmp_path / "wh"), "--pip-args", "--no-deps")
    rel = current(dest)
    assert re.fullmatch(rf"releases/{re.escape(version)}-[0-9a-f]{{10}}", rel), (rel, version)
    shown = subprocess.run([str(dest / "opt/hazgate" / rel / "bin/python"), "-I", "-m", "agent.cli", "--version"],
                           capture_output=True, text=True, timeout=30)
    assert shown.stdout.strip() == f"hazgate {version}", shown


def _installed_unit_for_verify(tmp_path: Path) -> Path:
    """The unit as installed, its absolute paths pointed into a staging root that has them."""
    src = snapshot(tmp_path / "src")
    dest = tmp_path / "root"
    make_wheel(src, tmp_path / "wh", "0.1.0")
    install(src, dest, "install", "--wheelhouse", str(tmp_path / "wh"), "--pip-args", "--no-deps")
    gw = dest / "etc/hazgate/gateway.toml"
    gw.write_text(gw.read_text().replace('/tmp/hazgate-gas-bus-1', '/dev/ttyUSB0'))
    install(src, dest, "devices")
    text = (dest / "usr/local/lib/systemd/system/hazgate.service").read_text()
    for path in ("/opt/hazgate", "/etc/hazgate"):
        text = text.replace(path, f"{dest}{path}")
    unit_dir = tmp_path / "units"
    (unit_dir / "hazgate.service.d").mkdir(parents=True)
    (unit_dir / "hazgate.service").write_text(text)
    shutil.copy(dest / "etc/systemd/system/hazgate.service.d/10-serial-ports.conf", unit_dir / "hazgate.service.d")
    return unit_dir / "hazgate.service"


def test_unit_passes_systemd_analyze_verify_and_security(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed (apt-get install systemd)")
    unit = _installed_unit_for_verify(tmp_path)
    r = subprocess.run([analyze, "verify", str(unit)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and not r.stdout.strip() and not r.stderr.strip(), r.stdout + r.stderr
    scores = {}
    for name, path in (("unit", ROOT / "deploy/hazgate.service"), ("unit with serial ports", unit)):
        r = subprocess.run([analyze, "security", "--offline=yes", str(path)], capture_output=True, text=True, timeout=60)
        m = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", r.stdout)
        if m is None:
            pytest.skip(f"this systemd-analyze cannot score units offline: {r.stderr.strip()[:200]}")
        scores[name] = float(m.group(1))
    print(f"\nsystemd-analyze security exposure: {scores}")
    assert scores["unit"] <= 2.0 and scores["unit with serial ports"] <= 2.5, scores
