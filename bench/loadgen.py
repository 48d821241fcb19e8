"""A concurrent keep-alive HTTP client, to measure the receiver's own ceiling.

Raw asyncio streams in several processes: far cheaper per request than requests/urllib3,
so what it measures is the receiver (and the loopback), not the client. On a machine with
few cores the client and the receiver share them, so the figure is a lower bound.
"""

import asyncio
import json
import multiprocessing
import time
from dataclasses import dataclass

#: A body of the size our webhook dispatcher posts for the bench's payload.
BODY = json.dumps(
    {
        "message": "Order 12345 has shipped",
        "subject": "Shipping update",
        "html_message": None,
        "data": {"order": 12345, "carrier": "bench", "items": [1, 2, 3]},
    }
).encode()


def _request(port: int) -> bytes:
    return (
        f"POST /ceiling HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(BODY)}\r\n\r\n"
    ).encode() + BODY


async def _connection(port: int, stop_at: float) -> int:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    request = _request(port)
    done = 0
    try:
        while time.monotonic() < stop_at:
            writer.write(request)
            await reader.readuntil(b"\r\n\r\n")  # the receiver's answers have no body
            done += 1
    finally:
        writer.close()
    return done


def _client(
    port: int, connections: int, seconds: float, results: "multiprocessing.Queue[int]"
) -> None:
    async def main() -> int:
        stop_at = time.monotonic() + seconds
        counts = await asyncio.gather(*(_connection(port, stop_at) for _ in range(connections)))
        return sum(counts)

    results.put(asyncio.run(main()))


@dataclass(frozen=True)
class Ceiling:
    rate: float
    requests: int
    seconds: float
    client_processes: int
    connections: int

    def describe(self) -> str:
        per_process = self.connections // self.client_processes
        return (
            f"{self.client_processes} client processes x {per_process}"
            f" keep-alive connections for {self.seconds:g}s"
        )


def measure_ceiling(
    port: int, *, seconds: float = 3.0, client_processes: int = 2, connections: int = 32
) -> Ceiling:
    """Requests per second the receiver on ``port`` answers under concurrent load."""
    context = multiprocessing.get_context("fork")
    results: multiprocessing.Queue[int] = context.Queue()
    per_process = max(1, connections // client_processes)
    clients = [
        context.Process(target=_client, args=(port, per_process, seconds, results), daemon=True)
        for _ in range(client_processes)
    ]
    for client in clients:
        client.start()
    total = sum(results.get(timeout=seconds + 30) for _ in clients)
    for client in clients:
        client.join(timeout=10)
    return Ceiling(
        rate=total / seconds,
        requests=total,
        seconds=seconds,
        client_processes=client_processes,
        connections=per_process * client_processes,
    )
