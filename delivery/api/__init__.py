"""The HTTP service (``delivery serve``, ``uvicorn delivery.api:app``).

``create_app(settings)`` builds the FastAPI app; ``app`` is the one for the environment's
settings, made on first access, so importing this package connects to nothing and imports
no FastAPI (``create_app`` and ``ROUTERS`` load on first access too). Inside:
``factory`` (``create_app`` and its router list), one router per concept (``deliveries``,
``health``, ``metrics``), ``auth`` and ``keys`` (API keys), ``limits`` (body size),
``errors`` (every failure as a status), ``models``, ``broker`` (probe and queue depth),
``state``.
"""

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from fastapi import FastAPI

    from delivery.api.factory import ROUTERS, create_app

    app: FastAPI

__all__ = ["ROUTERS", "app", "create_app"]

_app: "FastAPI | None" = None


def __getattr__(name: str) -> Any:
    # Looked up on first use, so `delivery.api.keys` (the command line's `delivery keys`)
    # imports no FastAPI: a worker's install has none (`delivery[server]` brings it).
    global _app
    if name in ("ROUTERS", "create_app"):
        from delivery.api import factory

        return getattr(factory, name)
    if name != "app":
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    # uvicorn's `delivery.api:app` looks the attribute up: the app is made then.
    if _app is None:
        from delivery.api.factory import create_app

        _app = create_app()
    return _app
