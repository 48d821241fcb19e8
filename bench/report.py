"""Results: small statistics, rich tables for people and one JSON document for the record."""

import json
import statistics
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table
from rich.text import Text


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values)) if values else float("nan")


@dataclass(frozen=True)
class Spread:
    """A median with the range it came from (timings on a shared machine are noisy)."""

    median: float
    low: float
    high: float
    samples: int

    @classmethod
    def of(cls, values: Sequence[float]) -> "Spread":
        return cls(median(values), min(values), max(values), len(values))

    def format(self, digits: int = 0, unit: str = "", *, markup: bool = True) -> str:
        """``median (low-high)``, the range dimmed (rich markup) unless ``markup`` is false."""
        text = f"{self.median:,.{digits}f}{unit}"
        if self.samples > 1:
            span = f"({self.low:,.{digits}f}-{self.high:,.{digits}f})"
            text += f" [dim]{span}[/]" if markup else f" {span}"
        return text


@dataclass(frozen=True)
class Target:
    """One of the issue's targets, with the figure that decides it."""

    name: str
    goal: str
    figure: str
    met: bool


@dataclass
class SectionResult:
    name: str
    title: str
    columns: list[str]
    rows: list[list[str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    targets: list[Target] = field(default_factory=list)
    data: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0
    error: str | None = None

    def add_row(self, *cells: object) -> None:
        self.rows.append([str(c) for c in cells])


def render(console: Console, result: SectionResult) -> None:
    title = f"{result.title} [dim]({result.seconds:.0f} s)[/]"
    if result.error:
        console.print(f"[bold red]{result.title}: failed[/] {result.error}")
        return
    table = Table(*result.columns, title=title, title_justify="left", expand=False)
    for row in result.rows:
        table.add_row(*row)
    console.print(table)
    for note in result.notes:
        console.print(f"  [dim]- {note}[/]", highlight=False)
    console.print()


def render_targets(console: Console, results: Sequence[SectionResult]) -> None:
    targets = [t for r in results for t in r.targets]
    if not targets:
        return
    table = Table("target", "goal", "measured", "met", title="Targets", title_justify="left")
    for t in targets:
        table.add_row(t.name, t.goal, t.figure, "[green]met[/]" if t.met else "[red]not met[/]")
    console.print(table)


def write_json(path: Path, meta: dict[str, Any], results: Sequence[SectionResult]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    sections = {}
    for result in results:
        section = asdict(result)
        # The rows as plain text: rich markup is for the terminal.
        section["rows"] = [[Text.from_markup(cell).plain for cell in row] for row in result.rows]
        sections[result.name] = section
    doc = {"meta": meta, "sections": sections}
    path.write_text(json.dumps(doc, indent=2, default=str) + "\n")
