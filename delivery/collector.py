"""The garbage collector while a process starts: paused as it imports, and what start-up
made then moved out of its sight for good.

A worker's start imports Celery, SQLAlchemy, pydantic and the SDKs: over a hundred
thousand objects that live as long as the process, and almost no garbage (a full
collection after a worker's imports finds about 40 objects). The collector's automatic
passes over them while they are made were about a tenth of a command's start-up CPU. Once
frozen, a full collection walks only what was made since: before, it was a stop-the-world
pause of about 100 ms that every delivery in flight waited out (bench section 6).

Standard library only: ``delivery.extras.main`` pauses before anything else is imported.
"""

import gc

#: Whether ``pause`` turned automatic collection off (and ``resume`` should turn it on):
#: a process that runs with it off, by its own choice, keeps it off.
_paused = False


def pause() -> None:
    """Stop automatic collection until ``resume``."""
    global _paused
    if gc.isenabled():
        gc.disable()
        _paused = True


def resume() -> None:
    """Freeze everything alive now out of the collector's sight, and collect again if
    ``pause`` stopped it. Safe to call more than once (each call freezes what is new)."""
    global _paused
    gc.freeze()
    if _paused:
        _paused = False
        gc.enable()
