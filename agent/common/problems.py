"""Config problems reported to technicians as `file:line: key: what is wrong, what is valid`,
and warnings (`file:line: key: warning: ...`) that leave the config valid."""

import unicodedata
from dataclasses import dataclass, field
from pathlib import Path

# Characters a Chinese input method types in place of the ASCII ones a config needs: the
# full-width forms U+FF01-U+FF5E (each the ASCII character 0xFEE0 below it) and these.
_IME_ASCII = {"\u3000": " ", "\u3001": ",", "\u3002": ".", "\u2018": "'", "\u2019": "'",
              "\u201c": '"', "\u201d": '"', "\u3010": "[", "\u3011": "]"}


@dataclass(frozen=True, order=True)
class Problem:
    file: str
    line: int
    key: str
    message: str
    warning: bool = False

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.key}: {'warning: ' if self.warning else ''}{self.message}"


@dataclass
class Problems:
    """Collects every problem found, so one validation run lists them all. Warnings are kept
    apart: they are shown but do not make the config invalid."""

    items: list[Problem] = field(default_factory=list)
    warnings: list[Problem] = field(default_factory=list)

    def add(self, file: str | Path, line: int, key: str, message: str) -> None:
        self.items.append(Problem(str(file), line, key, message))

    def warn(self, file: str | Path, line: int, key: str, message: str) -> None:
        self.warnings.append(Problem(str(file), line, key, message, warning=True))

    def __bool__(self) -> bool:
        return bool(self.items)

    def __len__(self) -> int:
        return len(self.items)

    def lines(self) -> list[str]:
        return [str(p) for p in self.items]


def fullwidth_note(text: str) -> str | None:
    """Names the full-width (input-method) characters in `text` with the ASCII ones meant, e.g.
    "full-width colon '：' (U+FF1A); use ':'" (letters and digits together); None: there are none."""
    meant = {ch: chr(ord(ch) - 0xFEE0) if "\uff01" <= ch <= "\uff5e" else _IME_ASCII.get(ch) for ch in text}
    notes = [f"{unicodedata.name(ch).lower().replace('fullwidth', 'full-width')} '{ch}' (U+{ord(ch):04X}); "
             f"use '{plain}'" for ch, plain in meant.items() if plain is not None and not plain.isalnum()]
    alnum = "".join(ch for ch in text if (meant[ch] or "").isalnum())
    if alnum:
        notes.append(f"full-width letters or digits '{alnum}'; use '{''.join(meant[ch] for ch in alnum)}'")
    return "; ".join(notes) or None


class ConfigError(Exception):
    """Raised when a config cannot be used; carries every problem found."""

    def __init__(self, problems: Problems):
        self.problems = problems
        super().__init__("\n".join(problems.lines()))
