"""Importing ``delivery.api`` connects to nothing; ``app`` is made when uvicorn asks."""

import subprocess
import sys
from pathlib import Path

from tests.support.servers import free_port

PROBE = """
import sys
import delivery.api
assert "_app" in vars(delivery.api) and delivery.api._app is None
print("imported")
app = delivery.api.app
assert app is delivery.api.app
print(type(app).__name__)
"""


def test_importing_the_package_creates_and_connects_nothing(tmp_path: Path) -> None:
    home = tmp_path / "home"
    env = {
        "PATH": "/usr/bin:/bin",
        "DELIVERY_HOME": str(home),
        # Nothing listens here: any connection attempt would fail the import.
        "DELIVERY_DATABASE_URL": f"postgresql+psycopg://x@127.0.0.1:{free_port()}/none",
        "DELIVERY_BROKER_URL": f"redis://127.0.0.1:{free_port()}/0",
    }
    proc = subprocess.run(
        [sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["imported", "FastAPI"]
    assert not home.exists()
