"""`hazgate watch`: poll one device at its interval and show a live table for commissioning.

Each point's value, unit, quality, age of its last good value, register words in hex and the
smallest and largest value seen, with the same range hints as `read`. On a terminal the table
redraws in place (rich Live, as the demo's live view); otherwise it is printed after each poll,
at most every few seconds. Ctrl-C ends it with a summary per point.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable
from dataclasses import dataclass

from rich.console import Console, Group
from rich.table import Table
from rich.text import Text

from agent.model import GOOD, Point, Sample
from agent.pipeline.normalize import engineering
from agent.tools.words import hex_words, point_words, range_hint
from drivers.base import DeviceSpec, Driver
from drivers.registry import make_driver

QUALITY_STYLE = {"good": "green", "uncertain": "yellow", "bad": "bold red"}
PLAIN_EVERY = 5.0  # seconds between printed tables when the output is not a terminal


def _fmt(value: object) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value).lower() if isinstance(value, bool) else str(value)


@dataclass
class Seen:
    """What the watch has seen of one point."""

    point: Point
    value: float | bool | None = None
    quality: str = "waiting"
    reason: str | None = None
    words: str = "-"
    hint: str | None = None
    last_good: float | None = None  # monotonic time of the last good value
    low: float | None = None
    high: float | None = None
    reads: int = 0
    good: int = 0

    def update(self, sample: Sample, words: list[int] | None, now: float) -> None:
        value = engineering(sample.point, sample.raw) if sample.raw is not None else None
        quality, reason = sample.quality, sample.reason
        if sample.raw is not None and value is None:  # as the running agent reports it
            quality, reason = "bad", "decode error: not a finite number"
        self.reads += 1
        self.value, self.quality, self.reason, self.words = value, quality, reason, hex_words(words)
        self.hint = range_hint(sample.point, sample.raw, words) if sample.raw is not None else None
        if quality != GOOD or value is None:
            return
        self.good += 1
        self.last_good = now
        if not isinstance(value, bool):
            self.low = value if self.low is None else min(self.low, value)
            self.high = value if self.high is None else max(self.high, value)


class Watch:
    """Polls a device at its interval and keeps what it saw; `render` and `summary` show it."""

    def __init__(self, device: DeviceSpec, console: Console):
        self.device = device
        self.console = console
        self.seen = {p.tag: Seen(p) for p in device.points}
        self.polls = 0
        self.started = time.monotonic()

    async def run(self) -> None:
        """Poll until cancelled (Ctrl-C); DeviceError when the device cannot be reached at first."""
        driver = make_driver(self.device)
        await driver.connect()
        try:
            if self.console.is_terminal and not self.console.is_dumb_terminal:
                from rich.live import Live

                with Live(get_renderable=self.render, console=self.console, refresh_per_second=4,
                          redirect_stderr=False):
                    await self._poll(driver, lambda: None)
            else:
                shown = [0.0]

                def plain() -> None:
                    if time.monotonic() - shown[0] >= PLAIN_EVERY:
                        shown[0] = time.monotonic()
                        self.console.print(self.render())

                await self._poll(driver, plain)
        finally:
            await driver.close()

    async def _poll(self, driver: Driver, after: Callable[[], None]) -> None:
        interval = self.device.poll_interval
        due = time.monotonic()
        while True:
            samples = await driver.read()
            now = time.monotonic()
            self.polls += 1
            for s in samples:
                self.seen[s.point.tag].update(s, point_words(driver, s.point), now)
            after()
            due += interval
            if due < now:  # a poll longer than the interval: the next one starts now, on the grid
                due += interval * ((now - due) // interval + 1)
            await asyncio.sleep(max(0.0, due - time.monotonic()))

    def render(self) -> Group:
        now = time.monotonic()
        d = self.device
        head = Text(f"{d.name}  {d.endpoint}  every {d.poll_interval:g}s  {self.polls} polls in "
                    f"{now - self.started:.0f}s  (Ctrl-C: summary)", style="bold")
        table = Table(expand=False, pad_edge=False)
        for name, justify in (("tag", "left"), ("value", "right"), ("unit", "left"), ("quality", "left"),
                              ("age s", "right"), ("words", "left"), ("min", "right"), ("max", "right")):
            table.add_column(name, justify=justify, no_wrap=True)  # type: ignore[arg-type]
        hints = []
        for s in self.seen.values():
            quality = s.quality + (f" ({s.reason})" if s.reason else "")
            age = f"{now - s.last_good:.1f}" if s.last_good is not None else "—"
            table.add_row(s.point.tag, _fmt(s.value), s.point.unit or "-",
                          Text(quality, style=QUALITY_STYLE.get(s.quality, "dim")), age, s.words,
                          _fmt(s.low), _fmt(s.high))
            if s.hint:
                hints.append(Text(f"hint: {s.hint}", style="yellow"))
        return Group(head, table, *hints)

    def summary(self) -> Table:
        elapsed = time.monotonic() - self.started
        table = Table(title=f"{self.device.name}: {self.polls} polls in {elapsed:.1f}s", title_justify="left",
                      pad_edge=False)
        for name in ("tag", "reads", "good", "min", "max", "last", "quality"):
            table.add_column(name, no_wrap=True)
        for s in self.seen.values():
            table.add_row(s.point.tag, str(s.reads), str(s.good), _fmt(s.low), _fmt(s.high), _fmt(s.value),
                          s.quality + (f" ({s.reason})" if s.reason else ""))
        return table


def console() -> Console:
    """A console for stdout; 120 columns when it is not a terminal and COLUMNS is not set."""
    out = Console()
    if not out.is_terminal and "COLUMNS" not in os.environ:
        out = Console(width=120)
    return out
