"""The benchmark suite's quick mode runs to the end and prints its tables.

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


@pytest.mark.timeout(480)
def test_quick_bench_completes_and_prints_the_tables(tmp_path: Path) -> None:
    # Given the servers the bench starts for itself
    need_binary("redis-server")
    output = tmp_path / "results.json"
    env = {k: v for k, v in os.environ.items() if not k.startswith("DELIVERY_")}
    env["COLUMNS"] = "200"

    # When the quick mode runs
    proc = subprocess.run(
        [sys.executable, "-m", "bench", "--quick", "--output", str(output)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=460,
    )

    # Then it finishes, prints every section's table and the targets, and saves JSON
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    titles = [sections.load(name)[0] for name in SECTIONS]
    for title in (*titles, "receiver ceiling", "Targets"):
        assert title in proc.stdout, f"{title!r} missing from:\n{proc.stdout[-4000:]}"
    doc = json.loads(output.read_text())
    assert set(doc["sections"]) == set(SECTIONS)
    assert not any(section["error"] for section in doc["sections"].values())
