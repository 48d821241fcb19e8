"""The benchmark suite's quick mode runs to the end and prints its tables (at its smoke
sizes, ``--smoke``: the quick mode smaller again, since only finishing is tested).

No timing is asserted here: figures on a shared machine are noise to a test. The bench
itself reports its targets as met or not met.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bench import sections
from bench.config import SECTIONS
from tests.support.servers import need_binary

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.timeout(300)
@pytest.mark.parametrize("section", SECTIONS)
def test_each_quick_section_completes_and_prints_its_table(section: str, tmp_path: Path) -> None:
    # One section per test, so that pytest-xdist spreads them over its processes: the
    # whole quick bench in one test took five minutes, the suite's longest wait.
    # Given the servers the bench starts for itself
    need_binary("redis-server")
    output = tmp_path / "results.json"
    env = {k: v for k, v in os.environ.items() if not k.startswith("DELIVERY_")}
    env["COLUMNS"] = "200"

    # When the quick mode runs the section
    proc = subprocess.run(
        [sys.executable, "-m", "bench", "--smoke", "--only", section, "--output", str(output)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=280,
    )

    # Then it finishes, prints the section's table, and saves JSON
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    title = sections.load(section)[0]
    for shown in (title, "receiver ceiling"):
        assert shown in proc.stdout, f"{shown!r} missing from:\n{proc.stdout[-4000:]}"
    doc = json.loads(output.read_text())
    assert set(doc["sections"]) == {section}
    assert not doc["sections"][section]["error"]
