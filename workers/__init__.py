"""The Celery side: the app (``workers.app:app``) and its thin tasks."""

__all__: list[str] = []  # import workers.app or workers.tasks by name (Celery does)
