"""Open-loop, constant-rate HTTP/1.1 load with latency measured from each request's intended start.

A closed-loop client (wrk, hey -q) waits for a response before it sends the next request, so
when the server stalls it also stops sending and the stall hides in a few slow samples
("coordinated omission"). Here request i is due at t0 + i/rate whatever happened before; when
no connection is free it waits in a queue, and its latency still counts from when it was due.
Neither wrk2 nor another constant-rate generator is packaged in Debian, hence this one.

Usage: python bench/loadgen.py --host 127.0.0.1 --port 10000 --rate 1000 --duration 5 \
           --warmup 1 --request-file REQ.bin   (prints one JSON object)
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import socket
import sys
import time
from typing import Any


def percentile(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return float("nan")
    index = min(len(sorted_values) - 1, max(0, int(round(q / 100.0 * len(sorted_values) + 0.5)) - 1))
    return sorted_values[index]


class _Conn(asyncio.Protocol):
    def __init__(self, gen: "ConstantRate") -> None:
        self.gen = gen
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.need: int | None = None
        self.status = 0
        self.due: float | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.gen.ready(self)

    def send(self, due: float) -> None:
        self.due = due
        assert self.transport is not None
        self.transport.write(self.gen.request)

    def data_received(self, data: bytes) -> None:
        self.buf += data
        while True:
            if self.need is None:
                end = self.buf.find(b"\r\n\r\n")
                if end < 0:
                    return
                head = bytes(self.buf[:end]).lower()
                self.status = int(head[9:12])
                at = head.find(b"\r\ncontent-length:")
                if at < 0:
                    self.gen.failed(self, "response without content-length")
                    return
                stop = head.find(b"\r\n", at + 2)
                length = int(head[at + 17: stop if stop > 0 else len(head)])
                self.need = end + 4 + length
            if len(self.buf) < self.need:
                return
            del self.buf[: self.need]
            self.need = None
            self.gen.completed(self, self.status)

    def connection_lost(self, exc: Exception | None) -> None:
        self.gen.lost(self)


class ConstantRate:
    def __init__(self, host: str, port: int, request: bytes, rate: float, duration: float, warmup: float,
                 connections: int, max_connections: int) -> None:
        self.host, self.port, self.request = host, port, request
        self.rate, self.duration, self.warmup = rate, duration, warmup
        self.connections, self.max_connections = connections, max_connections
        self.idle: collections.deque[_Conn] = collections.deque()
        self.queue: collections.deque[float] = collections.deque()
        self.open = 0
        self.opening = 0
        self.latencies: list[float] = []
        self.statuses: collections.Counter[int] = collections.Counter()
        self.errors: collections.Counter[str] = collections.Counter()
        self.outstanding = 0
        self.measure_from = 0.0
        self.loop = asyncio.get_running_loop()
        self.all_done = asyncio.Event()
        self.scheduled_all = False

    # ---- connections ----
    def _open_one(self) -> None:
        self.opening += 1

        async def connect() -> None:
            try:
                await self.loop.create_connection(lambda: _Conn(self), self.host, self.port)
            except OSError as exc:
                self.errors[f"connect: {exc.strerror}"] += 1
            finally:
                self.opening -= 1

        self.loop.create_task(connect())

    def ready(self, conn: _Conn) -> None:
        self.open += 1
        self._next(conn)

    def _next(self, conn: _Conn) -> None:
        if self.queue:
            conn.send(self.queue.popleft())
        else:
            self.idle.append(conn)

    # ---- requests ----
    def dispatch(self, due: float) -> None:
        self.outstanding += 1
        if self.idle:
            self.idle.pop().send(due)
        else:
            self.queue.append(due)
            if self.open + self.opening < self.max_connections:
                self._open_one()

    def _finish(self, due: float | None, status: int | None, error: str | None) -> None:
        self.outstanding -= 1
        if due is not None and due >= self.measure_from:
            if error is not None:
                self.errors[error] += 1
            else:
                self.latencies.append(self.loop.time() - due)
                self.statuses[status or 0] += 1
        if self.scheduled_all and self.outstanding == 0:
            self.all_done.set()

    def completed(self, conn: _Conn, status: int) -> None:
        due, conn.due = conn.due, None
        self._finish(due, status, None)
        self._next(conn)

    def failed(self, conn: _Conn, why: str) -> None:
        due, conn.due = conn.due, None
        self._finish(due, None, why)
        if conn.transport is not None:
            conn.transport.close()

    def lost(self, conn: _Conn) -> None:
        self.open -= 1
        try:
            self.idle.remove(conn)
        except ValueError:
            pass
        if conn.due is not None:
            due, conn.due = conn.due, None
            self._finish(due, None, "connection closed")
        if self.queue and self.open + self.opening < self.max_connections:
            self._open_one()

    async def run(self) -> dict[str, Any]:
        for _ in range(self.connections):
            self._open_one()
        while self.opening:
            await asyncio.sleep(0.01)
        interval = 1.0 / self.rate
        total = int((self.warmup + self.duration) * self.rate)
        start = self.loop.time() + 0.05
        self.measure_from = start + self.warmup
        i = 0
        while i < total:
            now = self.loop.time()
            while i < total and start + i * interval <= now:
                self.dispatch(start + i * interval)
                i += 1
            if i < total:
                await asyncio.sleep(max(0.0, start + i * interval - self.loop.time()))
        end_of_schedule = self.loop.time()
        self.scheduled_all = True
        if self.outstanding:
            try:
                await asyncio.wait_for(self.all_done.wait(), timeout=15)
            except asyncio.TimeoutError:
                self.errors["timeout"] += self.outstanding
        elapsed = self.loop.time() - self.measure_from
        lat = sorted(self.latencies)
        ms = lambda v: round(v * 1000, 3)  # noqa: E731
        return {
            "rate": self.rate,
            "duration_s": self.duration,
            "sent": total,
            "measured": len(lat),
            "achieved_rps": round(len(lat) / elapsed, 1) if elapsed > 0 else 0,
            "schedule_lag_ms": ms(max(0.0, end_of_schedule - (start + total * interval))),
            "p50_ms": ms(percentile(lat, 50)),
            "p90_ms": ms(percentile(lat, 90)),
            "p99_ms": ms(percentile(lat, 99)),
            "p999_ms": ms(percentile(lat, 99.9)),
            "max_ms": ms(lat[-1]) if lat else None,
            "statuses": {str(k): v for k, v in sorted(self.statuses.items())},
            "errors": dict(self.errors),
            "connections": self.open,
        }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--rate", type=float, required=True, help="requests per second")
    ap.add_argument("--duration", type=float, default=5.0, help="measured seconds")
    ap.add_argument("--warmup", type=float, default=1.0, help="seconds sent at the rate before measuring")
    ap.add_argument("--connections", type=int, default=16, help="connections opened up front")
    ap.add_argument("--max-connections", type=int, default=256)
    ap.add_argument("--request-file", required=True, help="the raw HTTP/1.1 request to send, bytes as is")
    args = ap.parse_args(argv)
    with open(args.request_file, "rb") as fh:
        request = fh.read()

    async def run() -> dict[str, Any]:
        gen = ConstantRate(args.host, args.port, request, args.rate, args.duration, args.warmup,
                           args.connections, args.max_connections)
        return await gen.run()

    result = asyncio.run(run())
    sys.stdout.write(json.dumps(result) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
