#!/usr/bin/env bash
# The base install is the producer: `pip install delivery` (no extra) in a fresh venv must
# stay small, bring none of the extras' packages, and send. It sends, sends many and
# notifies on the embedded default broker, then reads the messages back from the broker's
# SQLite file. See docs/installing.md.
#
# Limits (override to measure): MAX_PACKAGES distributions besides pip, setuptools and
# delivery itself; MAX_MB for the venv's site-packages, pip and setuptools included.
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
python="${PYTHON:-python}"
max_packages="${MAX_PACKAGES:-30}"
max_mb="${MAX_MB:-80}"

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

# A copy of the checkout, so the build leaves nothing (build/, *.egg-info) in it.
mkdir "$work/src"
tar -C "$repo" --exclude=./.git --exclude=__pycache__ --exclude='*.egg-info' \
    --exclude=./build --exclude=./.venv -cf - . | tar -C "$work/src" -xf -

"$python" -m venv "$work/venv"
pip=("$work/venv/bin/python" -m pip --disable-pip-version-check)
# Quiet, and without the warnings about extra index locations this machine has no copy of.
"${pip[@]}" install --quiet "$work/src" 2>&1 | { grep -v "^WARNING: Location '" || true; } >&2

# Counted without pip and setuptools (every venv has them) and without delivery itself.
installed="$("${pip[@]}" list --format=freeze 2>/dev/null \
    | grep -v -i -E '^(pip|setuptools|delivery)==' | sort)"
count="$(printf '%s\n' "$installed" | grep -c .)"
site="$("$work/venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
mb="$(du -sm "$site" | cut -f1)"
echo "base install: $count packages besides delivery, pip and setuptools; site-packages $mb MB"
echo "$installed" | tr '\n' ' '
echo

status=0
if [ "$count" -gt "$max_packages" ]; then
    echo "FAIL: the base install brings $count packages (at most $max_packages)" >&2
    status=1
fi
if [ "$mb" -gt "$max_mb" ]; then
    echo "FAIL: the base install takes $mb MB (at most $max_mb)" >&2
    status=1
fi
# What the extras bring ([worker], [server], [apprise]) has no place in a producer's install.
extras_found="$(printf '%s\n' "$installed" | grep -i -E \
    '^(sqlalchemy|alembic|psycopg|psycopg-binary|requests|slack-sdk|slack_sdk|twilio|typer|rich|fastapi|starlette|uvicorn|prometheus-client|prometheus_client|cryptography|flower|jinja2|email-validator|email_validator|phonenumbers|html2text|standardwebhooks|apprise)==' \
    || true)"
if [ -n "$extras_found" ]; then
    echo "FAIL: the base install brings an extra's packages: $(echo "$extras_found" | tr '\n' ' ')" >&2
    status=1
fi

# Send from outside the checkout, so `import delivery` is the installed one.
mkdir "$work/home" "$work/run"
(
    cd "$work/run"
    unset $(env | grep -o '^DELIVERY_[A-Z_]*' || true)
    DELIVERY_HOME="$work/home" "$work/venv/bin/python" - <<'EOF'
import base64
import json
import os
import sqlite3
from pathlib import Path

import delivery

one = delivery.send("hooks", "https://example.com/hook", {"message": "hello"})
many = delivery.send_many(
    [
        {"channel": "hooks", "address": "https://example.com/a", "payload": {"message": "a"}},
        {"channel": "ops", "address": "https://example.com/b", "payload": {"message": "b"}},
    ]
)
event = delivery.notify("order.shipped", {"order": 42})
assert delivery.__file__ and "/site-packages/" in delivery.__file__, delivery.__file__

broker = Path(os.environ["DELIVERY_HOME"]) / "broker.sqlite3"
with sqlite3.connect(broker) as db:
    rows = [json.loads(payload) for (payload,) in db.execute("SELECT payload FROM message")]
tasks: set[str] = set()
ids: set[str] = set()
for message in rows:
    tasks.add(message["headers"]["task"])
    first = json.loads(base64.b64decode(message["body"]))[0]  # an envelope, a batch, an event
    ids.update(item["id"] for item in (first if isinstance(first, list) else [first]))
sent = {one.id, event.id, *(receipt.id for receipt in many)}
assert sent <= ids, f"not in {broker}: {sorted(sent - ids)}"
assert "delivery.fanout" in tasks and tasks <= {
    "delivery.deliver",
    "delivery.deliver_batch",
    "delivery.fanout",
}, tasks
print(f"sent: {len(rows)} messages in {broker.name} ({', '.join(sorted(tasks))})")
EOF
)
exit "$status"
