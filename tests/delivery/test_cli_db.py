"""`delivery db current|history|check`: where the log's schema stands, what the migrations
are, and a check a deploy script can stop on."""

import json
from itertools import pairwise

from alembic import command
from typer.testing import CliRunner

from delivery.cli import admin, app  # noqa: F401 - registers the commands
from delivery.log.database import dispose_engines
from delivery.log.migrate import alembic_config, heads, history
from schemas import Settings

runner = CliRunner()


def run(*args: str) -> tuple[int, str, str]:
    result = runner.invoke(app, list(args))
    return result.exit_code, result.stdout, result.stderr


def _downgrade(settings: Settings, revision: str) -> None:
    dispose_engines()
    command.downgrade(alembic_config(settings.resolved_database_url), revision)


def test_a_log_at_head(settings: Settings) -> None:
    [head] = heads()
    code, out, _ = run("db", "current")
    assert code == 0 and f"revision {head} (head)" in out
    code, out, _ = run("db", "current", "--json")
    assert code == 0
    assert json.loads(out) == {
        "database": settings.resolved_database_url,
        "revision": head,
        "head": head,
        "at_head": True,
    }
    code, out, err = run("db", "check")
    assert (code, err) == (0, "") and f"{head} (head)" in out


def test_a_log_behind_head_fails_the_check(settings: Settings) -> None:
    # Given a log one migration behind
    revisions = [r.id for r in history()]
    _downgrade(settings, revisions[-2])
    # current says so and exits 0; check exits 1 saying what to run
    code, out, _ = run("db", "current", "--json")
    assert code == 0
    doc = json.loads(out)
    assert (doc["revision"], doc["head"], doc["at_head"]) == (revisions[-2], revisions[-1], False)
    code, out, _ = run("db", "current")
    assert code == 0 and "behind head" in out
    code, out, err = run("db", "check")
    assert code == 1 and out == ""
    assert f"revision {revisions[-2]}, behind head {revisions[-1]}" in err
    assert "run `delivery db upgrade`" in err and "Traceback" not in err
    # and passes once it is upgraded
    assert run("db", "upgrade")[0] == 0
    assert run("db", "check")[0] == 0


def test_a_log_never_migrated_fails_the_check(settings: Settings) -> None:
    _downgrade(settings, "base")
    code, out, _ = run("db", "current", "--json")
    assert code == 0 and json.loads(out)["revision"] is None
    code, _, err = run("db", "check")
    assert code == 1 and "has no migrations applied: run `delivery db upgrade`" in err


def test_a_log_migrated_by_a_newer_release_is_named(settings: Settings) -> None:
    from sqlalchemy import create_engine, text

    engine = create_engine(settings.resolved_database_url)
    with engine.begin() as connection:
        connection.execute(text("UPDATE alembic_version SET version_num = 'f00d'"))
    engine.dispose()
    code, _, err = run("db", "check")
    assert code == 1 and "revision f00d, which this version of delivery does not know" in err


def test_history_lists_the_chain_oldest_first() -> None:
    code, out, _ = run("db", "history", "--json")
    assert code == 0
    revisions = json.loads(out)["revisions"]
    assert [r["revision"] for r in revisions] == [r.id for r in history()]
    # the released chain, whose ids are not in order, comes in the order it is applied
    released = ["0001", "0002", "0005", "0004", "0003", "0006"]
    assert [r["revision"] for r in revisions][: len(released)] == released
    assert revisions[0]["down_revision"] is None
    assert all(b["down_revision"] == a["revision"] for a, b in pairwise(revisions))
    assert [r["head"] for r in revisions] == [False] * (len(revisions) - 1) + [True]
    assert revisions[0]["title"] == "The delivery log: channels, deliveries and attempts."
    code, out, _ = run("db", "history")
    assert code == 0 and f"{revisions[-1]['revision']} (head)" in out and "Inbound" in out
