"""Where the agent's time goes: py-spy against the running agent, summarized by function.

`record` samples a process (all threads, idle excluded) into py-spy's collapsed-stack format;
`summary` turns that into the share of samples per thread, the functions with the most self
time and the most inclusive time. Sampling perturbs the process a little: figures measured
while profiling are marked as such.

    python -m bench.profile STACKS.txt [--top 25]     # summarize a recording
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

_FRAME = re.compile(r"(.*) \((.*?):(\d+)\)")


def py_spy() -> str | None:
    here = Path(sys.executable).parent / "py-spy"
    return str(here) if here.exists() else shutil.which("py-spy")


def record(pid: int, seconds: float, out: Path, rate: int = 250) -> subprocess.Popen | None:
    """Start recording `pid` for `seconds` in the background; None when py-spy is missing."""
    exe = py_spy()
    if exe is None:
        return None
    return subprocess.Popen([exe, "record", "-p", str(pid), "-d", str(max(1, int(seconds))), "-r", str(rate),
                             "--threads", "--nonblocking", "-f", "raw", "-o", str(out)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _short(frame: str) -> str:
    m = _FRAME.match(frame)
    if not m:
        return frame
    fn, file, _line = m.groups()
    file = re.sub(r".*/site-packages/", "", file)
    file = re.sub(r".*/(agent|drivers|bench)/", r"\1/", file)
    file = re.sub(r".*/lib/python3\.\d+/", "", file)
    return f"{fn} ({file})"


def _thread(frame: str) -> str:
    """`thread (1234): store_0` -> `store`."""
    name = frame.split(":", 1)[-1].strip().strip('"')
    return re.sub(r"[-_]\d+$", "", name) or frame


def summary(path: Path, top: int = 20) -> list[str]:
    selfc: Counter = Counter()
    incl: Counter = Counter()
    threads: Counter = Counter()
    total = 0
    for line in path.read_text(errors="replace").splitlines():
        if not line.strip():
            continue
        stack, _, n = line.rpartition(" ")
        frames = stack.split(";")
        th, frames = _thread(frames[0]), [_short(f) for f in frames[1:]]
        count = int(n)
        total += count
        threads[th] += count
        if frames:
            selfc[(th, frames[-1])] += count
        for f in set(frames):
            incl[(th, f)] += count
    if not total:
        return ["(no samples)"]
    out = [f"{total} samples; by thread: " + ", ".join(f"{t} {n / total:.0%}" for t, n in threads.most_common())]
    out.append("self time (share of all samples):")
    out += [f"  {n / total:6.1%}  {th:<12} {f}" for (th, f), n in selfc.most_common(top)]
    out.append("inclusive time (agent and driver code):")
    shown = 0
    for (th, f), n in incl.most_common():
        if re.search(r"\((agent|drivers)/", f):
            out.append(f"  {n / total:6.1%}  {th:<12} {f}")
            shown += 1
            if shown >= top:
                break
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description="summarize a py-spy raw recording")
    ap.add_argument("stacks")
    ap.add_argument("--top", type=int, default=25)
    args = ap.parse_args()
    print("\n".join(summary(Path(args.stacks), args.top)))


if __name__ == "__main__":
    main()
