"""Config problems reported to technicians as `file:line: key: what is wrong, what is valid`."""

from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True, order=True)
class Problem:
    file: str
    line: int
    key: str
    message: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.key}: {self.message}"


@dataclass
class Problems:
    """Collects every problem found, so one validation run lists them all."""

    items: list[Problem] = field(default_factory=list)

    def add(self, file: str | Path, line: int, key: str, message: str) -> None:
        self.items.append(Problem(str(file), line, key, message))

    def __bool__(self) -> bool:
        return bool(self.items)

    def __len__(self) -> int:
        return len(self.items)

    def lines(self) -> list[str]:
        return [str(p) for p in self.items]


class ConfigError(Exception):
    """Raised when a config cannot be used; carries every problem found."""

    def __init__(self, problems: Problems):
        self.problems = problems
        super().__init__("\n".join(problems.lines()))
