"""A fast webhook receiver: raw asyncio HTTP/1.1 in several processes, answering 204.

It parses only what it must (the head's end and ``Content-Length``), keeps connections
alive, and counts requests in shared memory, one slot per process, so the bench can tell
when the last request of a run arrived without any lock on the hot path. It verifies
nothing: the delivery log already says whether each delivery was accepted.

Run alone to measure its ceiling: ``python -m bench.receiver``.
"""

import asyncio
import contextlib
import multiprocessing
import os
import socket
import time
from dataclasses import dataclass
from typing import Any

#: 204 with an explicit zero length: every client (urllib3, Apprise) keeps the connection.
RESPONSE = b"HTTP/1.1 204 No Content\r\nContent-Length: 0\r\nServer: bench\r\n\r\n"
_BAD = b"HTTP/1.1 411 Length Required\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
_HEAD_END = b"\r\n\r\n"


class _HttpProtocol(asyncio.Protocol):
    __slots__ = ("_buffer", "_counts", "_slot", "_stamps", "_transport")

    def __init__(self, counts: Any, stamps: Any, slot: int) -> None:
        self._buffer = bytearray()
        self._counts = counts
        self._stamps = stamps
        self._slot = slot
        self._transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def data_received(self, data: bytes) -> None:
        buffer = self._buffer
        buffer += data
        transport = self._transport
        assert transport is not None
        while True:
            end = buffer.find(_HEAD_END)
            if end < 0:
                return
            head = bytes(buffer[:end]).lower()
            length = _content_length(head)
            if length is None:
                transport.write(_BAD)
                transport.close()
                return
            total = end + 4 + length
            if len(buffer) < total:
                return
            del buffer[:total]
            self._counts[self._slot] += 1
            self._stamps[self._slot] = time.time()
            transport.write(RESPONSE)
            if b"\r\nconnection: close" in head:
                transport.close()
                return


def _content_length(head: bytes) -> int | None:
    start = head.find(b"\r\ncontent-length:")
    if start < 0:
        # No body is fine for GET; a chunked body is not something our clients send.
        return None if b"\r\ntransfer-encoding:" in head else 0
    start += len(b"\r\ncontent-length:")
    stop = head.find(b"\r\n", start)
    try:
        return int(head[start : stop if stop >= 0 else len(head)])
    except ValueError:
        return None


def _serve(sock: socket.socket, counts: Any, stamps: Any, slot: int) -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(
            lambda: _HttpProtocol(counts, stamps, slot), sock=sock, backlog=1024
        )
        async with server:
            await server.serve_forever()

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(main())


@dataclass(frozen=True)
class Snapshot:
    """Requests counted so far and the wall-clock time of the latest one."""

    count: int
    last_at: float


class Receiver:
    """The receiver's processes; a context manager that stops them on the way out."""

    def __init__(self, processes: int = 2) -> None:
        # Fork: the children only need the listening socket and the counters.
        context = multiprocessing.get_context("fork")
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(1024)
        self._sock.setblocking(False)
        self.port = int(self._sock.getsockname()[1])
        self.process_count = processes
        # Raw shared arrays: each process writes only its own slot, so no lock is needed.
        self._counts: Any = context.Array("q", processes, lock=False)
        self._stamps: Any = context.Array("d", processes, lock=False)
        self._children = [
            context.Process(
                target=_serve,
                args=(self._sock, self._counts, self._stamps, slot),
                name=f"bench-receiver-{slot}",
                daemon=True,
            )
            for slot in range(processes)
        ]

    def __enter__(self) -> "Receiver":
        for child in self._children:
            child.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        for child in self._children:
            if child.is_alive():
                child.terminate()
        for child in self._children:
            child.join(timeout=5)
            if child.is_alive():
                child.kill()
                child.join()
        self._sock.close()

    @property
    def pids(self) -> list[int]:
        return [c.pid for c in self._children if c.pid is not None]

    def url(self, path: str = "/hook") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def snapshot(self) -> Snapshot:
        return Snapshot(count=sum(self._counts[:]), last_at=max(self._stamps[:]))

    def wait_for(self, count: int, *, timeout: float, poll: float = 0.05) -> Snapshot:
        """Wait until ``count`` requests in all have arrived.

        Raises:
            TimeoutError: they did not arrive in time.
        """
        deadline = time.monotonic() + timeout
        while True:
            snap = self.snapshot()
            if snap.count >= count:
                return snap
            if time.monotonic() > deadline:
                raise TimeoutError(f"receiver got {snap.count} of {count} requests")
            time.sleep(poll)


def main() -> None:
    from bench.loadgen import measure_ceiling

    with Receiver(processes=max(1, (os.cpu_count() or 2))) as receiver:
        ceiling = measure_ceiling(receiver.port, seconds=3.0)
    print(f"receiver ceiling: {ceiling.rate:,.0f} requests/s ({ceiling.describe()})")


if __name__ == "__main__":
    main()
