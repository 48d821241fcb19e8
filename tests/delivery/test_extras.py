"""Each part runs on the install its extra gives, and says which extra it lacks."""

from pathlib import Path

import pytest

from delivery.extras import EXTRA_FOR_MODULE, explain, extra_for
from tests.support.installs import import_names, run_as_installed

_CLI = "import sys\nfrom delivery.extras import main\nsys.argv[0] = 'delivery'\nmain()\n"


def test_each_module_named_comes_with_its_extra_and_not_with_the_base() -> None:
    base = import_names()
    for module, extra in EXTRA_FOR_MODULE.items():
        assert module in import_names(extra), (module, extra)
        assert module not in base, module


def test_a_missing_module_names_the_extra_that_brings_it() -> None:
    missing = ModuleNotFoundError("No module named 'fastapi.routing'", name="fastapi.routing")
    assert extra_for(missing) == "server"
    assert explain(missing, "`delivery serve`") == (
        "`delivery serve` needs the `server` extra (no module named 'fastapi.routing'): "
        "pip install 'delivery[server]'"
    )
    assert extra_for(ModuleNotFoundError("No module named 'nope'", name="nope")) is None
    assert extra_for(ImportError("cannot import name 'x'", name="sqlalchemy")) is None


@pytest.mark.parametrize("command", [["channels", "list"], ["--help"], []])
def test_the_command_line_on_a_base_install_says_to_install_the_worker_extra(
    tmp_path: Path, command: list[str]
) -> None:
    result = run_as_installed(_CLI, args=command, home=tmp_path)
    assert result.returncode == 1
    assert result.stderr.startswith("error: the `delivery` command needs the `worker` extra")
    assert "pip install 'delivery[worker]'" in result.stderr
    assert "Traceback" not in result.stderr


def test_python_m_delivery_goes_through_the_same_check(tmp_path: Path) -> None:
    script = "import runpy, sys\nsys.argv[0] = 'delivery'\nrunpy.run_module('delivery')\n"
    result = run_as_installed(script, args=["log"], home=tmp_path)
    assert result.returncode == 1
    assert "pip install 'delivery[worker]'" in result.stderr
    assert "Traceback" not in result.stderr


def test_the_celery_app_on_a_base_install_says_to_install_the_worker_extra(
    tmp_path: Path,
) -> None:
    result = run_as_installed("import workers.app", home=tmp_path)
    assert result.returncode == 1
    assert (
        "MissingExtra: the Celery app (workers.app) needs the `worker` extra "
        "(no module named 'sqlalchemy'): pip install 'delivery[worker]'"
    ) in result.stderr


def test_a_worker_install_runs_the_workers_and_every_command_without_the_server_extra(
    tmp_path: Path,
) -> None:
    assert not import_names("worker") & {"fastapi", "starlette", "uvicorn"}
    script = """
import workers.app, workers.tasks, workers.inbound, workers.events, workers.sweeper
from delivery.cli import (
    admin, channels, deliveries, demo, events, inbound, keys, preferences, serve,
)
from delivery.dispatchers import console, email, slack, sms, webhook
from delivery.inbound import http, standard_webhooks, twilio
"""
    result = run_as_installed(script, "worker", home=tmp_path)
    assert result.returncode == 0, result.stderr
    for command in (["db", "upgrade"], ["keys", "list", "--json"]):
        result = run_as_installed(_CLI, "worker", args=command, home=tmp_path)
        assert result.returncode == 0, result.stderr


def test_delivery_serve_on_a_worker_install_says_to_install_the_server_extra(
    tmp_path: Path,
) -> None:
    result = run_as_installed(_CLI, "worker", args=["serve"], home=tmp_path)
    assert result.returncode == 1
    assert result.stderr.strip() == (
        "error: this command needs the `server` extra (no module named 'uvicorn'): "
        "pip install 'delivery[server]'"
    )
