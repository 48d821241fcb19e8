"""The ``delivery`` command line. Errors go to stderr with a non-zero exit."""

import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, NoReturn

import typer
from pydantic import ValidationError
from rich.console import Console

from delivery.errors import DeliveryError, RegistryError
from schemas.validation import explain

__all__ = ["app", "err", "fail", "main", "out", "print_json", "user_errors"]

app = typer.Typer(
    name="delivery",
    help="Queued, retried and logged deliveries: webhooks, email, Slack, SMS.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
out = Console()
err = Console(stderr=True)


def fail(message: str, code: int = 1) -> NoReturn:
    err.print(f"[bold red]error:[/] {message}", highlight=False, markup=True)
    raise typer.Exit(code)


def print_json(doc: Any) -> None:
    sys.stdout.write(json.dumps(doc, indent=2, default=str) + "\n")


@contextmanager
def user_errors() -> Iterator[None]:
    """Turn the errors a person can fix into a message and exit code 1."""
    try:
        yield
    except ValidationError as exc:
        fail("\n".join(explain(exc)))
    except RegistryError as exc:
        fail(f"{type(exc).__name__}: {exc}")
    except DeliveryError as exc:
        fail(str(exc))


def main() -> None:
    from delivery.cli import (  # noqa: F401 - registers commands
        admin,
        channels,
        deliveries,
        demo,
        events,
        inbound,
        keys,
        serve,
    )

    app()
