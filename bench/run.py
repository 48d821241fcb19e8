"""``python -m bench``: start the servers, run the sections, print the tables, save JSON."""

import argparse
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from importlib.metadata import version
from pathlib import Path
from typing import Any

from rich.console import Console

from bench import sections
from bench.config import SECTIONS, BenchConfig
from bench.context import BenchContext
from bench.loadgen import measure_ceiling
from bench.processes import RedisServer, managed_processes
from bench.receiver import Receiver
from bench.report import SectionResult, render, render_targets, write_json

RESULTS = Path(__file__).resolve().parent / "results"


def _names(value: str) -> list[str]:
    names = [n.strip() for n in value.split(",") if n.strip()]
    unknown = sorted(set(names) - set(SECTIONS))
    if unknown:
        raise argparse.ArgumentTypeError(
            f"unknown section(s) {', '.join(unknown)}; choose from {', '.join(SECTIONS)}"
        )
    return names


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description="Benchmarks of the delivery workers, with baselines beside them.",
    )
    parser.add_argument("--only", type=_names, help=f"comma-separated: {','.join(SECTIONS)}")
    parser.add_argument("--skip", type=_names, default=[], help="sections to leave out")
    parser.add_argument("--quick", action="store_true", help="small runs: a smoke test (<1 min)")
    parser.add_argument(
        "--smoke",
        action="store_true",
        help="smaller than --quick (the test suite's): each section runs, the figures mean nothing",
    )
    parser.add_argument("--deliveries", type=int, help="N per end-to-end run")
    parser.add_argument("--runs", type=int, help="end-to-end runs (median over them)")
    parser.add_argument("--concurrency", type=int, help="worker threads, ours and baseline")
    parser.add_argument(
        "--sink",
        metavar="URL",
        help="section 1 posts here (e.g. an nginx answering 200) instead of to the bench's "
        "own receiver",
    )
    parser.add_argument(
        "--history-size",
        type=int,
        metavar="N",
        help="section 12: deliveries in the full log (default 1,000,000)",
    )
    parser.add_argument(
        "--output", type=Path, help="JSON results file (default bench/results/bench-<time>.json)"
    )
    parser.add_argument("--keep", action="store_true", help="keep the scratch folder (logs)")
    return parser.parse_args(argv)


def _meta(config: BenchConfig, argv: Sequence[str]) -> dict[str, Any]:
    import delivery

    # The tree under test: this one, or the checkout ``bench ab`` put behind its harness.
    tree = Path(delivery.__file__).resolve().parent.parent

    def git(*args: str) -> str:
        try:
            return subprocess.run(
                ["git", *args], capture_output=True, text=True, check=True, cwd=tree
            ).stdout.strip()
        except (OSError, subprocess.CalledProcessError):
            return "?"

    return {
        "started": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": " ".join(["python -m bench", *argv]),
        "config": config.__dict__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "load_average": os.getloadavg(),
        "tree": str(tree),
        "commit": git("rev-parse", "--short", "HEAD"),
        "dirty": bool(git("status", "--porcelain", "--", "delivery", "workers", "schemas")),
        "versions": {
            name: version(name)
            for name in ("celery", "kombu", "redis", "sqlalchemy", "requests", "apprise")
        },
    }


def _run_section(ctx: BenchContext, name: str) -> SectionResult:
    title, section = sections.load(name)
    ctx.console.rule(f"[bold]{title}")
    started = time.monotonic()
    try:
        result = section(ctx)
    except KeyboardInterrupt:
        raise
    except Exception as exc:
        ctx.console.print_exception(max_frames=8)
        result = SectionResult(name, title, [], error=f"{type(exc).__name__}: {exc}")
    result.seconds = time.monotonic() - started
    render(ctx.console, result)
    return result


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    if args.smoke:
        sizes = BenchConfig.smoke_run()
    else:
        sizes = BenchConfig.quick_run() if args.quick else BenchConfig.full()
    config = sizes.with_overrides(
        deliveries=args.deliveries,
        runs=args.runs,
        concurrency=args.concurrency,
        sink=args.sink,
        history_size=args.history_size,
    )
    chosen = [n for n in (args.only or SECTIONS) if n not in args.skip]
    console = Console(width=max(120, Console().width))
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    suffix = "-smoke" if args.smoke else "-quick" if args.quick else ""
    output = args.output or RESULTS / f"bench-{stamp}{suffix}.json"
    meta = _meta(config, argv)
    results: list[SectionResult] = []
    started = time.monotonic()
    workdir = Path(tempfile.mkdtemp(prefix="delivery-bench-"))
    try:
        # The receiver forks first, while this process has no threads or connections.
        with (
            Receiver(processes=config.receiver_processes) as receiver,
            managed_processes() as processes,
        ):
            redis = RedisServer(processes, workdir)
            ctx = BenchContext(
                config=config,
                console=console,
                processes=processes,
                workdir=workdir,
                receiver=receiver,
                redis=redis,
                results_dir=output.parent,
            )
            ceiling = measure_ceiling(receiver.port, seconds=config.ceiling_seconds)
            ctx.shared["receiver_ceiling"] = ceiling.rate
            meta["receiver_ceiling"] = {"requests_per_second": ceiling.rate, **ceiling.__dict__}
            console.print(
                f"[bold]receiver ceiling[/]: {ceiling.rate:,.0f} requests/s "
                f"(asyncio, {receiver.process_count} processes, 204 keep-alive; "
                f"measured with {ceiling.describe()})"
            )
            for name in chosen:
                results.append(_run_section(ctx, name))
                ctx.flush_redis()
    except KeyboardInterrupt:
        console.print("[red]interrupted[/]: servers and workers stopped")
        return 130
    finally:
        if args.keep:
            console.print(f"scratch folder kept: {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    meta["seconds"] = round(time.monotonic() - started, 1)
    render_targets(console, results)
    write_json(output, meta, results)
    console.print(f"results: {output}  ({meta['seconds']:.0f} s in all)")
    return 1 if any(r.error for r in results) else 0
