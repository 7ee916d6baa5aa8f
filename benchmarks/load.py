"""A small HTTP/1.1 load generator for loopback benchmarks (stdlib only).

Each of ``concurrency`` clients holds one keep-alive connection and sends the
same pre-encoded request again as soon as the previous answer is complete, until
``requests`` answers in all or ``seconds`` have passed, whichever comes first.
A client costs tens of microseconds per request, so on a 2-core machine the
server, not the load generator, sets the pace.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from dataclasses import dataclass
from urllib.parse import urlsplit


@dataclass(frozen=True)
class Load:
    """What one load run measured."""

    concurrency: int
    requests: int
    errors: int
    seconds: float
    latencies_ms: list[float]

    @property
    def requests_per_s(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0

    def percentile(self, q: float) -> float:
        """The ``q``-th percentile of the latencies (nearest rank), ms."""
        ordered = sorted(self.latencies_ms)
        if not ordered:
            return float("nan")
        rank = max(1, round(q / 100 * len(ordered)))
        return ordered[min(rank, len(ordered)) - 1]

    def summary(self) -> dict:
        return {
            "concurrency": self.concurrency,
            "requests": self.requests,
            "errors": self.errors,
            "seconds": self.seconds,
            "requests_per_s": self.requests_per_s,
            "p50_ms": self.percentile(50),
            "p99_ms": self.percentile(99),
            "mean_ms": statistics.fmean(self.latencies_ms)
            if self.latencies_ms
            else float("nan"),
        }


def post_request(url: str, body: bytes) -> bytes:
    """The raw bytes of a keep-alive JSON POST of ``body`` to ``url``."""
    parts = urlsplit(url)
    head = (
        f"POST {parts.path or '/'} HTTP/1.1\r\n"
        f"Host: {parts.netloc}\r\n"
        "Content-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n"
        "\r\n"
    )
    return head.encode() + body


async def _exchange(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, request: bytes
) -> tuple[int, bytes]:
    writer.write(request)
    await writer.drain()
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    length = 0
    for line in lines[1:]:
        name, _, value = line.partition(":")
        if name.strip().lower() == "content-length":
            length = int(value)
    return status, await reader.readexactly(length)


async def _client(
    host: str,
    port: int,
    request: bytes,
    deadline: float,
    budget: list[int],
    latencies: list[float],
    errors: list[int],
) -> None:
    reader, writer = await asyncio.open_connection(host, port)
    try:
        while budget[0] > 0 and time.perf_counter() < deadline:
            budget[0] -= 1
            started = time.perf_counter()
            status, _ = await _exchange(reader, writer, request)
            if status == 200:
                latencies.append((time.perf_counter() - started) * 1000)
            else:
                errors[0] += 1
    finally:
        writer.close()


async def _run(url: str, body: bytes, concurrency: int, requests: int, seconds: float):
    parts = urlsplit(url)
    request = post_request(url, body)
    latencies: list[float] = []
    errors = [0]
    budget = [requests]
    started = time.perf_counter()
    deadline = started + seconds
    await asyncio.gather(
        *(
            _client(
                parts.hostname, parts.port, request, deadline, budget, latencies, errors
            )
            for _ in range(concurrency)
        )
    )
    elapsed = time.perf_counter() - started
    return Load(concurrency, len(latencies), errors[0], elapsed, latencies)


def run_load(
    url: str, body: bytes, *, concurrency: int, requests: int, seconds: float
) -> Load:
    """POST ``body`` to ``url`` from ``concurrency`` clients; bounded in count and time.

    Only answers with status 200 count as requests (and latencies); others count
    as errors.
    """
    return asyncio.run(_run(url, body, concurrency, requests, seconds))


def timed_post(url: str, body: bytes, timeout: float = 120) -> tuple[int, float, bytes]:
    """One POST on a fresh connection: status, seconds until the answer, answer."""

    async def once() -> tuple[int, float, bytes]:
        parts = urlsplit(url)
        reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
        try:
            started = time.perf_counter()
            status, answer = await asyncio.wait_for(
                _exchange(reader, writer, post_request(url, body)), timeout
            )
            return status, time.perf_counter() - started, answer
        finally:
            writer.close()

    return asyncio.run(once())
