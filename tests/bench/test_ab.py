"""``python -m bench ab``: its arguments, its checkouts and its arithmetic; no timing."""

import os
import subprocess
from pathlib import Path

import pytest

from bench.ab import (
    WORKTREE,
    Side,
    bench_command,
    checkout,
    compare,
    copy_harness,
    figures,
    order,
    parse_args,
    resolve,
)


def _git(repo: Path, *args: str) -> str:
    return subprocess.run(
        ["git", "-c", "user.name=t", "-c", "user.email=t@example.com", *args],
        cwd=repo,
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    """A repository with two commits of one file: ``first``, then ``second``."""
    path = tmp_path / "repo"
    path.mkdir()
    _git(path, "init", "--quiet")
    for text in ("first", "second"):
        (path / "version.txt").write_text(text)
        _git(path, "add", "version.txt")
        _git(path, "commit", "--quiet", "-m", text)
    return path


def test_defaults_compare_an_old_commit_with_the_working_tree() -> None:
    args = parse_args(["--old", "abc123"])
    assert (args.old, args.new, args.rounds, args.bench_args) == ("abc123", WORKTREE, 3, [])


def test_options_ab_does_not_know_go_to_every_bench_run() -> None:
    args = parse_args(
        ["--only", "e2e", "--old", "HEAD~1", "--deliveries", "1500", "--new", "HEAD",
         "--concurrency", "8", "--rounds", "2"]
    )  # fmt: skip
    assert (args.old, args.new, args.rounds) == ("HEAD~1", "HEAD", 2)
    assert args.bench_args == ["--only", "e2e", "--deliveries", "1500", "--concurrency", "8"]


@pytest.mark.parametrize(
    "argv",
    [[], ["--old", "HEAD", "--rounds", "0"], ["--old", "HEAD", "--output", "x.json"]],
)
def test_refused_arguments(argv: list[str]) -> None:
    with pytest.raises(SystemExit):
        parse_args(argv)


def test_sides_take_turns_starting_with_old() -> None:
    old, new = Side("old", Path("/o"), "o"), Side("new", Path("/n"), "n")
    assert [order(r, (old, new))[0].label for r in range(4)] == ["old", "new", "old", "new"]


def test_each_side_imports_its_own_tree_without_the_callers_settings(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("DELIVERY_DATABASE_URL", "sqlite:///elsewhere.sqlite3")
    monkeypatch.setenv("PYTHONPATH", "/somewhere")
    side = Side("old", tmp_path / "old", "abc")
    harness = tmp_path / "harness"
    argv, env = bench_command(side, harness, ["--only", "e2e"], tmp_path / "out.json")
    assert argv[1:] == ["-m", "bench", "--only", "e2e", "--output", str(tmp_path / "out.json")]
    # The shared harness first, then the side's own tree
    assert env["PYTHONPATH"].split(os.pathsep) == [
        str(harness),
        str(tmp_path / "old"),
        "/somewhere",
    ]
    assert not any(key.startswith("DELIVERY_") for key in env)


def test_the_harness_is_this_trees_bench_alone(tmp_path: Path) -> None:
    harness = copy_harness(tmp_path)
    assert sorted(p.name for p in harness.iterdir()) == ["bench"]
    assert (harness / "bench" / "ab.py").is_file()
    assert not (harness / "bench" / "results").exists()


def test_checkout_is_the_commit_and_is_removed_afterwards(repo: Path, tmp_path: Path) -> None:
    # Given a repository whose HEAD says "second"
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    # When its first commit is checked out for a side
    with checkout("HEAD~1", scratch, "old", repo=repo) as path:
        # Then the side sees the first commit, and the working tree is untouched
        assert (path / "version.txt").read_text() == "first"
        assert (repo / "version.txt").read_text() == "second"
        assert len(_git(repo, "worktree", "list").splitlines()) == 2
    # And afterwards the worktree is gone, from the disk and from git's list
    assert not path.exists()
    assert len(_git(repo, "worktree", "list").splitlines()) == 1


def test_checkout_is_removed_when_the_run_fails(repo: Path, tmp_path: Path) -> None:
    with pytest.raises(RuntimeError), checkout("HEAD", tmp_path, "new", repo=repo) as path:
        raise RuntimeError("the bench failed")
    assert not path.exists()
    assert len(_git(repo, "worktree", "list").splitlines()) == 1


def test_an_unknown_commit_is_refused_before_anything_is_checked_out(
    repo: Path, tmp_path: Path
) -> None:
    with (
        pytest.raises(ValueError, match="not a commit"),
        checkout("nope", tmp_path, "old", repo=repo),
    ):
        pass
    assert resolve("HEAD", repo) == _git(repo, "rev-parse", "HEAD")
    assert not (tmp_path / "old").exists()


def _doc(rate: str, ratio: str) -> dict[str, object]:
    return {
        "sections": {
            "e2e": {
                "title": "1. End-to-end",
                "error": None,
                "columns": ["contender", "deliveries/s", "ours / this", "note"],
                "rows": [["ours", rate, "1.00", "n/a"], ["baseline", "400", ratio, "-"]],
            },
            "broken": {"title": "2. Broken", "error": "boom", "columns": [], "rows": []},
        }
    }


def test_figures_are_the_leading_numbers_of_the_cells() -> None:
    found = figures(_doc("1,200 (1,100-1,300)", "3.00x (2.50-3.50)"))
    assert found[("1. End-to-end", "ours", "deliveries/s")] == 1200.0
    assert found[("1. End-to-end", "baseline", "ours / this")] == 3.0
    assert ("1. End-to-end", "ours", "note") not in found


def test_new_over_old_is_taken_within_each_round() -> None:
    # Given two rounds where the machine ran twice as fast in the second
    old = [figures(_doc("100", "1.0x")), figures(_doc("200", "1.0x"))]
    new = [figures(_doc("110", "1.0x")), figures(_doc("220", "1.0x"))]
    # Then the ratio is 1.1 in both rounds, whatever the medians
    rate = next(c for c in compare(old, new) if c.row == "ours" and c.column == "deliveries/s")
    assert (rate.old, rate.new) == (150.0, 165.0)
    ratio = rate.ratio
    assert (ratio.median, ratio.low, ratio.high) == pytest.approx((1.1, 1.1, 1.1))
    assert ratio.samples == 2
