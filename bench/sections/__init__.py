"""The bench's sections, one module each, run in the order of ``bench.config.SECTIONS``."""

import importlib
from collections.abc import Callable

from bench.context import BenchContext
from bench.report import SectionResult

Section = Callable[[BenchContext], SectionResult]

#: Section name -> its module under ``bench.sections`` (each has ``TITLE`` and ``run``).
MODULES = {
    "e2e": "e2e",
    "producer": "producer",
    "overhead": "overhead",
    "memory": "memory",
    "apprise": "apprise_compare",
    "latency": "latency",
    "postgres": "postgres",
    "http": "http_ingest",
    "fanout": "fanout",
    "coldstart": "coldstart",
    "outbox": "outbox",
    "history": "history",
}


def load(name: str) -> tuple[str, Section]:
    """The title and entry point of one section (imported only when it runs)."""
    module = importlib.import_module(f"bench.sections.{MODULES[name]}")
    title: str = module.TITLE
    run: Section = module.run
    return title, run
