"""The Celery side: the app (``workers.app:app``) and its thin tasks."""
