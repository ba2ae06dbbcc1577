"""Point tables: the CSV device maps technicians edit, loaded into typed, validated points.
The address column is parsed by the device's protocol (drivers/registry.py).

A table is read as the spreadsheet saved it: comma-, semicolon- or tab-separated (the separator
that makes the most known column names of the header row wins), with English or Chinese column
names (HEADER_ALIASES) and the byte-order numbers of Chinese manuals (BYTE_ORDER_ALIASES). A
semicolon table comes from a locale that writes a decimal comma, so `12,5` is 12.5 there."""

from __future__ import annotations

import csv
import io
import math
import re
import sys
from pathlib import Path

from agent.common.problems import Problems, fullwidth_note
from agent.model import BYTE_ORDERS, KINDS, TYPES, Point
from drivers.base import ProtocolSpec

COLUMNS = (
    "tag", "name", "address", "type", "byte_order", "scale", "offset",
    "raw_min", "raw_max", "eng_min", "eng_max", "unit", "kind", "hazard_source",
    "equipment", "target_code", "deadband", "ll", "l", "h", "hh", "overlap",
)
REQUIRED_COLUMNS = ("tag", "address", "type")
# Column names of Chinese point tables (docs/device-maps.md 2.2 lists them): 类型 is the data
# type as in PLC manuals; the kind of measurement is 类别.
HEADER_ALIASES = {
    "位号": "tag", "名称": "name", "地址": "address", "类型": "type", "数据类型": "type",
    "字节序": "byte_order", "系数": "scale", "比例": "scale", "偏移": "offset", "偏移量": "offset",
    "原始下限": "raw_min", "原始上限": "raw_max", "量程下限": "eng_min", "量程上限": "eng_max",
    "单位": "unit", "类别": "kind", "危险源编码": "hazard_source", "重大危险源编码": "hazard_source",
    "设备编码": "equipment", "指标编码": "target_code", "死区": "deadband",
    "低低报": "ll", "低报": "l", "高报": "h", "高高报": "hh",
}
BYTE_ORDER_ALIASES = {"1234": "ABCD", "3412": "CDAB", "2143": "BADC", "4321": "DCBA"}
DELIMITERS = (",", ";", "\t")  # the first of those that name equally many columns wins
CODES = ("hazard_source", "equipment", "target_code")
NUMBERS = ("scale", "offset", "raw_min", "raw_max", "eng_min", "eng_max", "deadband", "ll", "l", "h", "hh")
LIMITS = ("ll", "l", "h", "hh")
SCIENTIFIC = re.compile(r"^[+-]?\d+(?:[.,]\d+)?E[+-]\d+$", re.I)  # how Excel shows a long number: 3.2E+11
DECIMAL_COMMA = re.compile(r"^[+-]?\d*,\d+(?:[eE][+-]?\d+)?$")
ENCODINGS = ("utf-8-sig", "gbk")  # utf-8-sig reads plain UTF-8 too
CSV_VALID = (f"cells of at most {csv.field_size_limit() // 1024} KiB, each opening quote closed "
             "(an unclosed quote takes in the rest of the file)")
TAG_RE = re.compile(r"^[A-Za-z0-9_.\-]{1,64}$")


def read_table_text(path: Path) -> tuple[str, str]:
    """Return (text, encoding) of a point table written as UTF-8, UTF-8 with BOM or GBK."""
    data = path.read_bytes()
    for enc in ENCODINGS:
        try:
            text = data.decode(enc)
        except UnicodeDecodeError:
            continue
        if "\x00" in text:  # UTF-16 without a BOM "decodes" as UTF-8/GBK full of NULs
            continue
        return text, ("utf-8" if enc == "utf-8-sig" else enc)
    raise UnicodeDecodeError("point table", data, 0, len(data), "not UTF-8, UTF-8 with BOM or GBK")


_NUMBERS: dict[float, float] = {}  # one object per distinct value: tables repeat ranges and limits


def _number(text: str, decimal_comma: bool) -> float:
    if decimal_comma and DECIMAL_COMMA.match(text):
        text = text.replace(",", ".")
    value = float(text)
    if math.isnan(value) or math.isinf(value):
        raise ValueError("not finite")
    if value == 0.0:  # 0.0 and -0.0 are equal keys: keep each as written
        return value
    return _NUMBERS.setdefault(value, value)


def load_point_table(path: Path, protocol: ProtocolSpec, problems: Problems, shown: str) -> list[Point]:
    """Load and check one point table; every problem goes into `problems` against `shown`."""
    try:
        text, _ = read_table_text(path)
    except FileNotFoundError:
        raise
    except UnicodeDecodeError:
        problems.add(shown, 1, "encoding", "file is not UTF-8, UTF-8 with BOM or GBK; save it as UTF-8 (CSV UTF-8) or GBK")
        return []
    delimiter = _delimiter(text)
    rows = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
    try:
        written = next(rows)
    except StopIteration:
        problems.add(shown, 1, "header", f"file is empty; the first row must name the columns, at least {', '.join(REQUIRED_COLUMNS)}")
        return []
    except csv.Error as exc:
        problems.add(shown, 1, "header", f"cannot be read as CSV: {exc}; valid: {CSV_VALID}")
        return []
    header = _header(written, problems, shown)
    for col in REQUIRED_COLUMNS:
        if col not in header:
            problems.add(shown, 1, col, "required column is missing from the header row")
    if any(col not in header for col in REQUIRED_COLUMNS):
        return []
    points: list[Point] = []
    while True:
        start = rows.line_num + 1
        try:
            row = next(rows)
        except StopIteration:
            break
        except csv.Error as exc:  # the rest of the file cannot be split into rows reliably
            problems.add(shown, start, "row", f"cannot be read as CSV: {exc}; valid: {CSV_VALID}")
            break
        line = rows.line_num
        if not any(cell.strip() for cell in row) or row[0].lstrip().startswith("#"):
            continue
        if any(cell.strip() for cell in row[len(header):]):
            problems.add(shown, line, "row", f"{len(row)} cells but the header names {len(header)} columns; "
                         "valid: one cell per header column (a shifted row puts values in the wrong columns)")
            continue
        cells = {col: (row[i].strip() if i < len(row) else "") for i, col in enumerate(header) if col}
        point = _parse_row(cells, protocol, problems, shown, line, delimiter == ";")
        if point is not None:
            points.append(point)
    return points


def _column(written: str) -> str:
    name = written.strip().lower()
    return HEADER_ALIASES.get(name, name)


def _delimiter(text: str) -> str:
    """The separator under which the first row names the most known columns (ties: the
    earlier in DELIMITERS): a semicolon table read with commas would name none."""
    best, named = DELIMITERS[0], 0
    for delimiter in DELIMITERS:
        try:
            first = next(csv.reader(io.StringIO(text, newline=""), delimiter=delimiter), [])
        except csv.Error:
            continue
        count = sum(_column(cell) in COLUMNS for cell in first)
        if count > named:
            best, named = delimiter, count
    return best


def _header(written: list[str], problems: Problems, shown: str) -> list[str]:
    """The header row as column names ("" for a blank or a refused cell), each problem on line 1."""
    header: list[str] = []
    seen: dict[str, str] = {}
    for cell in written:
        col, name = _column(cell), cell.strip().lower()
        if col and col not in COLUMNS:
            note = fullwidth_note(name)
            problems.add(shown, 1, name, f"{note + '; ' if note else ''}unknown column; valid columns: {', '.join(COLUMNS)}"
                         " (or their Chinese names, docs/device-maps.md 2.2)")
            col = ""
        elif col in seen:
            problems.add(shown, 1, name, f"names the column {col} a second time (first as {seen[col]!r}); "
                         "valid: each column once")
            col = ""
        elif col:
            seen[col] = cell.strip()
        header.append(col)
    return header


def _parse_row(cells: dict[str, str], protocol: ProtocolSpec, problems: Problems, shown: str, line: int,
               decimal_comma: bool) -> Point | None:
    bad = len(problems)

    def err(key: str, msg: str) -> None:
        note = fullwidth_note(cells.get(key, ""))
        problems.add(shown, line, key, f"{note}; {msg}" if note else msg)

    tag = cells.get("tag", "")
    if not TAG_RE.match(tag):
        err("tag", f"{tag!r} is not a valid tag; valid: 1-64 letters, digits, '_', '-', '.'")
    ptype = sys.intern(cells.get("type", "").lower())  # interned: thousands of points share a few values
    if ptype not in TYPES:
        err("type", f"{cells.get('type', '')!r} is not a type; valid: {', '.join(TYPES)}")
    point = Point(tag=tag, address=cells.get("address", ""), type=ptype, line=line, file=shown)
    point.name = cells.get("name", "")
    point.unit = sys.intern(cells.get("unit", ""))
    point.hazard_source = sys.intern(cells.get("hazard_source", ""))
    point.equipment = sys.intern(cells.get("equipment", ""))
    point.target_code = cells.get("target_code", "")
    try:
        point.location = protocol.parse_address(point.address, ptype)
    except ValueError as exc:
        err("address", str(exc))
    else:
        if ptype in TYPES:
            for key, msg in protocol.check_point(point):
                err(key, msg)
    bo = cells.get("byte_order", "").upper() or "ABCD"
    bo = BYTE_ORDER_ALIASES.get(bo, bo)
    if bo not in BYTE_ORDERS:
        err("byte_order", f"{cells.get('byte_order')!r} is not a byte order; valid: {', '.join(BYTE_ORDERS)} "
            f"(or as numbers: {', '.join(BYTE_ORDER_ALIASES)})")
    point.byte_order = sys.intern(bo)
    kind = cells.get("kind", "").lower() or "other"
    if kind not in KINDS:
        err("kind", f"{cells.get('kind')!r} is not a kind; valid: {', '.join(KINDS)}")
    point.kind = sys.intern(kind)
    overlap = cells.get("overlap", "").lower()
    if overlap not in ("", "yes", "no", "true", "false", "1", "0"):
        err("overlap", f"{cells.get('overlap')!r}: valid: yes or no (yes = this point may share registers with another)")
    point.overlap = overlap in ("yes", "true", "1")

    numbers: dict[str, float | None] = {}
    for key in NUMBERS:
        raw = cells.get(key, "")
        if raw == "":
            numbers[key] = None
            continue
        try:
            numbers[key] = _number(raw, decimal_comma)
        except ValueError:
            err(key, f"{raw!r} is not a number; valid: a finite decimal number such as 12.5")
            numbers[key] = None
    raw_pair = (numbers["raw_min"], numbers["raw_max"])
    if any(v is not None for v in raw_pair):
        if None in raw_pair or numbers["eng_min"] is None or numbers["eng_max"] is None:
            err("raw_min", "raw_min/raw_max need all four of raw_min, raw_max, eng_min, eng_max")
        elif raw_pair[0] == raw_pair[1]:
            err("raw_max", f"raw_max equals raw_min ({raw_pair[0]}); valid: two different raw values")
        if numbers["scale"] is not None or numbers["offset"] is not None:
            err("scale", "give either scale/offset or raw_min/raw_max/eng_min/eng_max, not both")
    if numbers["scale"] == 0:
        err("scale", "0 would turn every value into the offset; valid: any non-zero number")
    if numbers["deadband"] is not None and numbers["deadband"] < 0:
        err("deadband", f"{numbers['deadband']} is negative; valid: 0 or more, in engineering units")
    if numbers["eng_min"] is not None and numbers["eng_max"] is not None and numbers["eng_min"] >= numbers["eng_max"]:
        err("eng_max", f"eng_max {numbers['eng_max']} is not above eng_min {numbers['eng_min']}; valid: eng_min < eng_max")
    limits = [(k, numbers[k]) for k in LIMITS if numbers[k] is not None]
    for (k1, v1), (k2, v2) in zip(limits, limits[1:], strict=False):
        if v1 > v2:  # type: ignore[operator]
            err(k2, f"{k2.upper()} {v2} is below {k1.upper()} {v1}; valid: LL <= L <= H <= HH")
    if ptype == "bool" and any(numbers[k] is not None for k in ("scale", "offset", "raw_min", "ll", "l", "h", "hh")):
        err("type", "a bool point takes no scaling or limits; valid: leave scale, offset, ranges and limits empty")
    point.scale = numbers["scale"] if numbers["scale"] is not None else 1.0
    point.offset = numbers["offset"] if numbers["offset"] is not None else 0.0
    point.raw_min, point.raw_max = numbers["raw_min"], numbers["raw_max"]
    point.eng_min, point.eng_max = numbers["eng_min"], numbers["eng_max"]
    point.deadband = numbers["deadband"] or 0.0
    point.ll, point.l, point.h, point.hh = numbers["ll"], numbers["l"], numbers["h"], numbers["hh"]
    if len(problems) != bad:
        return None
    _warn(cells, numbers, problems, shown, line)
    return point


def _warn(cells: dict[str, str], numbers: dict[str, float | None], problems: Problems, shown: str, line: int) -> None:
    """What a valid row may still have wrong: limits the instrument cannot reach, codes that a
    spreadsheet turned into scientific notation."""
    low, high = numbers["eng_min"], numbers["eng_max"]
    for key in LIMITS:
        value = numbers[key]
        if value is None:
            continue
        if low is not None and value < low:
            beyond = f"below eng_min {low:g}"
        elif high is not None and value > high:
            beyond = f"above eng_max {high:g}"
        else:
            continue
        problems.warn(shown, line, key, f"{key.upper()} {value:g} is {beyond}, outside the instrument range: "
                      "the instrument cannot show such a value, so this alarm may never be raised; valid: a "
                      "limit within eng_min..eng_max, or the range corrected")
    for key in CODES:
        raw = cells.get(key, "")
        if SCIENTIFIC.match(raw):
            problems.warn(shown, line, key, f"{raw!r} is in scientific notation, as a spreadsheet shows a long "
                          "number: the platform would get this text, not the code; valid: the code as issued, "
                          "typed into a column formatted as Text (docs/device-maps.md 2.1)")
