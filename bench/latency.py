"""A receiver that notes when each request arrives, for latency: the sender keeps the time
its ``send`` returned for each sequence number, and the difference is the latency.

It runs in a process of its own, so the load generator's GIL is not in the measurement;
arrivals travel back over a pipe. Every body carries ``"seq": <n>`` somewhere in its JSON
(ours under ``data``, the baseline's at the top), and the receiver finds it with a regular
expression rather than parsing each body.
"""

import asyncio
import multiprocessing
import re
import signal
import socket
import time
from multiprocessing.connection import Connection
from typing import Any

_SEQ = re.compile(rb'"seq":\s*([0-9]+)')
_RESPONSE = b"HTTP/1.1 204 No Content\r\nContent-Length: 0\r\n\r\n"


class _Protocol(asyncio.Protocol):
    def __init__(self, out: Connection) -> None:
        self._out = out
        self._buffer = b""
        self._transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport

    def data_received(self, data: bytes) -> None:
        arrived = time.time()
        self._buffer += data
        while True:
            head_end = self._buffer.find(b"\r\n\r\n")
            if head_end < 0:
                return
            head = self._buffer[:head_end].lower()
            match = re.search(rb"content-length:\s*(\d+)", head)
            length = int(match.group(1)) if match else 0
            end = head_end + 4 + length
            if len(self._buffer) < end:
                return
            body, self._buffer = self._buffer[head_end + 4 : end], self._buffer[end:]
            seq = _SEQ.search(body)
            if seq:
                self._out.send((int(seq.group(1)), arrived))
            assert self._transport is not None
            self._transport.write(_RESPONSE)


def _serve(sock: socket.socket, out: Connection) -> None:
    # Forked from the bench, whose SIGTERM handler raises in the main loop; here a
    # terminate should simply end the process.
    signal.signal(signal.SIGTERM, signal.SIG_DFL)

    async def main() -> None:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(lambda: _Protocol(out), sock=sock, backlog=1024)
        async with server:
            await server.serve_forever()

    asyncio.run(main())


class LatencyReceiver:
    """``with LatencyReceiver() as receiver: … receiver.collect(n, timeout)``."""

    def __init__(self) -> None:
        self._sock = socket.socket()
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(1024)
        self.port = int(self._sock.getsockname()[1])
        context = multiprocessing.get_context("fork")
        self._inbox, out = context.Pipe(duplex=False)
        self._process = context.Process(target=_serve, args=(self._sock, out), daemon=True)
        self._seen: dict[int, float] = {}

    def __enter__(self) -> "LatencyReceiver":
        self._process.start()
        return self

    def __exit__(self, *_: Any) -> None:
        self._process.terminate()
        self._process.join(timeout=5)
        self._sock.close()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def collect(self, seqs: set[int], *, timeout: float) -> dict[int, float]:
        """When each of ``seqs`` first arrived (epoch seconds; duplicates ignored), waiting
        up to ``timeout`` seconds for the last.

        Raises:
            TimeoutError: some did not arrive.
        """
        deadline = time.monotonic() + timeout
        while not seqs <= self._seen.keys():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                missing = len(seqs - self._seen.keys())
                raise TimeoutError(f"{missing} of {len(seqs)} requests never arrived")
            if self._inbox.poll(min(remaining, 0.2)):
                seq, arrived_at = self._inbox.recv()
                self._seen.setdefault(seq, arrived_at)
        return {s: self._seen[s] for s in seqs}
