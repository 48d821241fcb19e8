"""Settings that cannot work stop the worker at start, with a message naming the variable."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import ValidationError

from delivery.engine.channels import parse_retry_schedule
from delivery.errors import ConfigurationError
from schemas import Settings
from schemas.settings import describe


@pytest.mark.parametrize(
    "schedule", ["abc", "0,nan", "0,inf", "0,1e308", "0,-1", "", ",".join(["1"] * 51)]
)
def test_a_retry_schedule_is_finite_non_negative_and_bounded(schedule: str) -> None:
    with pytest.raises(ValidationError) as caught:
        Settings(retry_schedule=schedule)
    assert describe(caught.value).startswith("DELIVERY_RETRY_SCHEDULE: retry schedule")
    # and the same rule where a channel gets its own (delivery channels add --retry-schedule)
    with pytest.raises(ConfigurationError, match="retry schedule"):
        parse_retry_schedule(schedule)


@pytest.mark.parametrize("schedule", ["0,,300", "0,5,", ",5", "0, ,300"])
def test_a_retry_schedule_with_a_blank_delay_is_refused_not_shortened(schedule: str) -> None:
    # Issue 27: ``0,,300`` was saved as ``[0, 300]``, one retry fewer than meant.
    with pytest.raises(ValidationError) as caught:
        Settings(retry_schedule=schedule)
    assert "blank delay" in describe(caught.value)
    with pytest.raises(ConfigurationError, match="blank delay"):
        parse_retry_schedule(schedule)


def test_good_schedules_are_kept() -> None:
    assert Settings(retry_schedule="exponential").retry_schedule == "exponential"
    assert parse_retry_schedule("0, 5, 2592000") == (0.0, 5.0, 2592000.0)


@pytest.mark.parametrize(
    ("variable", "value"),
    [("DELIVERY_RETRY_SCHEDULE", "abc"), ("DELIVERY_RETRY_SCHEDULE", "0,nan"),
     ("DELIVERY_LEASE_SECONDS", "inf")],
)  # fmt: skip
def test_the_worker_refuses_to_start_on_bad_settings(
    variable: str, value: str, tmp_path: Path
) -> None:
    env = {**os.environ, "DELIVERY_HOME": str(tmp_path), variable: value}
    done = subprocess.run(
        [sys.executable, "-m", "delivery", "worker"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1
    assert variable in done.stderr and "Traceback" not in done.stderr
    assert done.stdout == ""
