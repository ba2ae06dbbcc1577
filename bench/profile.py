"""Where the agent's time goes: py-spy against the running agent, summarized by function.

`record` samples a process (the thread holding the GIL) into py-spy's collapsed-stack format;
`summary` turns that into the share of samples per thread, the functions with the most self
time and the most inclusive time; `by_stage` into CPU µs per reading for each stage of the
pipeline. Sampling perturbs the process a little: figures measured while profiling are marked.

    python -m bench.profile STACKS.txt [--top 25] [--readings N --cpu S --seconds T]
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


RATE = 250  # samples per second


def record(pid: int, seconds: float, out: Path, rate: int = RATE) -> subprocess.Popen | None:
    """Start recording `pid` for `seconds` in the background; None when py-spy is missing.

    Only the thread holding the GIL is sampled (--gil): a sample is 1/rate s of Python running,
    so samples convert to CPU time. What runs without the GIL (SQLite's C code, system calls,
    the kernel's network stack) is the process's CPU time minus that.
    """
    exe = py_spy()
    if exe is None:
        return None
    return subprocess.Popen([exe, "record", "-p", str(pid), "-d", str(max(1, int(seconds))), "-r", str(rate),
                             "--threads", "--gil", "--nonblocking", "-f", "raw", "-o", str(out)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


# Stages of the pipeline, most specific first: a stack belongs to the first rule that any of its
# frames matches.
STAGES: list[tuple[str, re.Pattern]] = [(name, re.compile(rx)) for name, rx in (
    ("Modbus: decode registers (drivers/modbus/read, codec)", r"BlockReader\._decode|drivers/modbus/codec"),
    ("Modbus: request/response (pymodbus client, transport)", r"pymodbus/|ModbusTcpDriver\._request"),
    ("normalize (agent/pipeline/normalize, Point.to_engineering)", r"Normalizer\.|Point\.to_engineering"),
    ("checks (agent/pipeline/checks)", r"agent/pipeline/checks"),
    ("store: add_readings (SQLite insert, commit)", r"Store\.add_readings"),
    ("store: take_readings (select, message JSON, outbox, delete)", r"Store\.take_readings|agent/north/mqtt/schema"),
    ("store: other calls (ack, unacked, mark_published, events, state)", r"Store\."),
    ("sink and writer: readings to rows (agent/app, agent/pipeline/writer)", r"Agent\._sink|agent/pipeline/writer"),
    ("uplink rounds and paho (agent/north, paho)", r"agent/north/|paho/"),
    ("scheduler, health, clock (agent/pipeline/scheduler, service/health, common/clock)", r"agent/pipeline/scheduler|agent/service/health|agent/common/clock"),
    ("store thread hand-off (executor, call_soon_threadsafe)", r"concurrent/futures|_write_to_self|AsyncStore|"
                                                                r"run_in_executor|_chain_future|_call_set_state"),
    ("asyncio event loop (select, callbacks, tasks)", r"asyncio/|selectors"),
)]


def _stacks(path: Path):  # noqa: ANN202
    for line in path.read_text(errors="replace").splitlines():
        if not line.strip():
            continue
        stack, _, n = line.rpartition(" ")
        frames = stack.split(";")
        yield _thread(frames[0]), [_short(f) for f in frames[1:]], frames[1:], int(n)


def by_stage(path: Path, readings: int, cpu_s: float, seconds: float, rate: int = RATE) -> list[str]:
    """CPU µs per reading by pipeline stage, from a --gil recording of `seconds` during which the
    process used `cpu_s` of CPU and handled `readings` readings."""
    counts: Counter = Counter()
    total = 0
    for _th, _short_frames, raw, n in _stacks(path):
        joined = ";".join(raw)
        total += n
        for name, rx in STAGES:
            if rx.search(joined):
                counts[name] += n
                break
        else:
            counts["other Python"] += n
    if not total or not readings:
        return ["(no samples)"]
    per = 1e6 / rate / readings  # µs per reading of one sample
    gil_s = total / rate
    out = [f"{'stage':<66} {'µs/reading':>10} {'share':>6}"]
    cpu_us = cpu_s / readings * 1e6
    for name, n in counts.most_common():
        out.append(f"{name:<66} {n * per:>10.2f} {n * per / cpu_us:>6.0%}")
    outside = max(0.0, cpu_s - gil_s)
    out.append(f"{'outside the GIL: SQLite C code, fsync, sockets, kernel':<66} "
               f"{outside / readings * 1e6:>10.2f} {outside / cpu_s:>6.0%}")
    out.append(f"{'total (CPU from /proc over the recording)':<66} {cpu_us:>10.2f}   100%")
    if gil_s > cpu_s * 1.05:
        out.append("(more GIL samples than CPU time: py-spy lagged; shares still hold)")
    return out


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
    for th, frames, _raw, count in _stacks(path):
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
    ap.add_argument("--readings", type=int, default=0, help="readings handled while recording: per-stage µs")
    ap.add_argument("--cpu", type=float, default=0.0, help="CPU seconds the process used while recording")
    ap.add_argument("--seconds", type=float, default=0.0)
    args = ap.parse_args()
    print("\n".join(summary(Path(args.stacks), args.top)))
    if args.readings:
        print("\n".join(by_stage(Path(args.stacks), args.readings, args.cpu, args.seconds)))


if __name__ == "__main__":
    main()
