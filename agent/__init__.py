"""hazgate agent: config, scheduling, normalization, checks, store, uplink and CLI.

`__version__` is the release: tag (or pyproject's version) plus commit, as `git describe` tells,
e.g. `0.1.0-g350b96b` or `0.2.0-3-g350b96b-dirty`. It is found, in this order, in the file a
build writes (`agent/_build.py`: `write_build_file`, which deploy/install.sh calls), from git when this is a checkout, from
the pyproject.toml beside a source tree outside git, from the installed package's metadata.
Computed on first use: importing the package runs nothing.
"""

from __future__ import annotations

import functools
import re
import subprocess
import tomllib
from pathlib import Path

_ROOT = Path(__file__).resolve().parent.parent
_BARE_COMMIT = re.compile(r"[0-9a-f]{4,40}(-dirty)?")  # what `git describe --always` says without a tag


def release_version(root: Path = _ROOT) -> str:
    """The version of the source tree at `root` (tag plus commit when it is a git checkout)."""
    base = _pyproject_version(root)
    if (root / ".git").exists():
        try:
            described = subprocess.run(["git", "-C", str(root), "describe", "--tags", "--always", "--dirty"],
                                       capture_output=True, text=True, timeout=10, check=True).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            described = ""
        if _BARE_COMMIT.fullmatch(described):
            return f"{base or _metadata_version()}-g{described}"
        if described:
            return described.removeprefix("v")
    return base or _metadata_version()


def write_build_file(root: Path = _ROOT, package: Path | None = None) -> str:
    """Write `agent/_build.py` (into `package`, default root/agent) with the release version of
    the tree at `root`, so that a build made from a copy (a wheel, a release) still knows it;
    returns the version."""
    version = release_version(root)
    target = (package or root / "agent") / "_build.py"
    target.write_text(f'"""Written at build time (agent.write_build_file): the release of this build."""\n\n'
                      f"VERSION = {version!r}\n", encoding="utf-8")
    return version


def _pyproject_version(root: Path) -> str | None:
    try:
        with open(root / "pyproject.toml", "rb") as f:
            return tomllib.load(f)["project"]["version"]
    except (OSError, KeyError, tomllib.TOMLDecodeError):
        return None


def _metadata_version() -> str:
    import importlib.metadata  # here: 14 modules (zipfile, importlib.resources) a running agent never needs

    try:
        return importlib.metadata.version("hazgate")
    except importlib.metadata.PackageNotFoundError:
        return "0+unknown"


@functools.cache
def _version() -> str:
    try:
        from agent._build import VERSION  # written by write_build_file into a build
    except ImportError:
        return release_version()
    return VERSION


def __getattr__(name: str) -> str:
    if name == "__version__":
        return _version()
    raise AttributeError(f"module 'agent' has no attribute {name!r}")
