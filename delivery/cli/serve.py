"""``delivery serve``: the HTTP service under uvicorn."""

import os
import shutil
import tempfile
from typing import Annotated

import typer

from delivery.cli import app, fail


@app.command("serve")
def serve(
    host: Annotated[str, typer.Option("--host", help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", min=1, max=65535)] = 8000,
    workers: Annotated[
        int, typer.Option("--workers", min=1, max=64, help="Server processes on this port.")
    ] = 1,
    log_level: Annotated[str, typer.Option("--log-level")] = "info",
) -> None:
    """The HTTP service: enqueue deliveries, read the log, health and metrics."""
    import uvicorn

    from delivery.cli.context import engine

    engine()  # the log must exist and be migrated: say so here, not on the first request
    scratch = None
    if workers > 1 and not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        # Several processes answer on one port: their request metrics add up in files.
        scratch = tempfile.mkdtemp(prefix="delivery-metrics-")
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = scratch
    try:
        uvicorn.run(
            "delivery.api:app",
            host=host,
            port=port,
            workers=workers,
            log_level=log_level.lower(),
            # The clients' addresses as a proxy in front reports them.
            proxy_headers=True,
        )
    except (OSError, SystemExit) as exc:
        if isinstance(exc, SystemExit) and exc.code in (0, None):
            raise
        fail(f"cannot serve on {host}:{port}: {exc}")
    finally:
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)
