"""Check rules (TOML): interlock declarations, gas-detector and alarm settings, validated with
`file:line: key: what is wrong; valid: ...` problems like the rest of the config.

```toml
[defaults]                      # all optional
on_delay = "0s"                 # time a value must stay beyond a limit before the alarm is raised
bypass_max = "8h"               # a bypass older than this is escalated ("overdue") ...
bypass_repeat = "1h"            # ... and the escalation repeated this often while it stays on
flatline = "30m"                # gas detector: no change beyond flatline_band this long ("off": never)
flatline_band = 0.0             # change (engineering units) that counts as movement
trip_window = "10s"             # a trip is genuine if a protected value was beyond its limit this recently

[[alarms]]                      # per point, optional: overrides for the point table's limits
tag = "R101_TT01"
on_delay = "3s"
deadband = 0.5                  # clearing hysteresis (default: the point's deadband, else 0.5 % of range)

[[detectors]]                   # per gas detector, optional
tag = "GT102"
gas = "toxic"                   # combustible | toxic | oxygen (default: gas_lel -> combustible,
                                #   gas_ppm -> toxic, a unit of %VOL -> oxygen)
oel = 10.0                      # toxic: occupational exposure limit, in the point's unit
fault = "GT102_FLT"             # default: the detector_fault point with the same equipment code
flatline = "10m"

[[interlocks]]
id = "SIS-R101-TZ01"
name = "R101 high temperature shutdown"
hazard_source = "320200001001"
bypass = "R101_TZ01_BYP"        # true = bypassed or overridden (a list of tags: any of them)
in_service = "R101_TZ01_ON"     # optional; true = in service
tripped = "R101_TZ01_TRIP"      # optional; true = tripped
bypass_max = "8h"
protects = [ { tag = "R101_TT01", trip_above = 180.0 } ]   # or trip_below
```

Durations have ranges (DURATIONS): on_delay 0s to 1h, bypass_max, bypass_repeat and flatline
1s to 365d, trip_window 10ms to 1h; numbers are finite.

Gas setpoints are checked against GB/T 50493-2019 (`check_gas_setpoints`): combustible level 1
(the point's `h`) at most 25 %LEL and level 2 (`hh`) at most 50 %LEL; toxic level 1 at most
100 % and level 2 at most 200 % of the OEL (when the rules give it); oxygen low alarm (`l`) not
below 19.5 %VOL and high alarm (`h`) not above 23.5 %VOL.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any

from agent.common.durations import parse_duration_between, quoted
from agent.common.problems import Problems
from agent.config.toml import LineIndex, finite, load_toml
from agent.model import Point
from agent.pipeline.checks.rules import (
    GAS_KINDS,
    GASES,
    AlarmSetting,
    Defaults,
    DetectorSetting,
    Interlock,
    Protect,
    Rules,
    gas_class,
)

LEL_LEVEL1_MAX, LEL_LEVEL2_MAX = 25.0, 50.0  # % LEL, GB/T 50493-2019 5.5.2
OEL_LEVEL1_MAX, OEL_LEVEL2_MAX = 1.0, 2.0  # x OEL
O2_LOW_MIN, O2_HIGH_MAX = 19.5, 23.5  # % VOL

TOP_KEYS = ("defaults", "alarms", "detectors", "interlocks")
DEFAULT_KEYS = ("on_delay", "bypass_max", "bypass_repeat", "flatline", "flatline_band", "trip_window")
ALARM_KEYS = ("tag", "on_delay", "deadband")
DETECTOR_KEYS = ("tag", "gas", "oel", "fault", "flatline", "flatline_band")
INTERLOCK_KEYS = ("id", "name", "hazard_source", "bypass", "in_service", "tripped",
                  "bypass_max", "bypass_repeat", "protects")
PROTECT_KEYS = ("tag", "trip_above", "trip_below")
# durations, by key, from-to: finite (events carry them as JSON numbers), and no alarm held back
# or bypass escalation put off beyond what still means something
DURATIONS = {"on_delay": ("0s", "1h"), "bypass_max": ("1s", "365d"), "bypass_repeat": ("1s", "365d"),
             "flatline": ("1s", "365d"), "trip_window": ("10ms", "1h")}



def check_gas_setpoints(points: list[Point], rules: Rules | None, problems: Problems,
                        rules_shown: str = "") -> None:
    """Reject gas alarm setpoints beyond the GB/T 50493-2019 ceilings, at the point table's line."""
    for p in points:
        gas = gas_class(p, rules)
        if gas is None:
            continue

        def err(key: str, msg: str, p: Point = p) -> None:
            problems.add(p.file, p.line, key, msg)

        if gas == "combustible":
            for key, value, ceiling, level in (("h", p.h, LEL_LEVEL1_MAX, 1), ("hh", p.hh, LEL_LEVEL2_MAX, 2)):
                if value is not None and value > ceiling:
                    err(key, f"{p.tag}: level {level} gas alarm at {value:g} %LEL is above the ceiling of "
                        f"GB/T 50493-2019 (combustible gas: level 1 at most 25 %LEL, level 2 at most 50 %LEL), "
                        f"so the alarm would come too late; valid: {ceiling:g} or less")
        elif gas == "toxic":
            setting = rules.detectors.get(p.tag) if rules else None
            oel = setting.oel if setting else None
            if oel is None:
                continue  # the ceiling depends on the gas; the rules file names its OEL
            where = f"{rules_shown}:{setting.line}" if setting and rules_shown else "the rules file"
            for key, value, factor, level in (("h", p.h, OEL_LEVEL1_MAX, 1), ("hh", p.hh, OEL_LEVEL2_MAX, 2)):
                if value is not None and value > factor * oel:
                    err(key, f"{p.tag}: level {level} gas alarm at {value:g} {p.unit} is above {factor * 100:.0f} % "
                        f"of the OEL ({oel:g} {p.unit}, {where}), the ceiling of GB/T 50493-2019 for toxic gas "
                        f"(level 1 at most 100 % OEL, level 2 at most 200 % OEL); valid: {factor * oel:g} or less")
        else:  # oxygen
            if p.l is None or p.h is None:
                missing = "l" if p.l is None else "h"
                err(missing, f"{p.tag} is an oxygen detector without an {'oxygen-deficiency' if missing == 'l' else 'oxygen-enrichment'} "
                    f"alarm; valid: l = 19.5 and h = 23.5 (%VOL, GB/T 50493-2019)")
            if p.l is not None and p.l < O2_LOW_MIN:
                err("l", f"{p.tag}: oxygen-deficiency alarm at {p.l:g} %VOL is below 19.5 %VOL (GB/T 50493-2019), "
                    "so it would come too late; valid: 19.5 or more")
            if p.h is not None and p.h > O2_HIGH_MAX:
                err("h", f"{p.tag}: oxygen-enrichment alarm at {p.h:g} %VOL is above 23.5 %VOL (GB/T 50493-2019), "
                    "so it would come too late; valid: 23.5 or less")


# --- loading ----------------------------------------------------------------------------------
class _RulesReader:
    def __init__(self, shown: str, text: str, problems: Problems, points: dict[str, Point]):
        self.shown, self.problems, self.points = shown, problems, points
        self.index = LineIndex(text)
        self.lines = text.splitlines()

    def line(self, *loc: Any) -> int:
        return self.index.line(*loc)

    def err(self, line: int, key: str, msg: str) -> None:
        self.problems.add(self.shown, line, key, msg)

    def table(self, data: Any, loc: tuple, label: str, keys: tuple[str, ...]) -> dict | None:
        if not isinstance(data, dict):
            self.err(self.line(*loc), label, f"must be a table; valid: [{label}] or [[{label}]] with keys {', '.join(keys)}")
            return None
        for key in data:
            if key not in keys:
                self.err(self.line(*loc, key), f"{label}.{key}", f"unknown key; valid keys here: {', '.join(keys)}")
        return data

    def entries(self, data: dict, name: str) -> list[dict]:
        raw = data.get(name, [])
        if not isinstance(raw, list):
            self.err(self.line(name), name, f"must be an array of tables; valid: [[{name}]] sections")
            return []
        return raw

    # typed values; each returns None (and reports) when the value is unusable
    def duration(self, value: Any, line: int, key: str, off_ok: bool = False) -> float | None:
        """A duration in the range DURATIONS gives for the key (`alarms.on_delay`: on_delay)."""
        if off_ok and value == "off":
            return 0.0
        try:
            return parse_duration_between(value, *DURATIONS[key.rsplit(".", 1)[-1]])
        except ValueError as exc:
            extra = ' or "off"' if off_ok else ""
            self.err(line, key, f"{exc}{extra}")
            return None

    def number(self, value: Any, line: int, key: str, minimum: float | None = None, positive: bool = False) -> float | None:
        if isinstance(value, bool) or not isinstance(value, int | float) or not finite(value):
            self.err(line, key, f"{quoted(value)} is not a number; valid: a decimal number such as 12.5 (no quotes)")
            return None
        if positive and value <= 0:
            self.err(line, key, f"{value!r} must be above zero; valid: a positive number")
            return None
        if minimum is not None and value < minimum:
            self.err(line, key, f"{value!r} is negative; valid: {minimum:g} or more")
            return None
        return float(value)

    def text(self, value: Any, line: int, key: str) -> str | None:
        if not isinstance(value, str) or not value.strip():
            self.err(line, key, f"{value!r} is not a non-empty string; valid: text in quotes")
            return None
        return value.strip()

    def tag(self, value: Any, line: int, key: str, want: str) -> str | None:
        """A point-table tag of the wanted sort: `bool` (a status bit), `numeric` or `gas`."""
        tag = self.text(value, line, key)
        if tag is None:
            return None
        p = self.points.get(tag)
        if p is None:
            close = difflib.get_close_matches(tag, list(self.points), n=1)
            hint = f"did you mean {close[0]!r}?" if close else "a tag from the gateway's point tables"
            self.err(line, key, f"no point {tag!r} in the point tables; valid: {hint}")
            return None
        where = f"{p.file}:{p.line}"
        if want == "bool" and p.type != "bool":
            self.err(line, key, f"{tag} is a {p.type} point ({p.kind}, {where}); valid: a bool point, a status bit "
                     "such as hr:110.1 or a coil / discrete input")
            return None
        if want in ("numeric", "gas") and p.type == "bool":
            self.err(line, key, f"{tag} is a bool point ({p.kind}, {where}); valid: a numeric process value")
            return None
        if want == "gas" and p.kind not in GAS_KINDS:
            self.err(line, key, f"{tag} is a {p.kind} point ({where}); valid: a gas detector, kind gas_lel or gas_ppm")
            return None
        return tag

    def entry_lines(self, key_line: int, count: int) -> list[int]:
        """Lines of the `{` opening each inline table of an array that starts on `key_line`."""
        out: list[int] = []
        depth, quote = 0, ""
        for n in range(key_line, len(self.lines) + 1):
            text = self.lines[n - 1]
            start = text.find("=") + 1 if n == key_line else 0
            for ch in text[start:]:
                if quote:
                    quote = "" if ch == quote else quote
                elif ch in "\"'":
                    quote = ch
                elif ch == "#":
                    break
                elif ch == "[":
                    depth += 1
                elif ch == "]":
                    depth -= 1
                    if depth == 0:
                        return out + [key_line] * (count - len(out))
                elif ch == "{":
                    if depth == 1:
                        out.append(n)
                    depth += 1
                elif ch == "}":
                    depth -= 1
            if len(out) >= count and depth <= 0:
                break
        return (out + [key_line] * count)[:count]


def load_rules(path: Path, points: list[Point], problems: Problems, shown: str) -> Rules:
    """Load and check a rules file against the gateway's points; problems go into `problems`."""
    rules = Rules(path=path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        problems.add(shown, 1, "file", "rules file not found")
        return rules
    except (OSError, UnicodeDecodeError) as exc:
        problems.add(shown, 1, "file", f"cannot read rules: {exc}; valid: a UTF-8 TOML file")
        return rules
    data = load_toml(text, shown, problems)
    if data is None:
        return rules
    found = Problems()
    r = _RulesReader(shown, text, found, {p.tag: p for p in points})
    for key in data:
        if key not in TOP_KEYS:
            r.err(r.line(key), key, f"unknown section; valid: {', '.join(TOP_KEYS)}")
    _load_defaults(r, data.get("defaults", {}), rules.defaults)
    _load_alarms(r, data, rules)
    _load_detectors(r, data, rules)
    _load_interlocks(r, data, rules)
    problems.items.extend(sorted(found.items, key=lambda p: p.line))  # in file order
    return rules


def _load_defaults(r: _RulesReader, raw: Any, d: Defaults) -> None:
    data = r.table(raw, ("defaults",), "defaults", DEFAULT_KEYS)
    if not data:
        return
    ln = lambda k: r.line("defaults", k)  # noqa: E731
    for key in ("on_delay", "bypass_max", "bypass_repeat", "flatline", "trip_window"):
        if key in data and (v := r.duration(data[key], ln(key), f"defaults.{key}", key == "flatline")) is not None:
            setattr(d, key, v)
    if "flatline_band" in data and (v := r.number(data["flatline_band"], ln("flatline_band"), "defaults.flatline_band", 0.0)) is not None:
        d.flatline_band = v


def _load_alarms(r: _RulesReader, data: dict, rules: Rules) -> None:
    for i, raw in enumerate(r.entries(data, "alarms")):
        loc = ("alarms", i)
        item = r.table(raw, loc, "alarms", ALARM_KEYS)
        if item is None:
            continue
        head = r.line(*loc)
        if "tag" not in item:
            r.err(head, "alarms.tag", "required key is missing; valid: tag = \"<a point tag>\"")
            continue
        tag = r.tag(item["tag"], r.line(*loc, "tag"), "alarms.tag", "numeric")
        if tag is None:
            continue
        p = r.points[tag]
        if all(v is None for v in (p.ll, p.l, p.h, p.hh)):
            r.err(r.line(*loc, "tag"), "alarms.tag", f"{tag} has no ll, l, h or hh in its point table ({p.file}:{p.line}), "
                  "so there is no alarm to tune; valid: a point with limits")
            continue
        if tag in rules.alarms:
            r.err(r.line(*loc, "tag"), "alarms.tag", f"{tag} already has [[alarms]] at line {rules.alarms[tag].line}; "
                  "valid: one [[alarms]] per point")
            continue
        s = AlarmSetting(tag, head)
        if "on_delay" in item:
            s.on_delay = r.duration(item["on_delay"], r.line(*loc, "on_delay"), "alarms.on_delay")
        if "deadband" in item:
            s.deadband = r.number(item["deadband"], r.line(*loc, "deadband"), "alarms.deadband", minimum=0.0)
        rules.alarms[tag] = s


def _load_detectors(r: _RulesReader, data: dict, rules: Rules) -> None:
    for i, raw in enumerate(r.entries(data, "detectors")):
        loc = ("detectors", i)
        item = r.table(raw, loc, "detectors", DETECTOR_KEYS)
        if item is None:
            continue
        head = r.line(*loc)
        if "tag" not in item:
            r.err(head, "detectors.tag", "required key is missing; valid: tag = \"<a gas detector's tag>\"")
            continue
        tag = r.tag(item["tag"], r.line(*loc, "tag"), "detectors.tag", "gas")
        if tag is None:
            continue
        if tag in rules.detectors:
            r.err(r.line(*loc, "tag"), "detectors.tag", f"{tag} already has [[detectors]] at line "
                  f"{rules.detectors[tag].line}; valid: one [[detectors]] per detector")
            continue
        s = DetectorSetting(tag, head)
        if "gas" in item:
            if item["gas"] in GASES:
                s.gas = item["gas"]
            else:
                r.err(r.line(*loc, "gas"), "detectors.gas", f"{item['gas']!r} is not a gas class; valid: {', '.join(GASES)}")
        if "oel" in item:
            s.oel = r.number(item["oel"], r.line(*loc, "oel"), "detectors.oel", positive=True)
            gas = s.gas or gas_class(r.points[tag])
            if s.oel is not None and gas != "toxic":
                r.err(r.line(*loc, "oel"), "detectors.oel", f"{tag} is a {gas} detector; an OEL applies to toxic gas only; "
                      "valid: remove oel, or gas = \"toxic\"")
        if "fault" in item:
            s.fault = r.tag(item["fault"], r.line(*loc, "fault"), "detectors.fault", "bool")
        if "flatline" in item:
            s.flatline = r.duration(item["flatline"], r.line(*loc, "flatline"), "detectors.flatline", off_ok=True)
        if "flatline_band" in item:
            s.flatline_band = r.number(item["flatline_band"], r.line(*loc, "flatline_band"), "detectors.flatline_band", 0.0)
        rules.detectors[tag] = s


def _load_interlocks(r: _RulesReader, data: dict, rules: Rules) -> None:
    ids: dict[str, int] = {}
    for i, raw in enumerate(r.entries(data, "interlocks")):
        loc = ("interlocks", i)
        item = r.table(raw, loc, "interlocks", INTERLOCK_KEYS)
        if item is None:
            continue
        head = r.line(*loc)
        ok = True
        for key in ("id", "name", "bypass", "protects"):
            if key not in item:
                r.err(head, f"interlocks.{key}", "required key is missing; valid: id, name, bypass and protects "
                      "in every [[interlocks]]")
                ok = False
        ln = lambda k, loc=loc: r.line(*loc, k)  # noqa: E731
        il = Interlock(id="", line=head, bypass_max=rules.defaults.bypass_max, bypass_repeat=rules.defaults.bypass_repeat)
        if "id" in item:
            ident = r.text(item["id"], ln("id"), "interlocks.id")
            if ident is None:
                ok = False
            elif ident in ids:
                r.err(ln("id"), "interlocks.id", f"{ident!r} is already declared at line {ids[ident]}; "
                      "valid: one [[interlocks]] per interlock id")
                ok = False
            else:
                ids[ident] = ln("id")
                il.id = ident
        if "name" in item:
            il.name = r.text(item["name"], ln("name"), "interlocks.name") or ""
        if "hazard_source" in item:
            il.hazard_source = r.text(item["hazard_source"], ln("hazard_source"), "interlocks.hazard_source") or ""
        if "bypass" in item:
            raw_b = item["bypass"]
            tags = raw_b if isinstance(raw_b, list) else [raw_b]
            if not tags:
                r.err(ln("bypass"), "interlocks.bypass", "empty list; valid: a bool tag, or a list of them")
                ok = False
            got = [r.tag(t, ln("bypass"), "interlocks.bypass", "bool") for t in tags]
            if None in got:
                ok = False
            il.bypass = tuple(t for t in got if t)
        for key in ("in_service", "tripped"):
            if key in item:
                tag = r.tag(item[key], ln(key), f"interlocks.{key}", "bool")
                ok = ok and tag is not None
                setattr(il, key, tag)
        for key in ("bypass_max", "bypass_repeat"):
            if key in item:
                v = r.duration(item[key], ln(key), f"interlocks.{key}")
                if v is not None:
                    setattr(il, key, v)
        if "protects" in item:
            il.protects = _load_protects(r, item["protects"], ln("protects"))
            if not il.protects:
                ok = False
        if ok:
            rules.interlocks.append(il)


def _load_protects(r: _RulesReader, raw: Any, line: int) -> list[Protect]:
    example = 'protects = [ { tag = "R101_TT01", trip_above = 180.0 } ]'
    if not isinstance(raw, list) or not raw:
        r.err(line, "interlocks.protects", f"must be a non-empty list of {{ tag, trip_above | trip_below }}; valid: {example}")
        return []
    lines = r.entry_lines(line, len(raw))
    out: list[Protect] = []
    seen: dict[str, int] = {}
    bad = False
    for entry, at in zip(raw, lines, strict=True):
        if not isinstance(entry, dict):
            r.err(at, "interlocks.protects", f"{entry!r} is not {{ tag, trip_above | trip_below }}; valid: {example}")
            bad = True
            continue
        for key in entry:
            if key not in PROTECT_KEYS:
                r.err(at, f"interlocks.protects.{key}", f"unknown key; valid keys here: {', '.join(PROTECT_KEYS)}")
                bad = True
        if "tag" not in entry:
            r.err(at, "interlocks.protects.tag", f"required key is missing; valid: {example}")
            bad = True
            continue
        tag = r.tag(entry["tag"], at, "interlocks.protects.tag", "numeric")
        limits = [k for k in ("trip_above", "trip_below") if k in entry]
        if len(limits) != 1:
            r.err(at, "interlocks.protects", f"{entry.get('tag')}: give exactly one of trip_above, trip_below "
                  f"(got {', '.join(limits) or 'neither'}); valid: {example}")
            bad = True
            continue
        value = r.number(entry[limits[0]], at, f"interlocks.protects.{limits[0]}")
        if tag is None or value is None:
            bad = True
            continue
        if tag in seen:
            r.err(at, "interlocks.protects.tag", f"{tag} is already protected by this interlock (line {seen[tag]}); "
                  "valid: each protected tag once")
            bad = True
            continue
        seen[tag] = at
        p = r.points[tag]
        if p.eng_min is not None and p.eng_max is not None and not p.eng_min <= value <= p.eng_max:
            r.err(at, f"interlocks.protects.{limits[0]}", f"{value:g} is outside the instrument range of {tag} "
                  f"({p.eng_min:g} to {p.eng_max:g} {p.unit}, {p.file}:{p.line}): it could never be seen; "
                  "valid: a limit within the range")
            bad = True
            continue
        out.append(Protect(tag, at, above=value if limits[0] == "trip_above" else None,
                           below=value if limits[0] == "trip_below" else None))
    return [] if bad else out


def load_checks(path: Path | None, points: list[Point], problems: Problems) -> Rules:
    """The gateway's check rules: the rules file when one is named (and exists), else defaults;
    gas setpoints checked either way. Called by config loading with the gateway's points."""
    rules = Rules()
    shown = ""
    if path is not None and _is_file(path):
        try:
            shown = str(path.relative_to(Path.cwd()))
        except ValueError:
            shown = str(path)
        rules = load_rules(path, points, problems, shown)
    check_gas_setpoints(points, rules, problems, shown)
    return rules


def _is_file(path: Path) -> bool:
    try:
        return path.is_file()
    except OSError:  # a folder we may not enter: the config loader says so at [checks] rules
        return False
