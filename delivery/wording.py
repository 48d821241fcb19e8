"""Small helpers for the words people read: counts with the right plural."""

__all__ = ["plural"]


def plural(count: int, singular: str, plural_form: str | None = None) -> str:
    """``count`` with its noun: ``1 delivery``, ``3 deliveries``, ``0 channels``.

    ``plural_form`` defaults to ``singular`` + ``s``; give it for irregular nouns.
    """
    word = singular if count == 1 else (plural_form or f"{singular}s")
    return f"{count} {word}"
