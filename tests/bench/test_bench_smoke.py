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

from tests.support.servers import need_binary

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
SECTION_TITLES = (
    "1. End-to-end throughput",
    "2. Producer cost",
    "3. Per-delivery overhead",
    "4. Worker memory",
    "5. Apprise json://",
)


@pytest.mark.timeout(300)
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
        timeout=280,
    )

    # Then it finishes, prints every section's table and the targets, and saves JSON
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    for title in (*SECTION_TITLES, "receiver ceiling", "Targets"):
        assert title in proc.stdout, f"{title!r} missing from:\n{proc.stdout[-4000:]}"
    doc = json.loads(output.read_text())
    assert set(doc["sections"]) == {"e2e", "producer", "overhead", "memory", "apprise"}
    assert not any(section["error"] for section in doc["sections"].values())
