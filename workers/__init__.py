"""The Celery side: the app (``workers.app:app``) and its thin tasks."""

#: This is delivery's own package, not another of the same name (delivery/_layout.py).
__delivery_layout__ = True

__all__: list[str] = []  # import workers.app or workers.tasks by name (Celery does)
