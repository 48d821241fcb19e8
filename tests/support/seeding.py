"""The tests fill a log as the bench does: ``bench.seeding`` (one copy, imported by both)."""

from bench.seeding import CHUNK, seed

__all__ = ["CHUNK", "seed"]
