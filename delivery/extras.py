"""Which extra brings what: a clear message instead of a traceback on a lighter install.

``pip install delivery`` is the producer alone (``send``, ``send_many``, ``notify``). The
workers and the command line need ``delivery[worker]``, the HTTP service ``delivery[server]``
(see ``docs/installing.md``). Standard library only: this runs where nothing else is.
"""

import sys

#: The extra that installs each module the code imports and the base install lacks.
EXTRA_FOR_MODULE: dict[str, str] = {
    **dict.fromkeys(
        (
            "sqlalchemy",
            "alembic",
            "psycopg",
            "requests",
            "urllib3",
            "slack_sdk",
            "twilio",
            "typer",
            "rich",
            "cryptography",
            "email_validator",
            "phonenumbers",
            "html2text",
            "standardwebhooks",
            "jinja2",
            "markupsafe",
            "flower",
        ),
        "worker",
    ),
    **dict.fromkeys(("fastapi", "starlette", "uvicorn", "prometheus_client"), "server"),
    "apprise": "apprise",
}


class MissingExtra(ImportError):
    """Part of delivery was used whose extra is not installed."""


def extra_for(exc: BaseException) -> str | None:
    """The extra that would have made ``exc`` (a ``ModuleNotFoundError``) not happen, if any."""
    if not isinstance(exc, ModuleNotFoundError) or not exc.name:
        return None
    return EXTRA_FOR_MODULE.get(exc.name.split(".")[0])


def explain(exc: BaseException, what: str) -> str | None:
    """One line naming what to install for ``what``, or None if ``exc`` is not that."""
    extra = extra_for(exc)
    if extra is None:
        return None
    assert isinstance(exc, ModuleNotFoundError)  # extra_for says so
    return (
        f"{what} needs the `{extra}` extra (no module named {exc.name!r}): "
        f"pip install 'delivery[{extra}]'"
    )


def missing_extra(exc: ModuleNotFoundError, what: str) -> ImportError:
    """``exc`` as a ``MissingExtra`` naming the extra to install, or itself if none would."""
    message = explain(exc, what)
    if message is None:
        return exc
    return MissingExtra(message, name=exc.name, path=exc.path)


def main() -> None:
    """The ``delivery`` command: the CLI, or what to install when its extra is missing."""
    from delivery import collector

    collector.pause()  # until the command's imports are done (delivery/collector.py)
    try:
        from delivery.cli import main as cli_main
    except ModuleNotFoundError as exc:
        message = explain(exc, "the `delivery` command")
        if message is None:
            raise
        sys.stderr.write(f"error: {message}\n")
        sys.exit(1)
    cli_main()
