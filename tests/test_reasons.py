"""docs/reasons.md lists every `reason` the gateway writes on a reading or an event (issue 17).

The reasons are read from the source of the drivers and the pipeline: every string in a place
that becomes a reason (a Sample's reason, a `reason=` argument or `"reason":` key, a variable
named like one, what the reason-making functions return). Each is cut to its fixed part (up to
the first colon or semicolon; what varies in an f-string is a gap) and must fit a pattern of
the list: its fixed pieces in order, from the start unless the string starts with a gap or is
the tail a function adds to another reason.
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "reasons.md"
# the drivers and the pipeline write reasons; metered.py's are metric labels, browse.py's are
# lines of `hazgate browse`, never on a reading
SOURCES = [p for p in [*sorted((ROOT / "drivers").rglob("*.py")), *sorted((ROOT / "agent" / "pipeline").rglob("*.py")),
                       ROOT / "agent" / "app.py"]
           if p.name not in ("metered.py", "browse.py")]
NAMES = {"reason", "last_error", "link_lost", "stall", "problem", "unresolved"}  # variables holding one
FUNCTIONS = {"check_value", "check_time", "quality_of", "status_reason", "untrusted_reason", "explain",
             "port_problem", "server_problem"}  # what they return is a reason or a reason's tail
GAP = "\x00"


@dataclass(frozen=True)
class Found:
    pieces: tuple[str, ...]
    anchored: bool
    where: str


def texts(node: ast.AST, consts: dict[str, str]) -> list[str]:
    """The strings `node` can be, gaps for what varies; [] when it is no string of its own."""
    if isinstance(node, ast.Constant):
        return [node.value] if isinstance(node.value, str) else []
    if isinstance(node, ast.Name):
        return [consts[node.id]] if node.id in consts else []
    if isinstance(node, ast.BoolOp):
        return [t for v in node.values for t in texts(v, consts)]
    if isinstance(node, ast.IfExp):
        return texts(node.body, consts) + texts(node.orelse, consts)
    if isinstance(node, ast.Tuple):
        return [t for v in node.elts for t in texts(v, consts)]
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "next" and len(node.args) == 2:
        return texts(node.args[1], consts)  # next(found, default): the default
    if isinstance(node, ast.JoinedStr):
        out = [""]
        for part in node.values:
            if isinstance(part, ast.Constant):
                alts = [part.value]
            else:
                value = part.value  # type: ignore[attr-defined]
                alts = texts(value, consts) if isinstance(value, ast.Name | ast.IfExp) else []
                alts = alts or [GAP]
            out = [o + a for o in out for a in alts]
        return out
    return []


def found(text: str, anchored: bool, where: str) -> Found | None:
    fixed = re.split(r": |; ", text, maxsplit=1)[0].strip()
    pieces = tuple(p for p in fixed.split(GAP) if p.strip())
    if not pieces:
        return None
    return Found(pieces, anchored and not fixed.startswith(GAP), where)


def collect() -> list[Found]:
    return [f for path in SOURCES for f in collect_file(path)]


def collect_file(path: Path) -> list[Found]:
    out: list[Found] = []
    tree = ast.parse(path.read_text(encoding="utf-8"))
    consts = {t.id: n.value.value for n in tree.body if isinstance(n, ast.Assign)
              and isinstance(n.value, ast.Constant) and isinstance(n.value.value, str)
              for t in n.targets if isinstance(t, ast.Name)}

    def add(node: ast.AST, anchored: bool = True) -> None:
        for text in texts(node, consts):
            f = found(text, anchored, f"{path.relative_to(ROOT)}:{node.lineno}")  # type: ignore[attr-defined]
            if f is not None:
                out.append(f)

    def named(t: ast.AST) -> bool:
        if isinstance(t, ast.Subscript):
            return named(t.value)
        name = t.id if isinstance(t, ast.Name) else t.attr if isinstance(t, ast.Attribute) else ""
        name = name.lstrip("_")
        return name in NAMES or name.endswith("_reason")

    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            fn = node.func.id if isinstance(node.func, ast.Name) else getattr(node.func, "attr", "")
            if fn == "Sample" and len(node.args) >= 4:
                add(node.args[3])
            if fn == "_evict" and len(node.args) >= 2:  # the eviction's reason
                add(node.args[1])
            for kw in node.keywords:
                if kw.arg == "reason":
                    add(kw.value)
        elif isinstance(node, ast.Dict):
            for k, v in zip(node.keys, node.values, strict=True):
                if isinstance(k, ast.Constant) and k.value == "reason":
                    add(v)
        elif isinstance(node, ast.Assign):
            for t in node.targets:
                if isinstance(t, ast.Tuple) and isinstance(node.value, ast.Tuple):
                    for tt, vv in zip(t.elts, node.value.elts, strict=False):
                        if named(tt):
                            add(vv)
                elif named(t):
                    add(node.value)
        elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.name in FUNCTIONS:
            for r in ast.walk(node):
                if isinstance(r, ast.Return) and r.value is not None:
                    add(r.value, anchored=node.name in ("check_value", "check_time", "quality_of"))
    return out


def documented() -> list[str]:
    """The patterns in the first column of the tables of docs/reasons.md."""
    patterns = []
    for line in DOC.read_text(encoding="utf-8").splitlines():
        if line.startswith("| `"):
            patterns += re.findall(r"`([^`]+)`", line.split(" | ")[0])
    return patterns


def fits(f: Found, pattern: str) -> bool:
    rx = ".*?".join(re.escape(p) for p in f.pieces)
    return bool(re.match(rx, pattern) if f.anchored else re.search(rx, pattern))


def test_every_reason_in_the_code_is_in_the_list() -> None:
    reasons = collect()
    seen = {r.pieces[0] for r in reasons}
    # the collector finds what it must (it can fail): one of each family
    for known in ("timeout", "clock_unsynchronized", "out_of_type_range", "modbus exception ", "opc ua ",
                  "age limit ", "subscription_stalled", "no answer"):
        assert known in seen, (known, sorted(seen))
    patterns = documented()
    missing = sorted({f"{r.where}: {GAP.join(r.pieces)!r}" for r in reasons if not any(fits(r, p) for p in patterns)})
    assert not missing, "reasons missing from docs/reasons.md:\n" + "\n".join(missing)


def test_a_reason_not_in_the_list_is_found(tmp_path: Path) -> None:
    """The check itself: a made-up reason fits no pattern; a listed one's variant fits."""
    patterns = documented()
    made_up = found("frobnicated: the widget", True, "here")
    assert made_up is not None and not any(fits(made_up, p) for p in patterns)
    variant = found(f"modbus exception {GAP} ({GAP})", True, "here")
    assert variant is not None and any(fits(variant, p) for p in patterns)
