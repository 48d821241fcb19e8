"""The bench's sections, one module each, run in the order of ``bench.config.SECTIONS``."""

from collections.abc import Callable

from bench.context import BenchContext
from bench.report import SectionResult

Section = Callable[[BenchContext], SectionResult]


def load(name: str) -> tuple[str, Section]:
    """The title and entry point of one section (imported only when it runs)."""
    if name == "e2e":
        from bench.sections import e2e

        return e2e.TITLE, e2e.run
    if name == "producer":
        from bench.sections import producer

        return producer.TITLE, producer.run
    if name == "overhead":
        from bench.sections import overhead

        return overhead.TITLE, overhead.run
    if name == "memory":
        from bench.sections import memory

        return memory.TITLE, memory.run
    if name == "apprise":
        from bench.sections import apprise_compare

        return apprise_compare.TITLE, apprise_compare.run
    if name == "latency":
        from bench.sections import latency

        return latency.TITLE, latency.run
    if name == "postgres":
        from bench.sections import postgres

        return postgres.TITLE, postgres.run
    raise KeyError(name)
