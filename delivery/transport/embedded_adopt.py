"""What waits in the embedded broker's old folder moves into its SQLite file, once.

The embedded broker was kombu's filesystem transport: a folder of message files under
``DELIVERY_HOME/broker``. A worker started after the upgrade moves what still waits there
onto the same queues in ``DELIVERY_HOME/broker.sqlite3`` (``workers.app``).
"""

import logging
from pathlib import Path

from delivery.transport.embedded_store import QueueFile, is_task_queue

logger = logging.getLogger(__name__)


def adopt_filesystem_queue(folder: Path, queue_file: QueueFile) -> int:
    """Move the messages waiting in kombu's filesystem transport's folder (the embedded
    broker before this one: ``<folder>/queue/<time>_<uuid>.<queue>.msg``) onto the same
    queues here, oldest first, once; return how many. Each file is renamed before it is
    read, so two workers starting together never both move it; what is not a message is
    moved all the same, and set aside by whoever takes it. Remote-control and event
    messages are long stale: dropped. So are the consumed copies in ``processed``."""
    moved = 0
    for path in sorted((folder / "queue").glob("*.msg")):
        queue = path.name.partition(".")[2].removesuffix(".msg")
        claimed = path.with_name(path.name + ".adopting")
        try:
            path.rename(claimed)
        except OSError:
            continue  # another worker took it
        try:
            if queue and is_task_queue(queue):
                queue_file.put(queue, claimed.read_bytes().decode("utf-8", "replace"))
                moved += 1
            claimed.unlink()
        except OSError:
            logger.warning("could not move %s into the broker file", path, exc_info=True)
    for path in (folder / "processed").glob("*.msg"):
        path.unlink(missing_ok=True)
    return moved
