"""``python -m bench ab --old COMMIT [--new COMMIT] [--rounds 3] [bench options]``: two
versions of the code in alternating rounds of the same run.

Each side is a checkout of its own: ``--old`` (and ``--new`` when given a commit) is checked
out into a temporary ``git worktree``, removed afterwards; ``--new`` defaults to the working
tree as it is, uncommitted changes included. The harness is the same for both: this tree's
``bench/``, copied aside, so an old commit is measured the way the new one is (and by
sections it never had). Each round runs ``python -m bench`` once per side with that side's
checkout right behind the harness on ``PYTHONPATH``, so its workers, its producer and its
migrations import that tree's ``delivery``, ``workers`` and ``schemas``; the sides take turns
(old first in even rounds, new first in odd ones), so drift in the machine's load does not
always favour one. The options ab does not know (``--only e2e --deliveries 1500 --runs 1
--concurrency 8 …``) go to every bench run unchanged. An old commit must still have what the
harness calls (``delivery.send_many``, ``ChannelStore.add``, …).

The table gives, for each section's rows and numeric columns, the median of each side and
the median (min-max) of new/old taken within each round.
"""

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from bench.report import Spread, median

#: The repository this bench belongs to: where ``git worktree`` runs.
ROOT = Path(__file__).resolve().parent.parent
#: ``--new``'s default: the working tree as it is, uncommitted changes included.
WORKTREE = "worktree"
#: The leading number of a table cell: ``1,234``, ``1.73x (1.50-2.00)``, ``-0.5``.
_NUMBER = re.compile(r"^\s*(-?[\d,]*\.?\d+)")


@dataclass(frozen=True)
class AbArgs:
    old: str
    new: str
    rounds: int
    #: Passed to every ``python -m bench`` run unchanged.
    bench_args: list[str] = field(default_factory=list)
    keep: bool = False


def parse_args(argv: Sequence[str]) -> AbArgs:
    parser = argparse.ArgumentParser(
        prog="python -m bench ab",
        description="Two versions of the code, in alternating rounds of one run. Options not "
        "listed here (--only, --deliveries, --runs, --concurrency, --sink, --quick) go to "
        "each side's python -m bench.",
    )
    parser.add_argument("--old", required=True, help="commit (or anything git can check out)")
    parser.add_argument(
        "--new", default=WORKTREE, help=f"a commit, or {WORKTREE!r} (default): the tree as it is"
    )
    parser.add_argument("--rounds", type=int, default=3, help="old/new pairs (default 3)")
    parser.add_argument(
        "--keep", action="store_true", help="keep each run's JSON (the checkouts are removed)"
    )
    args, rest = parser.parse_known_args(list(argv))
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    for flag in ("--output", "--keep"):
        if flag in rest:
            parser.error(f"{flag} is ab's own: each bench run writes its JSON for ab to read")
    return AbArgs(args.old, args.new, args.rounds, rest, args.keep)


def resolve(commit: str, repo: Path = ROOT) -> str:
    """The full hash of ``commit``.

    Raises:
        ValueError: git does not know it.
    """
    proc = subprocess.run(
        ["git", "rev-parse", "--verify", "--quiet", f"{commit}^{{commit}}"],
        cwd=repo,
        capture_output=True,
        text=True,
    )
    if proc.returncode != 0:
        raise ValueError(f"not a commit: {commit!r}")
    return proc.stdout.strip()


@contextmanager
def checkout(commit: str, parent: Path, name: str, repo: Path = ROOT) -> Iterator[Path]:
    """``commit`` checked out (detached) in a temporary worktree under ``parent``, removed
    again afterwards, on failure too.

    Raises:
        ValueError: git does not know ``commit``.
    """
    sha = resolve(commit, repo)
    path = parent / name
    subprocess.run(
        ["git", "worktree", "add", "--detach", "--quiet", str(path), sha],
        cwd=repo,
        check=True,
        capture_output=True,
    )
    try:
        yield path
    finally:
        subprocess.run(
            ["git", "worktree", "remove", "--force", str(path)], cwd=repo, capture_output=True
        )
        shutil.rmtree(path, ignore_errors=True)
        subprocess.run(["git", "worktree", "prune"], cwd=repo, capture_output=True)


@dataclass(frozen=True)
class Side:
    label: str
    root: Path
    describe: str


def copy_harness(scratch: Path, source: Path = ROOT) -> Path:
    """This tree's ``bench/`` copied into a folder of its own (without its results), which
    both sides run: the folder holds nothing else, so ``delivery``, ``workers`` and
    ``schemas`` are found in the side's checkout behind it."""
    harness = scratch / "harness"
    shutil.copytree(
        source / "bench",
        harness / "bench",
        ignore=shutil.ignore_patterns("results", "__pycache__"),
    )
    return harness


def bench_command(
    side: Side, harness: Path, bench_args: Sequence[str], output: Path
) -> tuple[list[str], dict[str, str]]:
    """The command line and environment of one side's bench run (run from ``harness``)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("DELIVERY_")}
    env["PYTHONPATH"] = os.pathsep.join(
        filter(None, [str(harness), str(side.root), env.get("PYTHONPATH")])
    )
    return [sys.executable, "-m", "bench", *bench_args, "--output", str(output)], env


def order(round_: int, sides: tuple[Side, Side]) -> tuple[Side, Side]:
    """Old first in even rounds, new first in odd ones."""
    return sides if round_ % 2 == 0 else (sides[1], sides[0])


def figures(doc: dict[str, Any]) -> dict[tuple[str, str, str], float]:
    """(section title, row label, column) -> the cell's leading number, for every numeric
    cell of every table in a bench JSON document."""
    out: dict[tuple[str, str, str], float] = {}
    for section in doc.get("sections", {}).values():
        if section.get("error"):
            continue
        columns = section["columns"]
        for row in section["rows"]:
            for column, cell in zip(columns[1:], row[1:], strict=False):
                match = _NUMBER.match(cell)
                if match:
                    out[(section["title"], row[0], column)] = float(match.group(1).replace(",", ""))
    return out


@dataclass(frozen=True)
class Comparison:
    section: str
    row: str
    column: str
    old: float
    new: float
    #: new/old within each round.
    ratio: Spread


def compare(
    old: Sequence[dict[tuple[str, str, str], float]],
    new: Sequence[dict[tuple[str, str, str], float]],
) -> list[Comparison]:
    """Each figure both sides have in every round: medians, and new/old per round."""
    keys = [k for k in old[0] if all(k in r for r in (*old, *new))] if old else []
    out = []
    for key in keys:
        olds, news = [r[key] for r in old], [r[key] for r in new]
        ratios = [n / o for o, n in zip(olds, news, strict=True) if o]
        if not ratios:
            continue
        out.append(Comparison(*key, median(olds), median(news), Spread.of(ratios)))
    return out


def render(console: Console, comparisons: Sequence[Comparison], old: Side, new: Side) -> None:
    table = Table(
        "section", "row", "figure", f"old ({old.describe})", f"new ({new.describe})",
        "new / old, per round",
        title="A/B: medians of each side; new/old within each round, median (min-max)",
        title_justify="left",
    )  # fmt: skip
    for c in comparisons:
        table.add_row(
            c.section.split(" ", 1)[0], c.row, c.column, f"{c.old:,.4g}", f"{c.new:,.4g}",
            c.ratio.format(3, "x"),
        )  # fmt: skip
    console.print(table)


def _describe(root: Path, ref: str) -> str:
    proc = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True
    )
    short = proc.stdout.strip() or "?"
    if ref != WORKTREE:
        return short
    dirty = subprocess.run(
        ["git", "status", "--porcelain", "--", "delivery", "workers", "schemas"],
        cwd=root,
        capture_output=True,
        text=True,
    ).stdout.strip()
    return f"{short}{' + changes' if dirty else ''}"


def run_rounds(
    console: Console, args: AbArgs, sides: tuple[Side, Side], scratch: Path
) -> tuple[list[dict[tuple[str, str, str], float]], list[dict[tuple[str, str, str], float]]]:
    results: dict[str, list[dict[tuple[str, str, str], float]]] = {s.label: [] for s in sides}
    harness = copy_harness(scratch)
    for r in range(args.rounds):
        for side in order(r, sides):
            output = scratch / f"round{r}-{side.label}.json"
            argv, env = bench_command(side, harness, args.bench_args, output)
            console.rule(f"round {r + 1}/{args.rounds}: {side.label} ({side.describe})")
            # From the harness's folder: ``python -m`` puts the working directory first.
            proc = subprocess.run(argv, cwd=harness, env=env)
            if proc.returncode not in (0, 1) or not output.exists():
                raise RuntimeError(f"{side.label}'s bench failed (exit {proc.returncode})")
            results[side.label].append(figures(json.loads(output.read_text())))
    return results[sides[0].label], results[sides[1].label]


def main(argv: Sequence[str]) -> int:
    args = parse_args(argv)
    console = Console(width=max(120, Console().width))
    scratch = Path(tempfile.mkdtemp(prefix="delivery-bench-ab-"))
    try:
        with _sides(args, scratch) as sides:
            old_runs, new_runs = run_rounds(console, args, sides, scratch)
            render(console, compare(old_runs, new_runs), *sides)
    except (ValueError, RuntimeError) as exc:
        console.print(f"[red]ab[/]: {exc}")
        return 2
    except KeyboardInterrupt:
        console.print("[red]interrupted[/]: checkouts removed")
        return 130
    finally:
        if args.keep:
            console.print(f"kept: {scratch}")
        else:
            shutil.rmtree(scratch, ignore_errors=True)
    return 0


@contextmanager
def _sides(args: AbArgs, scratch: Path) -> Iterator[tuple[Side, Side]]:
    with checkout(args.old, scratch, "old") as old_root:
        old = Side("old", old_root, _describe(old_root, args.old))
        if args.new == WORKTREE:
            yield old, Side("new", ROOT, _describe(ROOT, WORKTREE))
            return
        with checkout(args.new, scratch, "new") as new_root:
            yield old, Side("new", new_root, _describe(new_root, args.new))
