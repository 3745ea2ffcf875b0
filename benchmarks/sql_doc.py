"""The ready queries of docs/sql.md, read from the file for the benchmark and the tests."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

SQL_DOC = Path(__file__).resolve().parent.parent / "docs" / "sql.md"
_HEADING = re.compile(r"^#{2,4} (.+)$")
_FENCE = re.compile(r"^```(\w*)\s*$")


@dataclass(frozen=True, slots=True)
class DocQuery:
    """One ```sql block: the heading it sits under, its position there, and its text."""

    heading: str
    index: int
    sql: str

    @property
    def name(self) -> str:
        suffix = f" ({self.index + 1})" if self.index else ""
        return f"{self.heading}{suffix}"


def read_queries(path: Path = SQL_DOC) -> list[DocQuery]:
    """Every ```sql block of the file, in order, named after its heading."""
    queries: list[DocQuery] = []
    counts: dict[str, int] = {}
    heading = ""
    language: str | None = None  # of the fenced block we are in; None outside one
    lines: list[str] = []
    for line in path.read_text(encoding="utf-8").splitlines():
        fence = _FENCE.match(line)
        if language is None:
            if fence:
                language, lines = fence.group(1), []
            elif match := _HEADING.match(line):
                heading = match.group(1).strip().strip("`")
            continue
        if not fence:
            lines.append(line)
            continue
        if language == "sql":
            index = counts.get(heading, 0)
            counts[heading] = index + 1
            queries.append(DocQuery(heading, index, "\n".join(lines).strip().rstrip(";")))
        language = None
    return queries
