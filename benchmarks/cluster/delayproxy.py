"""A TCP proxy that adds latency, jitter and stalls: what ``netem`` would do, in userspace.

This kernel has no ``netem`` qdisc, so each simulated S3 region runs one of these in front of
its server. Every chunk read from one side is held until ``read time + delay (+ jitter)``
before it is written to the other side, per direction, keeping byte order; a new connection
waits one extra round trip before its first bytes go upstream (the TCP handshake a client
would have paid). Buffers are bounded per direction (``max_buffer`` bytes in flight), so a
slow reader pushes back on the writer as a real window would; they must exceed the
bandwidth-delay product or they cap throughput themselves.

``stall_probability`` makes a chunk wait ``stall_s`` longer, as a lost segment waits for its
retransmission; ``reset_probability`` aborts a connection at a chunk, as a dropped
connection would. Bandwidth is capped elsewhere (tbf on the links, :mod:`netns`).

It counts bytes per client address in each direction and writes them as JSON to
``stats_path`` every ``stats_every`` seconds and on exit, so a test can show which host sent
what to the region.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import random
import signal
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

CHUNK = 256 * 1024


@dataclass
class Shaping:
    """How each direction of every connection is delayed (seconds) and disturbed."""

    delay_s: float = 0.010
    jitter_s: float = 0.0
    stall_probability: float = 0.0
    stall_s: float = 0.2
    reset_probability: float = 0.0
    max_buffer: int = 8 * 1024 * 1024


class DelayProxy:
    """Listens on ``listen``; forwards each connection to ``upstream`` with :class:`Shaping` applied."""

    def __init__(
        self,
        listen: tuple[str, int],
        upstream: tuple[str, int],
        shaping: Shaping,
        *,
        stats_path: Path | None = None,
        stats_every: float = 0.2,
        seed: int = 0,
    ) -> None:
        self.listen = listen
        self.upstream = upstream
        self.shaping = shaping
        self.stats_path = stats_path
        self.stats_every = stats_every
        self.rng = random.Random(seed)
        #: client address -> {"up": bytes client->server, "down": bytes server->client, "connections": n}
        self.stats: dict[str, dict[str, int]] = defaultdict(lambda: {"up": 0, "down": 0, "connections": 0})
        self.resets = 0
        self._server: asyncio.base_events.Server | None = None

    def _delay(self) -> float:
        s = self.shaping
        d = s.delay_s + (self.rng.uniform(-s.jitter_s, s.jitter_s) if s.jitter_s else 0.0)
        if s.stall_probability and self.rng.random() < s.stall_probability:
            d += s.stall_s
        return max(0.0, d)

    async def _pump(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        counter: dict[str, int],
        key: str,
        first_extra: float,
    ) -> None:
        """Copy one direction: a reader task stamps chunks, a writer task releases them when due."""
        queue: asyncio.Queue[tuple[float, bytes] | None] = asyncio.Queue()
        room = asyncio.Semaphore(max(1, self.shaping.max_buffer // CHUNK))

        async def read_side() -> None:
            last_due = 0.0
            extra = first_extra
            try:
                while True:
                    await room.acquire()
                    data = await reader.read(CHUNK)
                    if not data:
                        break
                    if self.shaping.reset_probability and self.rng.random() < self.shaping.reset_probability:
                        self.resets += 1
                        raise ConnectionResetError("delay proxy: injected reset")
                    due = max(last_due, time.monotonic() + self._delay() + extra)
                    extra = 0.0
                    last_due = due
                    await queue.put((due, data))
            finally:
                await queue.put(None)

        async def write_side() -> None:
            while True:
                item = await queue.get()
                if item is None:
                    break
                due, data = item
                wait = due - time.monotonic()
                if wait > 0:
                    await asyncio.sleep(wait)
                writer.write(data)
                await writer.drain()
                counter[key] += len(data)
                room.release()
            if writer.can_write_eof():
                with contextlib.suppress(OSError):
                    writer.write_eof()

        reading = asyncio.ensure_future(read_side())
        try:
            await write_side()
        finally:
            reading.cancel()
            with contextlib.suppress(BaseException):
                await reading
        exc = reading.exception() if reading.done() and not reading.cancelled() else None
        if exc is not None:
            raise exc

    async def _handle(self, c_reader: asyncio.StreamReader, c_writer: asyncio.StreamWriter) -> None:
        peer = c_writer.get_extra_info("peername")
        client = peer[0] if peer else "?"
        counter = self.stats[client]
        counter["connections"] += 1
        try:
            u_reader, u_writer = await asyncio.open_connection(*self.upstream)
        except OSError as exc:
            log.warning("upstream %s unreachable: %s", self.upstream, exc)
            c_writer.close()
            return
        handshake = 2 * self.shaping.delay_s
        tasks = [
            asyncio.ensure_future(self._pump(c_reader, u_writer, counter, "up", handshake)),
            asyncio.ensure_future(self._pump(u_reader, c_writer, counter, "down", 0.0)),
        ]
        try:
            _, pending = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
            if failed(tasks):
                for t in pending:
                    t.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        finally:
            abort = failed(tasks)
            for w in (c_writer, u_writer):
                if abort:
                    w.transport.abort()
                else:
                    w.close()

    async def _write_stats(self) -> None:
        while True:
            self.dump_stats()
            await asyncio.sleep(self.stats_every)

    def dump_stats(self) -> None:
        if self.stats_path is None:
            return
        tmp = self.stats_path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"clients": dict(self.stats), "resets": self.resets}))
        os.replace(tmp, self.stats_path)

    async def serve(self, ready: asyncio.Event | None = None, stop: asyncio.Event | None = None) -> None:
        self._server = await asyncio.start_server(self._handle, *self.listen, limit=CHUNK * 2)
        stats_task = asyncio.ensure_future(self._write_stats())
        if ready is not None:
            ready.set()
        try:
            await (stop or asyncio.Event()).wait()
        finally:
            stats_task.cancel()
            self._server.close()
            self.dump_stats()


def failed(tasks: list[asyncio.Future[None]]) -> bool:
    """Whether a pump failed (an injected reset or a broken peer): then both sides are aborted."""
    return any(t.done() and not t.cancelled() and t.exception() is not None for t in tasks)


def run(proxy: DelayProxy, on_ready: callable | None = None) -> None:  # type: ignore[valid-type]
    """Serve until SIGTERM or SIGINT."""

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        ready = asyncio.Event()
        serving = asyncio.ensure_future(proxy.serve(ready, stop))
        await ready.wait()
        if on_ready is not None:
            on_ready()
        await serving

    asyncio.run(main())


def _addr(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host, int(port)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--listen", required=True, type=_addr, help="HOST:PORT to accept clients on")
    p.add_argument("--upstream", required=True, type=_addr, help="HOST:PORT of the server")
    p.add_argument("--rtt-ms", type=float, default=20.0, help="round trip added (half each way)")
    p.add_argument("--jitter-ms", type=float, default=0.0, help="+- per chunk and direction")
    p.add_argument("--stall-probability", type=float, default=0.0)
    p.add_argument("--stall-ms", type=float, default=200.0)
    p.add_argument("--reset-probability", type=float, default=0.0)
    p.add_argument("--stats", type=Path, default=None, help="JSON file of bytes per client")
    a = p.parse_args()
    shaping = Shaping(
        delay_s=a.rtt_ms / 2000,
        jitter_s=a.jitter_ms / 1000,
        stall_probability=a.stall_probability,
        stall_s=a.stall_ms / 1000,
        reset_probability=a.reset_probability,
    )
    run(DelayProxy(a.listen, a.upstream, shaping, stats_path=a.stats))


if __name__ == "__main__":
    main()
